"""Bring a model file into storage, from the registry's URL, any URL, or the stand-in builder,
and check it against its spec before anything runs it.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from odbench import standin
from odbench.fetch import StoredFile, fetch, has_change_stamp, info_signature, store_bytes, url_info
from odbench.models import ModelSpec
from odbench.storage import Storage
from odbench.validation import ModelContractError, validate_model

log = logging.getLogger(__name__)
STANDIN = "standin"


@dataclass(frozen=True)
class StoredModel:
    """A validated model file in storage."""

    model_name: str
    rel: str
    md5: str
    stand_in: bool
    source: str  # the URL it came from, or "standin"

    @property
    def files(self) -> tuple[str, ...]:
        return (self.rel,)


def _standin_builder_digest() -> str:
    """The stand-in builder's own source: a new builder means a new model, and a new cache key."""
    return hashlib.md5(inspect.getsource(standin).encode()).hexdigest()


def fingerprint(spec: ModelSpec, model_url: str | None, model_md5: str | None) -> str:
    """A content-derived key: the expected md5, or the stand-in builder's digest, or (a URL without
    md5) the URL with its file's size and change stamps, so a replaced file is a new model."""
    if model_url == STANDIN:
        return f"standin:{spec.name}:{_standin_builder_digest()}"
    if not model_url:
        return f"md5:{spec.md5}"
    if model_md5:
        return f"md5:{model_md5}"
    info = url_info(model_url)
    if not has_change_stamp(info):
        log.warning("%s gives no modification time or ETag: it is fetched on every run (pass model_md5 "
                    "to reuse it)", model_url)
        return f"url:{model_url}:unversioned:{uuid.uuid4().hex}"
    return f"url:{model_url}:{info_signature(info)}"


def fetch_model(spec: ModelSpec, model_url: str | None, model_md5: str | None, storage: Storage) -> StoredModel:
    """Fetch or build the model, store it under models/<name>/<md5>/, and validate its I/O."""
    kind = f"models/{spec.name}"
    if model_url == STANDIN:
        stored = store_bytes(standin.build_standin(spec), storage, kind, f"{spec.name}-standin.onnx")
    else:
        url = model_url or spec.url
        md5 = model_md5 or (spec.md5 if not model_url else None)
        stored = fetch(url, storage, kind, Path(url).name or f"{spec.name}.onnx", md5)
    _validate_or_remove(stored, spec, storage)
    return StoredModel(spec.name, stored.rel, stored.md5, model_url == STANDIN, model_url or spec.url)


def _validate_or_remove(stored: StoredFile, spec: ModelSpec, storage: Storage) -> None:
    """A file that breaks the contract is removed, so no later run trusts it."""
    try:
        validate_model(storage.read_bytes(stored.rel), spec)
    except ModelContractError:
        storage.remove(stored.rel.rsplit("/", 1)[0])
        raise


def model_bytes(model: StoredModel, storage: Storage) -> bytes | str:
    """What onnxruntime loads: the local path when storage is local, else the bytes."""
    local = storage.local_path(model.rel)
    return str(local) if local else storage.read_bytes(model.rel)
