"""The task that brings a model file into storage and validates it against its spec."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from odbench import model_store
from odbench.cache_keys import cache_key
from odbench.model_store import StoredModel
from odbench.models import ModelSpec
from odbench.redact import redact_url
from odbench.storage import Storage
from tasks.data import TaskProgress, retry_on_transient
from tasks.serializer import DataSerializer


def _model_key(_: TaskRunContext, p: dict) -> str:
    return cache_key("model", (p["spec"].name,), p["storage"].url, p["spec"].name, p["fingerprint"])


@task(name="fetch-model", cache_policy=CachePolicy.from_cache_key_fn(_model_key), persist_result=True,
      result_serializer=DataSerializer(), retry_condition_fn=retry_on_transient)
def fetch_model(spec: ModelSpec, model_url: str | None, model_md5: str | None, fingerprint: str,
                storage: Storage, mirrors: tuple[str, ...] = ()) -> StoredModel:
    """The model file (its mirrors first, then the registry URL or any URL; or the stand-in), validated,
    in storage; bytes, rate and ETA of a large download in the log and a progress artifact.

    `fingerprint` is `odbench.model_store.fingerprint(...)`, computed by the caller (see download); the
    mirrors are not in the key, which is content (the md5), not where it came from."""
    model = model_store.fetch_model(spec, model_url, model_md5, storage, mirrors, progress=TaskProgress)
    kind = "STAND-IN " if model.stand_in else ""
    get_run_logger().info("%smodel %s md5 %s at %s", kind, spec.name, model.md5, redact_url(storage.uri(model.rel)))
    return model
