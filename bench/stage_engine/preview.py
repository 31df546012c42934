"""Rules-preview benchmark: the pure preview (two in-memory engines) on a synthetic topic, no I/O.

The dataset is the metrics benchmark's year of a shop (``bench.metrics.dataset``: visitors, engaged,
trials, buyers, advocates), in event-time order as a topic would hold it. The new rules want two paid
orders for conversion instead of one. Prints the median of three runs with their range, and one
engine alone for comparison (the preview runs two). Sizes: BENCH_PREVIEW_CUSTOMERS (20,000),
BENCH_PREVIEW_EVENTS_PER_CUSTOMER (10).
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import yaml

from bench.harness import write_results
from bench.metrics.dataset import touchpoints_of
from clm_shared.schemas.touchpoint import Touchpoint
from stage_engine.memory import InMemoryEngine
from stage_engine.preview import PreviewReport, preview
from stage_engine.rules import DEFAULT_RULES_FILE, Rules, load_rules, parse_rules

CUSTOMERS = int(os.environ.get("BENCH_PREVIEW_CUSTOMERS", "20000"))
PER_CUSTOMER = int(os.environ.get("BENCH_PREVIEW_EVENTS_PER_CUSTOMER", "10"))
RUNS = 3
NOW = datetime(2026, 11, 25, tzinfo=UTC)


def two_orders_for_conversion() -> Rules:
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_RULES_FILE.read_text())
    conversion = next(rule for rule in raw["stages"] if rule["stage"] == "conversion")
    conversion["when"][0]["count"] = 2
    return parse_rules(raw, source="bench rules")


def dataset() -> list[Touchpoint]:
    touchpoints = [tp for c in range(CUSTOMERS) for tp in touchpoints_of(c, PER_CUSTOMER, NOW)]
    return sorted(touchpoints, key=lambda tp: tp.timestamp)


def preview_rate(touchpoints: list[Touchpoint], current: Rules, new: Rules) -> tuple[float, PreviewReport]:
    began = time.perf_counter()
    report = preview(touchpoints, current, new, now=NOW, freeze_gc=True)  # as the CLI does
    rate = len(touchpoints) / (time.perf_counter() - began)
    gc.unfreeze()  # the next run starts from the same heap
    gc.collect()
    return rate, report


def single_engine_rate(touchpoints: list[Touchpoint], rules: Rules) -> float:
    """One rule set through one in-memory engine, batch by batch like the preview: the ceiling per rule set."""
    engine = InMemoryEngine(rules)
    began = time.perf_counter()
    for first in range(0, len(touchpoints), 2000):
        engine.process(touchpoints[first : first + 2000])
        engine.published.clear()
        gc.freeze()
    rate = len(touchpoints) / (time.perf_counter() - began)
    gc.unfreeze()
    gc.collect()
    return rate


def main() -> None:
    touchpoints = dataset()
    current, new = load_rules(), two_orders_for_conversion()
    print(f"rules preview: {len(touchpoints):,} touchpoints, {CUSTOMERS:,} customers, in memory")
    runs = [preview_rate(touchpoints, current, new) for _ in range(RUNS)]
    rates = [rate for rate, _ in runs]
    single = single_engine_rate(touchpoints, current)
    median = statistics.median(rates)
    print(f"  preview (two rule sets): {median:,.0f} events/s, median of {RUNS} ({min(rates):,.0f}–{max(rates):,.0f})")
    print(f"  one in-memory engine alone: {single:,.0f} events/s")
    print(f"  customers whose stage would change: {runs[0][1].moved:,} of {runs[0][1].customers:,}")
    write_results(
        "stage-engine-preview",
        {
            "touchpoints": len(touchpoints),
            "customers": CUSTOMERS,
            "events_per_s_median": median,
            "events_per_s_runs": rates,
            "single_engine_events_per_s": single,
        },
    )


if __name__ == "__main__":
    main()
