"""Campaign decisions, pure: who enters which campaign, where a run goes next, what is sent when.

Everything here works on values handed in (profiles, runs, the live campaigns, the time) and
returns a ``Plan`` of rows to write, so the consumer, the timer loop, a replay and the tests all take
the same decisions. Times come from events, never from a clock read here: a run reaches a step at
the event time (entry), the event's time (a wait for an event) or the due time (a wait), which keeps
schedules exact however late the service processes them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from campaigns.definitions import Campaign, Condition, SendStep, SplitStep, WaitForEventStep, WaitStep
from campaigns.guardrails import Guardrails, assign_variant, in_holdout
from campaigns.registry import Status

TriggerKind = Literal["stage", "health", "event"]
RunStatus = Literal["active", "waiting", "done", "exited", "holdout"]
IN_RUN: frozenset[str] = frozenset({"active", "waiting"})


@dataclass
class Profile:
    customer_id: str
    email: str | None = None
    timezone: str | None = None
    traits: dict[str, Any] = field(default_factory=dict)
    stage: str | None = None
    health: str | None = None


@dataclass(frozen=True)
class TriggerEvent:
    """Something that may start a run: a stage entered, a health reached, a touchpoint."""

    kind: TriggerKind
    customer_id: str
    trigger_id: str  # with the campaign and customer, what makes a run (and its sends) unique
    name: str  # the stage, the health or the event name
    time: datetime
    properties: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "time": self.time.isoformat(), "properties": self.properties}


@dataclass(eq=False)
class Run:
    campaign_id: str
    version: int
    customer_id: str
    trigger_id: str
    trigger: dict[str, Any]
    status: RunStatus
    entered_at: datetime
    step_since: datetime
    step: int = 0
    variant: str | None = None
    holdout: bool = False
    due_at: datetime | None = None
    waiting_for: str | None = None
    converted_at: datetime | None = None  # an order within the window after a send (attribution)
    entry_converted_at: datetime | None = None  # an order within the window after entry (uplift, both groups)
    run_id: int | None = None  # None until stored


@dataclass(eq=False)
class Send:
    """A message row: ``pending`` for the delivery loop, or ``held`` with its reason."""

    run: Run | None
    campaign_id: str
    version: int
    customer_id: str
    trigger_id: str
    step: int
    step_name: str
    channel: str
    variant: str | None
    transactional: bool
    status: Literal["pending", "held"]
    reason: str | None
    due_at: datetime
    created_at: datetime


@dataclass
class Plan:
    """What one batch (or one timer round) writes, in one transaction."""

    new_runs: list[Run] = field(default_factory=list)
    changed_runs: list[Run] = field(default_factory=list)
    sends: list[Send] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    timers: dict[int, Run] = field(default_factory=dict)  # by id(run): the run's wait is (re)scheduled or gone
    conversions: list[tuple[Run, datetime, dict[str, Any]]] = field(default_factory=list)
    _changed: set[int] = field(default_factory=set, repr=False)  # id() of each run in changed_runs

    def touch(self, run: Run) -> None:
        # A set of the runs already listed: scanning the list made a batch quadratic in its changed runs.
        if run.run_id is not None and id(run) not in self._changed:
            self._changed.add(id(run))
            self.changed_runs.append(run)
        self.timers[id(run)] = run


@dataclass(frozen=True)
class LiveCampaign:
    campaign: Campaign
    version: int
    status: Status


class CapLedger:
    """Due times of each customer's counted sends (pending or sent, not transactional) near now."""

    def __init__(self, cap: int, window: Any, known: dict[str, list[datetime]] | None = None) -> None:
        self.cap = cap
        self.window = window
        self.times: dict[str, list[datetime]] = defaultdict(list, known or {})

    def allows(self, customer_id: str, at: datetime) -> bool:
        recent = [t for t in self.times[customer_id] if at - self.window < t <= at + self.window]
        return len(recent) < self.cap

    def record(self, customer_id: str, at: datetime) -> None:
        self.times[customer_id].append(at)


def condition_holds(condition: Condition, profile: Profile, properties: dict[str, Any]) -> bool:
    value = _lookup(condition.field, profile, properties)
    op, want = condition.op, condition.value
    if op == "exists":
        return value is not None
    if op == "missing":
        return value is None
    if op == "eq":
        return bool(value == want)
    if op == "ne":
        return bool(value != want)
    if op == "in":
        return bool(value in want)
    if op == "not_in":
        return bool(value not in want)
    if op == "contains":
        return isinstance(value, list | str) and bool(want in value)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return bool({"gt": value > want, "gte": value >= want, "lt": value < want, "lte": value <= want}[op])


