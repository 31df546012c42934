"""Time `make up` on a fresh clone: cold (empty pip and Maven caches, nothing installed) and warm.

Run from the repository root: `.venv/bin/python bench/startup.py`. It clones HEAD into a scratch
folder, so the checkout's own .venv, .cache and .data are not touched.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(rb"ready\W+in (\d+\.\d+)s")


def time_make_up(clone: Path, env: dict[str, str]) -> tuple[float, float]:
    """Seconds from `make up` to 'ready', and the services' own share of it."""
    started = time.monotonic()
    process = subprocess.Popen(
        ["make", "up"], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    assert process.stdout is not None
    output = b""
    try:
        for line in process.stdout:
            output += line
            found = READY.search(line)
            if found:
                return time.monotonic() - started, float(found.group(1))
        raise SystemExit("make up ended before it was ready:\n" + output.decode(errors="replace")[-3000:])
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)


def main() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="clm-startup-"))
    scratch.chmod(0o755)
    clone = scratch / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {
        **os.environ,
        "PIP_NO_CACHE_DIR": "1",
        "MAVEN_OPTS": f"-Dmaven.repo.local={scratch / 'm2'}",
        "CLM_DATA_DIR": str(scratch / "data"),
    }
    try:
        cold, cold_services = time_make_up(clone, env)
        warm, warm_services = time_make_up(clone, env)
    finally:
        subprocess.run([str(clone / ".venv/bin/clm"), "down"], cwd=clone, env=env, capture_output=True, check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"cold make up: {cold:6.1f} s to ready (services {cold_services:.1f} s of it)")
    print(f"warm make up: {warm:6.1f} s to ready (services {warm_services:.1f} s of it)")


if __name__ == "__main__":
    main()
