"""What a new rules file would change: the same touchpoints through two in-memory engines, compared. Pure.

Both engines are ``InMemoryEngine``s, so the preview runs the code the live engine runs (identities,
merges, dedup, lifecycle). Time comes from the events themselves while replaying (inactivity between
events moves health at event time, as in a rebuild); at the end both engines' clocks are advanced to
the same ``now``, so inactivity is judged at one moment under both rule sets and health is comparable.
"""

from __future__ import annotations

import bisect
import gc
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice

from clm_shared.schemas.lifecycle import STAGE_ORDER, Health
from clm_shared.schemas.touchpoint import Touchpoint
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


class Preview:
    """Two engines fed the same touchpoints batch by batch, so a reader can report progress in between."""

    def __init__(self, current: Rules, new: Rules, *, freeze_gc: bool = False) -> None:
        self.current = InMemoryEngine(current, states_only=True)
        self.new = InMemoryEngine(new, states_only=True)
        self.touchpoints = 0
        self.freeze_gc = freeze_gc

    def apply(self, touchpoints: Sequence[Touchpoint]) -> None:
        for engine in (self.current, self.new):
            engine.process(touchpoints)  # only the final states are needed: no changes are kept
        self.touchpoints += len(touchpoints)
        if self.freeze_gc:
            # Every customer state and messageId lives to the end: without this the cyclic GC scans
            # them all again and again as they grow (about a quarter of the time). For a one-off
            # process (the CLI, the benchmark); replaced states are still freed by reference counts.
            gc.freeze()

    def report(self, now: datetime) -> PreviewReport:
        for engine in (self.current, self.new):
            engine.advance_clock(now)
        before, after = self.current.customers, self.new.customers
        ids = before.keys() | after.keys()
        stages_before = {cid: _stage(before.get(cid)) for cid in ids}
        stages_after = {cid: _stage(after.get(cid)) for cid in ids}
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
            health=_compare(
                _health_counts(before.values(), self.current.rules),
                _health_counts(after.values(), self.new.rules),
                [*Health, NOT_APPLICABLE],
            ),
            matrix=dict(matrix),
            examples={cell: tuple(found) for cell, found in examples.items()},
        )


def preview(
    touchpoints: Iterable[Touchpoint],
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
