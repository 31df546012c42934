"""The rules file: validated once at start-up, so a mistake stops the engine with the rule and field named."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clm_shared.categories import Category
from clm_shared.schemas.lifecycle import STAGE_ORDER, Stage
from clm_shared.schemas.touchpoint import AnyTouchpoint

DEFAULT_RULES_FILE = Path(__file__).parent / "default_rules.yaml"


class RulesError(ValueError):
    """The rules file is wrong; the message names the rule and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Signal(_Strict):
    """Which touchpoints count for a signal: by category or event name, optionally a numeric property."""

    category: Category | None = None
    events: tuple[str, ...] = ()
    revenue_above: float | None = None
    property: str | None = None
    at_least: float | None = None

    @model_validator(mode="after")
    def _matches_something(self) -> Signal:
        if self.category is None and not self.events:
            raise ValueError("needs `category` or `events`")
        if (self.property is None) != (self.at_least is None):
            raise ValueError("`property` and `at_least` go together")
        return self

    def matches(self, tp: AnyTouchpoint) -> bool:
        return self.matches_kind(tp.type, tp.event, tp.category) and self.matches_values(tp)

    def matches_kind(self, call_type: str, event: str | None, category: Category) -> bool:
        """The part of ``matches`` that depends only on the kind of touchpoint (cached per kind)."""
        if self.category is not None and category != self.category:
            return False
        return not self.events or (call_type == "track" and event in self.events)

    def reads_values(self) -> bool:
        # A method, not a property: the field `property` shadows the builtin in this class.
        return self.revenue_above is not None or self.property is not None

    def matches_values(self, tp: AnyTouchpoint) -> bool:
        """The part of ``matches`` that reads the touchpoint's revenue or properties."""
        if self.revenue_above is not None and not tp.revenue > self.revenue_above:
            return False
        if self.property is not None and self.at_least is not None:
            value = tp.properties.get(self.property)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < self.at_least:
                return False
        return True


class Condition(_Strict):
    """`signal` seen `count` times (within `within_days` of event time), or `revenue_of` a signal `at_least`."""

    name: str | None = None
    signal: str | None = None
    count: int = Field(1, ge=1)
    within_days: float | None = Field(None, gt=0)
    revenue_of: str | None = None
    at_least: float | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Condition:
        if (self.signal is None) == (self.revenue_of is None):
            raise ValueError("needs exactly one of `signal` or `revenue_of`")
        if self.revenue_of is not None and self.at_least is None:
            raise ValueError("`revenue_of` needs `at_least`")
        return self

    @property
    def label(self) -> str:
        return self.name or (self.signal or f"revenue_of_{self.revenue_of}")

    @property
    def window(self) -> timedelta | None:
        return timedelta(days=self.within_days) if self.within_days else None


class StageRule(_Strict):
    stage: Stage
    from_: tuple[Stage, ...] = Field(alias="from")
    when: tuple[Condition, ...]


class HealthRules(_Strict):
    applies_from: Stage
    activity: tuple[str, ...]
    order: str
    churn_now: tuple[str, ...] = ()
    at_risk_after_days: float = Field(gt=0)
    churned_after_days: float = Field(gt=0)

    @property
    def at_risk_after(self) -> timedelta:
        return timedelta(days=self.at_risk_after_days)

    @property
    def churned_after(self) -> timedelta:
        return timedelta(days=self.churned_after_days)


# A condition compiled for the hot path: (rule name, signal it reads, count, window, revenue at least).
# A revenue condition reads `revenue_of`; a count condition with a window reads the signal's event times.
Check = tuple[str, str, int, timedelta | None, float | None]


@dataclass(frozen=True)
class Climb:
    """A stage a customer may move to from a given stage, with its conditions compiled, in the file's order.

    Plain tuples with the window built once: the conditions are tried after every touchpoint.
    """

    stage: Stage
    checks: tuple[Check, ...]


# One kind of touchpoint (track or not, event name if a signal lists it, category) -> the signals it
# may match, each with the Signal when its values must still be checked, else None.
_Kind = tuple[bool, str | None, Category]
_Candidates = tuple[tuple[str, "Signal | None"], ...]


