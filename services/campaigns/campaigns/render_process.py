"""Campaign templates rendered in a child process, with a memory limit and a time limit.

Jinja's sandbox keeps a template away from Python's internals, not from the machine's resources:
``{{ 'x' * 10**9 }}``, a macro that doubles a string forty times, or two nested ``range(100000)``
loops would take the campaigns process's memory, or its delivery loop for hours. Here a child
process renders with an address-space limit (``RLIMIT_AS``: an allocation past it is a
``MemoryError``, caught as a ``TemplateError``) and the parent waits a bounded time for each email.
Past either limit that send fails as a ``TemplateError`` (the delivery code fails it for good, as
any template that cannot render) and a fresh child renders the next one. The child is started on
the first email and is shared by every caller in the process; it ends with it (its pipe closes).
A child that dies before answering is replaced once; twice is a ``TransientFailure`` (retried).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import threading
import time
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
TIMEOUT_S = 10.0  # for a whole email; a template that needs more is refused


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
    size = _address_space()
    if size is not None:
        resource.setrlimit(resource.RLIMIT_AS, (size + budget, size + budget))
    while True:
        try:
            sources, context = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        for part in PARTS:
            try:
                text = render_part(part, sources[part], context)
            except TemplateError as exc:
                conn.send(("error", exc.detail))
                if exc.detail.startswith("MemoryError"):
                    return  # after a failed allocation a fresh child is the safe one
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

    async def render_email(self, template: EmailTemplate, context: dict[str, Any]) -> RenderedEmail:
        sources = {part: getattr(template, part) for part in PARTS}
        return assemble(await asyncio.to_thread(self._render, sources, context))

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _render(self, sources: dict[Part, str], context: dict[str, Any]) -> dict[Part, str]:
        with self._lock:
            for _attempt in (1, 2):
                rendered: dict[Part, str] = {}
                try:
                    return self._exchange(sources, context, rendered)
                except (EOFError, OSError):  # the child died: killed, or crashed past the memory limit
                    self._stop()
                    if rendered:  # on this email's template
                        raise TemplateError(PARTS[len(rendered)], "the render process ended rendering it") from None
            # Twice no answer at all: no child can start here (or the subject crashes one). Not the
            # template's fault for sure, so the send is retried later, a bounded number of times.
            raise TransientFailure("the render process ended before rendering the email")

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
                raise TemplateError(part, f"took longer than {self.timeout_s:g} s to render")
            status, value = conn.recv()
            if status == "error":
                if value.startswith("MemoryError"):
                    self._stop()  # it ends itself; the next email waits for a fresh one, not for its exit
                raise TemplateError(part, value)
            rendered[part] = value
        return rendered

    def _started(self) -> Connection:
        if self._process is None or self._conn is None or not self._process.is_alive():
            self._stop()
            context = multiprocessing.get_context("spawn")
            parent, child = context.Pipe()
            process = context.Process(target=self.serve, args=(child, self.budget_bytes), daemon=True)
            process.start()
            child.close()
            self._process, self._conn = process, parent
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
