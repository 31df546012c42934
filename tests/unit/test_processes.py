"""Pid files name one process for good, and stopping a service stops its worker processes too."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from clm_cli.infra.process import alive, group_members, read_pid, start_time, terminate, write_pid
from clm_cli.supervisor import Supervisor
from clm_shared.settings import Settings
from tests.waiting import wait_for

# A parent that starts a worker and leaves it behind when it is signalled, as a uvicorn master
# whose workers outlive it would.
PARENT_WITH_WORKER = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print(worker.pid, flush=True)
time.sleep(300)
"""


def _start_group() -> tuple[subprocess.Popen[str], int]:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_WITH_WORKER], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    return parent, worker


async def test_terminating_a_service_stops_its_workers_too() -> None:
    parent, worker = _start_group()
    try:
        assert sorted(group_members(parent.pid)) == sorted([parent.pid, worker])
        terminate(parent.pid, timeout_s=10)
        parent.wait(10)
        await wait_for(lambda: not alive(worker), timeout_s=10, what="the worker gone")
        assert group_members(parent.pid) == []
    finally:
        for pid in (parent.pid, worker):
            if alive(pid):
                os.kill(pid, 9)


async def test_the_supervisor_stops_each_childs_whole_process_group(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PARENT_WITH_WORKER, stdout=asyncio.subprocess.PIPE, start_new_session=True
    )
    assert process.stdout is not None
    worker = int(await process.stdout.readline())
    supervisor = Supervisor(Settings(data_dir=tmp_path), console=None)  # type: ignore[arg-type]
    supervisor.children["ingest"] = process
    await supervisor.shutdown()
    assert process.returncode is not None
    await wait_for(lambda: not alive(worker), timeout_s=10, what="the worker gone")


def test_a_pid_file_names_the_process_by_pid_and_start_time(tmp_path: Path) -> None:
    path = tmp_path / "run" / "x.pid"
    write_pid(path, os.getpid())
    assert read_pid(path) == os.getpid()
    # The same pid with another start time: after a reboot the pid belongs to someone else.
    path.write_text(f"{os.getpid()} {int(start_time(os.getpid()) or 0) + 1}\n")
    assert read_pid(path) is None
    # A file from before start times were recorded is not trusted either.
    path.write_text(f"{os.getpid()}\n")
    assert read_pid(path) is None
    path.unlink()
    assert read_pid(path) is None
