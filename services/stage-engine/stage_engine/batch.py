"""One batch of touchpoints against the customers it touches: identities, dedup, merges, sequencing. Pure.

The caller loads what ``ids_needed`` names (customers, identities, processed message ids), calls
``apply_batch`` and writes back what changed, all in one transaction; the in-memory engine used by the
tests calls the same function on plain dicts.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from clm_shared.schemas.touchpoint import AnyTouchpoint
from stage_engine.lifecycle import Change, CustomerState, Outcome, apply_touchpoint, merge, new_customer, tick
from stage_engine.rules import Rules

_EVENT_IDS = uuid.UUID("6f1c1a52-3f5e-4d36-9d0f-0c6b1d7f7a11")
_EVENT_ID_PREFIX = _EVENT_IDS.bytes


@dataclass(frozen=True)
class Merged:
    merged_id: str
    message_id: str
    event_time: datetime


@dataclass(frozen=True)
class Erased:
    event_time: datetime
    message_id: None = None


class Emitted(msgspec.Struct, frozen=True):
    """A change ready for the outbox: its id and sequence follow from the customer's history alone.

    A msgspec ``Struct``: one is built per change, and a frozen dataclass's construction cost several times more.
    """

    customer_id: str
    sequence: int
    event_id: str
    change: Change | Merged | Erased


@dataclass
class BatchState:
    customers: dict[str, CustomerState]
    identities: dict[str, str]
    processed: set[str]
    removed: set[str] = field(default_factory=set)
    merged_into: dict[str, str] = field(default_factory=dict)
    new_identities: dict[str, str] = field(default_factory=dict)
    new_processed: list[str] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    emitted: list[Emitted] = field(default_factory=list)
    # The states as loaded (never changed in place: every change works on a copy), so that the
    # store writes only the customers whose state a batch changed.
    loaded: dict[str, CustomerState] = field(default_factory=dict)
    # For a caller that built every state from nothing under these rules and reads only the final
    # states (the preview): states are changed in place (nothing else holds them), climbs try only the
    # conditions an event can affect (see ``apply_touchpoint``), changes are counted in each
    # customer's sequence but not kept, and ``touched`` is not kept either (``changed`` is for a store).
    states_only: bool = False
    # Every message id of the batch was already written to the dedup table (``Dedup.claim``).
    claimed: bool = False

    def changed(self) -> list[CustomerState]:
        """The touched customers whose state differs from what was loaded, in id order."""
        found = (self.customers.get(cid) for cid in sorted(self.touched))
        return [c for c in found if c is not None and c != self.loaded.get(c.customer_id)]


def event_id(customer_id: str, sequence: int, origin: str = "") -> str:
    """Deterministic, so a replay or a restarted engine publishes the same ids (subscribers dedupe on them).

    ``origin`` (the message that created the profile) keeps a profile re-created after an erasure
    from repeating the erased one's ids.
    """
    # uuid.uuid5, written out: the same id at a third of the cost (a test holds the two together).
    digest = bytearray(hashlib.sha1(_EVENT_ID_PREFIX + f"{customer_id}/{origin}/{sequence}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def ids_needed(touchpoints: Iterable[AnyTouchpoint]) -> set[str]:
    """Every customer id the batch mentions, to load identities and customers for."""
    ids: set[str] = set()
    for tp in touchpoints:
        ids.update(i for i in (tp.user_id, tp.anonymous_id, tp.previous_id, tp.customer_key) if i)
    return ids


def apply_batch(touchpoints: Sequence[AnyTouchpoint], state: BatchState, rules: Rules) -> None:
    # Runs once per touchpoint: what every one reads is bound to locals first.
    compiled = rules.compiled()
    customers, identities, processed, touched = state.customers, state.identities, state.processed, state.touched
    new_processed = state.new_processed
    states_only = state.states_only
    changes: list[Change] = []  # filled by apply_touchpoint, emitted and cleared after each touchpoint
    for tp in touchpoints:
        message_id = tp.message_id
        seen = len(processed)
        processed.add(message_id)
        if len(processed) == seen:
            continue  # the same messageId applied twice changes nothing the second time
        new_processed.append(message_id)
        key = tp.customer_key
        customer_id = identities.get(key, key)
        if tp.type == "alias" or tp.type == "identify":
            merge_from = _merge_source(tp)
            if merge_from is not None:
                source_id = _resolve(state, merge_from)
                # identify merges only a profile that is still anonymous; an anonymous id already tied
                # to another known customer (a shared device) just moves to this one. alias merges as told.
                mergeable = tp.type == "alias" or source_id == merge_from
                if source_id != customer_id and mergeable:
                    _merge(state, into=customer_id, source_id=source_id, tp=tp, rules=rules)
                _link(state, merge_from, customer_id)
        customer = customers.get(customer_id)
        if states_only:
            # Changed in place and kept in ``customers``: nothing to store back, nothing to write.
            if customer is None:
                customer = customers[customer_id] = new_customer(customer_id, message_id)
            apply_touchpoint(customer, tp, compiled, changes, in_place=True, settled=True)
            if changes:
                customer.sequence += len(changes)  # counted, not kept: the state stays what the engine would store
                changes.clear()
            continue
        if customer is None:
            customer = new_customer(customer_id, message_id)
            in_place = True
        else:
            in_place = customer_id in touched  # a state this batch already copied is its own: no second copy
        customer = apply_touchpoint(customer, tp, compiled, changes, in_place=in_place)
        for change in changes:
            _emit(state, customer, change)
        changes.clear()
        customers[customer.customer_id] = customer
        touched.add(customer.customer_id)


def apply_clock(customer_ids: Iterable[str], now: datetime, state: BatchState, rules: Rules) -> None:
    """Timers that came due: inactivity at the engine's clock."""
    for customer_id in customer_ids:
        customer = state.customers.get(customer_id)
        if customer is not None:
            _record(state, tick(customer, now, rules))


