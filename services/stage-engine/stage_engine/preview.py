"""What a new rules file would change: the same touchpoints through two in-memory engines, compared. Pure.

Both engines are ``InMemoryEngine``s, so the preview runs the code the live engine runs (identities,
merges, dedup, lifecycle). Time comes from the events themselves while replaying (inactivity between
events moves health at event time, as in a rebuild); at the end both engines' clocks are advanced to
the same ``now``, so inactivity is judged at one moment under both rule sets and health is comparable.

The two rule sets need not share anything until the report: given the records' bytes, the new rules
run in a second process (forked, so it starts in milliseconds) that decodes its own copy, and the
two engines work at the same time.
"""

from __future__ import annotations

import bisect
import gc
import multiprocessing
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import msgspec

from clm_shared.schemas.lifecycle import STAGE_ORDER, Health
from clm_shared.schemas.touchpoint import AnyTouchpoint, TouchpointRecord
from stage_engine.lifecycle import CustomerState
from stage_engine.memory import InMemoryEngine
from stage_engine.rules import Rules

NO_STAGE = "none"  # a customer known only from identify calls has no stage yet
NOT_APPLICABLE = "n/a"  # health does not apply below the rules' `applies_from` stage
EXAMPLES = 3


@dataclass(frozen=True)
class Counts:
    current: int
    new: int

    @property
    def difference(self) -> int:
        return self.new - self.current


@dataclass(frozen=True)
class PreviewReport:
    """Customers per stage and health under each rule set, and who moves where (``now``: the clock at the end)."""

    touchpoints: int
    customers: int
    now: datetime
    stages: dict[str, Counts]
    health: dict[str, Counts]
    matrix: dict[tuple[str, str], int]
    """(stage under current rules, stage under new rules) -> customers; only cells with customers."""
    examples: dict[tuple[str, str], tuple[str, ...]]
    """Up to three customer ids (the smallest) per cell off the diagonal."""

    @property
    def moved(self) -> int:
        return sum(n for (before, after), n in self.matrix.items() if before != after)


# One rule set's result at ``now``: each customer's stage, and the customers per health.
Summary = tuple[dict[str, str], Counter[str]]


class Preview:
    """Two engines fed the same touchpoints batch by batch, so a reader can report progress in between.

    ``processes=2``: the new rules run in a forked worker; ``apply`` then needs each batch's record
    values (``encoded``), which the worker decodes as the live engine does (``TouchpointRecord``).
    Construct it before any thread starts (a fork copies only the calling thread).
    """

    def __init__(self, current: Rules, new: Rules, *, freeze_gc: bool = False, processes: int = 1) -> None:
        if processes not in (1, 2):
            raise ValueError("processes: 1 (both rule sets here) or 2 (the new rules in a worker)")
        self.current = InMemoryEngine(current, states_only=True)
        self.new_rules = new
        self.touchpoints = 0
        self.freeze_gc = freeze_gc
        self.new: InMemoryEngine | None = None
        self._worker: Connection | None = None
        self._process: BaseProcess | None = None
        if processes == 1:
            self.new = InMemoryEngine(new, states_only=True)
        else:
            self._worker, self._process = _start_worker(new, freeze_gc=freeze_gc)

    def apply(self, touchpoints: Sequence[AnyTouchpoint], encoded: Sequence[bytes] | None = None) -> None:
        """Apply a batch under both rule sets; ``encoded``: the same touchpoints as JSON (the record values)."""
        if self._worker is None:
            self.apply_array(touchpoints, None)
            return
        if encoded is None or len(encoded) != len(touchpoints):
            raise ValueError("a preview in two processes needs every touchpoint's record value")
        self.apply_array(touchpoints, _array(encoded))

    def apply_array(self, touchpoints: Sequence[AnyTouchpoint], array: bytes | None) -> None:
        """``apply`` with the record values already joined into one JSON array (one decode, one message)."""
        if self._worker is not None:
            if array is None:
                raise ValueError("a preview in two processes needs every touchpoint's record value")
            # Sent before this process starts on its own engine: both work on the batch at once.
            self._worker.send_bytes(array)
        with _collector_paused(self.freeze_gc):
            for engine in (self.current, self.new):
                if engine is not None:
                    engine.process(touchpoints)  # only the final states are needed: no changes are kept
        self.touchpoints += len(touchpoints)

    def report(self, now: datetime) -> PreviewReport:
        if self._worker is not None:
            self._worker.send_bytes(_NOW.encode(now))  # the worker advances its clock while this one does
        stages_before, health_before = _summary(self.current, now)
        stages_after, health_after = _summary(self.new, now) if self.new is not None else self._worker_summary()
        ids = stages_before.keys() | stages_after.keys()
        stages_before = {cid: stages_before.get(cid, NO_STAGE) for cid in ids}
        stages_after = {cid: stages_after.get(cid, NO_STAGE) for cid in ids}
        matrix: Counter[tuple[str, str]] = Counter()
        examples: dict[tuple[str, str], list[str]] = {}
        for cid in ids:
            cell = (stages_before[cid], stages_after[cid])
            matrix[cell] += 1
            if cell[0] != cell[1]:
                _keep_smallest(examples.setdefault(cell, []), cid)
        return PreviewReport(
            touchpoints=self.touchpoints,
            customers=len(ids),
            now=now,
            stages=_compare(Counter(stages_before.values()), Counter(stages_after.values()), [*STAGE_ORDER, NO_STAGE]),
            health=_compare(health_before, health_after, [*Health, NOT_APPLICABLE]),
            matrix=dict(matrix),
            examples={cell: tuple(found) for cell, found in examples.items()},
        )

    def close(self) -> None:
        """Stop the worker, if any (``report`` does too)."""
        if self._worker is not None:
            self._worker.close()  # the worker sees the end of its pipe and returns
            self._worker = None
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.terminate()
            self._process = None

    def _worker_summary(self) -> Summary:
        assert self._worker is not None
        try:
            reply = self._worker.recv()
        except EOFError:
            raise RuntimeError("the preview's worker process ended without its report") from None
        finally:
            self.close()
        if isinstance(reply, BaseException):
            raise RuntimeError(f"the preview's worker process failed: {reply!r}") from reply
        stages, health = reply
        return stages, health


