"""Where a model's time goes: onnxruntime's own profiler over a few inferences, summed per operator type.

    python benchmarks/op_profile.py --device cuda --models retinanet_coco ssd_resnet34 [--small] [--runs 20]

Builds the stand-in (full-size unless --small) as benchmarks/gpu_hot_path.py does, runs untimed warm-up
inferences, then `--runs` profiled ones on the stand-ins' calibration scene, and prints one table per model:
each operator type's share of the kernel time, its total per inference, and the provider that ran it.
Stand-ins only: their post-processing load (candidates above the score threshold) is not a trained model's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_hot_path import build_model  # noqa: E402

from odbench.backend import requested_providers  # noqa: E402
from odbench.models import get_spec  # noqa: E402
from odbench.standin_full import probe_input  # noqa: E402

WARMUP = 10


def profile(name: str, device: str, runs: int, small: bool) -> str:
    """The per-operator table of one model."""
    import onnxruntime as ort

    spec = get_spec(name)
    model, kind = build_model(spec, small)
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(model, options, providers=requested_providers(device))
        x = probe_input(spec)  # an image-like scene: noise would pass several times more boxes to the NMS
        for _ in range(WARMUP):
            session.run(None, {spec.input.name: x})
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(model, options, providers=requested_providers(device))
        for _ in range(WARMUP + runs):  # the profile holds every run: the first WARMUP are dropped below
            session.run(None, {spec.input.name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    return _table(f"{name} [{kind}] on {', '.join(session.get_providers())}", events, runs)


def _table(title: str, events: list[dict], runs: int) -> str:
    """Kernel time per operator type over the last `runs` model runs."""
    runs_seen = [e for e in events if e.get("name") == "model_run"]
    start = runs_seen[-runs]["ts"] if len(runs_seen) >= runs else 0
    per_op: dict[tuple[str, str], float] = defaultdict(float)
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and event["ts"] >= start and "op_name" in args:
            per_op[(args["op_name"], args.get("provider", "?"))] += event["dur"]
    total = sum(per_op.values()) or 1
    lines = [title, "| operator | provider | ms per inference | share |", "|---|---|---|---|"]
    for (op, provider), us in sorted(per_op.items(), key=lambda kv: -kv[1])[:15]:
        lines.append(f"| {op} | {provider} | {us / runs / 1000:.3f} | {us / total:.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", default=["retinanet_coco", "ssd_resnet34"])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    for name in args.models:
        print(profile(name, args.device, args.runs, args.small), "\n")


if __name__ == "__main__":
    main()
