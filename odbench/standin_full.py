"""Full-size stand-ins: the real detectors' architectures, at full resolution, with seeded random weights.

Where odbench/standin.py builds a tiny network with the right I/O contract (to run the pipeline),
these graphs also have the real models' layers, parameter counts and FLOPs (to measure speed):

- `ssd_resnet34` (MLPerf's ssd_r34.py): ResNet34 to layer3 with layer3's stride set to 1 (150x150 at
  1200x1200), five extra blocks, six feature maps with 4/6/6/6/4/4 default boxes per location, 3x3
  loc/conf heads with stride 3, 81-way softmax; decoding (scale_xy 0.1, scale_wh 0.2) and per-class
  NMS (top 200 candidates per class over 0.05, IoU 0.5, 200 kept) in the graph.
- `retinanet_coco` / `retinanet_openimages` (torchvision's RetinaNet as MLPerf's training reference
  builds it): in-graph normalization and 800x800 resize, ResNeXt50-32x4d, FPN P3-P5 plus P6/P7 (3x3/2
  convs on P5), 9 anchors per location, 4-conv heads of 256 channels shared across levels, sigmoid
  scores over 91 (COCO ids) or 264 (OpenImages) classes; per level the top 1000 (class, anchor) scores,
  box decoding clipped to the image, class-aware NMS 0.5 over 0.05, 300 kept.

Weights are seeded, He-scaled random numbers (odbench/onnx_builder.py). The heads' output convs are
zero-DC and, after one inference on a fixed synthetic probe scene, rescaled to a set output spread, so a
real image yields a spread of scores and a (nearly) full set of detections for any seed; classes a real
model never predicts (background, COCO's 11 unused ids) get a bias that keeps them below the threshold.
Accuracy is meaningless (docs/standins.md). `python -m odbench.standin_full` prints each stand-in's
parameters and FLOPs; building logs them too.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
import zlib
from collections.abc import Sequence
from functools import partial
from itertools import product

import numpy as np
import onnx
from onnx import helper

from odbench import onnx_builder as ob
from odbench.models import MODELS, ModelSpec
from odbench.onnx_builder import GraphBuilder
from odbench.preprocess import to_model_input
from odbench.standin import IOU_THRESHOLD, IR_VERSION, OPSET, SCORE_THRESHOLD, label_table

log = logging.getLogger(__name__)
DETECTIONS_DIM = "num_detections"
NEVER_BIAS = -100.0  # logit bias of classes the real model never emits: sigmoid/softmax ~ 0

# SSD-ResNet34 (mlcommons/inference vision/classification_and_detection/python/models/ssd_r34.py)
SSD_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 1))  # (channels, blocks, stride): layer3's stride is 1
SSD_EXTRAS = ((256, 512, 2, 1), (256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 2, 0), (128, 256, 1, 0))
SSD_DEFAULTS = (4, 6, 6, 6, 4, 4)  # default boxes per location, per feature map
SSD_HEAD_STRIDE = 3
SSD_FEATURE_SIZES = (50, 25, 13, 7, 3, 3)  # head output sides at 1200x1200 (dboxes_R34_coco)
SSD_SCALES = (21, 45, 99, 153, 207, 261, 315)  # default box sizes at 300x300, scaled to the input
SSD_ASPECTS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
SSD_SCALE_XY, SSD_SCALE_WH = 0.1, 0.2
SSD_CANDIDATES = 200  # per class, before NMS (Encoder.decode_single's max_num)
SSD_BACKGROUND_BIAS = 6.0  # background logit: most (box, class) probabilities stay under 0.05
SSD_CONF_STD = 0.45  # class logits' spread on the probe image, per feature map
SSD_LOC_STD = 0.5  # box offsets' spread (x 0.1 / 0.2 of the default box)

# RetinaNet ResNeXt50-32x4d FPN (torchvision / mlcommons/training retinanet)
RETINA_STAGES = ((128, 256, 3, 1), (256, 512, 4, 2), (512, 1024, 6, 2), (1024, 2048, 3, 2))  # width, out, n, s
RETINA_GROUPS = 32
RETINA_MEAN, RETINA_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FPN_CHANNELS = 256
HEAD_CONVS = 4
ANCHOR_SIZES = (32, 64, 128, 256, 512)  # P3..P7, each with 2^0, 2^(1/3), 2^(2/3) octave scales
ANCHOR_RATIOS = (0.5, 1.0, 2.0)
ANCHORS_PER_LOCATION = len(ANCHOR_RATIOS) * 3
TOPK_CANDIDATES = 1000  # per level, before NMS
BOX_CLIP = math.log(1000.0 / 16)  # torchvision BoxCoder's bound on dw, dh
RETINA_CLASS_BIAS = -6.0  # sigmoid(-6) = 0.0025: only structured regions pass 0.05
RETINA_CLASS_STD = 0.4  # class logits' spread on the probe image, over all levels
RETINA_BOX_STD = 0.2  # box deltas' spread (fractions of the anchor)
PROBE_SEED = 2019  # the synthetic scene the heads are calibrated on
PROBE_SHAPES = 24


# -- SSD-ResNet34 ----------------------------------------------------------------------------------------------

def _ssd_default_boxes(resolution: int) -> np.ndarray:
    """Default boxes (cx, cy, w, h), normalized and clamped to 0..1, in ssd_r34.py's DefaultBoxes order:
    feature map, then box shape, then row, then column."""
    steps = [resolution // size for size in SSD_FEATURE_SIZES]
    scales = [int(s * resolution / 300) / resolution for s in SSD_SCALES]
    boxes = []
    for idx, size in enumerate(SSD_FEATURE_SIZES):
        fk = resolution // steps[idx]
        sk1, sk2 = scales[idx], scales[idx + 1]
        shapes = [(sk1, sk1), (math.sqrt(sk1 * sk2),) * 2]
        for alpha in SSD_ASPECTS[idx]:
            w, h = sk1 * math.sqrt(alpha), sk1 / math.sqrt(alpha)
            shapes += [(w, h), (h, w)]
        for (w, h), (i, j) in product(shapes, product(range(size), range(size))):
            boxes.append(((j + 0.5) / fk, (i + 0.5) / fk, w, h))
    return np.clip(np.array(boxes, np.float32), 0.0, 1.0)


def _ssd_features(g: GraphBuilder, image: str) -> list[tuple[str, int]]:
    """ResNet34 to layer3 (stride 8) and the five extra blocks: six (feature map, channels)."""
    x, ch = ob.resnet_stem(g, image), 64
    for i, (out_ch, blocks, stride) in enumerate(SSD_STAGES):
        x, ch = ob.res_stage(g, f"layer{i + 1}", x, ch, blocks, partial(ob.basic_branch, out_ch), stride)
    features = [(x, ch)]
    for i, (mid, out_ch, stride, pad) in enumerate(SSD_EXTRAS):
        x = g.conv(f"additional_blocks.{i}.0", x, ch, mid, 1)
        x = g.conv(f"additional_blocks.{i}.2", x, mid, out_ch, 3, stride, pad)
        features.append((x, ch := out_ch))
    return features


def _ssd_heads(g: GraphBuilder, features: list[tuple[str, int]], classes: int) -> tuple[str, str]:
    """Per-default-box offsets [1, 4, N] and class logits [1, classes, N] (ssd_r34.py's bbox_view: conf
    channels are class-major, so class c of box shape k is channel c * defaults + k)."""
    locs, confs = [], []
    for i, ((x, ch), defaults) in enumerate(zip(features, SSD_DEFAULTS)):
        bias = np.zeros((classes, defaults), np.float32)
        bias[0] = SSD_BACKGROUND_BIAS
        for kind, width, std, out in (("loc", 4, SSD_LOC_STD, locs), ("conf", classes, SSD_CONF_STD, confs)):
            w = g.conv_weights(f"{kind}.{i}", ch, defaults * width, 3, gain=1.0, zero_dc=True,
                               bias=bias.ravel() if kind == "conf" else 0.0)
            y = g.apply_conv(x, w, SSD_HEAD_STRIDE)
            g.calibrate(w, [y], std)
            out.append(g.reshape(y, [1, width, -1]))
    return g.op("Concat", *locs, axis=2), g.op("Concat", *confs, axis=2)


def _ssd_decode(g: GraphBuilder, locs: str, resolution: int) -> str:
    """Boxes [N, 4] x1, y1, x2, y2 (normalized) from offsets around the default boxes (scale_back_batch)."""
    dboxes = _ssd_default_boxes(resolution)
    offsets = g.reshape(g.op("Transpose", locs, perm=[0, 2, 1]), [-1, 4])
    centre_d, size_d = g.const(dboxes[:, :2]), g.const(dboxes[:, 2:])
    shift = g.op("Mul", g.columns(offsets, 0, 2), g.const(SSD_SCALE_XY))
    centre = g.op("Add", g.op("Mul", shift, size_d), centre_d)
    size = g.op("Mul", g.op("Exp", g.op("Mul", g.columns(offsets, 2, 4), g.const(SSD_SCALE_WH))), size_d)
    half = g.op("Mul", size, g.const(0.5))
    return g.op("Concat", g.op("Sub", centre, half), g.op("Add", centre, half), axis=1)


def _ssd_select(g: GraphBuilder, boxes: str, confs: str, spec: ModelSpec) -> tuple[str, str, str]:
    """Per class (background skipped): the top candidates' NMS, then the best `max_detections` overall.
    Returns (boxes [K, 4], scores [K], labels [K]); classes are batches of one NonMaxSuppression call."""
    probs = g.op("Softmax", confs, axis=1)
    scores = g.reshape(g.columns(probs, 1, 1 + spec.num_classes, axis=1), [spec.num_classes, -1])
    top, index = g.ops("TopK", scores, g.const([SSD_CANDIDATES], np.int64), outputs=2, axis=1)
    kept = g.op("NonMaxSuppression", g.op("Gather", boxes, index), g.op("Unsqueeze", top, g.const([1], np.int64)),
                g.const([SSD_CANDIDATES], np.int64), g.const([IOU_THRESHOLD]), g.const([SCORE_THRESHOLD]))
    cls = g.op("Squeeze", g.columns(kept, 0, 1), g.const([1], np.int64))
    flat = g.op("Add", g.op("Mul", cls, g.const(SSD_CANDIDATES, np.int64)),
                g.op("Squeeze", g.columns(kept, 2, 3), g.const([1], np.int64)))
    kept_scores = g.op("Gather", g.reshape(top, [-1]), flat)
    order = _best(g, kept_scores, spec.max_detections)
    box_index = g.op("Gather", g.op("Gather", g.reshape(index, [-1]), flat), order)
    labels = g.op("Add", g.op("Gather", cls, order), g.const(1, np.int64))  # softmax class 0 is background
    return g.op("Gather", boxes, box_index), g.op("Gather", kept_scores, order), labels


def _ssd_resnet34(g: GraphBuilder, spec: ModelSpec) -> tuple[str, str, str]:
    """The whole SSD-ResNet34 graph from the normalized image to (boxes, scores, labels)."""
    locs, confs = _ssd_heads(g, _ssd_features(g, spec.input.name), 1 + spec.num_classes)
    return _ssd_select(g, _ssd_decode(g, locs, spec.resolution), confs, spec)


# -- RetinaNet ResNeXt50-32x4d FPN -----------------------------------------------------------------------------

def _conv_side(side: int, kernel: int, stride: int, pad: int) -> int:
    return (side + 2 * pad - kernel) // stride + 1


def _retinanet_grids(resolution: int) -> list[int]:
    """P3..P7 sides: stem /4, layer2..4 /2 each (P3..P5), then two 3x3/2 convs (P6, P7)."""
    side = _conv_side(_conv_side(resolution, 7, 2, 3), 3, 2, 1)
    grids = []
    for _ in range(5):
        side = _conv_side(side, 3, 2, 1)
        grids.append(side)
    return grids


def _retinanet_anchors(resolution: int, grid: int, size: int) -> np.ndarray:
    """torchvision AnchorGenerator's anchors (x1, y1, x2, y2, pixels) for one level: location-major
    (row, column), then ratio, then octave scale; stride = resolution // grid."""
    scales = np.array([size, int(size * 2 ** (1 / 3)), int(size * 2 ** (2 / 3))], np.float32)
    h_ratios = np.sqrt(np.array(ANCHOR_RATIOS, np.float32))
    ws, hs = ((1 / h_ratios)[:, None] * scales).ravel(), (h_ratios[:, None] * scales).ravel()
    base = np.round(np.stack([-ws, -hs, ws, hs], axis=1) / 2)
    shifts = np.arange(grid, dtype=np.float32) * (resolution // grid)
    ys, xs = np.meshgrid(shifts, shifts, indexing="ij")
    centres = np.stack([xs.ravel(), ys.ravel(), xs.ravel(), ys.ravel()], axis=1)
    return (centres[:, None, :] + base[None]).reshape(-1, 4).astype(np.float32)


def _retinanet_features(g: GraphBuilder, image: str, resolution: int) -> list[str]:
    """Normalize and resize as GeneralizedRCNNTransform, ResNeXt50-32x4d, FPN: the five maps P3..P7."""
    x = g.op("Div", g.op("Sub", image, g.const(np.reshape(RETINA_MEAN, (1, 3, 1, 1)))),
             g.const(np.reshape(RETINA_STD, (1, 3, 1, 1))))
    sizes = g.op("Concat", g.op("Shape", x, start=0, end=2), g.const([resolution, resolution], np.int64), axis=0)
    x = g.op("Resize", x, "", "", sizes, mode="linear")  # batch and channels kept: any batch size
    x, ch = ob.resnet_stem(g, x), 64
    stages = []
    for i, (width, out_ch, blocks, stride) in enumerate(RETINA_STAGES):
        branch = partial(ob.bottleneck_branch, width, out_ch, groups=RETINA_GROUPS)
        x, ch = ob.res_stage(g, f"layer{i + 1}", x, ch, blocks, branch, stride)
        stages.append((x, ch))
    pyramid = ob.fpn(g, stages[1:], FPN_CHANNELS)
    p6 = g.conv("fpn.extra.p6", pyramid[-1], FPN_CHANNELS, FPN_CHANNELS, 3, 2, relu=False, gain=1.0)
    p7 = g.conv("fpn.extra.p7", g.op("Relu", p6), FPN_CHANNELS, FPN_CHANNELS, 3, 2, relu=False)
    return [*pyramid, p6, p7]


def _per_anchor(g: GraphBuilder, head_map: str, width: int) -> str:
    """A head's [1, A * width, H, W] map as rows [H * W * A, width] (torchvision's view/permute/reshape)."""
    x = g.reshape(head_map, [0, ANCHORS_PER_LOCATION, width, -1])  # [1, A, width, H * W]
    return g.reshape(g.op("Transpose", x, perm=[0, 3, 1, 2]), [-1, width])


def _retinanet_decode(g: GraphBuilder, deltas: str, anchors: str, resolution: int) -> str:
    """BoxCoder.decode_single (weights 1) then clip_boxes_to_image: boxes [K, 4] in input pixels."""
    low, high = g.columns(anchors, 0, 2), g.columns(anchors, 2, 4)
    size = g.op("Sub", high, low)
    centre = g.op("Add", low, g.op("Mul", size, g.const(0.5)))
    centre = g.op("Add", g.op("Mul", g.columns(deltas, 0, 2), size), centre)
    scale = g.op("Exp", g.op("Min", g.columns(deltas, 2, 4), g.const(BOX_CLIP)))
    half = g.op("Mul", g.op("Mul", scale, size), g.const(0.5))
    boxes = g.op("Concat", g.op("Sub", centre, half), g.op("Add", centre, half), axis=1)
    return g.op("Clip", boxes, g.const(0.0), g.const(float(resolution)))


def _retinanet_level(g: GraphBuilder, logits: str, deltas: str, anchors: np.ndarray, classes: int,
                     resolution: int) -> tuple[str, str, str]:
    """One level's candidates as torchvision's postprocess_detections picks them: the (anchor, class) scores
    over the threshold, then the best TOPK_CANDIDATES of those: (boxes [k, 4], scores [k], labels [k]).
    Thresholding first keeps the TopK small (a TopK over all 8.2 million scores of P3 is slow on a GPU)."""
    scores = g.op("Sigmoid", g.reshape(_per_anchor(g, logits, classes), [-1]))
    over = g.op("Squeeze", g.op("NonZero", g.op("Greater", scores, g.const(SCORE_THRESHOLD))),
                g.const([0], np.int64))
    candidates = g.op("Gather", scores, over)
    k = g.op("Min", g.op("Shape", candidates), g.const([TOPK_CANDIDATES], np.int64))
    top, best = g.ops("TopK", candidates, k, outputs=2, axis=0)
    index = g.op("Gather", over, best)
    anchor = g.op("Div", index, g.const(classes, np.int64))
    labels = g.op("Mod", index, g.const(classes, np.int64))
    picked = g.op("Gather", _per_anchor(g, deltas, 4), anchor)
    boxes = _retinanet_decode(g, picked, g.op("Gather", g.const(anchors), anchor), resolution)
    return boxes, top, labels


def _class_bias(spec: ModelSpec, classes: int) -> np.ndarray:
    """Per-class logit bias: RETINA_CLASS_BIAS, NEVER_BIAS for classes outside the spec's label table."""
    bias = np.full(classes, NEVER_BIAS, np.float32)
    bias[label_table(spec)] = RETINA_CLASS_BIAS
    return bias


def _retinanet(g: GraphBuilder, spec: ModelSpec) -> tuple[str, str, str]:
    """The whole RetinaNet graph from the /255 image to (boxes, scores, labels)."""
    classes = int(label_table(spec).max()) + 1  # class index = label: 91 for COCO ids, 264 for OpenImages
    features = _retinanet_features(g, spec.input.name, spec.resolution)
    bias = np.tile(_class_bias(spec, classes), ANCHORS_PER_LOCATION)
    logits = ob.shared_head(g, "head.classification", features, FPN_CHANNELS, HEAD_CONVS,
                            ANCHORS_PER_LOCATION * classes, RETINA_CLASS_STD, bias)
    deltas = ob.shared_head(g, "head.regression", features, FPN_CHANNELS, HEAD_CONVS,
                            ANCHORS_PER_LOCATION * 4, RETINA_BOX_STD, 0.0)
    grids = _retinanet_grids(spec.resolution)
    levels = [_retinanet_level(g, lg, dl, _retinanet_anchors(spec.resolution, grid, size), classes, spec.resolution)
              for lg, dl, grid, size in zip(logits, deltas, grids, ANCHOR_SIZES)]
    boxes, scores, labels = (g.op("Concat", *parts, axis=0) for parts in zip(*levels))
    return _batched_nms(g, boxes, scores, labels, spec.max_detections, spec.resolution)


def _batched_nms(g: GraphBuilder, boxes: str, scores: str, labels: str, keep: int,
                 resolution: int) -> tuple[str, str, str]:
    """torchvision's batched_nms: shift each class's boxes apart by label x (largest coordinate + 1; boxes
    are clipped to the image, so that is resolution + 1, also when no candidate is left) so one NMS never
    suppresses across classes; the best `keep` survivors by score."""
    offset = g.op("Mul", g.op("Cast", labels, to=onnx.TensorProto.FLOAT), g.const(float(resolution + 1)))
    shifted = g.op("Add", boxes, g.op("Unsqueeze", offset, g.const([1], np.int64)))
    kept = g.op("NonMaxSuppression", g.op("Unsqueeze", shifted, g.const([0], np.int64)),
                g.op("Unsqueeze", scores, g.const([0, 1], np.int64)),
                g.const([keep], np.int64), g.const([IOU_THRESHOLD]), g.const([SCORE_THRESHOLD]))
    kept = g.op("Squeeze", g.columns(kept, 2, 3), g.const([1], np.int64))
    kept = g.op("Gather", kept, _best(g, g.op("Gather", scores, kept), keep))
    return g.op("Gather", boxes, kept), g.op("Gather", scores, kept), g.op("Gather", labels, kept)


# -- shared ----------------------------------------------------------------------------------------------------

def probe_input(spec: ModelSpec) -> np.ndarray:
    """The model input the heads are calibrated on: probe_image preprocessed as the spec says."""
    return to_model_input(probe_image(spec), spec)


def probe_image(spec: ModelSpec, seed: int = PROBE_SEED) -> np.ndarray:
    """A synthetic scene as a stored uint8 HWC sample at the spec's resolution: a smooth colour gradient,
    overlapping flat rectangles, mild noise (the calibration scene with the default seed)."""
    rng = np.random.default_rng(seed)
    side = spec.resolution
    ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)[:, None, None]
    top, bottom = rng.uniform(40, 215, (2, 1, 3)).astype(np.float32)
    image = np.broadcast_to(top + (bottom - top) * ramp, (side, side, 3)).copy()
    for _ in range(PROBE_SHAPES):
        (x, y), (w, h) = rng.integers(0, side, 2), rng.integers(side // 20, side // 3, 2)
        image[y:y + h, x:x + w] = rng.uniform(0, 255, 3)
    image += rng.normal(0.0, 8.0, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _best(g: GraphBuilder, scores: str, limit: int) -> str:
    """Positions of the best min(len, limit) scores, highest first."""
    k = g.op("Min", g.op("Shape", scores), g.const([limit], np.int64))
    return g.ops("TopK", scores, k, outputs=2, axis=0)[1]


ARCHITECTURES = {"ssd_resnet34": _ssd_resnet34, "retinanet_coco": _retinanet, "retinanet_openimages": _retinanet}


def _emit(g: GraphBuilder, spec: ModelSpec, boxes: str, scores: str, labels: str) -> None:
    """Name the outputs as the spec does, adding its leading batch dims."""
    for value, tensor, trailing in ((boxes, spec.boxes, 2), (scores, spec.scores, 1), (labels, spec.labels, 1)):
        lead = len(tensor.shape) - trailing
        if lead:
            value = g.op("Unsqueeze", value, g.const(list(range(lead)), np.int64))
        g.op("Identity", value, name=tensor.name)


def build_full_standin_model(spec: ModelSpec, seed: int = 0) -> onnx.ModelProto:
    """The full-size stand-in as a ModelProto, with its parameter count and FLOPs in metadata_props."""
    if spec.name not in ARCHITECTURES:
        raise ValueError(f"no full-size stand-in for {spec.name}; known: {', '.join(ARCHITECTURES)}")
    g = GraphBuilder(np.random.default_rng([seed, zlib.crc32(spec.name.encode())]))
    _emit(g, spec, *ARCHITECTURES[spec.name](g, spec))
    by_name = {t.name: t for t in (spec.boxes, spec.scores, spec.labels)}
    outputs = [ob.value_info(t.name, t.dtype, t.shape, DETECTIONS_DIM) for t in map(by_name.get, spec.output_order)]
    inputs = [ob.value_info(spec.input.name, spec.input.dtype, spec.input.shape, DETECTIONS_DIM)]
    graph = helper.make_graph(g.nodes, f"{spec.name}_standin_full", inputs, outputs, initializer=g.initializers)
    model = helper.make_model(graph, producer_name="odbench.standin_full", ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", OPSET)],
                              doc_string=f"full-size stand-in for {spec.name}, seed {seed}: random weights")
    ob.calibrate(model, {spec.input.name: probe_input(spec)}, g.calibrations)
    flops = ob.count_flops(model)
    helper.set_model_props(model, {"parameters": str(g.parameters), "flops_per_image": str(flops), "seed": str(seed)})
    log.info("full-size stand-in %s (seed %d): %.2f M parameters, %.1f GFLOPs per image", spec.name, seed,
             g.parameters / 1e6, flops / 1e9)
    return model


def build_full_standin(spec: ModelSpec, seed: int = 0) -> bytes:
    """A serialized full-size stand-in with `spec`'s exact I/O contract; same seed, same bytes."""
    return build_full_standin_model(spec, seed).SerializeToString()


def describe(model: onnx.ModelProto) -> dict[str, int]:
    """The parameter count and FLOPs per image recorded in a full stand-in's metadata."""
    props = {p.key: p.value for p in model.metadata_props}
    return {"parameters": int(props["parameters"]), "flops_per_image": int(props["flops_per_image"])}


def main(argv: Sequence[str] | None = None) -> int:
    """Build the named full stand-ins (all by default) and print their size, parameters and FLOPs."""
    parser = argparse.ArgumentParser(prog="python -m odbench.standin_full", description=main.__doc__)
    parser.add_argument("models", nargs="*", choices=[*ARCHITECTURES, []], help="default: all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="folder to write <model>-standin-full.onnx into")
    args = parser.parse_args(argv)
    for name in args.models or ARCHITECTURES:
        start = time.perf_counter()
        model = build_full_standin_model(MODELS[name], args.seed)
        data = model.SerializeToString()
        info = describe(model)
        print(f"{name}: {info['parameters'] / 1e6:.2f} M parameters, {info['flops_per_image'] / 1e9:.1f} GFLOPs "
              f"per image (2 x {info['flops_per_image'] / 2e9:.1f} G multiply-accumulates), "
              f"{len(data) / 1e6:.1f} MB, built in {time.perf_counter() - start:.1f} s")
        if args.out:
            with open(f"{args.out}/{name}-standin-full.onnx", "wb") as handle:
                handle.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
