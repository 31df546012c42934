"""Per-subject sequence numbers: a gap (an event that never arrived) is logged and counted, not fatal.

The last sequence per subject lives in the consumer's own table and is updated in the batch's
transaction. Duplicates never get here (dedup drops them first); an older sequence leaves the last
one as it is, and sequence 1 starts a subject over (a profile created again after an erasure).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from prometheus_client import Counter

from clm_shared.consumer_tables import SEQUENCES_TABLE
from clm_shared.transactions import Db

log = structlog.get_logger(__name__)

SEQUENCE_GAPS = Counter(
    "clm_consumer_sequence_gaps_total", "Events a subject's sequence skipped (never received).", ["table"]
)


@dataclass(frozen=True)
class Gap:
    subject: str
    expected: int
    received: int


def find_gaps(last: dict[str, int], received: Sequence[tuple[str, int]]) -> list[Gap]:
    """Walk the sequences in arrival order, updating ``last`` in place. Pure."""
    gaps: list[Gap] = []
    for subject, sequence in received:
        previous = last.get(subject, 0)
        if sequence == 1 or sequence > previous:
            if sequence > previous + 1:
                gaps.append(Gap(subject, previous + 1, sequence))
            last[subject] = sequence
    return gaps


@dataclass(frozen=True)
class SequenceCheck:
    table: str = SEQUENCES_TABLE

    async def check(self, db: Db, received: Sequence[tuple[str, int]]) -> list[Gap]:
        """Record the batch's (subject, sequence) pairs in the caller's transaction; returns the gaps."""
        if not received:
            return []
        subjects = sorted({subject for subject, _ in received})
        rows = await db.fetch(
            f"SELECT subject, sequence FROM {self.table} WHERE subject = ANY($1::text[]) FOR UPDATE", subjects
        )
        last = {row[0]: int(row[1]) for row in rows}
        before = dict(last)
        gaps = find_gaps(last, received)
        changed = {s: n for s, n in last.items() if before.get(s) != n}
        if changed:
            await db.execute(
                f"INSERT INTO {self.table} (subject, sequence) SELECT * FROM unnest($1::text[], $2::bigint[])"
                " ON CONFLICT (subject) DO UPDATE SET sequence = excluded.sequence",
                list(changed),
                list(changed.values()),
            )
        for gap in gaps:
            log.warning(
                "sequence gap", table=self.table, subject=gap.subject, expected=gap.expected, received=gap.received
            )
        if gaps:
            SEQUENCE_GAPS.labels(self.table).inc(sum(g.received - g.expected for g in gaps))
        return gaps
