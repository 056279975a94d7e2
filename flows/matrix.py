"""A matrix of `detect` runs: entries typed as detect's own parameters, from a flow parameter or a block."""

from __future__ import annotations

import inspect
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from blocks.matrix import RegressionMatrix
from flows.detect import detect


def _parameters_model() -> type[BaseModel]:
    """A pydantic model with exactly detect's parameters (types, defaults): unknown keys are errors."""
    hints = typing.get_type_hints(detect.fn)
    fields = {name: (hints[name], p.default) for name, p in inspect.signature(detect.fn).parameters.items()}
    return create_model("DetectParameters", __config__=ConfigDict(extra="forbid"), **fields)


DetectParameters = _parameters_model()


def resolve_matrix(matrix: list[DetectParameters] | None, matrix_block: str | None) -> list[DetectParameters]:
    """The entries given directly, else those of a saved RegressionMatrix block; never empty."""
    if matrix and matrix_block:
        raise ValueError("give either matrix or matrix_block, not both")
    if matrix_block:
        matrix = [parse_entry(entry, f"block {matrix_block!r} entry {i}")
                  for i, entry in enumerate(RegressionMatrix.load(matrix_block).entries)]
    if not matrix:
        raise ValueError("the matrix is empty: pass matrix=[{...detect parameters...}] or matrix_block=<saved block>")
    return [entry if isinstance(entry, DetectParameters) else parse_entry(entry, f"entry {i}")
            for i, entry in enumerate(matrix)]


def parse_entry(entry: dict[str, Any], where: str) -> DetectParameters:
    """One entry checked against detect's parameters; the error names the entry and the bad keys."""
    try:
        return DetectParameters.model_validate(entry)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(f"matrix {where} is not a set of detect parameters: {problems}") from None


def with_storage(entry: DetectParameters, storage_block: str | None, storage_url: str | None) -> dict[str, Any]:
    """The entry's parameters, taking the given storage where the entry names none."""
    params = entry.model_dump()
    if not params["storage_block"] and not params["storage_url"]:
        params.update(storage_block=storage_block, storage_url=storage_url)
    return params
