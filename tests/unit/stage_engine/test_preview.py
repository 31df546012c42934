"""The rules preview on a fixed dataset: a rules change with a known effect gives exactly this report."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from clm_cli.main import app
from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.serde import JsonSerializer
from clm_shared.settings import get_settings
from stage_engine.preview import NOT_APPLICABLE, Counts, Preview, preview, preview_records
from stage_engine.rules import DEFAULT_RULES_FILE, Rules, RulesError, load_rules, parse_rules
from tests.utils.factories import T0, touchpoint

DAY = timedelta(days=1)


def default_raw() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_RULES_FILE.read_text())
    return raw


def two_paid_orders_for_conversion() -> Rules:
    raw = default_raw()
    raw["stages"][2]["when"][0]["count"] = 2  # conversion.first_paid_order
    return parse_rules(raw)


def dataset() -> list[Touchpoint]:
    """Eleven customers (one anonymous profile merged away), each with a known stage under both rule sets."""
    return [
        touchpoint("Product Viewed", customer="a-visitor", at=T0),  # discovery under both
        touchpoint("Signed Up", customer="b-signup", at=T0),  # engagement under both
        touchpoint("Signed Up", customer="c-signup-order", at=T0),
        touchpoint("Order Completed", customer="c-signup-order", at=T0 + DAY, revenue=50),  # conversion -> engagement
        *(touchpoint("Order Completed", customer=f"d{i}-order", at=T0 + DAY, revenue=50) for i in (4, 2, 3, 1)),
        touchpoint("Order Completed", customer="e-two-orders", at=T0, revenue=50),  # retention under both
        touchpoint("Order Completed", customer="e-two-orders", at=T0 + DAY, revenue=50),
        touchpoint("Subscription Started", customer="f-subscriber", at=T0 + DAY),  # conversion under both
        touchpoint(None, customer="g-identified", call_type="identify", traits={"plan": "pro"}, at=T0),  # no stage
        # An anonymous order merged into a signed-up customer: one customer, conversion -> engagement.
        touchpoint("Order Completed", customer="anon-h", at=T0, revenue=50),
        touchpoint("Signed Up", customer="h-merged", at=T0 + DAY),
        touchpoint(None, customer="h-merged", call_type="alias", previous_id="anon-h", at=T0 + DAY),
    ]


def test_two_paid_orders_for_conversion_moves_the_single_order_customers_down() -> None:
    report = preview(dataset(), load_rules(), two_paid_orders_for_conversion(), now=T0 + 2 * DAY)

    assert report.touchpoints == 15 and report.customers == 11
    assert report.stages == {
        "discovery": Counts(1, 5),
        "engagement": Counts(1, 3),
        "conversion": Counts(7, 1),
        "retention": Counts(1, 1),
        "loyalty": Counts(0, 0),
        "advocacy": Counts(0, 0),
        "none": Counts(1, 1),
    }
    assert report.stages["conversion"].difference == -6
    assert report.matrix == {
        ("discovery", "discovery"): 1,
        ("engagement", "engagement"): 1,
        ("conversion", "engagement"): 2,
        ("conversion", "discovery"): 4,
        ("conversion", "conversion"): 1,
        ("retention", "retention"): 1,
        ("none", "none"): 1,
    }
    assert report.examples == {
        ("conversion", "engagement"): ("c-signup-order", "h-merged"),
        ("conversion", "discovery"): ("d1-order", "d2-order", "d3-order"),  # the three smallest of four
    }
    assert report.moved == 6
    # Health applies from conversion: fewer customers have one under the new rules.
    assert report.health == {
        "active": Counts(8, 2),
        "at_risk": Counts(0, 0),
        "churned": Counts(0, 0),
        "reactivated": Counts(0, 0),
        NOT_APPLICABLE: Counts(3, 9),
    }


def test_both_engines_judge_inactivity_at_the_same_now() -> None:
    report = preview(dataset(), load_rules(), two_paid_orders_for_conversion(), now=T0 + 61 * DAY)

    # The subscriber has no activity event (orders, engagement) to be idle since: active under both.
    assert report.health["active"] == Counts(1, 1)
    assert report.health["at_risk"] == Counts(7, 1)
    assert report.stages["conversion"] == Counts(7, 1)  # the clock moves health, never stages


def test_the_same_rules_move_nobody() -> None:
    rules = load_rules()
    report = preview(dataset(), rules, rules, now=T0 + 2 * DAY, batch=4)  # batch boundaries change nothing

    assert report.examples == {} and report.moved == 0
    assert all(before == after for before, after in report.matrix)
    assert all(c.difference == 0 for c in [*report.stages.values(), *report.health.values()])


def test_a_duplicate_message_counts_once() -> None:
    order = touchpoint("Order Completed", customer="dup", at=T0, revenue=10)
    report = preview([order, order], load_rules(), two_paid_orders_for_conversion(), now=T0 + DAY)

    assert report.matrix == {("conversion", "discovery"): 1}


def write_rules(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "new_rules.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_wrong_new_rules_file_names_the_field(tmp_path: Path) -> None:
    raw = default_raw()
    raw["stages"][2]["when"][0]["count"] = 0
    with pytest.raises(RulesError, match=r"stages\[2\] \(conversion\)\.when\[0\] \(first_paid_order\)\.count"):
        load_rules(write_rules(tmp_path, raw))


def test_the_command_refuses_a_wrong_rules_file_with_exit_code_2_before_reading_kafka(tmp_path: Path) -> None:
    raw = default_raw()
    raw["stages"][2]["when"][0]["count"] = 0
    # An unreachable broker: had the command tried to replay, it would fail differently.
    env = {"CLM_KAFKA_BOOTSTRAP": "127.0.0.1:9", "COLUMNS": "200"}
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            app, ["stage-engine", "preview", "--rules", str(write_rules(tmp_path, raw))], env=env
        )
    finally:
        get_settings.cache_clear()  # later tests must not see this broker

    assert result.exit_code == 2, result.output
    assert "stages[2] (conversion).when[0] (first_paid_order).count" in result.output
    assert "replaying" not in result.output


def test_the_new_rules_in_a_second_process_give_the_same_report() -> None:
    values = [JsonSerializer()(tp) for tp in dataset()]
    now = T0 + 2 * DAY

    in_two = preview_records(values, load_rules(), two_paid_orders_for_conversion(), now=now, batch=4)

    assert in_two == preview(dataset(), load_rules(), two_paid_orders_for_conversion(), now=now)
    assert in_two.moved == 6


def test_a_preview_in_two_processes_needs_the_record_values() -> None:
    run = Preview(load_rules(), two_paid_orders_for_conversion(), processes=2)
    try:
        with pytest.raises(ValueError, match="record value"):
            run.apply(dataset())
    finally:
        run.close()
