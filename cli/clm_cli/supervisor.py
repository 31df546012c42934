"""Runs the services as child processes in the foreground, with prefixed logs, until Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.text import Text

from campaigns.mail_sink import is_mail_sink
from clm_cli.infra.process import InfraError, port_in_use, read_pid, terminate, write_pid
from clm_cli.stack import MAIL_SINK, MAIL_SINK_MODULE, SERVICES, runs_mail_sink
from clm_shared.settings import Settings

SUPERVISOR = "clm-up"
COLORS = {"ingest": "cyan", "stage-engine": "magenta", "metrics": "green", "campaigns": "yellow", MAIL_SINK: "blue"}


def pid_file(settings: Settings, name: str) -> Path:
    return settings.data_dir / "run" / f"{name}.pid"


async def is_service(port: int, name: str) -> bool:
    """True when our service of that name already answers on the port."""
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            answer = await client.get(f"http://127.0.0.1:{port}/healthz")
        return answer.status_code == 200 and answer.json().get("service") == name
    except (httpx.HTTPError, ValueError):
        return False


@dataclass
class Supervisor:
    settings: Settings
    console: Console
    children: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    async def run(self) -> int:
        """Start what is not running yet, wait for readiness, then hold until a signal or a crash."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        pumps: list[asyncio.Task[None]] = []
        started_at = time.monotonic()
        try:
            await self._spawn(pumps)
        except BaseException:
            await self.shutdown()  # never leave half the platform running behind an error
            raise
        if not self.children:
            self.console.print("all four services are already running")
            return 0
        own_pid = pid_file(self.settings, SUPERVISOR)
        write_pid(own_pid, os.getpid())
        try:
            return await self._hold(stop, pumps, started_at)
        finally:
            own_pid.unlink(missing_ok=True)

    async def _spawn(self, pumps: list[asyncio.Task[None]]) -> None:
        if runs_mail_sink(self.settings):
            await self._spawn_mail_sink(pumps)
        for name, module in SERVICES.items():
            port = self.settings.port_of(name)
            if await is_service(port, name):
                self.console.print(f"{name} is already running on :{port}; leaving it as it is")
                continue
            if port_in_use(port):
                env_name = f"CLM_{name.replace('-', '_').upper()}_PORT"
                raise InfraError(f"port {port} for {name} is taken by another program: stop it or set {env_name}")
            await self._start(name, module, pumps)

    async def _spawn_mail_sink(self, pumps: list[asyncio.Task[None]]) -> None:
        port = self.settings.smtp_port
        if await is_mail_sink(port):
            self.console.print(f"the mail sink is already running on :{port}; leaving it as it is")
            return
        if port_in_use(port):
            raise InfraError(
                f"port {port} for the mail sink is taken by another program:"
                " stop it, set CLM_SMTP_PORT, or set CLM_SMTP_HOST to send through that server"
            )
        await self._start(MAIL_SINK, MAIL_SINK_MODULE, pumps)

    async def _start(self, name: str, module: str, pumps: list[asyncio.Task[None]]) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        self.children[name] = process
        write_pid(pid_file(self.settings, name), process.pid)
        pumps.append(asyncio.create_task(self._pump(name, process)))

    async def _hold(self, stop: asyncio.Event, pumps: list[asyncio.Task[None]], started_at: float) -> int:
        exited = [asyncio.create_task(p.wait()) for p in self.children.values()]
        ready = asyncio.create_task(self._wait_ready(started_at))
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopped, *exited], return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if stopped not in done:
            crashed = [n for n, p in self.children.items() if p.returncode is not None]
            self.console.print(f"[red]{', '.join(crashed)} exited; stopping the others[/red]")
            code = 1
        ready.cancel()
        await self.shutdown()
        for pump in pumps:
            await pump
        return code

    async def _wait_ready(self, started_at: float) -> None:
        pending = set(self.children)
        async with httpx.AsyncClient(timeout=2.0) as client:
            while pending:
                for name in list(pending):
                    if await self._is_ready(client, name):
                        pending.discard(name)
                await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started_at
        urls = ", ".join(
            f"{n} smtp://127.0.0.1:{self.settings.smtp_port}"
            if n == MAIL_SINK
            else f"{n} http://127.0.0.1:{self.settings.port_of(n)}"
            for n in sorted(self.children, key=lambda n: n == MAIL_SINK)  # the services first
        )
        self.console.print(f"[bold green]ready[/bold green] in {elapsed:.1f}s: {urls}  (Ctrl-C stops)")

    async def _is_ready(self, client: httpx.AsyncClient, name: str) -> bool:
        if name == MAIL_SINK:
            return await is_mail_sink(self.settings.smtp_port)
        try:
            answer = await client.get(f"http://127.0.0.1:{self.settings.port_of(name)}/readyz")
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    async def _pump(self, name: str, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        prefix = Text(f"{name:>12} | ", style=COLORS.get(name, "white"))
        async for raw in process.stdout:
            line = Text.from_ansi(raw.decode(errors="replace").rstrip("\n"))
            self.console.print(prefix + line, highlight=False, soft_wrap=True)

    async def shutdown(self) -> None:
        """SIGTERM every child's process group (workers included; they finish in-flight work), SIGKILL after 15 s."""
        running = [p for p in self.children.values() if p.returncode is None]  # a reaped pid may be reused
        await asyncio.gather(*(asyncio.to_thread(terminate, p.pid, timeout_s=15) for p in running))
        for name, process in self.children.items():
            await process.wait()
            pid_file(self.settings, name).unlink(missing_ok=True)


def stop_services(settings: Settings) -> list[str]:
    """Stop a running `clm up` (it then stops its services in order) and any service it left behind."""
    stopped = []
    up_pid = read_pid(pid_file(settings, SUPERVISOR))
    if up_pid is not None and up_pid != os.getpid():
        terminate(up_pid, timeout_s=60)
        stopped.append("clm up")
    for name in [*SERVICES, MAIL_SINK]:
        path = pid_file(settings, name)
        pid = read_pid(path)
        if pid is not None and pid != os.getpid():
            terminate(pid, timeout_s=15)
            stopped.append(name)
        path.unlink(missing_ok=True)
    return stopped
