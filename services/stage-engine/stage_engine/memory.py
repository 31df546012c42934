"""The whole engine on plain dicts: the reference the tests compare the PostgreSQL engine against."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from clm_shared.schemas.touchpoint import AnyTouchpoint
from stage_engine.batch import BatchState, Emitted, apply_batch, apply_clock
from stage_engine.lifecycle import CustomerState, next_timer
from stage_engine.rules import Rules


@dataclass
class InMemoryEngine:
    """The engine's batch logic on plain dicts.

    ``states_only``: for a caller that starts the engine empty, keeps its rules, reads only the final
    states and never holds one (the preview): the same states at a fraction of the cost, no changes
    published (``BatchState.states_only``).
    """

    rules: Rules
    customers: dict[str, CustomerState] = field(default_factory=dict)
    identities: dict[str, str] = field(default_factory=dict)
    processed: set[str] = field(default_factory=set)
    published: list[Emitted] = field(default_factory=list)
    states_only: bool = False

    def process(self, touchpoints: Sequence[AnyTouchpoint]) -> list[Emitted]:
        state = self._batch()
        apply_batch(touchpoints, state, self.rules)
        self.published.extend(state.emitted)
        return state.emitted

    def advance_clock(self, now: datetime) -> list[Emitted]:
        """Fire every timer due at ``now``, as the scheduler does."""
        due = [cid for cid, c in self.customers.items() if (t := next_timer(c, self.rules)) and t <= now]
        state = self._batch()
        apply_clock(due, now, state, self.rules)
        self.published.extend(state.emitted)
        return state.emitted

    def customer(self, any_id: str) -> CustomerState | None:
        return self.customers.get(self.identities.get(any_id, any_id))

    def _batch(self) -> BatchState:
        return BatchState(self.customers, self.identities, self.processed, states_only=self.states_only)
