"""How far today's uint8 resize is from the MLPerf reference's float32 resize, and what exactness costs.

On real COCO images (the shared mini set), per model resolution (1200 px for ssd_resnet34, 800 px for
retinanet_coco), both paths of odbench/preprocess.py run end to end (decode, resize, store, verify,
load, normalize): the model inputs are compared (grey levels and normalized input units), then both
inputs go through the model's **stand-in** (odbench/standin.py, the real I/O contract, random
weights, onnxruntime on CPU) and the detections are compared, with the COCO mAP of each. The
stand-in average-pools the image to a ~20x20 grid before anything else, so it averages per-pixel
differences away: its detection numbers are a floor, not an estimate, for the real models.
Costs: bytes per stored sample, preprocessing and loading time per sample, one worker.

    .venv/bin/python benchmarks/preprocess_exactness.py [--images 80] [--threads 2] [--data DIR]

Everything is written to a temporary storage root, removed at the end (about 2 GB at 80 images).
docs/preprocessing.md holds the table this printed and the default chosen from it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass

import mini_set  # benchmarks/, this script's folder
import numpy as np

from odbench import coco
from odbench.accuracy import encode_detections, evaluate
from odbench.backend import OnnxBackend
from odbench.dataset import DatasetManifest, FolderSource, ingest
from odbench.models import ModelSpec, get_spec
from odbench.preprocess import (
    RESIZE_DTYPES,
    load_sample,
    preprocess,
    preprocessed_dir,
    preprocessed_files,
    to_model_input,
)
from odbench.standin import build_standin
from odbench.storage import Storage

MODELS = ("ssd_resnet34", "retinanet_coco")
MATCH_IOU = 0.5  # a detection of one path and one of the other are "the same" at this IoU and the same label
SAME_BOX_PX = 1e-3  # matched detections closer than this (pixels of the model input) and ...
SAME_SCORE = 1e-6  # ... with scores this close count as unchanged


@dataclass(frozen=True)
class InputDiff:
    """One way of producing uint8 inputs against the reference's float32 resize, over all images."""

    variant: str
    max_grey: float
    mean_grey: float
    bias_grey: float  # mean signed difference: a systematic shift, not rounding noise, when far from 0
    share_differing: float  # values not equal to the reference's (nearly all: its values are not integers)
    share_not_nearest: float  # values that are not the grey level nearest to the reference's
    share_over_half: float  # values more than 0.5 grey level away
    max_input: float  # in the model's normalized input units
    mean_input: float


@dataclass(frozen=True)
class DetectionDiff:
    """Stand-in detections of the uint8 inputs against those of the reference-exact inputs."""

    detections: tuple[int, int]  # uint8, float32
    identical_images: int
    appear_or_vanish: int  # detections of either path with no match in the other
    changed: int  # matched detections whose box or score moved
    max_box_px: float
    mean_box_px: float
    max_score: float
    mAP: tuple[float, float]  # uint8, float32


@dataclass(frozen=True)
class Cost:
    """What one path costs per sample."""

    resize_dtype: str
    bytes_per_sample: int
    preprocess_ms: float  # decode + resize + header/sha256 + write, one worker
    load_ms: float  # read + verify + normalize (LoadGen's untimed load step)


@dataclass(frozen=True)
class ModelReport:
    spec: ModelSpec
    images: int
    inputs: tuple[InputDiff, ...]
    detections: DetectionDiff
    costs: tuple[Cost, ...]


