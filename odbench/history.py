"""An append-only history of results, one record per run, kept in storage beside the runs.

Layout:

    history/<entry>/<recorded, compact UTC>-<run id>.jsonl     one JSON line: a HistoryRecord

`<entry>` is `entry_key(parameters)`: runs of one entry measure the same thing and may be compared.
Every record is its own file, written once under a unique name with an atomic write: two writers
(two workers, two machines) never touch the same file, there is no append, lock or read-modify-write,
and that holds on object stores (which have no append) as on local disks. Writing the same record
again replaces its file with the same bytes, so a retried task does not duplicate a run.
Reading lists a folder once. Each file is JSON Lines, so `cat history/*/*.jsonl | jq` reads it all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from odbench.benchmark import BenchmarkResult
from odbench.machine import hardware_class
from odbench.storage import Storage

log = logging.getLogger(__name__)
HISTORY_DIR = "history"
NOT_MEASURED = ("verbosity", "storage_block", "storage_url")  # parameters that do not change what is measured
ENTRY_KEY_CHARS = 16
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_RECORD_FILE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\.jsonl")  # not hidden (a write in progress), no globs


# parameters added after histories existed: at these values (what every earlier run did) they are left out of the
# entry key, so the runs recorded before them stay in the same entry and keep their baseline
ADDED_LATER = {"model_precision": "fp32", "normalize_on_device": False, "samples_on_device": False,
               "prefer_nhwc": False, "onnx_sessions": 1, "postprocess_on_cpu": False, "pinned_host_samples": False}


def entry_key(parameters: Mapping[str, Any]) -> str:
    """A digest of the parameters that define what is measured; unset (None) ones, NOT_MEASURED and ADDED_LATER
    ones at their old behaviour are left out."""
    kept = {name: _canonical(value) for name, value in parameters.items()
            if name not in NOT_MEASURED and value is not None
            and not (name in ADDED_LATER and value == ADDED_LATER[name])}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:ENTRY_KEY_CHARS]


def _canonical(value: Any) -> Any:
    """100.0 and 100 are one value (a CLI float and a deployment's int must give one entry)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def entry_label(model_name: str, scenario: str, mode: str, stand_in: bool) -> str:
    """The entry for people, e.g. "retinanet_coco Offline PerformanceOnly [STAND-IN]"."""
    return f"{model_name} {scenario} {mode}" + (" [STAND-IN]" if stand_in else "")


def _optional_float(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or null, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Metrics:
    """The compared numbers of one run; None where the run did not measure them."""

    mAP: float | None = None  # percent
    samples_per_second: float | None = None  # LoadGen's only
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None

    @classmethod
    def from_result(cls, result: BenchmarkResult) -> Metrics:
        """mAP, and LoadGen's throughput and latencies (an accuracy pass's throughput is not comparable)."""
        loadgen = result.samples_per_second_source == "loadgen"
        return cls(mAP=_finite(result.mAP), samples_per_second=_finite(result.samples_per_second) if loadgen else None,
                   latency_p90_ms=_ms(result.latency_ns.get("p90")) if loadgen else None,
                   latency_p99_ms=_ms(result.latency_ns.get("p99")) if loadgen else None)

    @classmethod
    def from_json(cls, obj: Any) -> Metrics:
        """Metrics from a JSON object; unknown keys are ignored, wrong types rejected."""
        if not isinstance(obj, Mapping):
            raise TypeError(f"metrics must be a JSON object, got {type(obj).__name__}")
        return cls(**{f.name: _optional_float(f.name, obj.get(f.name)) for f in fields(cls)})


def _finite(value: float | None) -> float | None:
    """A measured number, or None for a missing or non-finite one (NaN is not JSON, and compares with nothing)."""
    return float(value) if value is not None and math.isfinite(value) else None


def _ms(ns: float | None) -> float | None:
    ns = _finite(ns)
    return None if ns is None else ns / 1e6


@dataclass(frozen=True)
class HistoryRecord:
    """One run in the history: what was measured, where, on what, and the numbers."""

    recorded: str  # ISO-8601 UTC
    entry: str  # entry_key(parameters)
    entry_label: str
    hardware: str  # machine.hardware_class
    parameters: dict[str, Any]
    run_id: str
    run_dir: str  # URL of the run's folder
    model_md5: str
    dataset_digest: str
    stand_in: bool
    metrics: Metrics
    validity: str | None = None
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    environment: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Reject a recorded time that is not ISO-8601 (it orders the history and names the file)."""
        _utc(self.recorded)

    @property
    def recorded_at(self) -> dt.datetime:
        """`recorded` as an aware UTC datetime."""
        return _utc(self.recorded)

    @classmethod
    def from_result(cls, result: BenchmarkResult, parameters: Mapping[str, Any], *, flow_run_id: str | None = None,
                    flow_run_url: str | None = None, recorded: str | None = None) -> HistoryRecord:
        """The record of a finished run, recorded now unless `recorded` is given."""
        return cls(
            recorded=recorded or dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            entry=entry_key(parameters), hardware=hardware_class(result.environment),
            entry_label=entry_label(result.model_name, result.scenario, result.mode, result.stand_in),
            parameters=dict(parameters), run_id=result.run_id, run_dir=result.run_dir, model_md5=result.model_md5,
            dataset_digest=result.dataset_digest, stand_in=result.stand_in, metrics=Metrics.from_result(result),
            validity=result.validity, flow_run_id=flow_run_id, flow_run_url=flow_run_url,
            environment=dict(result.environment))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> HistoryRecord:
        """A record from its JSON object: unknown keys ignored; missing fields a ValueError, mistyped a TypeError."""
        if not isinstance(obj, Mapping):
            raise TypeError(f"a history record must be a JSON object, got {type(obj).__name__}")
        missing = [f.name for f in fields(cls) if f.name not in obj and _required(f)]
        if missing:
            raise ValueError(f"history record lacks required field(s): {', '.join(missing)}")
        values = {f.name: obj[f.name] for f in fields(cls) if f.name in obj}
        values["metrics"] = Metrics.from_json(values["metrics"])
        _check_types(values)
        values["parameters"] = dict(values["parameters"])
        values["environment"] = {str(k): str(v) for k, v in values.get("environment", {}).items()}
        return cls(**values)


def _utc(text: str) -> dt.datetime:
    """An ISO-8601 time as an aware UTC datetime (a naive one is taken as UTC)."""
    try:
        when = dt.datetime.fromisoformat(text)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"recorded must be an ISO-8601 time, got {text!r}") from exc
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def _required(f: Any) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


_STRINGS = ("recorded", "entry", "entry_label", "hardware", "run_id", "run_dir", "model_md5", "dataset_digest")
_OPTIONAL_STRINGS = ("validity", "flow_run_id", "flow_run_url")


def _check_types(values: dict[str, Any]) -> None:
    """JSON types of a record's fields, so a hand-edited or foreign file fails here and not later."""
    wrong = [name for name in _STRINGS if not isinstance(values[name], str)]
    wrong += [name for name in _OPTIONAL_STRINGS if values.get(name) is not None and not isinstance(values[name], str)]
    wrong += [name for name in ("parameters", "environment") if not isinstance(values.get(name, {}), Mapping)]
    wrong += [] if isinstance(values["stand_in"], bool) else ["stand_in"]
    if wrong:
        raise TypeError(f"history record has field(s) of the wrong type: {', '.join(wrong)}")


def _safe_name(text: str) -> str:
    """`text` usable as one path segment (run ids are already; anything else is made so)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".")
    return name or "_"


class HistoryStore:
    """The history under a storage root: append one record, read records of one or every entry."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def record_rel(self, record: HistoryRecord) -> str:
        """Where a record lives: history/<entry>/<recorded compact>-<run id>.jsonl."""
        if not _SAFE_NAME.fullmatch(record.entry):
            raise ValueError(f"entry {record.entry!r} cannot name a history folder")
        stamp = record.recorded_at.strftime("%Y%m%dT%H%M%S.%fZ")
        return f"{HISTORY_DIR}/{record.entry}/{stamp}-{_safe_name(record.run_id)}.jsonl"

    def append(self, record: HistoryRecord) -> str:
        """Write the record as one new file (atomic, never shared with another writer); returns its path."""
        rel = self.record_rel(record)
        line = json.dumps(record.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)
        self.storage.write_bytes(rel, (line + "\n").encode())
        return rel

    def records(self, entry: str | None = None) -> list[HistoryRecord]:
        """Every readable record of one entry (or all), oldest first; unreadable files are skipped with a warning."""
        paths = self._record_paths(entry)
        contents = self.storage.fs.cat(paths, on_error="return") if paths else {}
        found = [record for path, content in sorted(contents.items()) for record in self._parse(path, content)]
        return sorted(found, key=lambda r: (r.recorded_at, r.run_id))

    def entries(self) -> list[str]:
        """The entry keys that have a history folder."""
        try:
            listing = self.storage.fs.ls(self.storage.path(HISTORY_DIR), detail=True)
        except FileNotFoundError:
            return []
        names = (item["name"].rstrip("/").rsplit("/", 1)[-1] for item in listing if item["type"] == "directory")
        return sorted(name for name in names if _SAFE_NAME.fullmatch(name))

    def _record_paths(self, entry: str | None) -> list[str]:
        """Record files found by one listing; hidden files (a write in progress) are not records."""
        if entry is not None and not _SAFE_NAME.fullmatch(entry):
            raise ValueError(f"entry {entry!r} is not an entry key")
        root = self.storage.path(HISTORY_DIR if entry is None else f"{HISTORY_DIR}/{entry}")
        depth = 1 if entry else 2
        self.storage.fs.invalidate_cache(root)  # other writers add files; a cached listing would miss them
        try:
            found = self.storage.fs.find(root, maxdepth=depth)
        except FileNotFoundError:
            return []
        return sorted(p for p in found if _RECORD_FILE.fullmatch(p.rsplit("/", 1)[-1]))

    def _parse(self, path: str, content: Any) -> list[HistoryRecord]:
        """The records of one file's lines; a line or file that does not parse is logged and skipped."""
        if not isinstance(content, bytes):
            log.warning("history file %s could not be read (%s); skipped", path, content)
            return []
        records = []
        for number, line in enumerate(content.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(HistoryRecord.from_json(json.loads(line)))
            except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
                log.warning("history file %s line %d is not a history record (%s); skipped", path, number, exc)
        return records
