"""What the storage root holds, and its removal with the cache records that point at it (axs's `remove`).

`inventory` lists the root once and groups its files into items (a source, a preprocessed resolution, a
model file, a dataset manifest, a synthetic set, a run, a history entry, a group of cache records);
`select` filters them; `plan_removal` adds the Prefect cache records that point at the selected items;
`remove` deletes the records first, then the files, so that no later run trusts a removed file.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from odbench.cache_keys import PREFIX, record_prefix
from odbench.models import ALIASES
from odbench.storage import RESUME_DIR, STAGING_DIR, Storage, is_temporary

Kind = Literal["sources", "preprocessed", "models", "datasets", "synthetic", "runs", "history", "cache-records"]
KINDS: tuple[str, ...] = get_args(Kind)
RECORDS = "prefect-results"  # Prefect's result storage (and so its cache records) inside the root
UTC = dt.UTC
_DEPTH = {"sources": 2, "preprocessed": 3, "models": 3, "datasets": 2, "synthetic": 2, "runs": 2, "history": 2}
_KIND_OF_FOLDER = {**{kind: kind for kind in _DEPTH}, RECORDS: "cache-records"}
# the cache step whose records point at files of a kind, and the item field that selects them
_POINTERS = {"preprocessed": ("preprocess", "resolution"), "models": ("model", "model"),
             "runs": ("inference", "model"), "sources": ("download", None), "datasets": ("download", None),
             "synthetic": ("download", None)}
_TIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "modified", "created")
_FETCH_LEFTOVERS = (STAGING_DIR, RESUME_DIR)  # `<kind>/<folder>/`: a fetch's staged files and partial downloads


@dataclass(frozen=True)
class StoredItem:
    """One removable unit: a folder or file (`rel`, relative to the root), or a group of cache records
    whose files are `paths` (their `rel` is then a pattern such as `prefect-results/odbench-preprocess-800-*`)."""

    kind: str
    rel: str
    model: str | None
    resolution: int | None
    files: int
    bytes: int
    modified: dt.datetime  # UTC, of the newest file; "now" where the store gives no time (never old)
    partial: int = 0  # incomplete writes among the files (`.partial-*`, `.staging/`, `.resume/`): no run trusts them
    paths: tuple[str, ...] = field(default=())

    def age_days(self, now: dt.datetime | None = None) -> float:
        return ((now or dt.datetime.now(UTC)) - self.modified).total_seconds() / 86400

    @property
    def targets(self) -> tuple[str, ...]:
        """What removal deletes, relative to the root."""
        return self.paths or (self.rel,)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "modified": self.modified.isoformat(), "paths": list(self.paths)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoredItem:
        return cls(**{**data, "modified": dt.datetime.fromisoformat(data["modified"]),
                      "paths": tuple(data.get("paths", ()))})


@dataclass(frozen=True)
class _File:
    rel: str
    size: int
    time: dt.datetime | None


def check_filters(kind: str | None = None, older_than_days: float | None = None) -> None:
    """Reject an unknown kind (naming the known ones) and a negative age, before anything is listed."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known kinds: {', '.join(KINDS)}")
    if older_than_days is not None and older_than_days < 0:
        raise ValueError(f"older_than_days must be >= 0, got {older_than_days}")


def inventory(storage: Storage) -> list[StoredItem]:
    """Every item under the root, from one recursive listing (plus one batched read of runs' result.json).
    Files outside the layout's folders are not listed, so clean-up never touches them."""
    items = _items(storage, _listing(storage))
    order = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(items, key=lambda item: (order[item.kind], item.rel))


def select(items: Iterable[StoredItem], kind: str | None = None, model: str | None = None,
           resolution: int | None = None, older_than_days: float | None = None,
           now: dt.datetime | None = None) -> list[StoredItem]:
    """The items matching every filter given; a model name matches its alias (`retinanet`) too."""
    check_filters(kind, older_than_days)
    now = now or dt.datetime.now(UTC)
    models = {model, ALIASES.get(model, model)} if model else None
    return [item for item in items
            if (kind is None or item.kind == kind) and (models is None or item.model in models)
            and (resolution is None or item.resolution == resolution)
            and (older_than_days is None or item.age_days(now) > older_than_days)]


