"""Campaign email rendering: Jinja2 in a sandbox, since templates arrive through the API.

A missing trait renders empty (``ChainableUndefined``) rather than failing the send: customers'
traits vary and an author cannot be expected to guard every one. Syntax errors are caught when a
template is saved (``check_template``); errors at render time become ``TemplateError`` too, so the
delivery code can fail that one send permanently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from campaigns.definitions import EmailTemplate

Part = Literal["subject", "html", "text"]
PARTS: tuple[Part, ...] = ("subject", "html", "text")


@jinja2.pass_context
def _at_render_time(context: jinja2.runtime.Context, value: Any) -> Any:
    """Identity; taking the context keeps Jinja from computing constant output while compiling."""
    return value


# Nothing is computed while a template compiles (no optimizer, a finalize that needs the render's
# context): a template is compiled, to be checked, in the service's own process when it is saved,
# and `{{ 'x' * 10**9 }}` must cost its memory only when rendered, in the render process.
_OPTIONS: dict[str, Any] = {"undefined": jinja2.ChainableUndefined, "optimized": False, "finalize": _at_render_time}
_HTML_ENV = ImmutableSandboxedEnvironment(autoescape=True, **_OPTIONS)
_PLAIN_ENV = ImmutableSandboxedEnvironment(autoescape=False, **_OPTIONS)
# Line breaks and other control characters: in a header they could start a new one or break the message.
_HEADER_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]+")
# Error texts may quote context values; addresses are cut out so they cannot reach a log line.
_EMAIL = re.compile(r"[^\s'\"<>@]+@[^\s'\"<>@]+")


class TemplateError(ValueError):
    """A part of an email template that does not compile or render; ``part`` names which."""

    def __init__(self, part: Part, detail: str) -> None:
        super().__init__(f"{part}: {detail}")
        self.part = part
        self.detail = detail


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


@lru_cache(maxsize=2048)
def _compiled(part: Part, source: str) -> jinja2.Template:
    # Keyed by source, so a campaign edited through the API compiles anew while unchanged ones hit.
    env = _HTML_ENV if part == "html" else _PLAIN_ENV
    try:
        tree = env.parse(source)
        for node in tree.find_all((jinja2.nodes.EvalContextModifier, jinja2.nodes.ScopedEvalContextModifier)):
            # the compiler evaluates `{% autoescape <expression> %}`: only a literal is taken
            if not all(isinstance(option.value, jinja2.nodes.Const) for option in node.options):
                raise jinja2.TemplateSyntaxError("autoescape takes true or false", node.lineno)
        return env.from_string(tree)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(part, f"line {exc.lineno}: {_redacted(exc.message or 'syntax error')}") from None


def check_template(template: EmailTemplate) -> None:
    """Raise ``TemplateError`` naming the first part (subject, html, text) that does not compile."""
    for part in PARTS:
        _compiled(part, getattr(template, part))


def render_email(template: EmailTemplate, context: dict[str, Any]) -> RenderedEmail:
    """Subject and text verbatim (subject on one line: no header injection), html autoescaped.

    In this process, with no limit on memory or time: the delivery code renders through
    ``campaigns.render_process``, which runs ``render_part`` in a child with both.
    """
    return assemble({part: render_part(part, getattr(template, part), context) for part in PARTS})


def assemble(rendered: dict[Part, str]) -> RenderedEmail:
    """The email of rendered parts: the subject on one line (no header injection)."""
    subject = _HEADER_UNSAFE.sub(" ", rendered["subject"]).strip()
    return RenderedEmail(subject=subject, html=rendered["html"], text=rendered["text"])


def render_part(part: Part, source: str, context: dict[str, Any]) -> str:
    try:
        return _compiled(part, source).render(context)
    except jinja2.TemplateError as exc:  # undefined call, sandbox refusal
        raise TemplateError(part, _redacted(f"{type(exc).__name__}: {exc.message or ''}")) from None
    except (ArithmeticError, TypeError, ValueError, LookupError) as exc:
        raise TemplateError(part, _redacted(f"{type(exc).__name__}: {exc}")) from None
    except MemoryError:  # past the render process's limit
        raise TemplateError(part, "MemoryError: the template needs too much memory") from None
    except RecursionError:  # a macro calling itself without end
        raise TemplateError(part, "RecursionError: the template recurses too deeply") from None


def _redacted(message: str) -> str:
    return _EMAIL.sub("<address>", message)
