"""Small process and port checks the launchers share."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


class InfraError(RuntimeError):
    """A problem the operator has to fix; its message is the one line that says what to do."""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int = 1) -> int:
    """The first of ``count`` adjacent free ports, chosen below the kernel's ephemeral range.

    A port the kernel handed out (bind to 0) lies in that range, where any outgoing connection of
    a busy test run can take it before the server binds it; ports below the range only servers use.
    """
    low, _ = _ephemeral_ports()
    floor = 10000
    if low - count <= floor:  # an unusual range: fall back to the kernel's choice
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if all(_bindable(port + i) for i in range(1, count)):
                return port
    else:
        for _ in range(200):
            port = random.randint(floor, low - count)
            if all(_bindable(port + i) for i in range(count)):
                return port
    raise InfraError(f"no {count} adjacent free ports on 127.0.0.1")


def free_port() -> int:
    return free_ports(1)


def two_free_ports() -> int:
    """A free port whose next port is free too (a Kafka broker's controller listens there)."""
    return free_ports(2)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]; None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) counts as gone."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def start_time(pid: int) -> str | None:
    """When the process started (clock ticks since boot): with the pid, it names one process for good."""
    fields = _stat_fields(pid)
    return fields[19] if fields is not None else None


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z" and fields[2] == str(pgid):
                members.append(int(entry.name))
    return members


def write_pid(pid_file: Path, pid: int) -> None:
    """Record a process as its pid and start time, so a recycled pid is never taken for it."""
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{pid} {start_time(pid)}\n")


def read_pid(pid_file: Path) -> int | None:
    """The pid in the file if that very process still runs (same pid and same start time).

    After a reboot or a crash the pid may belong to another program: it is never returned, so it is
    never signalled. A file without a start time (older versions) is treated as stale.
    """
    try:
        pid_text, recorded_start = pid_file.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    return pid if alive(pid) and start_time(pid) == recorded_start else None


def terminate(pid: int, *, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after the timeout; a process group leader is stopped with its whole group.

    Services and the broker run in sessions of their own: signalling the group reaches worker
    processes too, which would otherwise be orphaned when only their parent is signalled.
    """
    try:
        group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig) if group else os.kill(pid, sig)

    send(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while alive(pid) or (group and group_members(pid)):
        if time.monotonic() > deadline:
            send(signal.SIGKILL)
            break
        time.sleep(0.1)


def run(cmd: Sequence[str], *, what: str, hint: str, timeout_s: float = 600, **kwargs: object) -> str:
    """Run a command; on failure raise InfraError with the hint and the output's last lines."""
    try:
        done = subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            **kwargs,  # type: ignore[call-overload]
        )
    except FileNotFoundError as exc:
        raise InfraError(f"{what} failed: {cmd[0]} not found. {hint}") from exc
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"{what} timed out after {timeout_s:.0f}s. {hint}") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise InfraError(f"{what} failed (exit {done.returncode}). {hint}\n{tail}")
    return str(done.stdout)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