@dataclass(frozen=True)
class CleanupPlan:
    """The selected items, and the cache-record groups (not selected themselves) that point at them."""

    items: tuple[StoredItem, ...]
    records: tuple[StoredItem, ...]
    prefixes: tuple[str, ...]  # the cache-key prefixes whose records go

    @property
    def ordered(self) -> tuple[StoredItem, ...]:
        """Removal order: every cache record before any file it may point at."""
        selected = [item for item in self.items if item.kind == "cache-records"]
        return (*selected, *self.records, *(item for item in self.items if item.kind != "cache-records"))


def plan_removal(storage: Storage, selected: Iterable[StoredItem]) -> CleanupPlan:
    """The selected items plus every cache record that points at them, so no later run trusts a removed file.

    Records are matched by step and selector, not by content: preprocessed resolution R takes every
    `preprocess` record of R, models and runs of M every `model` / `inference` record of M (Prefect caches
    AccuracyOnly results that point at run folders), sources, dataset manifests and synthetic sets every
    `download` record; history none. Coarse but safe: a later run recomputes instead of trusting."""
    items = tuple(selected)
    prefixes = tuple(sorted({prefix for item in items if (prefix := _pointing_prefix(item))}))
    chosen = {item.rel for item in items}
    listed = _items(storage, _listing(storage, RECORDS)) if prefixes else []
    records = tuple(record for record in sorted(listed, key=lambda r: r.rel)
                    if record.rel not in chosen and _record_name(record.rel).startswith(prefixes))
    return CleanupPlan(items, records, prefixes)


@dataclass(frozen=True)
class CleanupReport:
    """What a clean-up removed (or, in a dry run, would remove)."""

    dry_run: bool
    items: tuple[StoredItem, ...]
    records: tuple[StoredItem, ...]
    removed: tuple[str, ...]  # paths relative to the root, in removal order; empty in a dry run

    @property
    def files(self) -> int:
        return sum(item.files for item in (*self.items, *self.records))

    @property
    def bytes(self) -> int:
        return sum(item.bytes for item in (*self.items, *self.records))

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "items": [item.to_json() for item in self.items],
                "records": [item.to_json() for item in self.records], "removed": list(self.removed),
                "files": self.files, "bytes": self.bytes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CleanupReport:
        return cls(data["dry_run"], tuple(map(StoredItem.from_json, data["items"])),
                   tuple(map(StoredItem.from_json, data["records"])), tuple(data["removed"]))


def remove(storage: Storage, plan: CleanupPlan, dry_run: bool = True) -> CleanupReport:
    """Remove the plan's cache records, then its files (an interruption leaves no record pointing at a
    removed file); a dry run removes nothing."""
    removed: list[str] = []
    if not dry_run:
        for item in plan.ordered:
            for rel in item.targets:
                storage.remove(rel)
                removed.append(rel)
    return CleanupReport(dry_run, plan.items, plan.records, tuple(removed))


def _listing(storage: Storage, under: str = "") -> list[_File]:
    """Every file under `under` with its size and time, from one `find` (one listing request per page on
    object stores, not one per file)."""
    found = storage.fs.find(storage.path(under), detail=True)
    root = storage.root + "/"
    return [_File(name[len(root):], int(info.get("size") or 0), _time(info))
            for name, info in found.items() if name.startswith(root) and info.get("type", "file") == "file"]


def _time(info: dict[str, Any]) -> dt.datetime | None:
    """A file's change time from an fsspec info dict (local mtime, S3 LastModified, GCS updated, ...)."""
    value = next((info[key] for key in _TIME_KEYS if info.get(key) is not None), None)
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return None


def _items(storage: Storage, files: list[_File]) -> list[StoredItem]:
    groups: dict[tuple[str, str], list[_File]] = defaultdict(list)
    for file in files:
        if key := _group(file.rel):
            groups[key].append(file)
    run_models = _run_models(storage, [f.rel for f in files
                                       if f.rel.startswith("runs/") and f.rel.count("/") == 2
                                       and f.rel.endswith("/result.json")])
    now = dt.datetime.now(UTC)
    return [_item(kind, rel, members, run_models, now) for (kind, rel), members in groups.items()]


