"""Retries with exponential backoff for transient source errors, one policy for the core and the tasks.

A transient error is one a later attempt may not meet: a dropped or refused connection, a timeout,
an HTTP 408/425/429/5xx answer, a transfer cut short. Everything that is a `ValueError` — a checksum
or CRC mismatch, a crossed limit, a model breaking its contract, an unsafe path, a bad parameter — is
never retried: the same bytes would fail the same way. The Prefect tasks use `is_transient` as their
retry condition, so both layers agree on what is worth another attempt.

| setting                        | environment variable    | default |
|--------------------------------|-------------------------|---------|
| attempts per request           | ODBENCH_FETCH_ATTEMPTS  | 4       |
| delay before the first retry   | ODBENCH_RETRY_DELAY_S   | 1.0 s   |
| growth factor of the delay     | (fixed)                 | 2       |
| longest delay                  | ODBENCH_RETRY_MAX_DELAY_S | 60 s  |
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from odbench.redact import redact_text

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class TransientError(OSError):
    """A failure that another attempt may not meet (a dropped connection, a 503, a short transfer)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried (module docstring)."""

    attempts: int = 4
    first_delay_s: float = 1.0
    factor: float = 2.0
    max_delay_s: float = 60.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RetryPolicy:
        """The defaults, with ODBENCH_FETCH_ATTEMPTS / ODBENCH_RETRY_DELAY_S / ODBENCH_RETRY_MAX_DELAY_S applied."""
        env = os.environ if environ is None else environ
        defaults = cls()
        return cls(attempts=int(_number(env, "ODBENCH_FETCH_ATTEMPTS", defaults.attempts, minimum=1)),
                   first_delay_s=_number(env, "ODBENCH_RETRY_DELAY_S", defaults.first_delay_s),
                   max_delay_s=_number(env, "ODBENCH_RETRY_MAX_DELAY_S", defaults.max_delay_s))

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 is the first retry)."""
        return min(self.max_delay_s, self.first_delay_s * self.factor ** (retry - 1))

    def delays(self) -> list[float]:
        """Every retry's delay, in order: what Prefect's `retry_delay_seconds` takes."""
        return [self.delay(retry) for retry in range(1, self.attempts)]


def _number(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    """A number from the environment, or an error naming the variable."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= minimum or value == float("inf"):
        raise ValueError(f"{name}={text!r} is not a number of at least {minimum:g}: set one, or unset it for "
                         f"the default {default:g}")
    return value


def _aiohttp_transient(err: BaseException) -> bool:
    """aiohttp's connection, payload and timeout errors, and its 408/425/429/5xx answers."""
    try:
        import aiohttp
    except ImportError:
        return False
    if isinstance(err, aiohttp.ClientResponseError):
        return err.status in TRANSIENT_HTTP_STATUS
    return isinstance(err, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError))


def is_transient(err: BaseException) -> bool:
    """Whether another attempt may succeed; a ValueError (checksum, limit, contract, path) never does."""
    seen = 0
    while err is not None and seen < 8:  # the error and what caused it
        if isinstance(flag := getattr(err, "transient", None), bool):
            return flag
        if isinstance(err, ValueError):
            return False
        if isinstance(err, (TransientError, ConnectionError, TimeoutError, asyncio.TimeoutError)):
            return True
        if _aiohttp_transient(err):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def retrying(attempt: Callable[[], T], what: str, policy: RetryPolicy | None = None,
             logger: logging.Logger = log, sleep: Callable[[float], None] = time.sleep) -> T:
    """`attempt()`, again after a growing delay while it fails transiently, at most `policy.attempts` times;
    the last error (or the first that is not transient) is raised as it is."""
    policy = policy or RetryPolicy.from_env()
    for number in range(1, policy.attempts + 1):
        try:
            return attempt()
        except Exception as err:
            if number == policy.attempts or not is_transient(err):
                raise
            delay = policy.delay(number)
            logger.warning("%s failed (%s: %s); attempt %d of %d in %.1f s", what, type(err).__name__,
                           redact_text(str(err)),
                           number + 1, policy.attempts, delay)
            sleep(delay)
    raise AssertionError("unreachable")