@dataclass(frozen=True, slots=True)
class Match:
    """The signals one touchpoint matched and what the hot path asks of them, worked out once per set of names.

    Every touchpoint asks the same questions of its signals (activity? an order? which need event
    times at this stage? which conditions can they change?); the sets of names are few, so the
    answers are built once and shared.
    """

    names: tuple[str, ...]  # in the order of ``CompiledRules.match``
    activity: bool  # one of them counts as activity for health
    order: bool  # one of them is the health rules' order
    churn: bool  # one of them churns at once
    health: bool  # any of the three: health rules may react to the event
    timed: dict[Stage | None, tuple[str, ...]]  # per stage: the names whose event times a higher rule needs
    climbs: dict[Stage, tuple[Climb, ...]]  # per stage: its climbs with only the conditions reading these names


@dataclass(frozen=True, slots=True)
class CompiledRules:
    """A ``Rules`` object's indexes and thresholds, as plain attributes for the per-touchpoint code.

    Rules objects are immutable and few: their compiled form lives in a module dict, because
    pydantic's private attributes go through __getattr__, which showed up in profiles of the hot path.
    """

    rules: Rules
    by_event: dict[str, list[str]]
    by_category: dict[Category, list[str]]
    windowed: dict[Stage | None, frozenset[str]]  # signals whose event times a rule of a stage above still needs
    climbs: dict[Stage, tuple[Climb, ...]]  # the stages one may move to, highest first, conditions in file order
    health_stages: frozenset[Stage]  # the stages health applies in
    activity: frozenset[str]
    order: str
    churn_now: frozenset[str]
    at_risk_after: timedelta
    churned_after: timedelta
    # Filled as kinds of touchpoints are seen; bounded, since event names no signal lists map to None.
    fixed: dict[_Kind, Match]  # kinds whose signals read no values: the same match every time
    varying: dict[_Kind, _Candidates]  # kinds with values to check per touchpoint
    matches: dict[tuple[str, ...], Match]

    def match(self, tp: AnyTouchpoint) -> Match:
        """The signals a touchpoint matches: those listing its event name, then those of its category."""
        event = tp.event
        kind = (tp.type == "track", event if event in self.by_event else None, tp.category)
        found = self.fixed.get(kind)
        if found is not None:
            return found
        candidates = self.varying.get(kind)
        if candidates is None:
            candidates = self._candidates(tp)
            if all(signal is None for _, signal in candidates):
                found = self.fixed[kind] = self._match(tuple(name for name, _ in candidates))
                return found
            self.varying[kind] = candidates
        names = tuple(name for name, signal in candidates if signal is None or signal.matches_values(tp))
        found = self.matches.get(names)
        return found if found is not None else self._match(names)

    def _candidates(self, tp: AnyTouchpoint) -> _Candidates:
        """The signals this kind of touchpoint matches, whatever its values (those with values still to check)."""
        names = [*self.by_event.get(tp.event or "", ()), *self.by_category.get(tp.category, ())]
        signals = [(name, self.rules.signals[name]) for name in names]
        return tuple(
            (name, signal if signal.reads_values() else None)
            for name, signal in signals
            if signal.matches_kind(tp.type, tp.event, tp.category)
        )

    def _match(self, names: tuple[str, ...]) -> Match:
        found = self.matches.get(names)
        if found is None:
            activity = any(name in self.activity for name in names)
            order = self.order in names
            churn = any(name in self.churn_now for name in names)
            timed = {stage: tuple(n for n in names if n in needed) for stage, needed in self.windowed.items()}
            climbs = {stage: _narrowed(climbs, names) for stage, climbs in self.climbs.items()}
            found = self.matches[names] = Match(
                names, activity, order, churn, activity or order or churn, timed, climbs
            )
        return found


def _narrowed(climbs: tuple[Climb, ...], signals: tuple[str, ...]) -> tuple[Climb, ...]:
    """``climbs`` with only the conditions that read one of ``signals``, in the same order."""
    narrowed = (Climb(c.stage, tuple(k for k in c.checks if k[1] in signals)) for c in climbs)
    return tuple(c for c in narrowed if c.checks)


_COMPILED: dict[int, CompiledRules] = {}


