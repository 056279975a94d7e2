"""The model a session runs: the stored model at the run's precision, batched and normalized on the device if asked.

An fp16 model is converted once (odbench/fp16.py) and stored like any model, at its content path beside
the fp32 file; a small record `models/<name>/<fp32 md5>/fp16-<converter digest>.json` holds its md5, so a later
run finds it without converting again (a new converter is a new record). The record is checked like everything
read from storage: only a 32-digit md5 is taken from it, the path is derived, and the file must match the md5.
The batched graph (odbench/batching.py), the split into trunk and CPU post-processing (odbench/split_model.py) and
the normalization prefix (odbench/input_prefix.py) are graph surgery, built in memory at each run (a second or two,
even for the full-size stand-ins).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import re
from dataclasses import replace

from odbench.batching import batched
from odbench.fetch import content_path, store_bytes
from odbench.input_prefix import with_normalization
from odbench.model_store import StoredModel, check_stored, model_bytes, model_data
from odbench.models import ModelSpec
from odbench.split_model import SplitError, SplitModel, split
from odbench.storage import Storage

log = logging.getLogger(__name__)
_MD5 = re.compile(r"[0-9a-f]{32}")


def converter_digest() -> str:
    """The fp16 converter's source (with the graph helpers it uses): a changed converter makes a new model."""
    from odbench import fp16, onnx_graph

    return _source_digest(fp16, onnx_graph)


def agreement_digest() -> str:
    """The agreement measurement's source (with the graph helpers it uses): an fp16 run's cached result carries
    the agreement it measured."""
    from odbench import onnx_graph, precision

    return _source_digest(precision, onnx_graph)


def rewriter_digest() -> str:
    """The in-memory graph rewriters' source (batching, the split, the normalization prefix, the graph cut they
    share): a changed rewriter may change detections, so cached results keyed with it are not reused."""
    from odbench import batching, input_prefix, onnx_graph, split_model

    return _source_digest(batching, input_prefix, onnx_graph, split_model)


def _source_digest(*modules) -> str:
    return hashlib.md5("".join(inspect.getsource(m) for m in modules).encode()).hexdigest()[:12]


def _record_rel(model: StoredModel) -> str:
    return f"models/{model.model_name}/{model.md5}/fp16-{converter_digest()}.json"


def _fp16_model(model: StoredModel, md5: str) -> StoredModel:
    """The StoredModel of the fp16 conversion of `model` whose file has `md5`."""
    rel = content_path(f"models/{model.model_name}", md5, f"{model.model_name}-fp16.onnx")
    return replace(model, rel=rel, md5=md5, source=f"{model.source} (converted to fp16)")


def _recorded(model: StoredModel, storage: Storage) -> StoredModel | None:
    """The stored fp16 conversion a record points at, if the record is sound and the file matches it."""
    rel = _record_rel(model)
    if not storage.exists(rel):
        return None
    try:
        md5 = storage.read_json(rel).get("md5", "")
    except (ValueError, AttributeError):
        md5 = ""
    if not isinstance(md5, str) or not _MD5.fullmatch(md5):
        log.warning("%s is not a conversion record; converting again", storage.uri(rel))
        return None
    converted = _fp16_model(model, md5)
    if problem := check_stored(converted, storage):
        log.warning("the stored fp16 model: %s; converting again", problem)
        return None
    return converted


def at_precision(model: StoredModel, storage: Storage, precision: str) -> StoredModel:
    """`model` itself for fp32; for fp16 its stored conversion, converted and stored first if needed."""
    if precision == "fp32":
        return model
    if found := _recorded(model, storage):
        log.info("fp16 model %s (converted before)", found.rel)
        return found
    from odbench.fp16 import to_fp16

    log.info("converting %s to fp16 (once; stored beside it)", model.rel)
    data = to_fp16(model_data(model, storage))
    stored = store_bytes(data, storage, f"models/{model.model_name}", f"{model.model_name}-fp16.onnx")
    storage.write_json(_record_rel(model), {"md5": stored.md5, "from_md5": model.md5})
    return _fp16_model(model, stored.md5)


def session_model(model: StoredModel, storage: Storage, spec: ModelSpec, normalize_on_device: bool,
                  sample_dtype: str, batch_size: int = 1, postprocess_on_cpu: bool = False) -> bytes | str | SplitModel:
    """What onnxruntime loads: the verified model file (a path or bytes), `prepare`d."""
    return prepare(model_bytes(model, storage), spec, normalize_on_device, sample_dtype, batch_size,
                   postprocess_on_cpu)


def prepare(source: bytes | str, spec: ModelSpec, normalize_on_device: bool, sample_dtype: str, batch_size: int = 1,
            postprocess_on_cpu: bool = False) -> bytes | str | SplitModel:
    """A model as the run's options want it: split at its convolutions (odbench/split_model.py) when
    postprocess_on_cpu, else batched (odbench/batching.py) when batch_size > 1; with the normalization prefix
    taking `sample_dtype` samples when normalize_on_device. Unchanged (a path stays a path) without options."""
    if postprocess_on_cpu:
        parts = split(source, spec, any_batch=batch_size > 1)
        if normalize_on_device and parts.reads_input:
            raise SplitError(f"{spec.name}'s post-processing reads the model input, which normalize_on_device "
                             "replaces by the stored sample: drop one of them")
        if normalize_on_device:
            parts = replace(parts, trunk=with_normalization(parts.trunk, spec, sample_dtype))
        return parts
    if batch_size > 1:
        source = batched(source, spec)
    return with_normalization(source, spec, sample_dtype) if normalize_on_device else source
