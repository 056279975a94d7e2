"""A model's raw outputs checked per sample, before they are encoded and scored.

A broken or hostile model can answer with NaN or infinite boxes and scores, boxes a trillion pixels
away, labels outside its label space (SSD's -1 would index the inverse map from the end) or far more
detections than its spec allows. pycocotools scores all of that without a word, so the SUT runs this
check on every sample (vectorised numpy, microseconds for a few hundred detections): each offending
detection is dropped, counted under one problem (the first that applies, in `PROBLEMS` order), and the
run fails with the counts unless the user tolerates bad outputs.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

import numpy as np

from odbench.models import LabelSpace, ModelSpec

BOX_MARGIN = 1.0  # a coordinate may lie this many image sizes outside the image, no more
PROBLEMS = {  # key -> what a count of it means ({lo}, {hi}, {max}, {margin} filled from the spec)
    "mismatched_lengths": "detections beyond the shortest of the boxes, scores and labels outputs",
    "non_finite": "detections with a NaN or infinite box coordinate or score",
    "label_outside_label_space": "detections with a label outside the model's label space {lo}..{hi}",
    "box_far_outside_image": "detections with a box more than {margin:g} image size(s) outside the image",
    "too_many_detections": "detections beyond the model's maximum of {max} per image (lowest scores dropped)",
}


def label_range(spec: ModelSpec) -> tuple[int, int]:
    """The labels a model of this spec may emit: contiguous 1..80, COCO ids 1..90, OpenImages 0..263."""
    if spec.label_space is LabelSpace.OPENIMAGES:
        return 0, spec.num_classes - 1
    return 1, spec.num_classes


def describe(problem: str, spec: ModelSpec) -> str:
    lo, hi = label_range(spec)
    return PROBLEMS[problem].format(lo=lo, hi=hi, max=spec.max_detections, margin=BOX_MARGIN)


@dataclass(frozen=True)
class CheckedOutputs:
    """One sample's detections that passed, and how many of each problem were dropped."""

    boxes: np.ndarray  # [K, 4], the spec's scale
    scores: np.ndarray  # [K]
    labels: np.ndarray  # [K] int64, inside label_range
    problems: dict[str, int]  # nonzero counts only


def check_outputs(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, spec: ModelSpec) -> CheckedOutputs:
    """Drop and count the detections no scorer should see (see the module docstring); a clean sample
    (the usual case) costs a few vectorised comparisons and returns its arrays as they are."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    scores, labels = np.asarray(scores).reshape(-1), np.asarray(labels).reshape(-1)
    n = min(len(boxes), len(scores), len(labels))
    problems = {"mismatched_lengths": max(len(boxes), len(scores), len(labels)) - n}
    if problems["mismatched_lengths"]:
        boxes, scores, labels = boxes[:n], scores[:n], labels[:n]
    if _clean(boxes, scores, labels, spec):
        bad = None
    else:
        flags = _flags(boxes, scores, labels, spec)
        bad = flags[0] | flags[1] | flags[2]
    if bad is not None and bad.any():
        taken = np.zeros(n, bool)
        for name, flag in zip(list(PROBLEMS)[1:4], flags):
            problems[name] = int((flag & ~taken).sum())
            taken |= flag
        keep = ~bad
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    problems["too_many_detections"] = max(0, len(scores) - spec.max_detections)
    if problems["too_many_detections"]:
        top = np.sort(np.argsort(-scores, kind="stable")[:spec.max_detections])
        boxes, scores, labels = boxes[top], scores[top], labels[top]
    return CheckedOutputs(boxes, scores, labels.astype(np.int64, copy=False),
                          {k: v for k, v in problems.items() if v})


def passes_unchanged(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, spec: ModelSpec) -> bool:
    """Whether `check_outputs` would pass these outputs as they are: the contract's float32 [K, 4], [K], [K] of
    equal length, at most max_detections, and no detection with a problem (the usual case; the SUT then encodes
    them without the checked copy, odbench/accuracy.py `encode_if_clean`)."""
    return (boxes.dtype == scores.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
            and scores.ndim == labels.ndim == 1 and len(boxes) == len(scores) == len(labels)
            and len(scores) <= spec.max_detections and _clean(boxes, scores, labels, spec))


def _clean(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, spec: ModelSpec) -> bool:
    """Whether no detection can have a problem, from five reductions (a NaN makes each comparison False)."""
    if not len(scores):
        return True
    if not np.issubdtype(labels.dtype, np.integer):
        return False
    lo, hi = label_range(spec)
    scale = spec.box_scale
    return bool(boxes.min() >= -BOX_MARGIN * scale and boxes.max() <= (1 + BOX_MARGIN) * scale
                and np.isfinite(scores.sum()) and labels.min() >= lo and labels.max() <= hi)


def _flags(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
           spec: ModelSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-detection flags: non-finite, label outside the label space, box far outside the image.
    (Comparisons with NaN are False and raise no warning, so no errstate is needed.)"""
    finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
    lo, hi = label_range(spec)
    if np.issubdtype(labels.dtype, np.integer):
        outside = (labels < lo) | (labels > hi)
    else:  # a float label: only a whole number inside the range counts
        outside = ~((labels == np.round(labels)) & (labels >= lo) & (labels <= hi))
    scale = np.float32(spec.box_scale)
    far = ((boxes < -BOX_MARGIN * scale) | (boxes > (1 + BOX_MARGIN) * scale)).any(axis=1)
    return ~finite, outside, far


class OutputTally:
    """Problem counts over a run, added to from the SUT's worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.problems: Counter[str] = Counter()
        self.samples = 0  # samples with at least one problem
        self.first_sample: int | None = None  # the lowest qsl_idx among them

    def add(self, qsl_idx: int, problems: dict[str, int]) -> None:
        if not problems:
            return
        with self._lock:
            self.problems.update(problems)
            self.samples += 1
            self.first_sample = qsl_idx if self.first_sample is None else min(self.first_sample, qsl_idx)

    def counts(self) -> dict[str, int]:
        """Nonzero counts in `PROBLEMS` order."""
        return {name: self.problems[name] for name in PROBLEMS if self.problems[name]}

    def message(self, spec: ModelSpec) -> str:
        """Each problem with its count, the samples affected and the first of them."""
        parts = "; ".join(f"{count} {describe(name, spec)}" for name, count in self.counts().items())
        return f"{parts} (in {self.samples} sample(s), first qsl_idx {self.first_sample})"


class BadModelOutputsError(ValueError):
    """The model answered with detections that cannot be scored as they are (see the message)."""
