"""Publishing a result as Prefect artifacts, under keys that say what was run. Artifacts are written
with credentials in URLs redacted, and a result reused from an earlier run says so."""

from __future__ import annotations

import re

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from odbench.benchmark import BenchmarkResult
from odbench.redact import redact_text
from odbench.report import metrics_rows, summary_markdown


def slug(*parts: object) -> str:
    """A valid artifact key (^[a-z0-9-]*$) from its parts."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(map(str, parts)).lower()).strip("-")


def artifact_key(result: BenchmarkResult, what: str) -> str:
    """`detect-<model>-<scenario>-<mode>[-standin]-<what>`: the "latest" version of a key is comparable
    with its earlier versions (same model, scenario and mode, stand-in or not)."""
    kind = ("standin",) if result.stand_in else ()
    return slug("detect", result.model_name, result.scenario, result.mode, *kind, what)


@task(name="report")
def publish_artifacts(result: BenchmarkResult) -> list[str]:
    """A markdown summary and a metrics table; returns their keys."""
    summary, table = artifact_key(result, "summary"), artifact_key(result, "metrics")
    create_markdown_artifact(redact_text(summary_markdown(result)), key=summary,
                             description=f"detect {result.model_name} {result.scenario} {result.mode}")
    rows = [{k: redact_text(v) if isinstance(v, str) else v for k, v in row.items()} for row in metrics_rows(result)]
    what = f"detections reused from run {result.run_id}" if result.reused_from else f"run {result.run_id}"
    create_table_artifact(rows, key=table, description=f"metrics of {what}")
    return [summary, table]