def _input_diff(variant: str, pairs: list[tuple[np.ndarray, np.ndarray]], spec: ModelSpec) -> InputDiff:
    """(uint8-path sample, float32 sample) pairs to their difference statistics."""
    grey = [sample.astype(np.float32) - ref for sample, ref in pairs]
    model = [np.abs(to_model_input(s, spec) - to_model_input(r, spec)) for s, r in pairs]
    count = sum(d.size for d in grey)
    return InputDiff(variant, max(float(np.abs(d).max()) for d in grey),
                     sum(float(np.abs(d).sum()) for d in grey) / count, sum(float(d.sum()) for d in grey) / count,
                     sum(int(np.count_nonzero(d)) for d in grey) / count,
                     sum(int(np.count_nonzero(s != np.clip(np.rint(r), 0, 255))) for s, r in pairs) / count,
                     sum(int(np.count_nonzero(np.abs(d) > 0.5)) for d in grey) / count,
                     max(float(d.max()) for d in model), sum(float(d.sum()) for d in model) / count)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.prod(boxes[..., 2:] - boxes[..., :2], axis=-1)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1,y1,x2,y2 box with each of `boxes`."""
    lo, hi = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    return inter / np.maximum(_area(box) + _area(boxes) - inter, 1e-12)


@dataclass(frozen=True)
class _Detections:
    boxes: np.ndarray  # pixels of the model input
    scores: np.ndarray
    labels: np.ndarray

    def same_as(self, other: _Detections) -> bool:
        return all(np.array_equal(getattr(self, k), getattr(other, k)) for k in ("boxes", "scores", "labels"))


def _match(a: _Detections, b: _Detections) -> tuple[list[tuple[int, int]], int]:
    """Greedy pairs (index in a, index in b), best score of `a` first, same label and IoU >= MATCH_IOU;
    and how many detections of either side stay unpaired."""
    free = np.ones(len(b.scores), bool)
    pairs = []
    for i in np.argsort(-a.scores, kind="stable"):
        candidates = free & (b.labels == a.labels[i])
        if not candidates.any():
            continue
        iou = np.where(candidates, _iou(a.boxes[i], b.boxes), -1.0)
        if (j := int(iou.argmax())) >= 0 and iou[j] >= MATCH_IOU:
            pairs.append((int(i), j))
            free[j] = False
    return pairs, len(a.scores) + len(b.scores) - 2 * len(pairs)


def _detection_diff(outputs: list[tuple[_Detections, _Detections]], maps: tuple[float, float]) -> DetectionDiff:
    box_diffs, score_diffs, unpaired, changed, identical = [], [], 0, 0, 0
    for u, f in outputs:
        identical += u.same_as(f)
        pairs, lost = _match(u, f)
        unpaired += lost
        for i, j in pairs:
            box, score = float(np.abs(u.boxes[i] - f.boxes[j]).max()), abs(float(u.scores[i] - f.scores[j]))
            box_diffs.append(box)
            score_diffs.append(score)
            changed += box > SAME_BOX_PX or score > SAME_SCORE
    return DetectionDiff((sum(len(u.scores) for u, _ in outputs), sum(len(f.scores) for _, f in outputs)),
                         identical, unpaired, changed, max(box_diffs, default=0.0),
                         float(np.mean(box_diffs)) if box_diffs else 0.0, max(score_diffs, default=0.0), maps)


def _timed_preprocess(manifest: DatasetManifest, spec: ModelSpec, storage: Storage) -> dict[str, Cost]:
    """Preprocess with each path on a fresh folder (one worker) and time it; bytes from the stored files."""
    costs = {}
    for dtype in RESIZE_DTYPES:
        start = time.perf_counter()
        preprocess(manifest, spec.resolution, storage, workers=1, resize_dtype=dtype)
        elapsed = time.perf_counter() - start
        sizes = [storage.fs.size(storage.path(rel))
                 for rel in preprocessed_files(manifest, spec.resolution, resize_dtype=dtype)]
        costs[dtype] = Cost(dtype, int(np.mean(sizes)), elapsed / manifest.size * 1e3, 0.0)
    return costs


def _infer(backend: OnnxBackend, x: np.ndarray, spec: ModelSpec) -> _Detections:
    boxes, scores, labels = backend.infer(x)
    return _Detections(boxes.astype(np.float64) / spec.box_scale * spec.resolution, scores, labels)


def measure_model(name: str, manifest: DatasetManifest, storage: Storage, threads: int) -> ModelReport:
    """Both paths of one model's resolution on every image of the manifest, then the folder is removed."""
    spec = get_spec(name)
    costs = _timed_preprocess(manifest, spec, storage)
    backend = OnnxBackend(build_standin(spec), spec, "cpu", threads)
    annotations = coco.parse_annotations(storage.read_bytes(manifest.annotations_rel))
    pairs, rounded, outputs, decoded = [], [], [], {"uint8": {}, "float32": {}}
    load_s = dict.fromkeys(RESIZE_DTYPES, 0.0)
    for image in manifest.images:
        samples = {}
        for dtype in RESIZE_DTYPES:
            start = time.perf_counter()
            samples[dtype] = load_sample(storage, image, spec.resolution, resize_dtype=dtype)
            load_s[dtype] += time.perf_counter() - start + _time_input(samples[dtype], spec)
        reference = samples["float32"]
        pairs.append((samples["uint8"], reference))
        rounded.append((np.clip(np.rint(reference), 0, 255).astype(np.uint8), reference))
        found = {dtype: _infer(backend, to_model_input(samples[dtype], spec), spec) for dtype in RESIZE_DTYPES}
        outputs.append((found["uint8"], found["float32"]))
        for dtype, det in found.items():
            decoded[dtype][image.index] = _accuracy_rows(image.index, det, spec)
    shutil.rmtree(storage.path(preprocessed_dir(spec.resolution, resize_dtype="uint8")), ignore_errors=True)
    maps = (evaluate(decoded["uint8"], annotations, spec.uses_inverse_map).mAP,
            evaluate(decoded["float32"], annotations, spec.uses_inverse_map).mAP)
    inputs = (_input_diff("uint8 path (today)", pairs, spec),
              _input_diff("float32 resize rounded to uint8 (not built)", rounded, spec))
    loads = tuple(Cost(c.resize_dtype, c.bytes_per_sample, c.preprocess_ms, load_s[d] / manifest.size * 1e3)
                  for d, c in costs.items())
    return ModelReport(spec, manifest.size, inputs, _detection_diff(outputs, maps), loads)


