from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from clm_shared.schemas.lifecycle import Stage
from stage_engine.rules import DEFAULT_RULES_FILE, RulesError, load_rules, parse_rules


def default_raw() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_RULES_FILE.read_text())
    return raw


def test_the_shipped_rules_load() -> None:
    rules = load_rules()
    assert [r.stage for r in rules.stages] == list(Stage)
    assert rules.health.at_risk_after_days == 60 and rules.health.churned_after_days == 120


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda r: r["stages"][2]["when"][0].update(count=0),
            r"stages\[2\] \(conversion\)\.when\[0\] \(first_paid_order\)\.count",
        ),
        (
            lambda r: r["stages"][3]["when"][0].update(signal="nope"),
            "stage retention, rule second_paid_order: unknown signal 'nope'",
        ),
        (
            lambda r: r["stages"][1].update(**{"from": ["advocacy"]}),
            "stage engagement: `from` advocacy is not an earlier stage",
        ),
        (lambda r: r["stages"].pop(4), "must list discovery, engagement, conversion, retention, loyalty, advocacy"),
        (lambda r: r["signals"]["paid_order"].update(revenue_abov=0), r"signals\.paid_order\.revenue_abov"),
        (lambda r: r["health"].update(churned_after_days=30), "churned_after_days must be longer"),
        (lambda r: r["signals"].update(empty={}), "needs `category` or `events`"),
    ],
)
def test_a_wrong_rules_file_names_the_rule_and_field(mutate: Any, message: str) -> None:
    raw = default_raw()
    mutate(raw)
    with pytest.raises(RulesError, match=message):
        parse_rules(raw)


def test_unreadable_or_broken_files_say_so(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("signals: [unclosed")
    with pytest.raises(RulesError, match="not valid YAML"):
        load_rules(broken)


def test_the_engine_refuses_to_start_on_a_wrong_rules_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    raw = default_raw()
    raw["stages"][4]["when"][1]["at_least"] = "lots"
    bad = tmp_path / "rules.yaml"
    bad.write_text(yaml.safe_dump(raw))
    done = subprocess.run(
        [sys.executable, "-m", "stage_engine"],
        env={"CLM_RULES_FILE": str(bad), "PATH": "/usr/bin:/bin", "CLM_STAGE_ENGINE_PORT": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "stages[4] (loyalty).when[1] (lifetime_revenue_500).at_least" in done.stderr
    assert "Traceback" not in done.stderr
