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


# One kind of touchpoint (track or not, event name if a signal lists it, category) -> the signals it
# may match, each with the Signal when its values must still be checked, else None.
_Kind = tuple[bool, str | None, Category]
_Candidates = tuple[tuple[str, "Signal | None"], ...]


@dataclass(frozen=True)
class _RuleIndex:
    by_event: dict[str, list[str]]
    by_category: dict[Category, list[str]]
    windowed: dict[Stage | None, frozenset[str]]
    climbs: dict[Stage, tuple[Climb, ...]]
    # Filled as kinds of touchpoints are seen; bounded, since event names no signal lists map to None.
    by_kind: dict[_Kind, _Candidates]
    # (stage, matched signals) -> the climbs from that stage with only the conditions reading them.
    climbs_on: dict[tuple[Stage, tuple[str, ...]], tuple[Climb, ...]]


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


# Rules objects are immutable and few: their indexes live here, because pydantic's private
# attributes go through __getattr__, which showed up in profiles of the hot path.
_INDEXES: dict[int, _RuleIndex] = {}


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
        _INDEXES[id(self)] = _RuleIndex(by_event, by_category, windowed, climbs, {}, {})

    def matching_signals(self, tp: AnyTouchpoint) -> list[str]:
        """Names of the signals a touchpoint matches, in the order the rules file lists them."""
        index = _INDEXES[id(self)]
        event = tp.event
        kind = (tp.type == "track", event if event in index.by_event else None, tp.category)
        candidates = index.by_kind.get(kind)
        if candidates is None:
            candidates = index.by_kind[kind] = self._candidates(index, tp)
        return [name for name, signal in candidates if signal is None or signal.matches_values(tp)]

    def _candidates(self, index: _RuleIndex, tp: AnyTouchpoint) -> _Candidates:
        """The signals this kind of touchpoint matches, whatever its values (those with values still to check)."""
        names = [*index.by_event.get(tp.event or "", ()), *index.by_category.get(tp.category, ())]
        signals = [(name, self.signals[name]) for name in names]
        return tuple(
            (name, signal if signal.reads_values() else None)
            for name, signal in signals
            if signal.matches_kind(tp.type, tp.event, tp.category)
        )

    def climbs_from(self, stage: Stage) -> tuple[Climb, ...]:
        """The stages a customer at ``stage`` may move to, highest first, as the rules file orders their conditions."""
        return _INDEXES[id(self)].climbs[stage]

    def climbs_on(self, stage: Stage, signals: list[str]) -> tuple[Climb, ...]:
        """``climbs_from(stage)`` with only the conditions that read one of ``signals``, in the same order."""
        index = _INDEXES[id(self)]
        key = (stage, tuple(signals))
        found = index.climbs_on.get(key)
        if found is None:
            narrowed = (Climb(c.stage, tuple(k for k in c.checks if k[1] in signals)) for c in index.climbs[stage])
            found = index.climbs_on[key] = tuple(c for c in narrowed if c.checks)
        return found

    def windowed_signals(self, above: Stage | None) -> frozenset[str]:
        """Signals whose event times a rule of a stage above ``above`` still needs."""
        return _INDEXES[id(self)].windowed[above]

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