class Rules(_Strict):
    signals: dict[str, Signal]
    stages: tuple[StageRule, ...]
    health: HealthRules

    @model_validator(mode="after")
    def _consistent(self) -> Rules:
        if [rule.stage for rule in self.stages] != list(STAGE_ORDER):
            raise ValueError(f"stages must list {', '.join(STAGE_ORDER)} once each, in that order")
        for rule in self.stages:
            for earlier in rule.from_:
                if earlier.rank >= rule.stage.rank:
                    raise ValueError(f"stage {rule.stage}: `from` {earlier} is not an earlier stage")
            for condition in rule.when:
                for ref in (condition.signal, condition.revenue_of):
                    if ref is not None and ref not in self.signals:
                        raise ValueError(f"stage {rule.stage}, rule {condition.label}: unknown signal {ref!r}")
        health = self.health
        for ref in (*health.activity, health.order, *health.churn_now):
            if ref not in self.signals:
                raise ValueError(f"health: unknown signal {ref!r}")
        if health.churned_after_days <= health.at_risk_after_days:
            raise ValueError("health: churned_after_days must be longer than at_risk_after_days")
        return self

    def model_post_init(self, context: Any) -> None:
        # Indexes the hot path uses: which signals an event name or category can match, and which
        # windowed signals each stage still needs.
        by_event: dict[str, list[str]] = {}
        by_category: dict[Category, list[str]] = {}
        for name, signal in self.signals.items():
            for event in signal.events:
                by_event.setdefault(event, []).append(name)
            if not signal.events and signal.category is not None:
                by_category.setdefault(signal.category, []).append(name)
        windowed = {stage: self._windowed_above(stage) for stage in (None, *STAGE_ORDER)}
        climbs = {
            current: tuple(
                Climb(rule.stage, tuple(_compile(c, f"{rule.stage}.{c.label}") for c in rule.when))
                for rule in reversed(self.stages)
                if rule.stage.rank > current.rank and current in rule.from_
            )
            for current in STAGE_ORDER
        }
        health = self.health
        _COMPILED[id(self)] = CompiledRules(
            rules=self,
            by_event=by_event,
            by_category=by_category,
            windowed=windowed,
            climbs=climbs,
            health_stages=frozenset(s for s in STAGE_ORDER if s.rank >= health.applies_from.rank),
            activity=frozenset(health.activity),
            order=health.order,
            churn_now=frozenset(health.churn_now),
            at_risk_after=health.at_risk_after,
            churned_after=health.churned_after,
            fixed={},
            varying={},
            matches={},
        )

    def compiled(self) -> CompiledRules:
        """The indexes and thresholds the per-touchpoint code reads (built once, at validation)."""
        return _COMPILED[id(self)]

    def _windowed_above(self, above: Stage | None) -> frozenset[str]:
        floor = -1 if above is None else above.rank
        return frozenset(
            c.signal
            for rule in self.stages
            if rule.stage.rank > floor
            for c in rule.when
            if c.signal is not None and c.within_days is not None
        )


def _compile(condition: Condition, name: str) -> Check:
    if condition.revenue_of is not None:
        return (name, condition.revenue_of, condition.count, None, condition.at_least)
    assert condition.signal is not None
    return (name, condition.signal, condition.count, condition.window, None)


def parse_rules(raw: Any, *, source: str = "rules") -> Rules:
    try:
        return Rules.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = _describe_location(raw, error["loc"])
            problems.append(f"{where}: {error['msg']}")
        raise RulesError(f"{source} is invalid:\n  " + "\n  ".join(problems)) from None


def _describe_location(raw: Any, loc: tuple[int | str, ...]) -> str:
    """`stages[2] (conversion).when[0] (first_paid_order).count` rather than a bare tuple."""
    parts: list[str] = []
    node = raw
    for part in loc:
        if isinstance(part, int):
            parts[-1] += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and ("stage" in node or "name" in node):
                parts[-1] += f" ({node.get('stage') or node.get('name')})"
        else:
            parts.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
    return ".".join(parts) or "(file)"


def load_rules(path: Path | None = None) -> Rules:
    path = path or DEFAULT_RULES_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RulesError(f"cannot read rules file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise RulesError(f"rules file {path} is not valid YAML: {exc}") from None
    return parse_rules(raw, source=f"rules file {path}")
