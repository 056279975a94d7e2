"""Cache keys: a step name plus an md5 of its content-derived parts.

Prefect stores each cache record as a file named by its key, so keys must be short and free of
path separators whatever the URLs and settings inside them."""

from __future__ import annotations

import hashlib


def cache_key(step: str, *parts: object) -> str:
    return f"odbench-{step}-" + hashlib.md5("\n".join(map(str, parts)).encode()).hexdigest()
