"""`clm infra browser` installs Debian's chromium only when it is missing, and only as root."""

from __future__ import annotations

from pathlib import Path

import pytest

from clm_cli.infra import browser
from clm_cli.infra.process import InfraError


@pytest.fixture
def chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "chromium"
    monkeypatch.setattr(browser, "CHROMIUM", path)
    monkeypatch.setattr("clm_cli.infra.browser.shutil.which", lambda name: "/usr/bin/" + name)
    return path


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    ran: list[list[str]] = []

    def record(cmd: list[str], **_: object) -> str:
        ran.append(cmd)
        return ""

    monkeypatch.setattr(browser, "run", record)
    return ran


def test_an_installed_browser_is_left_alone(chromium: Path, commands: list[list[str]]) -> None:
    chromium.touch()
    assert browser.install_chromium() == chromium
    assert commands == []


def test_without_root_it_says_what_to_run(
    chromium: Path, commands: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("clm_cli.infra.browser.os.geteuid", lambda: 1000)
    with pytest.raises(InfraError, match=r"chromium is missing: run `apt-get install chromium` as root") as raised:
        browser.install_chromium()
    assert "\n" not in str(raised.value)
    assert commands == []


def test_as_root_it_installs_the_debian_package(
    chromium: Path, commands: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("clm_cli.infra.browser.os.geteuid", lambda: 0)

    def apt(cmd: list[str], **_: object) -> str:
        commands.append(cmd)
        if "install" in cmd:
            chromium.touch()
        return ""

    monkeypatch.setattr(browser, "run", apt)
    assert browser.install_chromium() == chromium
    assert commands == [["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]]


def test_a_package_without_the_binary_is_reported(
    chromium: Path, commands: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("clm_cli.infra.browser.os.geteuid", lambda: 0)
    with pytest.raises(InfraError, match="installed no"):
        browser.install_chromium()