def _lookup(path: str, profile: Profile, properties: dict[str, Any]) -> Any:
    if path == "stage":
        return profile.stage
    if path == "health":
        return profile.health
    source, _, rest = path.partition(".")
    value: Any = profile.traits if source == "traits" else properties
    for part in rest.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def triggered_by(campaign: Campaign, event: TriggerEvent) -> bool:
    trigger = campaign.trigger
    if event.kind == "stage":
        return trigger.stage_entered is not None and trigger.stage_entered.value == event.name
    if event.kind == "health":
        return trigger.health_changed_to is not None and trigger.health_changed_to.value == event.name
    return trigger.event == event.name


def reacts_to(campaign: Campaign) -> set[str]:
    """Touchpoint event names this version acts on: its trigger, ``exit_on`` and the events its steps wait for.

    ``Journeys.on_trigger`` and ``on_event`` do nothing for any other event name (orders aside, which
    attribution reads), so a consumer need not load a customer's runs for them.
    """
    names = set(campaign.exit_on)
    if campaign.trigger.event is not None:
        names.add(campaign.trigger.event)
    names.update(step.event for step in campaign.steps if isinstance(step, WaitForEventStep))
    return names


class Journeys:
    """Takes decisions for one batch; ``plan`` collects what they write."""

    def __init__(
        self,
        guardrails: Guardrails,
        live: dict[str, LiveCampaign],
        versions: dict[tuple[str, int], Campaign],
        ledger: CapLedger,
        now: datetime,
    ) -> None:
        self.guardrails = guardrails
        self.live = live
        self.versions = dict(versions)
        for entry in live.values():
            self.versions[(entry.campaign.id, entry.version)] = entry.campaign
        self.ledger = ledger
        self.now = now
        self.plan = Plan()

    # -- entry ------------------------------------------------------------------------------------
    def on_trigger(self, event: TriggerEvent, profile: Profile, existing: set[tuple[str, str]]) -> list[Run]:
        """Start a run in each live campaign this event triggers, unless that trigger started one before.

        ``existing`` holds the (campaign id, trigger id) pairs this customer already has runs for.
        Returns the runs started, so later events of the same batch can move them.
        """
        started: list[Run] = []
        for entry in self.live.values():
            campaign = entry.campaign
            if entry.status == "archived" or not triggered_by(campaign, event):
                continue
            if (campaign.id, event.trigger_id) in existing:
                continue  # a replay or a duplicate trigger: never a second run, never a second send
            if not all(condition_holds(c, profile, event.properties) for c in campaign.audience):
                continue
            existing.add((campaign.id, event.trigger_id))
            if entry.status == "paused":
                self._held_at_entry(entry, event, "paused")
                continue
            if self.now - event.time > self.guardrails.max_trigger_age:
                self._held_at_entry(entry, event, "stale")
                continue
            run = Run(
                campaign_id=campaign.id,
                version=entry.version,
                customer_id=event.customer_id,
                trigger_id=event.trigger_id,
                trigger=event.as_json(),
                status="active",
                entered_at=event.time,
                step_since=event.time,
            )
            self.plan.new_runs.append(run)
            started.append(run)
            self.plan.counts[(campaign.id, "entered")] += 1
            percent = (
                campaign.holdout_percent if campaign.holdout_percent is not None else self.guardrails.holdout_percent
            )
            if in_holdout(event.customer_id, campaign.id, percent):
                run.status = "holdout"
                run.holdout = True
                self.plan.counts[(campaign.id, "holdout")] += 1
                self._held_at_entry(entry, event, "holdout", run=run)
                continue
            self.advance(run, profile, event.time)
        return started

    def _held_at_entry(self, entry: LiveCampaign, event: TriggerEvent, reason: str, *, run: Run | None = None) -> None:
        self.plan.counts[(entry.campaign.id, f"held:{reason}")] += 1
        self.plan.sends.append(
            Send(
                run=run,
                campaign_id=entry.campaign.id,
                version=entry.version,
                customer_id=event.customer_id,
                trigger_id=event.trigger_id,
                step=-1,
                step_name="entry",
                channel="-",
                variant=None,
                transactional=entry.campaign.transactional,
                status="held",
                reason=reason,
                due_at=event.time,
                created_at=self.now,
            )
        )

    # -- progress ---------------------------------------------------------------------------------
    def advance(self, run: Run, profile: Profile, at: datetime) -> None:
        """Walk the run's steps from where it stands at time ``at`` until a wait or the end."""
        campaign = self.versions[(run.campaign_id, run.version)]
        self.plan.touch(run)
        run.due_at = None
        run.waiting_for = None
        while run.step < len(campaign.steps):
            step = campaign.steps[run.step]
            run.step_since = at
            if isinstance(step, SplitStep):
                run.variant = assign_variant(run.customer_id, campaign.id, step.variants)
            elif isinstance(step, SendStep):
                if step.only_variant is None or step.only_variant == run.variant:
                    self._send(run, campaign, step, profile, at)
            elif isinstance(step, WaitStep):
                run.status = "waiting"
                run.due_at = at + step.duration
                return
            elif isinstance(step, WaitForEventStep):
                run.status = "waiting"
                run.waiting_for = step.event
                run.due_at = at + step.timeout
                return
            run.step += 1
        run.status = "done"
        self.plan.counts[(campaign.id, "completed")] += 1

    def _send(self, run: Run, campaign: Campaign, step: SendStep, profile: Profile, at: datetime) -> None:
        due = max(at, self.now)
        status: Literal["pending", "held"] = "pending"
        reason: str | None = None
        quiet = self.guardrails.quiet_hours
        if campaign.quiet_hours and quiet is not None and not campaign.transactional:
            moved = quiet.release(due, profile.timezone)
            if moved != due:
                due, reason = moved, "quiet_hours"
        if not campaign.transactional:
            if self.ledger.allows(run.customer_id, due):
                self.ledger.record(run.customer_id, due)
            else:
                status, reason = "held", "capped"
                self.plan.counts[(campaign.id, "held:capped")] += 1
        if reason == "quiet_hours":
            self.plan.counts[(campaign.id, "held:quiet_hours")] += 1
        self.plan.sends.append(
            Send(
                run=run,
                campaign_id=campaign.id,
                version=run.version,
                customer_id=run.customer_id,
                trigger_id=run.trigger_id,
                step=run.step,
                step_name=step.name,
                channel=step.channel,
                variant=run.variant,
                transactional=campaign.transactional,
                status=status,
                reason=reason,
                due_at=due,
                created_at=self.now,
            )
        )

    def on_timer(self, run: Run, profile: Profile) -> None:
        """A run's wait is due: a plain wait moves on, a wait for an event times out."""
        if run.status != "waiting" or run.due_at is None:
            return
        campaign = self.versions[(run.campaign_id, run.version)]
        step = campaign.steps[run.step]
        at = run.due_at
        if isinstance(step, WaitForEventStep) and step.on_timeout == "exit":
            self._exit(run, at)
            return
        run.step += 1
        self.advance(run, profile, at)

    def on_event(self, runs: list[Run], profile: Profile, name: str, properties: dict[str, Any], at: datetime) -> None:
        """A touchpoint for a customer in runs: it may end a run (``exit_on``) or end its wait for an event."""
        for run in runs:
            if run.status not in IN_RUN:
                continue
            campaign = self.versions[(run.campaign_id, run.version)]
            if name in campaign.exit_on:
                self._exit(run, at)
                continue
            if run.status != "waiting" or run.waiting_for != name:
                continue
            step = campaign.steps[run.step]
            if not isinstance(step, WaitForEventStep):
                continue
            trigger_properties = run.trigger.get("properties") or {}
            # the same checkout (say) as the trigger's: a key missing from either never matches
            if any(
                properties.get(key) is None or properties.get(key) != trigger_properties.get(key) for key in step.match
            ):
                continue
            if step.on_event == "exit":
                self._exit(run, at)
            else:
                run.step += 1
                self.advance(run, profile, at)

    def _exit(self, run: Run, at: datetime) -> None:
        run.status = "exited"
        run.due_at = None
        run.waiting_for = None
        run.step_since = at
        self.plan.touch(run)
        self.plan.counts[(run.campaign_id, "exited")] += 1

    # -- attribution ------------------------------------------------------------------------------
    def on_order(self, candidates: list[tuple[Run, datetime | None]], at: datetime, order: dict[str, Any]) -> None:
        """An order within the window counts twice over, each once per run.

        For the uplift, both groups alike: an order after entry converts a holdout run
        (``holdout_converted``) or a treated one (``treatment_converted``), sent to or not. For the
        attribution, an order after a run's last successful send is that campaign's conversion
        (``converted`` and a ``clm.campaign.converted`` event). ``candidates`` are the customer's runs
        not converted both ways yet, with the time of their last successful send.
        """
        window = self.guardrails.attribution_window

        def within(since: datetime | None) -> bool:
            return since is not None and since <= at <= since + window

        for run, last_sent in candidates:
            if run.entry_converted_at is None and within(run.entered_at):
                run.entry_converted_at = at
                self.plan.touch(run)
                group = "holdout_converted" if run.holdout else "treatment_converted"
                self.plan.counts[(run.campaign_id, group)] += 1
            if not run.holdout and run.converted_at is None and within(last_sent):
                run.converted_at = at
                self.plan.touch(run)
                self.plan.counts[(run.campaign_id, "converted")] += 1
                self.plan.conversions.append((run, at, order))
