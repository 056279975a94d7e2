"""Credentials never leave the process: URLs are redacted wherever the project writes them
(logs, artifacts, result.json, manifests, history)."""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit, urlunsplit

REDACTED = "***"
_SECRET_QUERY_KEYS = re.compile(r"(?i)(token|key|secret|signature|password|passwd|sig|credential|auth)")


def redact_url(url: str | None) -> str | None:
    """`scheme://user:password@host/...?token=x` → `scheme://***@host/...?token=***`; other text unchanged."""
    if not url or "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" not in netloc and not (parts.query and any(_redact_pair(p) != p for p in parts.query.split("&"))):
        return url  # nothing secret: unchanged (urlunsplit would also normalise `memory:///x` away)
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(_redact_pair(pair) for pair in parts.query.split("&")) if parts.query else ""
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_pair(pair: str) -> str:
    name, sep, _ = pair.partition("=")
    return f"{name}={REDACTED}" if sep and _SECRET_QUERY_KEYS.search(name) else pair


def redact_text(text: str) -> str:
    """Every URL inside free text (an error message, a log line) redacted."""
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+", lambda m: redact_url(m.group(0)) or "", text)
