"""A pytest plugin: no secret the suite used, and no email address, may appear in anything it logged.

Every test's captured stdout, stderr and log records are kept, with the log files of the services
the end-to-end tests run (``watch_output``). Secrets are remembered as the suite makes them (every
``secrets.token_urlsafe`` value: write keys, API tokens, generated keys; ``remember_secret`` for the
rest). At the end of the
session all of it is searched; a hit fails the run and names where it was, never the secret itself.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


@dataclass
class Watch:
    secrets: set[str] = field(default_factory=set)
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (where, text)
    leaks: list[str] = field(default_factory=list)


WATCH = Watch()


def remember_secret(value: str) -> str:
    """A secret the suite uses; returned as it is, so it can wrap the expression that makes it."""
    if len(value) >= 8:  # shorter values would match by chance
        WATCH.secrets.add(value)
    return value


def watch_output(where: str, text: str) -> None:
    """Output of a process the suite ran (a service's log file), to be searched with the rest."""
    WATCH.outputs.append((where, text))


def find_leaks(outputs: Iterable[tuple[str, str]], secrets: Iterable[str]) -> Iterator[str]:
    """One line per output that holds a secret or an email address: where, and what kind."""
    secrets = list(secrets)
    for where, text in outputs:
        for index, secret in enumerate(secrets):
            if secret in text:
                yield f"{where}: secret #{index} ({len(secret)} characters) appears in the output"
        found = EMAIL.search(text)
        if found:
            yield f"{where}: an email address appears in the output ({found.group(0).split('@')[1]} domain)"


def pytest_configure(config: pytest.Config) -> None:
    # Write keys, API tokens and the generated admin token and erasure key all come from here.
    original = secrets.token_urlsafe

    def remembered(nbytes: int | None = None) -> str:
        return remember_secret(original(nbytes))

    secrets.token_urlsafe = remembered


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, text in report.sections:
        if text:
            WATCH.outputs.append((f"{report.nodeid} ({name})", text))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    WATCH.leaks = list(find_leaks(WATCH.outputs, sorted(WATCH.secrets)))
    if WATCH.leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if WATCH.leaks:
        terminalreporter.section("secrets in the captured logs", red=True)
        for line in WATCH.leaks:
            terminalreporter.write_line(line)
    else:
        terminalreporter.write_line(
            f"secret watch: {len(WATCH.secrets)} secrets and email addresses searched for"
            f" in {len(WATCH.outputs)} captured outputs, none found"
        )


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
