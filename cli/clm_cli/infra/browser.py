"""Chromium from Debian's packages, for the dashboard's browser tests (Playwright drives it).

Playwright's own browser downloads are not used: the tests launch this binary by its path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from clm_cli.infra.process import InfraError, run

CHROMIUM = Path("/usr/bin/chromium")
# Headless as root in a container: no sandbox, no GPU, and none of the browser's own network traffic.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def install_chromium() -> Path:
    """Install Debian's chromium package when the browser is missing; returns its path."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise InfraError(f"{CHROMIUM} is missing: run `apt-get install chromium` as root, then retry")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    hint = "Check that apt can reach Debian's package registry, then retry."
    run(["apt-get", "update", "-q"], what="apt-get update", hint=hint, env=env)
    run(["apt-get", "install", "-y", "-q", "chromium"], what="installing Chromium", hint=hint, env=env)
    if not CHROMIUM.exists():
        raise InfraError(f"the chromium package installed no {CHROMIUM}")
    return CHROMIUM