def _merge_source(tp: AnyTouchpoint) -> str | None:
    """alias (previousId -> userId) and identify with both ids merge the anonymous profile."""
    if tp.type == "alias":
        return tp.previous_id
    if tp.type == "identify" and tp.user_id and tp.anonymous_id:
        return tp.anonymous_id
    return None


def _resolve(state: BatchState, any_id: str) -> str:
    return state.identities.get(any_id, any_id)


def _link(state: BatchState, alias: str, canonical: str) -> None:
    if alias != canonical and state.identities.get(alias) != canonical:
        state.identities[alias] = canonical
        state.new_identities[alias] = canonical


def _merge(state: BatchState, *, into: str, source_id: str, tp: AnyTouchpoint, rules: Rules) -> None:
    source = state.customers.get(source_id)
    if source is None:
        return  # nothing was recorded under that id: linking it is enough
    known = state.customers.get(into) or new_customer(into, tp.message_id)
    outcome = merge(known, source, rules, message_id=tp.message_id, at=tp.timestamp)
    _emit(state, outcome.state, Merged(source_id, tp.message_id, tp.timestamp))
    _record(state, outcome)
    del state.customers[source_id]
    state.removed.add(source_id)
    state.touched.discard(source_id)
    # Identities not loaded in this batch may still point at the removed profile: the store
    # re-points every one of them (``merged_into``), here and in chains of merges.
    for removed, target in list(state.merged_into.items()):
        if target == source_id:
            state.merged_into[removed] = into
    state.merged_into[source_id] = into
    for alias, canonical in list(state.identities.items()):
        if canonical == source_id:
            _link(state, alias, into)
    _link(state, source_id, into)


def _record(state: BatchState, outcome: Outcome) -> None:
    customer = outcome.state
    for change in outcome.changes:
        _emit(state, customer, change)
    state.customers[customer.customer_id] = customer
    state.touched.add(customer.customer_id)


def _emit(state: BatchState, customer: CustomerState, change: Change | Merged) -> None:
    customer.sequence += 1
    if state.states_only:
        return  # the sequence still counts the change: the state stays what the engine would store
    state.emitted.append(
        Emitted(
            customer.customer_id,
            customer.sequence,
            event_id(customer.customer_id, customer.sequence, customer.origin),
            change,
        )
    )
