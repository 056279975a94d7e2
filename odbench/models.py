"""The model registry: each supported detector's source, checksum and exact input/output contract.

A `ModelSpec` is the single description every other module reads: the fetcher (URL, md5), the
preprocessor (resolution, normalization), the stand-in builder (the contract to imitate), the
validator (the contract to check) and the SUT's encoder (box convention, label space).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Dim = int | None  # None: a dynamic (symbolic) dimension


class LabelSpace(enum.Enum):
    """How a model numbers its classes, and so how its logged labels become COCO category ids."""

    COCO_CONTIGUOUS = "coco_contiguous"  # 1..80, logged as such, scored through the inverse map
    COCO_IDS = "coco_ids"  # labels already are COCO category ids (1..90), logged and scored as such
    OPENIMAGES = "openimages"  # 0..263 OpenImages classes: meaningless on COCO


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32" or "int64"
    shape: tuple[Dim, ...]

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"'{self.name}' {self.dtype}[{dims}]"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    url: str
    md5: str
    resolution: int  # square input side, pixels
    input: TensorSpec
    boxes: TensorSpec  # x1, y1, x2, y2
    scores: TensorSpec
    labels: TensorSpec
    output_order: tuple[str, ...]  # output names in the official file's graph order (read by name: any order is valid)
    box_scale: float  # boxes are divided by this to become 0..1 (1.0: already normalized)
    label_space: LabelSpace
    num_classes: int  # classes the head scores (background excluded)
    max_detections: int  # the graph keeps at most this many boxes per image
    mean: tuple[float, float, float] | None  # applied after /255; None: the graph normalizes
    std: tuple[float, float, float] | None
    loadgen_model: str  # the key of LoadGen's official settings (mlperf.conf)
    reference_map: float  # the real model's COCO mAP (percent), for orientation only
    mirrors: tuple[str, ...] = ()  # other URLs of the same file (same md5), tried in order after `url`

    @property
    def urls(self) -> tuple[str, ...]:
        """Every URL of the official file, in the order they are tried."""
        return (self.url, *self.mirrors)

    @property
    def file_name(self) -> str:
        return Path(self.url).name

    @property
    def uses_inverse_map(self) -> bool:
        """Whether the accuracy log holds the model's contiguous labels, which MLPerf's reference
        scores through the inverse map `[0] + the annotation file's category ids` (accuracy-coco.py
        --use-inv-map); otherwise the logged label is the category id itself (docs/design.md, Accuracy)."""
        return self.label_space is LabelSpace.COCO_CONTIGUOUS


_SSD = ModelSpec(
    name="ssd_resnet34",
    url="https://zenodo.org/record/3228411/files/resnet34-ssd1200.onnx",
    md5="b70fc6c72bc9349981f3b1258f31bc87",
    resolution=1200,
    input=TensorSpec("image", "float32", (1, 3, 1200, 1200)),
    boxes=TensorSpec("bboxes", "float32", (1, None, 4)),
    labels=TensorSpec("labels", "int64", (1, None)),
    scores=TensorSpec("scores", "float32", (1, None)),
    output_order=("bboxes", "labels", "scores"),
    box_scale=1.0,
    label_space=LabelSpace.COCO_CONTIGUOUS,
    num_classes=80,
    max_detections=200,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    loadgen_model="ssd-resnet34",
    reference_map=20.0,
)


def _retinanet(name: str, url: str, md5: str, label_space: LabelSpace, num_classes: int,
               reference_map: float) -> ModelSpec:
    return ModelSpec(
        name=name,
        url=url,
        md5=md5,
        resolution=800,
        input=TensorSpec("images", "float32", (1, 3, 800, 800)),
        boxes=TensorSpec("boxes", "float32", (None, 4)),
        scores=TensorSpec("scores", "float32", (None,)),
        labels=TensorSpec("labels", "int64", (None,)),
        output_order=("boxes", "scores", "labels"),
        box_scale=800.0,
        label_space=label_space,
        num_classes=num_classes,
        max_detections=300,
        mean=None,
        std=None,
        loadgen_model="retinanet",
        reference_map=reference_map,
    )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _SSD,
        _retinanet(
            "retinanet_coco",
            "https://zenodo.org/record/6976934/files/"
            "retinanet_resnext50_openimage_train_coco_finetune_acc0.353.onnx",
            "3409b68c2c6fb0d1e6586f37cd31c79d",
            LabelSpace.COCO_IDS,
            90,
            35.3,
        ),
        _retinanet(
            "retinanet_openimages",
            "https://zenodo.org/record/6617879/files/resnext50_32x4d_fpn.onnx",
            "4544f4e56e0a4684215831cc937ea45c",
            LabelSpace.OPENIMAGES,
            264,
            float("nan"),
        ),
    )
}
ALIASES = {"retinanet": "retinanet_coco"}
ModelName = Literal["ssd_resnet34", "retinanet", "retinanet_coco", "retinanet_openimages"]  # MODELS and ALIASES


class UnknownModelError(ValueError):
    pass


def get_spec(model_name: str) -> ModelSpec:
    """The spec for a model name or alias; an unknown name lists the known ones."""
    name = ALIASES.get(model_name, model_name)
    if name not in MODELS:
        known = ", ".join(sorted([*MODELS, *ALIASES]))
        raise UnknownModelError(f"unknown model_name {model_name!r}; known models: {known}")
    return MODELS[name]
