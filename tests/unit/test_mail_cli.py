"""`clm mail list` and `clm mail show` over a folder of .eml files as the sink writes them."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from pydantic import SecretStr
from rich.console import Console
from typer.testing import CliRunner, Result

from campaigns.channels.email import build_message
from campaigns.mail_sink import is_mail_sink
from campaigns.templates import RenderedEmail
from clm_cli.infra.process import InfraError, free_port
from clm_cli.main import app
from clm_cli.stack import MAIL_SINK, runs_mail_sink
from clm_cli.supervisor import Supervisor, stop_services
from clm_shared.settings import Settings, get_settings
from tests.waiting import wait_for

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


# --- `clm up` runs the sink ------------------------------------------------------------------------


def quiet_supervisor(settings: Settings) -> Supervisor:
    return Supervisor(settings, Console(file=io.StringIO()))


async def test_clm_up_starts_the_sink_and_clm_down_stops_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The children read their settings from the environment, as under `clm up`.
    monkeypatch.setenv("CLM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CLM_SMTP_PORT", str(free_port()))
    monkeypatch.delenv("CLM_SMTP_HOST", raising=False)
    settings = Settings()
    assert runs_mail_sink(settings)
    supervisor = quiet_supervisor(settings)
    pumps: list[asyncio.Task[None]] = []
    try:
        await supervisor._spawn_mail_sink(pumps)
        process = supervisor.children[MAIL_SINK]
        await wait_for(lambda: is_mail_sink(settings.smtp_port), timeout_s=30, what="the sink to greet")
        assert (tmp_path / "run" / f"{MAIL_SINK}.pid").exists()
        # A second `clm up` leaves the running sink alone.
        again = quiet_supervisor(settings)
        await again._spawn_mail_sink(pumps)
        assert again.children == {}
        assert MAIL_SINK in await asyncio.to_thread(stop_services, settings)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        assert not (tmp_path / "run" / f"{MAIL_SINK}.pid").exists()
    finally:
        await supervisor.shutdown()
        await asyncio.gather(*pumps)


async def test_clm_up_refuses_a_port_another_program_holds(tmp_path: Path) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        supervisor = quiet_supervisor(Settings(data_dir=tmp_path, smtp_port=port))
        with pytest.raises(InfraError, match="CLM_SMTP_PORT"):
            await supervisor._spawn_mail_sink([])
        assert supervisor.children == {}
    finally:
        server.close()
        await server.wait_closed()


def test_no_sink_when_an_smtp_server_is_set() -> None:
    assert not runs_mail_sink(Settings(smtp_host="smtp.example.net"))
