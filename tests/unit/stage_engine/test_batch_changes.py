"""A batch reports as changed only the customers whose state it changed: the store writes only those."""

from __future__ import annotations

from stage_engine.batch import BatchState, apply_batch
from stage_engine.memory import InMemoryEngine
from stage_engine.rules import load_rules
from tests.utils.factories import T0, touchpoint

RULES = load_rules()


def test_only_customers_whose_state_changed_are_written() -> None:
    first = touchpoint("Product Viewed", customer="u1", traits={"plan": "pro"})
    other = touchpoint("Product Viewed", customer="u2")
    engine = InMemoryEngine(RULES)
    engine.process([first, other])
    loaded = dict(engine.customers)
    state = BatchState(dict(loaded), {}, set(), loaded=dict(loaded))
    same_traits = touchpoint(None, customer="u1", call_type="identify", traits={"plan": "pro"}, at=T0)
    new_view = touchpoint("Product Viewed", customer="u2")
    apply_batch([same_traits, new_view], state, RULES)
    assert state.touched == {"u1", "u2"}
    assert [c.customer_id for c in state.changed()] == ["u2"]
    assert loaded["u2"] != state.customers["u2"]  # the loaded state itself was not changed in place


def test_without_loaded_states_every_touched_customer_counts_as_changed() -> None:
    state = BatchState({}, {}, set())
    apply_batch([touchpoint("Product Viewed", customer="u1")], state, RULES)
    assert [c.customer_id for c in state.changed()] == ["u1"]
