"""Small process and port checks the launchers share."""

from __future__ import annotations

import os
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def two_free_ports() -> int:
    """A free port whose next port is free too (a Kafka broker's controller listens there)."""
    for _ in range(50):
        port = free_port()
        if not port_in_use(port + 1):
            return port
    raise InfraError("no two adjacent free ports on 127.0.0.1")


def alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def read_pid(pid_file: Path) -> int | None:
    """The pid in the file if that process still runs."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def terminate(pid: int, *, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if the process is still there after the timeout."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
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
