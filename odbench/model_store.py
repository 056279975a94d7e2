"""Bring a model file into storage, from the registry's URL, any URL, or the stand-in builder,
and check it against its spec before anything runs it. A stored model is checked against its md5
whenever it is read: a file changed in storage is removed (and fetched again), never run.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from odbench import onnx_builder, standin, standin_full
from odbench.dataset import url_file_name
from odbench.fetch import (
    StoredFile,
    fetch,
    first_that_works,
    has_change_stamp,
    info_signature,
    md5_bytes,
    store_bytes,
    url_info,
)
from odbench.models import ModelSpec
from odbench.progress import ProgressFactory
from odbench.redact import redact_url
from odbench.storage import Storage
from odbench.validation import ModelContractError, validate_model

log = logging.getLogger(__name__)
STANDIN, STANDIN_FULL = "standin", "standin-full"
# per stand-in kind: the builder modules (their source is the cache key) and the build function
_BUILDERS = {STANDIN: ((standin,), standin.build_standin),
             STANDIN_FULL: ((standin_full, onnx_builder, standin), standin_full.build_full_standin)}
STANDINS: tuple[str, ...] = tuple(_BUILDERS)
CHUNK = 1 << 20


class CorruptModelError(ValueError):
    """A stored model file whose bytes no longer match its md5 (it has been removed)."""


@dataclass(frozen=True)
class StoredModel:
    """A validated model file in storage."""

    model_name: str
    rel: str
    md5: str
    stand_in: bool
    source: str  # the URL it came from (credentials redacted), or "standin"

    @property
    def files(self) -> tuple[str, ...]:
        return (self.rel,)


def _standin_builder_digest(model_url: str = STANDIN) -> str:
    """The stand-in builder's own source: a new builder means a new model, and a new cache key."""
    modules, _ = _BUILDERS[model_url]
    return hashlib.md5("".join(inspect.getsource(m) for m in modules).encode()).hexdigest()


def model_urls(spec: ModelSpec, model_url: str | None, mirrors: Sequence[str] = ()) -> tuple[str, ...]:
    """The URLs of the model file in the order they are tried: the user's mirrors, then `model_url` or,
    unset, the registry's URLs (its own mirrors included)."""
    return (*mirrors, *((model_url,) if model_url else spec.urls))


def fingerprint(spec: ModelSpec, model_url: str | None, model_md5: str | None, mirrors: Sequence[str] = ()) -> str:
    """A content-derived key: the expected md5 (whichever mirror serves it), or the stand-in builder's
    digest, or (a URL without md5) the first answering URL with its file's size and change stamps, so a
    replaced file is a new model."""
    if model_url in _BUILDERS:
        return f"{model_url}:{spec.name}:{_standin_builder_digest(model_url)}"
    if not model_url:
        return f"md5:{spec.md5}"
    if model_md5:
        return f"md5:{model_md5}"
    urls = model_urls(spec, model_url, mirrors)
    url, info = first_that_works(urls, lambda u: (u, url_info(u)), f"model {spec.name}")
    if not has_change_stamp(info):
        log.warning("%s gives no modification time or ETag: it is fetched on every run (pass model_md5 "
                    "to reuse it)", redact_url(url))
        return f"url:{url}:unversioned:{uuid.uuid4().hex}"
    return f"url:{url}:{info_signature(info)}"


def fetch_model(spec: ModelSpec, model_url: str | None, model_md5: str | None, storage: Storage,
                mirrors: Sequence[str] = (), progress: ProgressFactory | None = None) -> StoredModel:
    """Fetch (from the first of the mirrors and URLs that answers and verifies) or build the model, store it
    under models/<name>/<md5>/, and validate its I/O. A stored copy that no longer matches its md5 is
    removed and fetched (or built) again."""
    stored = _store(spec, model_url, model_md5, storage, mirrors, progress)
    data = storage.read_bytes(stored.rel)
    if (found := md5_bytes(data)) != stored.md5:
        _remove_corrupt(stored.rel, stored.md5, found, storage)
        stored = _store(spec, model_url, model_md5, storage, mirrors, progress)
        data = storage.read_bytes(stored.rel)
    _validate_or_remove(data, stored, spec, storage)
    return StoredModel(spec.name, stored.rel, stored.md5, model_url in _BUILDERS, redact_url(model_url) or spec.url)


def _store(spec: ModelSpec, model_url: str | None, model_md5: str | None, storage: Storage,
           mirrors: Sequence[str], progress: ProgressFactory | None) -> StoredFile:
    kind = f"models/{spec.name}"
    if model_url in _BUILDERS:
        return store_bytes(_BUILDERS[model_url][1](spec), storage, kind, f"{spec.name}-{model_url}.onnx")
    md5 = model_md5 or (spec.md5 if not model_url else None)
    name = url_file_name(model_url or spec.url, f"{spec.name}.onnx")
    return fetch(model_urls(spec, model_url, mirrors), storage, kind, name, md5, progress=progress)


def _validate_or_remove(data: bytes, stored: StoredFile, spec: ModelSpec, storage: Storage) -> None:
    """A file that breaks the contract is removed, so no later run trusts it."""
    try:
        validate_model(data, spec)
    except ModelContractError:
        storage.remove(stored.rel.rsplit("/", 1)[0])
        raise


def _remove_corrupt(rel: str, expected: str, found: str, storage: Storage) -> None:
    log.warning("%s has md5 %s, not %s: the stored model was changed or damaged; removed, it is fetched again",
                rel, found, expected)
    storage.remove(rel)


def stored_md5(storage: Storage, rel: str) -> str:
    """The md5 of a stored file, read in chunks."""
    digest = hashlib.md5()
    with storage.open(rel) as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_stored(model: StoredModel, storage: Storage) -> str | None:
    """None when storage holds the model file with its md5; else what is wrong (a damaged file is removed)."""
    if not storage.exists(model.rel):
        return f"{model.rel} is missing"
    if (found := stored_md5(storage, model.rel)) != model.md5:
        _remove_corrupt(model.rel, model.md5, found, storage)
        return f"{model.rel} has md5 {found}, not {model.md5} (removed)"
    return None


def model_data(model: StoredModel, storage: Storage) -> bytes:
    """The model file's verified bytes, wherever storage keeps it (model_bytes, read)."""
    source = model_bytes(model, storage)
    return Path(source).read_bytes() if isinstance(source, str) else source


def model_bytes(model: StoredModel, storage: Storage) -> bytes | str:
    """What onnxruntime loads: the local path when storage is local, else the bytes; either only after
    the file's md5 matched the model's (a damaged file is removed and the error says to run again)."""
    local = storage.local_path(model.rel)
    data = b"" if local else storage.read_bytes(model.rel)
    if (found := stored_md5(storage, model.rel) if local else md5_bytes(data)) != model.md5:
        _remove_corrupt(model.rel, model.md5, found, storage)
        raise CorruptModelError(f"the stored model {model.rel} has md5 {found}, not {model.md5} (removed); "
                                "run again to fetch it anew")
    return str(local) if local else data
