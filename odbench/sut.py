"""LoadGen's system under test: the sample library (QSL), the SUT that answers queries, the warm-up.

The SUT's threading contract, the same under every scenario:
- LoadGen calls `issue_queries` on its issue thread (Offline: one query of every sample; SingleStream: one
  sample, the next once it is answered; MultiStream: one query of N samples, the next once all are answered;
  Server: one sample per query at Poisson-scheduled times, whether earlier ones are answered or not).
- `workers` threads (loadgen_concurrency) run the samples: a one-sample query (SingleStream, Server) is one task,
  answered as soon as it is inferred. A larger query (Offline, MultiStream) becomes a shared queue (`_Work`) that
  up to `workers` tasks drain, each taking the next sample (or, with batch_size > 1, the next batch of
  consecutive samples) whenever it is free, so all workers finish within one inference of each other. Several
  inferences (of one query, or several Server queries) are in flight at once when workers > 1. Batches form
  within a query only: a one-sample query runs alone.
- In Server `issue_queries` hands the query to the worker pool and returns at once, so arrivals are never
  delayed. In the other scenarios LoadGen waits for a query's answers before it issues more, so with
  `drain_on_issue_thread` its issue thread runs one of the query's tasks itself (a pool of workers - 1, the rest):
  the same number in flight, one thread hand-off fewer inside each query's latency.
- A draining worker answers its samples together, with one `QuerySamplesComplete` call per ANSWER_EVERY samples
  and one when the queue is empty, so the completion call is paid per run of samples, not per sample; the
  outputs are checked and encoded then too, back to back (`_drain` says why); response buffers are kept alive
  until the call returns (LoadGen copies them before returning).
- Every sample is answered exactly once, whatever happens: a failed inference is recorded in `errors` and
  answered empty (the run then fails with that error, see odbench/harness.py); after `request_stop` every
  outstanding and later sample is answered empty at once. Nothing raises into LoadGen's C++ threads (an
  exception there aborts the process).
- `flush_queries` is a no-op: LoadGen calls it once it has issued its last query, for SUTs that hold samples
  back to fill a batch; this one holds none back (each is run as it arrives), and LoadGen itself waits
  for every outstanding answer before ending the test.
Note: in Server LoadGen issues on its own schedule until min_duration (and min_query_count) are reached; a
stop request answers those queries at once but cannot end the schedule sooner.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from odbench.accuracy import encode_detections, encode_if_clean
from odbench.backend import Backend, Detections, infer_cycled, placed_samples
from odbench.models import ModelSpec
from odbench.output_checks import OutputTally, check_outputs

log = logging.getLogger(__name__)
_NO_ROWS = np.zeros((0, 7), np.float32)
_EMPTY = np.zeros(1, np.float32)  # a valid address for empty responses (size 0)


LOAD_WORKERS = 8  # threads loading samples at once in LoadGen's (untimed) load step


class SampleLibrary:
    """LoadGen's QSL: loads samples on LoadGen's request, as `load` gives them (model inputs in RAM, page-locked, or
    placed in accelerator memory: OnnxBackend.place), and gives each to `release` once it is dropped (when LoadGen
    unloads it, or another load of its index replaces it, or at `close`).

    A failed load is recorded, never raised: an exception escaping into LoadGen's C++ thread kills
    the process. The SUT then fails that sample, and the run reports the first error. Once stopping,
    loads are skipped (the SUT answers without the samples)."""

    def __init__(self, count: int, load: Callable[[int], np.ndarray], workers: int = LOAD_WORKERS,
                 release: Callable[[np.ndarray], None] | None = None):
        self.count = count
        self._load = load
        self._release = release
        self.workers = workers
        self._samples: dict[int, np.ndarray] = {}
        self.errors: list[BaseException] = []
        self.stopping = False  # a plain flag: set from a signal handler

    def load_samples(self, indices: Sequence[int]) -> None:
        """Load on up to `workers` threads (reading, verifying and normalizing release the GIL): LoadGen's load
        step is untimed, but an accuracy pass over 5,000 images spends minutes in it one at a time."""
        todo = list(indices)
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(todo))),
                                thread_name_prefix="qsl-load") as pool:
            for idx, sample in zip(todo, pool.map(self._load_one, todo)):
                if sample is not None:
                    self._drop(self._samples.get(idx))
                    self._samples[idx] = sample

    def _load_one(self, idx: int) -> np.ndarray | None:
        """One sample, or None when stopping or when it failed (the error recorded)."""
        if self.stopping:
            return None
        try:
            return self._load(idx)
        except BaseException as err:  # noqa: BLE001 — see the class docstring
            self.errors.append(err)
            return None

    def unload_samples(self, indices: Sequence[int]) -> None:
        for idx in indices:
            self._drop(self._samples.pop(idx, None))

    def close(self) -> None:
        """Drop and release every sample still loaded (LoadGen unloads them at a test's end; an aborted test may
        not)."""
        samples, self._samples = list(self._samples.values()), {}
        for sample in samples:
            self._drop(sample)

    def _drop(self, sample: np.ndarray | None) -> None:
        if sample is None or self._release is None:
            return
        try:
            self._release(sample)
        except BaseException as err:  # noqa: BLE001 — see the class docstring
            self.errors.append(err)

    def __getitem__(self, idx: int) -> np.ndarray:
        return self._samples[idx]


def waits_for_answers(scenario: str) -> bool:
    """Whether LoadGen issues no more queries until the current one is answered (every scenario but Server), so that
    its issue thread may drain the query itself (`DetectionSUT`'s drain_on_issue_thread; the module docstring)."""
    return scenario != "Server"


ANSWER_EVERY = 64  # samples a draining worker answers together (Offline's one query of every sample)
Item = tuple[int, int]  # (LoadGen's sample id, qsl_idx)


class _Work:
    """One query's samples, handed out a group (a sample, or a batch of consecutive ones) at a time to whichever
    worker asks; thread-safe."""

    def __init__(self, items: list[Item], group: int):
        self._items, self._group, self._next = items, group, 0
        self._lock = threading.Lock()

    def take(self) -> list[Item]:
        """The next group, or [] once every sample has been handed out."""
        with self._lock:
            start, self._next = self._next, min(self._next + self._group, len(self._items))
            return self._items[start:self._next]

    def rest(self) -> list[Item]:
        """Every sample not handed out yet (when stopping: answered empty by the caller)."""
        with self._lock:
            start, self._next = self._next, len(self._items)
            return self._items[start:]

    def empty(self) -> bool:
        with self._lock:
            return self._next >= len(self._items)


class DetectionSUT:
    """LoadGen's SUT: query samples become inferences (one each, or batch_size together) on worker threads, their
    outputs checked (odbench/output_checks.py: offending detections dropped and counted in `outputs`)."""

    def __init__(self, backend: Backend, library: SampleLibrary, spec: ModelSpec, workers: int = 1,
                 batch_size: int = 1, drain_on_issue_thread: bool = False):
        self.backend, self.library, self.spec, self.workers = backend, library, spec, workers
        self.batch_size = batch_size
        self.drain_on_issue_thread = drain_on_issue_thread  # never in Server (see the module docstring)
        # the issue thread is one of the workers when it drains: the pool holds the rest, so no more than `workers`
        # threads ever infer (a pool thread per worker would take the next MultiStream query's task while another
        # is still finishing, and share its session)
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers - drain_on_issue_thread), thread_name_prefix="sut")
        self.errors: list[BaseException] = []
        self.outputs = OutputTally()
        self._lock = threading.Lock()
        self.completed = 0  # samples run (failed ones included)
        self.busy_s = 0.0  # wall time during which at least one inference was running (inferring, encoding)
        self._busy_since = 0.0
        self.stopping = False  # a plain flag: set from a signal handler
        self.issued = 0  # samples LoadGen handed over
        self.answered = 0  # samples answered (QuerySamplesComplete returned)
        self.in_flight = 0  # inferences running now
        self.peak_in_flight = 0  # the most inferences that ran at once
        self.first_issued_at = 0.0  # time.perf_counter() of the first query, and of the last answer: the timed span
        self.last_answered_at = 0.0

    def request_stop(self) -> None:
        """Answer every outstanding and later query at once, empty, so LoadGen ends its test."""
        self.stopping = self.library.stopping = True

    def issue_queries(self, samples) -> None:
        """LoadGen's issue callback (its issue thread): the query to the worker pool, none of it held back; with
        drain_on_issue_thread, this thread drains it too (the module docstring says when)."""
        with self._lock:
            self.issued += len(samples)
            self.first_issued_at = self.first_issued_at or time.perf_counter()
        work = _Work([(s.id, s.index) for s in samples], self.batch_size)
        try:
            if self.stopping:
                self._complete_empty([sample_id for sample_id, _ in work.rest()])
                return
            tasks = min(self.workers, -(-len(samples) // self.batch_size))
            for _ in range(tasks - self.drain_on_issue_thread):
                self.pool.submit(self._drain, work)
            if self.drain_on_issue_thread:
                self._drain(work)
        except BaseException as err:  # noqa: BLE001 — LoadGen must still get an answer, or it hangs
            self._record(err)
            self._complete_empty([sample_id for sample_id, _ in work.rest()])

    def flush_queries(self) -> None:
        """Nothing to flush: no sample is ever held back (see the module docstring)."""

    def _drain(self, work: _Work) -> None:
        """On a worker thread: infer the query's groups one after another until none is left, checking, encoding
        and answering what was inferred every ANSWER_EVERY samples and once the queue is empty; when stopping, the
        rest is answered empty at once. The per-sample checks and encoding run back to back for a run of samples,
        not after each inference: right after one, they run several times slower, evicted from the CPU's caches
        (measured by benchmarks/harness_gap.py: docs/performance.md section 3b)."""
        self._begin()
        inferred: list[tuple[int, int, Detections | None]] = []  # (sample id, qsl_idx, outputs; None: failed)
        group: list[Item] = []
        ran = 0
        try:
            while group := work.take():
                if self.stopping:
                    inferred += [(sample_id, i, None) for sample_id, i in group + work.rest()]
                    group = []
                    break
                outputs = self._infer_or_record([i for _, i in group])
                inferred += [(sample_id, i, found) for (sample_id, i), found in zip(group, outputs, strict=True)]
                group, ran = [], ran + len(group)
                if len(inferred) >= ANSWER_EVERY or work.empty():
                    answers, inferred = self._answers(inferred), []  # built first: never answered twice
                    self._complete(answers)
        finally:  # a group taken but not answered (something raised) is answered empty, never left to hang LoadGen
            try:
                self._complete(self._answers(inferred) + [(sample_id, _NO_ROWS) for sample_id, _ in group])
            finally:
                self._end(ran)

    def _infer_or_record(self, qsl_idxs: list[int]) -> list[Detections | None]:
        """Each sample's raw outputs, or None for all (the error recorded: the run fails afterwards; LoadGen still
        gets an answer)."""
        try:
            found = self._infer_group(qsl_idxs)
            if len(found) != len(qsl_idxs):
                raise ValueError(f"{len(found)} answers for {len(qsl_idxs)} samples")
            return list(found)
        except BaseException as err:  # noqa: BLE001 — LoadGen must still get an answer, or it hangs
            self._record(err)
            return [None] * len(qsl_idxs)

    def _answers(self, inferred: list[tuple[int, int, Detections | None]]) -> list[tuple[int, np.ndarray]]:
        """(sample id, accuracy-log rows) for each inferred sample, in order."""
        return [(sample_id, self._rows_or_record(qsl_idx, found)) for sample_id, qsl_idx, found in inferred]

    def _rows_or_record(self, qsl_idx: int, found: Detections | None) -> np.ndarray:
        """A sample's rows; none for a failed inference, or when they cannot be built (the error recorded)."""
        if found is None:
            return _NO_ROWS
        try:
            return self._rows(qsl_idx, found)
        except BaseException as err:  # noqa: BLE001 — LoadGen must still get an answer, or it hangs
            self._record(err)
            return _NO_ROWS

    def _begin(self) -> None:
        with self._lock:
            if self.in_flight == 0:
                self._busy_since = time.perf_counter()
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _end(self, samples: int) -> None:
        with self._lock:
            self.in_flight -= 1
            self.completed += samples
            if self.in_flight == 0:
                self.busy_s += time.perf_counter() - self._busy_since

    def _infer_group(self, qsl_idxs: list[int]) -> Sequence[Detections]:
        """The samples' raw outputs: one sample through `infer`, several from one batched inference."""
        if len(qsl_idxs) == 1:
            return [self.backend.infer(self.library[qsl_idxs[0]])]
        return self.backend.infer_batch([self.library[i] for i in qsl_idxs])

    def _rows(self, qsl_idx: int, found: Detections) -> np.ndarray:
        """A sample's (boxes, scores, labels) checked (odbench/output_checks.py) and encoded as accuracy-log rows:
        in one pass when they pass unchanged, else through the checked copy with its problems counted."""
        rows = encode_if_clean(qsl_idx, *found, self.spec)
        if rows is not None:
            return rows
        checked = check_outputs(*found, self.spec)
        self.outputs.add(qsl_idx, checked.problems)
        return encode_detections(qsl_idx, checked.boxes, checked.scores, checked.labels, self.spec)

    def _complete(self, answers: list[tuple[int, np.ndarray]]) -> None:
        """Answer samples (id, rows) in one call; each `rows` stays alive (contiguous) until LoadGen has copied it.
        A sample whose response cannot be built is answered empty."""
        if not answers:
            return
        import mlperf_loadgen as lg

        kept, responses, failed = [], [], []
        for sample_id, rows in answers:
            try:
                rows = np.ascontiguousarray(rows, np.float32)
                data = rows if rows.size else _EMPTY
                responses.append(lg.QuerySampleResponse(sample_id, data.ctypes.data, rows.nbytes))
                kept.append(rows)
            except BaseException as err:  # noqa: BLE001 — never into LoadGen's thread
                self._record(err)
                failed.append(sample_id)
        if failed:
            self._complete_empty(failed)
        try:
            lg.QuerySamplesComplete(responses)
        except BaseException as err:  # noqa: BLE001 — never into LoadGen's thread
            self._record(err)
            return
        self._count_answers(len(responses))

    def _complete_empty(self, sample_ids: list[int]) -> None:
        try:
            import mlperf_loadgen as lg

            lg.QuerySamplesComplete([lg.QuerySampleResponse(i, _EMPTY.ctypes.data, 0) for i in sample_ids])
        except BaseException as err:  # noqa: BLE001 — never into LoadGen's thread
            self._record(err)
            return
        self._count_answers(len(sample_ids))

    def _count_answers(self, count: int) -> None:
        with self._lock:
            self.answered += count
            self.last_answered_at = time.perf_counter()

    def _record(self, err: BaseException) -> None:
        with self._lock:
            self.errors.append(err)

    def throughput(self) -> float | None:
        """Samples per second of the time at least one inference was running (LoadGen's untimed sample loads,
        which AccuracyOnly interleaves with queries, excluded); None before any sample."""
        if self.completed == 0 or self.busy_s <= 0:
            return None
        return self.completed / self.busy_s

    def close(self) -> None:
        """After the test: the workers stopped, then the samples still loaded released."""
        try:
            self.pool.shutdown(wait=True)
        finally:
            self.library.close()


WARMUP_MAX_S = 10.0  # a warm-up stops after this long (past its first inference), whatever its sample count


@dataclass(frozen=True)
class Warmup:
    """An untimed warm-up before a timed test: samples inferred (whole batches), and how long it took in seconds."""

    samples: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, float]:
        return {"samples": self.samples, "seconds": self.seconds}


def warm_up(backend: Backend, load: Callable[[int], np.ndarray], count: int, samples: int,
            max_s: float = WARMUP_MAX_S) -> Warmup:
    """Run inferences of up to `samples` samples (whole batches) on the first samples of the dataset (cycled when
    it has fewer), outside LoadGen's timing, so a short test does not time cuDNN autotuning or an engine build.
    The first inference always runs; later ones stop once `max_s` has passed. 0 samples: no warm-up."""
    if samples <= 0 or count <= 0:
        return Warmup()
    with placed_samples(backend, load, min(samples, count)) as inputs:  # loaded (and normalized) before timing
        start = time.perf_counter()
        if prime := getattr(backend, "prime", None):  # a backend of several sessions: each one's first inference
            prime(inputs[0])
        batch = getattr(backend, "batch_size", 1)  # a batched backend warms up on whole batches
        done = 0
        while done < samples:
            infer_cycled(backend, inputs, done, batch)
            done += batch
            if time.perf_counter() - start >= max_s:
                break
        seconds = round(time.perf_counter() - start, 3)
    log.info("warm-up: %d sample(s) in %.3f s before the timed test (untimed)", done, seconds)
    return Warmup(done, seconds)