def _summary(engine: InMemoryEngine, now: datetime) -> Summary:
    engine.advance_clock(now)
    customers = engine.customers
    return {cid: _stage(c) for cid, c in customers.items()}, _health_counts(customers.values(), engine.rules)


_BATCH = msgspec.json.Decoder(list[TouchpointRecord])
_NOW = msgspec.msgpack.Encoder()
_NOW_DECODER = msgspec.msgpack.Decoder(datetime)


def _start_worker(rules: Rules, *, freeze_gc: bool) -> tuple[Connection, BaseProcess]:
    """Fork the process that runs ``rules``; talk to it through the returned end of a pipe."""
    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    process = context.Process(target=_work, args=(theirs, rules, freeze_gc), daemon=True, name="clm-preview-new-rules")
    process.start()
    theirs.close()
    return ours, process


def _work(conn: Connection, rules: Rules, freeze_gc: bool) -> None:
    """The worker: batches of record values (a JSON array) until a msgpack ``now``; then its summary."""
    engine = InMemoryEngine(rules, states_only=True)
    if freeze_gc:
        gc.freeze()  # the heap copied from the parent is not ours to scan
    try:
        while True:
            message = conn.recv_bytes()
            if message[:1] != b"[":
                conn.send(_summary(engine, _NOW_DECODER.decode(message)))
                return
            with _collector_paused(freeze_gc):
                engine.process(_BATCH.decode(message))
    except EOFError:
        return  # the preview was abandoned
    except Exception as exc:  # reported to the parent, which raises it
        conn.send(exc)


def preview(
    touchpoints: Iterable[AnyTouchpoint],
    current: Rules,
    new: Rules,
    *,
    now: datetime,
    batch: int = 2000,
    freeze_gc: bool = False,
) -> PreviewReport:
    """Replay ``touchpoints`` under both rule sets and compare the customers at ``now``."""
    run = Preview(current, new, freeze_gc=freeze_gc)
    iterator = iter(touchpoints)
    while chunk := list(islice(iterator, batch)):
        run.apply(chunk)
    return run.report(now)


def preview_records(
    records: Iterable[bytes],
    current: Rules,
    new: Rules,
    *,
    now: datetime,
    batch: int = 2000,
    freeze_gc: bool = False,
    processes: int = 2,
) -> PreviewReport:
    """``preview`` from the topic's record values (valid touchpoints), each rule set in its own process."""
    run = Preview(current, new, freeze_gc=freeze_gc, processes=processes)
    try:
        iterator = iter(records)
        while chunk := list(islice(iterator, batch)):
            array = _array(chunk)  # decoded here and sent as it is to the worker, which decodes its own copy
            with _collector_paused(freeze_gc):
                run.apply_array(_BATCH.decode(array), array)
        return run.report(now)
    finally:
        run.close()


@contextmanager
def _collector_paused(pause: bool) -> Iterator[None]:
    """With ``pause`` (``freeze_gc``): no cyclic collection while a batch is decoded and applied, then freeze.

    Every customer state and messageId lives to the end: without the freeze the cyclic GC scans them
    all again and again as they grow (about a quarter of the time). What else a batch allocates is
    freed by reference counts (decoded touchpoints, replaced states), so the dozen collections its
    allocations would trigger found nothing and cost about a tenth of the time. For a one-off process
    (the CLI, the benchmark).
    """
    if not pause:
        yield
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _array(values: Sequence[bytes]) -> bytes:
    """Record values (JSON objects) as one JSON array: one message to the worker, one decode."""
    return b"[" + b",".join(values) + b"]"


def _stage(state: CustomerState | None) -> str:
    return str(state.stage) if state is not None and state.stage is not None else NO_STAGE


def _health_counts(states: Iterable[CustomerState], rules: Rules) -> Counter[str]:
    floor = rules.health.applies_from.rank
    return Counter(str(s.health) if s.stage is not None and s.stage.rank >= floor else NOT_APPLICABLE for s in states)


def _compare(current: Counter[str], new: Counter[str], order: list[str]) -> dict[str, Counts]:
    """Every known key in ``order``; the catch-all rows (no stage, n/a) only when someone is in them."""
    keys = [str(k) for k in order]
    return {k: Counts(current[k], new[k]) for k in keys if current[k] or new[k] or k not in (NO_STAGE, NOT_APPLICABLE)}


def _keep_smallest(found: list[str], customer_id: str) -> None:
    """Keep the EXAMPLES smallest ids seen so far: examples do not depend on dict order."""
    if len(found) < EXAMPLES or customer_id < found[-1]:
        bisect.insort(found, customer_id)
        del found[EXAMPLES:]
