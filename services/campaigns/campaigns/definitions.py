"""What a campaign is: a trigger, an audience, flat steps and guardrails, validated with the field named.

Definitions come from the shipped YAML files, an operator's folder (``CLM_CAMPAIGNS_DIR``) and the
API; all three go through ``Campaign`` so a wrong one is refused the same way everywhere. Steps are a
flat list a run walks by index: a ``split`` assigns the run's variant, and a later step may be only
for one variant or change its template per variant, which keeps a run's position one integer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from clm_shared.schemas.lifecycle import Health, Stage

SHIPPED_DIR = Path(__file__).parent / "shipped"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_ISO_DURATION = TypeAdapter(timedelta)
MAX_DURATION = timedelta(weeks=260)
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def parse_duration(value: object) -> timedelta:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"7d"``, ``"2w"`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    elif isinstance(value, str) and value.strip().upper().startswith("P"):
        try:
            seconds = _ISO_DURATION.validate_python(value.strip()).total_seconds()
        except ValidationError:
            raise ValueError(f"a duration like 90s, 15m, 1h, 7d, 2w or PT1H is required, got {value!r}") from None
    else:
        raise ValueError(f"a duration like 90s, 15m, 1h, 7d or 2w is required, got {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError("a duration of at most 5 years (260w) is allowed")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


# Written back as "1h", "7d": what an operator wrote, and what the stored versions keep.
Duration = Annotated[
    timedelta,
    PlainSerializer(lambda value: format_duration(value), return_type=str, when_used="json"),
    Field(json_schema_extra={"examples": ["1h", "7d"]}),
]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Trigger(_Strict):
    """Exactly one of: a stage entered, a health reached, a touchpoint event name."""

    stage_entered: Stage | None = None
    health_changed_to: Health | None = None
    event: str | None = Field(None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _exactly_one(self) -> Trigger:
        given = [name for name in ("stage_entered", "health_changed_to", "event") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of stage_entered, health_changed_to, event")
        return self

    @property
    def kind(self) -> Literal["stage", "health", "event"]:
        if self.stage_entered is not None:
            return "stage"
        return "health" if self.health_changed_to is not None else "event"


Operator = Literal["eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "exists", "missing", "contains"]


class Condition(_Strict):
    """``field`` is ``stage``, ``health``, ``traits.<name>`` or ``properties.<name>`` (of the trigger)."""

    field: str = Field(pattern=r"^(stage|health|(traits|properties)\.[A-Za-z0-9_.\-]+)$")
    op: Operator = "eq"
    value: Any = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> Condition:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"value: op {self.op} needs a list")
        if self.op in ("gt", "gte", "lt", "lte") and (
            not isinstance(self.value, int | float) or isinstance(self.value, bool)
        ):
            raise ValueError(f"value: op {self.op} needs a number")
        return self


class EmailTemplate(_Strict):
    """Jinja2 source, rendered in a sandbox; ``html`` is autoescaped, ``text`` is plain."""

    subject: str = Field(min_length=1, max_length=500)
    html: str = Field(min_length=1, max_length=200_000)
    text: str = Field(min_length=1, max_length=200_000)


class SendStep(_Strict):
    type: Literal["send"]
    name: str = Field(min_length=1, max_length=100)
    channel: Literal["email", "webhook"] = "email"
    template: EmailTemplate | None = None
    variant_templates: dict[str, EmailTemplate] = Field(default_factory=dict)
    url: str | None = Field(None, pattern=r"^https?://", max_length=2000)
    only_variant: str | None = None
    include: list[Literal["recommendations", "referral_code"]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _channel_needs(self) -> SendStep:
        if self.channel == "email" and self.template is None:
            raise ValueError("template: an email step needs a template (subject, html, text)")
        if self.channel == "webhook" and self.url is None:
            raise ValueError("url: a webhook step needs a url")
        return self

    def template_for(self, variant: str | None) -> EmailTemplate | None:
        if variant is not None and variant in self.variant_templates:
            return self.variant_templates[variant]
        return self.template


class WaitStep(_Strict):
    type: Literal["wait"]
    duration: Duration

    _duration = field_validator("duration", mode="before")(parse_duration)


class WaitForEventStep(_Strict):
    """Wait until ``event`` arrives (matching the trigger's ``match`` properties) or ``timeout`` passes."""

    type: Literal["wait_for_event"]
    event: str = Field(min_length=1, max_length=200)
    match: list[str] = Field(default_factory=list, description="Properties that must equal the trigger's.")
    timeout: Duration
    on_event: Literal["exit", "continue"] = "exit"
    on_timeout: Literal["exit", "continue"] = "continue"

    _timeout = field_validator("timeout", mode="before")(parse_duration)


class SplitStep(_Strict):
    """Assigns the run a variant, deterministically from customer and campaign, by weight."""

    type: Literal["split"]
    variants: dict[str, int] = Field(min_length=2)

    @field_validator("variants")
    @classmethod
    def _weights(cls, value: dict[str, int]) -> dict[str, int]:
        if any(weight < 0 for weight in value.values()) or sum(value.values()) <= 0:
            raise ValueError("weights must be non-negative and add up to more than 0")
        return value


Step = Annotated[SendStep | WaitStep | WaitForEventStep | SplitStep, Field(discriminator="type")]


class Campaign(_Strict):
    id: str = Field(description="Lower-case letters, digits, - and _.")
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    trigger: Trigger
    audience: list[Condition] = Field(default_factory=list, description="All must hold when the trigger fires.")
    steps: list[Step] = Field(min_length=1)
    transactional: bool = Field(False, description="Exempt from the frequency cap and not counted by it.")
    holdout_percent: float | None = Field(None, ge=0, le=100, description="None: CLM_CAMPAIGNS_HOLDOUT_PERCENT.")
    quiet_hours: bool = Field(True, description="Sends wait for the end of the customer's quiet hours.")
    exit_on: list[str] = Field(default_factory=list, description="Touchpoint events that end a run early.")

    @field_validator("id")
    @classmethod
    def _id_is_slug(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("lower-case letters, digits, - and _ only, starting with a letter or digit, at most 64")
        return value

    @model_validator(mode="after")
    def _variants_are_split(self) -> Campaign:
        variants: set[str] = set()
        for index, step in enumerate(self.steps):
            if isinstance(step, SplitStep):
                variants |= set(step.variants)
            elif isinstance(step, SendStep):
                named = ({step.only_variant} if step.only_variant else set()) | set(step.variant_templates)
                unknown = named - variants
                if unknown:
                    raise ValueError(
                        f"steps.{index}: variant {sorted(unknown)[0]!r} is not assigned by an earlier split"
                    )
        if not any(isinstance(step, SendStep) for step in self.steps):
            raise ValueError("steps: a campaign needs at least one send step")
        return self

    def send_steps(self) -> list[tuple[int, SendStep]]:
        return [(index, step) for index, step in enumerate(self.steps) if isinstance(step, SendStep)]


class DefinitionError(ValueError):
    """A campaign definition is wrong; the message names the file (if any) and the field."""


_STEP_TYPES = frozenset({"send", "wait", "wait_for_event", "split"})
# a model validator names its field at the start of its message: "template: an email step needs ..."
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*): (.+)$", re.DOTALL)


def _path(loc: tuple[int | str, ...]) -> list[str]:
    """The field path of an error: no validator wrappers, and no step type after ``steps.<n>``.

    The discriminated union puts the tag in the location (``steps.1.send.template``); only that one
    position is dropped, so a variant or key that happens to be called ``send`` stays in the path.
    """
    kept = [part for part in loc if not (isinstance(part, str) and part.startswith("function-"))]
    if len(kept) >= 3 and kept[0] == "steps" and isinstance(kept[1], int) and kept[2] in _STEP_TYPES:
        del kept[2]
    return [str(part) for part in kept]


def describe(exc: ValidationError) -> str:
    """``steps.1.duration: a duration like ...``: each problem with its field path, never the input."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        path = _path(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if match := _FIELD_PREFIX.match(message):
            path.append(match.group(1))
            message = match.group(2)
        parts.append(f"{'.'.join(path)}: {message}" if path else message)
    return "; ".join(parts)


def parse_campaign(data: Any, *, origin: str = "") -> Campaign:
    """A valid campaign whose templates compile, or a DefinitionError naming the field."""
    prefix = f"{origin}: " if origin else ""
    try:
        campaign = Campaign.model_validate(data)
    except ValidationError as exc:
        raise DefinitionError(prefix + describe(exc)) from None
    unstorable = "; ".join(unstorable_fields(campaign.model_dump(exclude_none=True)))
    if unstorable:
        raise DefinitionError(prefix + unstorable)
    problem = template_problem(campaign)
    if problem:
        raise DefinitionError(prefix + problem)
    return campaign


_INT64 = 2**63
# Far past any audience value a person writes; pydantic cannot serialize a few hundred levels.
MAX_NESTING = 64
NUL_MESSAGE = "contains the NUL character (U+0000), which cannot be stored"
SURROGATE_MESSAGE = "contains a lone surrogate (U+D800 to U+DFFF), half of a character, which cannot be stored"


def unstorable_fields(value: Any, path: str = "", depth: int = 0) -> Iterator[str]:
    """``audience.0.value: a finite number is required``: what the jsonb column would refuse or change.

    PostgreSQL text cannot hold a NUL, nor UTF-8 a lone surrogate (each a 500 at the insert); JSON
    has no spelling for NaN or infinity (stored as null, the stored version then no longer a valid
    campaign: every listing failed); an integer past 64 bits comes back as a float; a value nested a
    few hundred levels deep cannot be serialized (a 500). Such a definition is refused, naming the field.
    """
    here = path or "(definition)"
    if depth > MAX_NESTING:
        yield f"{here}: nested more than {MAX_NESTING} levels deep"
    elif isinstance(value, str):
        if problem := _text_problem(value):
            yield f"{here}: {problem}"
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            yield f"{here}: an integer within the signed 64-bit range is required"
    elif isinstance(value, float):
        if not math.isfinite(value):
            yield f"{here}: a finite number is required"
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and (problem := _text_problem(key)):
                yield f"{here}: a key {problem}"
                continue
            yield from unstorable_fields(item, f"{path}.{key}" if path else str(key), depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from unstorable_fields(item, f"{path}.{index}" if path else str(index), depth + 1)


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return NUL_MESSAGE
    try:
        text.encode()
    except UnicodeEncodeError:  # JSON's "\ud83d" alone: half of a character, not text
        return SURROGATE_MESSAGE
    return None


def template_problem(campaign: Campaign) -> str | None:
    """``steps.0.template.html: line 3: ...`` for the first template that does not compile."""
    from campaigns.templates import TemplateError, check_template  # templates build on these models

    for index, step in campaign.send_steps():
        named = [("template", step.template)] + [
            (f"variant_templates.{k}", t) for k, t in step.variant_templates.items()
        ]
        for where, template in named:
            if template is None:
                continue
            try:
                check_template(template)
            except TemplateError as exc:
                return f"steps.{index}.{where}.{exc}"
    return None


def load_file(path: Path) -> Campaign:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DefinitionError(f"{path.name}: not valid YAML ({exc.__class__.__name__})") from None
    return parse_campaign(data, origin=path.name)


def load_folder(folder: Path) -> list[Campaign]:
    """Every ``*.yaml`` in a folder, sorted by name; ids must be unique."""
    campaigns = [load_file(path) for path in sorted(folder.glob("*.yaml"))]
    seen: set[str] = set()
    for campaign in campaigns:
        if campaign.id in seen:
            raise DefinitionError(f"{folder}: two files define campaign {campaign.id!r}")
        seen.add(campaign.id)
    return campaigns


def shipped_campaigns(extra: Path | None = None) -> list[Campaign]:
    """The shipped defaults, then an operator's folder (which may replace one by using its id)."""
    by_id = {c.id: c for c in load_folder(SHIPPED_DIR)}
    if extra is not None:
        by_id.update({c.id: c for c in load_folder(extra)})
    return list(by_id.values())
