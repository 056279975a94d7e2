"""Publishing a result as Prefect artifacts, under keys derived from the model name."""

from __future__ import annotations

import re

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from odbench.benchmark import BenchmarkResult
from odbench.report import metrics_rows, summary_markdown


def artifact_key(model_name: str, what: str) -> str:
    """A valid artifact key (^[a-z0-9-]*$) such as `detect-retinanet-coco-summary`."""
    return re.sub(r"[^a-z0-9-]+", "-", f"detect-{model_name}-{what}".lower()).strip("-")


@task(name="report")
def publish_artifacts(result: BenchmarkResult) -> list[str]:
    """A markdown summary and a metrics table; returns their keys."""
    summary, table = artifact_key(result.model_name, "summary"), artifact_key(result.model_name, "metrics")
    create_markdown_artifact(summary_markdown(result), key=summary,
                             description=f"detect {result.model_name} {result.scenario} {result.mode}")
    create_table_artifact(metrics_rows(result), key=table, description=f"metrics of run {result.run_id}")
    return [summary, table]
