"""A saved parameter matrix: the detect runs a regression or a sweep repeats.

    RegressionMatrix(entries=[{"model_name": "retinanet", "loadgen_mode": "AccuracyOnly"}]).save("nightly")

then `prefect deployment run regression/nightly -p matrix_block=nightly`. Each entry's keys are the
`detect` flow's parameters; they are checked against them when the matrix is used.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from pydantic import Field


class RegressionMatrix(Block):
    """A list of `detect` parameter sets, each one matrix entry."""

    _block_type_name = "Regression Matrix"
    _block_type_slug = "regression-matrix"
    _description = "Parameter sets of the detect flow (keys: detect's parameters) run by regression and sweep."

    entries: list[dict[str, Any]] = Field(default_factory=list, description="detect parameters, one dict per run.")