def _group(rel: str) -> tuple[str, str] | None:
    """(kind, item rel) of a file, or None for a file outside the layout."""
    parts = rel.split("/")
    kind = _KIND_OF_FOLDER.get(parts[0])
    if kind is None or len(parts) < 2:
        return None
    if kind == "cache-records":
        return kind, _record_group(rel)
    if _fetch_folder(rel):  # one item per kind, whatever the kind's depth: it names no model
        return kind, "/".join(parts[:2])
    return kind, "/".join(parts[:_DEPTH[kind]])


def _record_group(rel: str) -> str:
    """`prefect-results/odbench-<step>-<selectors>-*` for odbench's records (and files beside them that
    share the key, such as lock files); the file itself for anything else Prefect keeps there."""
    name = rel[len(RECORDS) + 1:]
    if not name.startswith(f"{PREFIX}-") or "-" not in name[len(PREFIX) + 1:] or "/" in name:
        return rel
    return f"{RECORDS}/{name.rsplit('-', 1)[0]}-*"


def _item(kind: str, rel: str, members: list[_File], run_models: dict[str, str], now: dt.datetime) -> StoredItem:
    model, resolution = _selectors(kind, rel, run_models)
    newest = max((f.time for f in members if f.time is not None), default=now)
    paths = tuple(sorted(f.rel for f in members)) if rel.endswith("*") else ()
    return StoredItem(kind, rel, model, resolution, len(members), sum(f.size for f in members), newest,
                      sum(map(_incomplete, (f.rel for f in members))), paths)


def _fetch_folder(rel: str) -> str | None:
    """The fetch leftovers' folder (`.staging`, `.resume`) a path lies in, right under its kind; None if none."""
    folder = rel.split("/")[1:2]
    return folder[0] if folder and folder[0] in _FETCH_LEFTOVERS else None


def _incomplete(rel: str) -> bool:
    """An interrupted write, or a partial download a later fetch may resume: a file no run trusts."""
    return is_temporary(rel) or _fetch_folder(rel) == RESUME_DIR


def _selectors(kind: str, rel: str, run_models: dict[str, str]) -> tuple[str | None, int | None]:
    """(model, resolution) of an item, from its path (or for runs, result.json)."""
    parts = rel.split("/")
    if kind == "models":
        return (parts[1] if len(parts) >= 3 else None), None
    if kind == "preprocessed":
        return None, (int(parts[2]) if len(parts) >= 3 and parts[2].isdigit() else None)
    if kind == "runs":
        return run_models.get(rel) or _model_of_run_id(parts[1]), None
    if kind == "cache-records" and rel.endswith("*"):
        step, *selectors = _record_name(rel).split("-")[1:-1]
        if selectors and step == "preprocess" and selectors[0].isdigit():
            return None, int(selectors[0])
        if selectors and step in ("model", "inference"):
            return selectors[0], None
    return None, None


def _run_models(storage: Storage, result_files: list[str]) -> dict[str, str]:
    """Each run folder's model_name from its result.json, read in one batch (unreadable ones are skipped)."""
    if not result_files:
        return {}
    contents = storage.fs.cat([storage.path(rel) for rel in result_files], on_error="omit")
    models = {}
    for rel in result_files:
        try:
            models[rel.rsplit("/", 1)[0]] = str(json.loads(contents[storage.path(rel)])["model_name"])
        except (KeyError, ValueError, TypeError):
            continue
    return models


def _model_of_run_id(run_id: str) -> str | None:
    """The model of a run id `<stamp>-<model>-<scenario>-<mode>-<hex>`."""
    parts = run_id.split("-")
    return "-".join(parts[1:-3]) if len(parts) >= 5 else None


def _record_name(rel: str) -> str:
    """A record group's key prefix (or a record's file name), for matching against `record_prefix`."""
    return rel[len(RECORDS) + 1:].rstrip("*")


def _pointing_prefix(item: StoredItem) -> str | None:
    """The prefix of the cache records that point at an item's files (all of the step's where its
    selector is unknown); None for kinds no record points at."""
    if item.kind not in _POINTERS or _fetch_folder(item.rel):  # no record points at a fetch's leftovers
        return None
    step, selector = _POINTERS[item.kind]
    value = getattr(item, selector) if selector else None
    return record_prefix(step, value) if value is not None else record_prefix(step)
