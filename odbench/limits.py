"""Resource limits on what data may make the benchmark do, each with a default and an environment override.

A deployment parameter or a dataset is input from whoever can start a run or serve the files, so each
resource it can grow without bound has a ceiling: the size of a model file and of any fetched file,
the size of one image file, of an annotation file, the count of a synthetic dataset, and the pixels
of an image (read from its header before anything decodes it). Crossing one is a `LimitExceededError`
that names the limit, the value and the environment variable that raises it.

| limit                  | environment variable          | default                     |
|------------------------|-------------------------------|-----------------------------|
| model file size        | ODBENCH_MAX_MODEL_BYTES       | 2 GiB (2147483648)          |
| any fetched file size  | ODBENCH_MAX_FETCH_BYTES       | 64 GiB (68719476736)        |
| one image file's size  | ODBENCH_MAX_IMAGE_BYTES       | 256 MiB (268435456)         |
| annotation file size   | ODBENCH_MAX_ANNOTATION_BYTES  | 1 GiB (1073741824)          |
| synthetic images       | ODBENCH_MAX_SYNTHETIC_IMAGES  | 5000                        |
| image pixels (w × h)   | ODBENCH_MAX_IMAGE_PIXELS      | 50000000 (50 megapixels)    |
| members of a zip read over Range | ODBENCH_MAX_ARCHIVE_MEMBERS | 1000000            |
| its central directory  | ODBENCH_MAX_ZIP_DIRECTORY_BYTES | 256 MiB (268435456)       |

Values are positive integers (underscores allowed: `2_000_000_000`). `Limits.from_env()` reads them
when called, so a changed environment applies to the next step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

GIB = 1 << 30
MIB = 1 << 20


def _limit(default: int, env: str, what: str, unit: str = "") -> int:
    """A dataclass field of `Limits`: its default, the variable that overrides it and what it bounds."""
    return field(default=default, metadata={"env": env, "what": what, "unit": unit})


class LimitExceededError(ValueError):
    """A value above one of the `Limits`; the message names the limit, the value and how to raise it."""

    def __init__(self, limit: str, value: int, maximum: int, subject: str = ""):
        spec = next(f for f in fields(Limits) if f.name == limit)
        what, env, unit = spec.metadata["what"], spec.metadata["env"], spec.metadata["unit"]
        about = f"{subject}: " if subject else ""
        super().__init__(
            f"{about}{what} {value}{unit} exceeds the limit of {maximum}{unit} ({env}); if this is intended, "
            f"raise it, e.g. {env}={max(value, maximum * 2)}"
        )
        self.limit, self.value, self.maximum, self.env, self.subject = limit, value, maximum, env, subject

    def __reduce__(self):
        """Rebuilt from its parts (an exception crossing a process or a result store is pickled)."""
        return type(self), (self.limit, self.value, self.maximum, self.subject)


@dataclass(frozen=True)
class Limits:
    """Ceilings on what input can make the benchmark allocate, read or generate (see the module docstring)."""

    max_model_bytes: int = _limit(2 * GIB, "ODBENCH_MAX_MODEL_BYTES", "model file size", " bytes")
    max_fetch_bytes: int = _limit(64 * GIB, "ODBENCH_MAX_FETCH_BYTES", "fetched file size", " bytes")
    max_image_bytes: int = _limit(256 * MIB, "ODBENCH_MAX_IMAGE_BYTES", "image file size", " bytes")
    max_annotation_bytes: int = _limit(GIB, "ODBENCH_MAX_ANNOTATION_BYTES", "annotation file size", " bytes")
    max_synthetic_images: int = _limit(5000, "ODBENCH_MAX_SYNTHETIC_IMAGES", "synthetic dataset size", " images")
    max_image_pixels: int = _limit(50_000_000, "ODBENCH_MAX_IMAGE_PIXELS", "image size", " pixels")
    max_archive_members: int = _limit(1_000_000, "ODBENCH_MAX_ARCHIVE_MEMBERS", "zip archive member count",
                                      " members")
    max_zip_directory_bytes: int = _limit(256 * MIB, "ODBENCH_MAX_ZIP_DIRECTORY_BYTES",
                                          "zip central directory read", " bytes")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        """The defaults, with each limit whose variable is set in `environ` (default: os.environ) replaced."""
        environ = os.environ if environ is None else environ
        overrides = {f.name: _parse(f.metadata["env"], environ[f.metadata["env"]])
                     for f in fields(cls) if environ.get(f.metadata["env"], "").strip()}
        return cls(**overrides)

    def check(self, limit: str, value: int, subject: str = "") -> None:
        """Raise LimitExceededError when `value` is above the limit named `limit` (a field name)."""
        maximum = getattr(self, limit)
        if value > maximum:
            raise LimitExceededError(limit, value, maximum, subject)


def _parse(env: str, text: str) -> int:
    """A positive integer from an environment variable, or an error naming the variable."""
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{env}={text!r} is not a positive integer: set it to a whole number such as 1000, "
                         "or unset it for the default")
    return value
