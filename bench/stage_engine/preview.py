"""Rules-preview benchmark: the pure preview (two in-memory engines) on a synthetic topic, no I/O.

The dataset is the metrics benchmark's year of a shop (``bench.metrics.dataset``: visitors, engaged,
trials, buyers, advocates), in event-time order as a topic would hold it. The new rules want two paid
orders for conversion instead of one.

The headline is the preview as the CLI runs it, end to end in memory: from the records' JSON bytes
(decoded here, and again by the worker that runs the new rules in a second process) to the report,
through both rule sets. For comparison: both rule sets in one process from decoded touchpoints (the
shape of earlier figures), and one engine alone: the preview's (states only) and the live engine's
batch logic (changes and event ids kept). Medians of three runs with their range. Sizes:
BENCH_PREVIEW_CUSTOMERS (20,000), BENCH_PREVIEW_EVENTS_PER_CUSTOMER (10).
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
from clm_shared.serde import JsonSerializer
from stage_engine.memory import InMemoryEngine
from stage_engine.preview import PreviewReport, preview, preview_records
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


def records_rate(records: list[bytes], current: Rules, new: Rules) -> tuple[float, PreviewReport]:
    """The CLI's shape: record values in, two processes, the report out (the worker's start and decoding included)."""
    began = time.perf_counter()
    report = preview_records(records, current, new, now=NOW, freeze_gc=True, processes=2)
    rate = len(records) / (time.perf_counter() - began)
    gc.unfreeze()  # the next run starts from the same heap
    gc.collect()
    return rate, report


def preview_rate(touchpoints: list[Touchpoint], current: Rules, new: Rules) -> tuple[float, PreviewReport]:
    """Both rule sets in this process, from decoded touchpoints."""
    began = time.perf_counter()
    report = preview(touchpoints, current, new, now=NOW, freeze_gc=True)
    rate = len(touchpoints) / (time.perf_counter() - began)
    gc.unfreeze()
    gc.collect()
    return rate, report


def single_engine_rate(touchpoints: list[Touchpoint], rules: Rules, *, states_only: bool) -> float:
    """One rule set through one in-memory engine, batch by batch like the preview: the ceiling per rule set."""
    engine = InMemoryEngine(rules, states_only=states_only)
    began = time.perf_counter()
    for first in range(0, len(touchpoints), 2000):
        engine.process(touchpoints[first : first + 2000])
        engine.published.clear()
        gc.freeze()
    rate = len(touchpoints) / (time.perf_counter() - began)
    gc.unfreeze()
    gc.collect()
    return rate


def _median(rates: list[float]) -> str:
    return f"{statistics.median(rates):,.0f} events/s, median of {len(rates)} ({min(rates):,.0f}–{max(rates):,.0f})"


def main() -> None:
    touchpoints = dataset()
    serialize = JsonSerializer()  # as ingest writes the topic
    records = [serialize(tp) for tp in touchpoints]
    current, new = load_rules(), two_orders_for_conversion()
    print(f"rules preview: {len(touchpoints):,} touchpoints, {CUSTOMERS:,} customers, in memory")
    runs = [records_rate(records, current, new) for _ in range(RUNS)]
    rates = [rate for rate, _ in runs]
    print(f"  preview, both rule sets, 2 processes, from the records' bytes: {_median(rates)}")
    one_process = [preview_rate(touchpoints, current, new) for _ in range(RUNS)]
    one_rates = [rate for rate, _ in one_process]
    print(f"  preview, both rule sets, 1 process, decoded touchpoints: {_median(one_rates)}")
    single = [single_engine_rate(touchpoints, current, states_only=True) for _ in range(RUNS)]
    print(f"  one engine alone (the preview's, states only): {_median(single)}")
    live = [single_engine_rate(touchpoints, current, states_only=False) for _ in range(RUNS)]
    print(f"  one engine alone (the live engine's batch logic, changes kept): {_median(live)}")
    report = runs[0][1]
    same = all(r == report for _, r in [*runs, *one_process])
    print(
        f"  customers whose stage would change: {report.moved:,} of {report.customers:,}; same report every run: {same}"
    )
    write_results(
        "stage-engine-preview",
        {
            "touchpoints": len(touchpoints),
            "customers": CUSTOMERS,
            "events_per_s_median": statistics.median(rates),
            "events_per_s_runs": rates,
            "one_process_events_per_s_runs": one_rates,
            "single_engine_events_per_s_runs": single,
            "live_engine_events_per_s_runs": live,
            "same_report": same,
        },
    )


if __name__ == "__main__":
    main()
