"""Cache keys: a step name, readable selectors, and an md5 of the content-derived parts.

Prefect stores each cache record as a file named by its key (under `<root>/prefect-results/`), so
keys must be short and free of path separators whatever the URLs and settings inside them. The
selectors (a resolution, a model name) stay readable so that clean-up can find the records that
point at what it removes: `record_prefix("preprocess", 800)` matches every record of the 800 px set.
"""

from __future__ import annotations

import hashlib
import re

PREFIX = "odbench"


def _selector(value: object) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", str(value))


def record_prefix(step: str, *selectors: object) -> str:
    """The start of every cache key of `step` with these selectors (all of the step's keys without any)."""
    return "-".join([PREFIX, step, *map(_selector, selectors)]) + "-"


def cache_key(step: str, selectors: tuple[object, ...], *parts: object) -> str:
    return record_prefix(step, *selectors) + hashlib.md5("\n".join(map(str, parts)).encode()).hexdigest()
