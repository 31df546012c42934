"""The suite's own check that nothing it logged holds a secret or an email address can fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.secret_watch import find_leaks

ROOT = Path(__file__).resolve().parents[2]


def test_leaks_are_found_and_named_without_the_secret() -> None:
    outputs = [("a", "request refused for key clmwk_s3cretvalue"), ("b", "sent to ada@example.com"), ("c", "fine")]
    leaks = list(find_leaks(outputs, ["clmwk_s3cretvalue"]))
    assert leaks == [
        "a: secret #0 (17 characters) appears in the output",
        "b: an email address appears in the output (example.com domain)",
    ]
    assert not any("s3cret" in line or "ada@" in line for line in leaks)


def test_a_run_whose_tests_log_a_secret_fails(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(
        """
        import logging
        from tests.secret_watch import remember_secret

        def test_logs_a_key():
            logging.getLogger("x").warning("refused %s", remember_secret("clmwk_abcdefghijkl"))

        def test_quiet():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "tests.secret_watch")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*secrets in the captured logs*", "*test_logs_a_key*secret #0*"])
    assert "abcdefghijkl" not in result.stdout.str()
