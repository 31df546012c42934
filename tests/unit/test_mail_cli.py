"""`clm mail list` and `clm mail show` over a folder of .eml files as the sink writes them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner, Result

from campaigns.channels.email import build_message
from campaigns.templates import RenderedEmail
from clm_cli.main import app
from clm_shared.settings import Settings, get_settings

IDS = ["20260101-090000-000001-0000", "20260101-090000-000001-0001", "20260102-100000-123456-0000"]


@pytest.fixture
def mail(tmp_path: Path) -> Path:
    folder = tmp_path / "mail"
    folder.mkdir()
    settings = Settings(data_dir=tmp_path, campaigns_signing_key=SecretStr("s" * 32))
    for number, message_id in enumerate(IDS):
        rendered = RenderedEmail(
            subject=f"Subject {number}", html=f"<p>[bold]html {number}[/bold]</p>", text=f"text {number} [b]kept[/b]"
        )
        message = build_message(
            settings,
            f"customer{number}@example.org",
            rendered,
            message_id=f"send-{number}",
            unsubscribe_url="http://u/1",
        )
        (folder / f"{message_id}.eml").write_bytes(message.as_bytes())
    (folder / ".20260103-000000-000000-0000.tmp").write_bytes(b"half a mess")  # being written: never listed
    return folder


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, ["mail", *args], env={"COLUMNS": "200", **(env or {})})


def test_list_shows_each_message_oldest_first(mail: Path) -> None:
    result = run("list", "--dir", str(mail))
    assert result.exit_code == 0
    rows = [line for line in result.output.splitlines() if "Subject " in line]
    assert [row.split()[1] for row in rows] == IDS
    assert "customer0@example.org" in rows[0] and "Subject 0" in rows[0]
    assert "2026-" in rows[0]  # the Date header, readable


def test_list_last_keeps_the_newest(mail: Path) -> None:
    result = run("list", "--dir", str(mail), "--last", "1")
    assert result.exit_code == 0
    assert IDS[2] in result.output and IDS[0] not in result.output
    assert "2 older messages not shown" in result.output


def test_list_reads_the_data_dir_by_default(mail: Path) -> None:
    get_settings.cache_clear()
    try:
        result = run("list", env={"CLM_DATA_DIR": str(mail.parent)})
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0
    assert all(message_id in result.output for message_id in IDS)


def test_an_empty_folder_says_so(tmp_path: Path) -> None:
    result = run("list", "--dir", str(tmp_path))
    assert result.exit_code == 0
    assert "no messages in" in result.output


def test_show_prints_the_headers_and_the_text_part_verbatim(mail: Path) -> None:
    result = run("show", IDS[1], "--dir", str(mail))
    assert result.exit_code == 0
    assert "Subject: Subject 1" in result.output
    assert "To: customer1@example.org" in result.output
    assert "Message-ID: <send-1@clm>" in result.output
    assert "List-Unsubscribe: <http://u/1>" in result.output
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in result.output
    assert "text 1 [b]kept[/b]" in result.output  # square brackets are not taken for console markup
    assert "html 1" not in result.output


def test_show_html_prints_the_html_part(mail: Path) -> None:
    result = run("show", IDS[2], "--dir", str(mail), "--html")
    assert result.exit_code == 0
    assert "<p>[bold]html 2[/bold]</p>" in result.output


def test_show_takes_a_unique_prefix(mail: Path) -> None:
    result = run("show", "20260102", "--dir", str(mail))
    assert result.exit_code == 0
    assert "Subject: Subject 2" in result.output


@pytest.mark.parametrize(("given", "says"), [("20260101", "matches several messages"), ("nope", "is not a message")])
def test_show_refuses_an_ambiguous_or_unknown_id(mail: Path, given: str, says: str) -> None:
    result = run("show", given, "--dir", str(mail))
    assert result.exit_code == 1
    assert says in result.output and "clm mail list" in result.output
