"""Where a full-size stand-in's GPU time goes, and what the CUDA provider's settings change: one table.

    python benchmarks/cuda_settings.py --models retinanet_coco ssd_resnet34 --seconds 4

onnxruntime's profiler cannot split asynchronous GPU work per operator (docs/performance.md, section 9), so
this times whole graphs with a bare loop instead: the model's convolutional trunk alone (every Conv and what
feeds it, cut where the last convolutions end: odbench/split_model.py's trunk), the whole model, the whole model at
fp16, the whole model under CUDA provider options (cuDNN algorithm search, TF32, NHWC layout, workspace), and
the trunk captured as a CUDA graph (last: on the whole model, whose NMS output shapes depend on the data,
onnxruntime 1.31.1 did not refuse the capture but died of an illegal memory access). The difference between
the whole model and its trunk is the post-processing (decode, TopK, NMS). Each row is ms per inference, one at
a time, after a warm-up, printed as soon as it is measured; a setting onnxruntime refuses is a row with its
error. Stand-in numbers are not the real models' numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from odbench.batching import batched  # noqa: E402
from odbench.fp16 import to_fp16  # noqa: E402
from odbench.models import get_spec  # noqa: E402
from odbench.split_model import split  # noqa: E402
from odbench.standin_full import build_full_standin, probe_input  # noqa: E402

WARMUP = 10
SETTINGS: dict[str, dict[str, str]] = {  # CUDAExecutionProvider options; {} is onnxruntime's default
    "default": {},
    "cudnn_conv_algo_search=HEURISTIC": {"cudnn_conv_algo_search": "HEURISTIC"},
    "cudnn_conv_algo_search=DEFAULT": {"cudnn_conv_algo_search": "DEFAULT"},
    "use_tf32=0": {"use_tf32": "0"},
    "prefer_nhwc=1": {"prefer_nhwc": "1"},
    "cudnn_conv_use_max_workspace=0": {"cudnn_conv_use_max_workspace": "0"},
}
CUDA_GRAPH = {"enable_cuda_graph": "1"}


def ms_per_inference(model: bytes, options: dict[str, str], x: np.ndarray, seconds: float,
                     provider: str = "CUDAExecutionProvider", per: int = 1, on_device: bool = False) -> str:
    """Mean ms of sequential inferences (divided by `per`: ms per sample of a batch) for about `seconds` with
    `provider` first, or onnxruntime's refusal; `on_device`: input and outputs stay in GPU memory (IO binding), so
    no transfer is timed."""
    import onnxruntime as ort

    ort.preload_dlls()
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model, sess_options=session_options, providers=[
            (provider, options), *[p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p != provider]])
        if session.get_providers()[0] != provider:
            return f"refused: {provider} could not load (its libraries are missing)"
        run = _device_run(session, x) if on_device else partial(session.run, None, {session.get_inputs()[0].name: x})
        for _ in range(WARMUP):
            run()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            run()
            count += 1
        return f"{(time.perf_counter() - start) / count / per * 1000:.2f}"
    except Exception as err:  # noqa: BLE001 — a refused setting is a finding, reported in the table
        return f"refused: {str(err).splitlines()[0][:160]}"


def _device_run(session, x: np.ndarray):
    """A call running the session on `x` copied to the GPU once, its outputs left in GPU memory."""
    import onnxruntime as ort

    binding = session.io_binding()
    binding.bind_ortvalue_input(session.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda")
    return partial(session.run_with_iobinding, binding)


def batch_rows(name: str, seconds: float, batches: list[int]) -> Iterator[tuple[str, str, str]]:
    """ms per sample at each batch size, fp16 with NHWC, input and outputs in GPU memory: the trunk alone (the
    ceiling batching can reach) and the whole batched model (odbench/batching.py: the trunk on the batch, the
    post-processing looped per image)."""
    spec = get_spec(name)
    fp32 = build_full_standin(spec)
    fp16, nhwc = to_fp16(fp32), SETTINGS["prefer_nhwc=1"]
    core = to_fp16(split(fp32, spec, any_batch=True).trunk)
    for size in batches:
        x = np.concatenate([probe_input(spec)] * size)
        yield name, f"trunk only, fp16, NHWC, batch {size}, per sample", ms_per_inference(
            core, nhwc, x, seconds, per=size, on_device=True)
        yield name, f"whole model batched, fp16, NHWC, batch {size}, per sample", ms_per_inference(
            batched(fp16, spec), nhwc, x, seconds, per=size, on_device=True)
    yield name, "whole model unbatched, fp16, NHWC, per sample", ms_per_inference(
        fp16, nhwc, probe_input(spec), seconds, on_device=True)


def rows(name: str, seconds: float, tensorrt: bool = False) -> Iterator[tuple[str, str, str]]:
    """(model, graph and setting, ms) one by one, so a crash of the last loses none before it."""
    spec = get_spec(name)
    fp32 = build_full_standin(spec)
    x = probe_input(spec)
    core = split(fp32, spec).trunk
    yield name, "trunk only (convolutions), default", ms_per_inference(core, {}, x, seconds)
    yield name, "trunk only, fp16", ms_per_inference(to_fp16(core), {}, x, seconds)
    yield name, "whole model, fp16", ms_per_inference(to_fp16(fp32), {}, x, seconds)
    yield name, "whole model, fp16, prefer_nhwc=1", ms_per_inference(to_fp16(fp32), SETTINGS["prefer_nhwc=1"], x,
                                                                     seconds)
    for label, options in SETTINGS.items():
        yield name, f"whole model, {label}", ms_per_inference(fp32, options, x, seconds)
    yield name, "trunk only, enable_cuda_graph=1", ms_per_inference(core, CUDA_GRAPH, x, seconds)
    if tensorrt:
        yield name, "whole model, TensorRT fp16 (unsupported nodes on CUDA)", ms_per_inference(
            fp32, {"trt_fp16_enable": "1"}, x, seconds, "TensorrtExecutionProvider")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["retinanet_coco", "ssd_resnet34"])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--tensorrt", action="store_true", help="also the TensorRT provider at fp16 (builds an engine)")
    parser.add_argument("--batches", type=int, nargs="+", metavar="B",
                        help="only ms per sample at these batch sizes (trunk alone, whole batched model), fp16 NHWC")
    args = parser.parse_args()
    import onnxruntime

    lines = [f"ms per inference, one at a time (onnxruntime {onnxruntime.__version__}, CUDAExecutionProvider)",
             "| model | graph, setting | ms |", "|---|---|---|"]
    for name in args.models:
        found = (batch_rows(name, args.seconds, args.batches) if args.batches
                 else rows(name, args.seconds, args.tensorrt))
        for model, setting, ms in found:
            lines.append(f"| {model} | {setting} | {ms} |")
            print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