def _time_input(sample: np.ndarray, spec: ModelSpec) -> float:
    start = time.perf_counter()
    to_model_input(sample, spec)
    return time.perf_counter() - start


def _accuracy_rows(index: int, det: _Detections, spec: ModelSpec) -> np.ndarray:
    """Detections as the accuracy log's rows, in the spec's own box scale."""
    return encode_detections(index, det.boxes / spec.resolution * spec.box_scale, det.scores, det.labels, spec)


def print_report(reports: list[ModelReport]) -> None:
    """Markdown tables: input differences, stand-in detection differences, costs."""
    print("\n### Model inputs: uint8 against the reference's float32 resize (real images)\n")
    print("| model (res) | images | variant | max grey | mean grey | bias grey | values differing | "
          "values not the nearest grey | values > 0.5 grey | max input units | mean input units |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in reports:
        for d in r.inputs:
            print(f"| {r.spec.name} ({r.spec.resolution}) | {r.images} | {d.variant} | {d.max_grey:.3f} | "
                  f"{d.mean_grey:.3f} | {d.bias_grey:+.3f} | {d.share_differing:.1%} | "
                  f"{d.share_not_nearest:.1%} | {d.share_over_half:.1%} | "
                  f"{d.max_input:.5f} | {d.mean_input:.5f} |")
    print("\n### Detections of the STAND-IN models (random weights, not the real models): uint8 vs float32\n")
    print("| stand-in of | detections u8 / f32 | identical images | appear or vanish | matched, moved | "
          "max box diff px | mean box diff px | max score diff | stand-in mAP u8 / f32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in reports:
        d = r.detections
        print(f"| {r.spec.name} | {d.detections[0]} / {d.detections[1]} | {d.identical_images}/{r.images} | "
              f"{d.appear_or_vanish} | {d.changed} | {d.max_box_px:.4f} | {d.mean_box_px:.5f} | {d.max_score:.2e} | "
              f"{d.mAP[0]:.3f} / {d.mAP[1]:.3f} |")
    print("\n### Cost per sample (one worker; this machine)\n")
    print("| model (res) | path | bytes per sample | 5000 images | preprocess ms | load + normalize ms |")
    print("|---|---|---|---|---|---|")
    for r in reports:
        for c in r.costs:
            print(f"| {r.spec.name} ({r.spec.resolution}) | {c.resize_dtype} | {c.bytes_per_sample:,} | "
                  f"{c.bytes_per_sample * 5000 / 1e9:.1f} GB | {c.preprocess_ms:.1f} | {c.load_ms:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mini_set.add_arguments(parser, tmp=False)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    args = mini_set.parse(parser)
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="odbench-exactness-") as tmp:
        storage = Storage(tmp)
        manifest = ingest(FolderSource(str(args.data)), args.images, storage)
        reports = [measure_model(name, manifest, storage, args.threads) for name in MODELS]
    print_report(reports)
    print(f"\n{manifest.size} images of {args.data}, {time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
