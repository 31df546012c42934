"""Campaign templates rendered in a child process, with a memory limit and a time limit.

Jinja's sandbox keeps a template away from Python's internals, not from the machine's resources:
``{{ 'x' * 10**9 }}``, a macro that doubles a string forty times, or two nested ``range(100000)``
loops would take the campaigns process's memory, or its delivery loop for hours. Here a child
process renders with an address-space limit (``RLIMIT_AS``: an allocation past it is a
``MemoryError``), the parent waits a bounded time for each email once the child is up, and a part
may not render to more than any email needs. Past a limit the send fails as a ``TemplateError``
(the delivery code fails it for good, as any template that cannot render), the template is
remembered so its next sends fail at once, and a fresh child renders the next email. A child that
dies for another reason, or does not start, makes the send a ``TransientFailure`` (retried later).
The child is started on the first email and shared by every caller in the process; signals to the
process group leave it be, and it ends with its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import resource
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from campaigns.channels import TransientFailure
from campaigns.definitions import EmailTemplate
from campaigns.templates import PARTS, Part, RenderedEmail, TemplateError, assemble, render_part

MEMORY_BUDGET_BYTES = 256 * 1024 * 1024  # above what the child uses once it has imported Jinja
TIMEOUT_S = 10.0  # for a whole email, once the child is up; a template that needs more is refused
STARTUP_TIMEOUT_S = 60.0  # a child that is not up by then: the send is retried later
MAX_PART_CHARS = 2 * 1024 * 1024  # far above any real email; more is a template gone wrong
REFUSED_KEPT = 256  # templates that hit a limit, failed at once afterwards instead of costing it again
PR_SET_PDEATHSIG = 1


def _address_space() -> int | None:
    """This process's virtual memory size, in bytes (Linux); None where /proc does not say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _serve(conn: Connection, budget: int) -> None:
    """The child: render each email's parts in order, answering one message per part."""
    # The parent ends it (SIGKILL, or closing the pipe): a Ctrl-C or `clm down` reaching the whole
    # process group must not fail the email in hand. If the parent dies, so does it (Linux).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    size = _address_space()
    if size is not None:
        resource.setrlimit(resource.RLIMIT_AS, (size + budget, size + budget))
    conn.send(("ready", None))
    while True:
        try:
            sources, context = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        for part in PARTS:
            try:
                text = render_part(part, sources[part], context)
            except TemplateError as exc:
                if exc.detail.startswith("MemoryError"):
                    conn.send(("limit", exc.detail))
                    return  # after a failed allocation a fresh child is the safe one
                conn.send(("error", exc.detail))
                break
            except Exception as exc:  # unforeseen: that email fails, the child serves the next
                conn.send(("error", type(exc).__name__))
                break
            if len(text) > MAX_PART_CHARS:
                conn.send(("limit", f"over the limit: renders more than {MAX_PART_CHARS // 1024 // 1024} MiB"))
                break
            conn.send(("ok", text))


@dataclass
class RenderProcess:
    """Renders emails in the child; one email at a time (the child is a single process)."""

    budget_bytes: int = MEMORY_BUDGET_BYTES
    timeout_s: float = TIMEOUT_S
    serve: Callable[[Connection, int], None] = _serve  # the child's loop (a module-level function)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _process: BaseProcess | None = None
    _conn: Connection | None = None
    _refused: OrderedDict[tuple[Part, str], str] = field(default_factory=OrderedDict)

    async def render_email(self, template: EmailTemplate, context: dict[str, Any]) -> RenderedEmail:
        sources = {part: getattr(template, part) for part in PARTS}
        return assemble(await asyncio.to_thread(self._render, sources, context))

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _render(self, sources: dict[Part, str], context: dict[str, Any]) -> dict[Part, str]:
        with self._lock:
            for part in PARTS:
                refused = self._refused.get((part, sources[part]))
                if refused is not None:
                    raise TemplateError(part, refused)
            for attempt in (1, 2):
                rendered: dict[Part, str] = {}
                try:
                    return self._exchange(sources, context, rendered)
                except (EOFError, OSError):  # the child died (killed, or crashed past its limit)
                    self._stop()
                    if rendered or attempt == 2:
                        break
            # Not known to be the template's fault: the send is retried later, a bounded number of times.
            raise TransientFailure("the render process ended while rendering an email")

    def _exchange(
        self, sources: dict[Part, str], context: dict[str, Any], rendered: dict[Part, str]
    ) -> dict[Part, str]:
        """One email: its parts arrive in order, so a timeout or a death names the part at fault."""
        conn = self._started()
        deadline = time.monotonic() + self.timeout_s
        conn.send((sources, context))
        for part in PARTS:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                self._stop()
                raise self._refuse(part, sources[part], f"over the limit: takes longer than {self.timeout_s:g} s")
            status, value = conn.recv()
            if status == "limit":
                self._stop()  # past a memory limit it ends itself: the next email gets a fresh one at once
                raise self._refuse(part, sources[part], value)
            if status == "error":
                raise TemplateError(part, value)
            rendered[part] = value
        return rendered

    def _refuse(self, part: Part, source: str, detail: str) -> TemplateError:
        self._refused[(part, source)] = detail
        while len(self._refused) > REFUSED_KEPT:
            self._refused.popitem(last=False)
        return TemplateError(part, detail)

    def _started(self) -> Connection:
        if self._process is None or self._conn is None or not self._process.is_alive():
            self._stop()
            context = multiprocessing.get_context("spawn")
            parent, child = context.Pipe()
            process = context.Process(target=self.serve, args=(child, self.budget_bytes), daemon=True)
            process.start()
            child.close()
            self._process, self._conn = process, parent
            try:  # the start-up (imports) is not the first email's time
                up = parent.poll(STARTUP_TIMEOUT_S) and parent.recv() == ("ready", None)
            except (EOFError, OSError):
                up = False
            if not up:
                self._stop()
                raise TransientFailure("the render process did not start")
        return self._conn

    def _stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            self._process.kill()
            self._process.join(5)
        self._process = self._conn = None


# The one child of this process: stateless, so every sender shares it.
RENDERER = RenderProcess()
