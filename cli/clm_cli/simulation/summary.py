"""What a simulated run holds, counted from its calls: the figures the end-of-run table shows (pure)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from clm_cli.simulation.journeys import Traffic


@dataclass(frozen=True)
class TrafficSummary:
    customers: int
    events: int
    by_type: Counter[str] = field(default_factory=Counter)
    by_name: Counter[str] = field(default_factory=Counter)  # track calls by event name
    revenue: float = 0.0
    abandoned_checkouts: int = 0
    went_quiet: int = 0
    came_back: int = 0

    def count(self, event: str) -> int:
        return self.by_name[event]


def summarize(traffic: Traffic) -> TrafficSummary:
    """Counts by call type and event name, order revenue and checkouts with no order."""
    by_type: Counter[str] = Counter()
    by_name: Counter[str] = Counter()
    revenue = 0.0
    started: set[str] = set()
    ordered: set[str] = set()
    for call in traffic.calls:
        by_type[call["type"]] += 1
        if call["type"] != "track":
            continue
        by_name[call["event"]] += 1
        properties = call["properties"]
        if call["event"] == "Checkout Started":
            started.add(properties["checkout_id"])
        elif call["event"] == "Order Completed":
            ordered.add(properties["checkout_id"])
            revenue += properties["revenue"]
    return TrafficSummary(
        customers=len(traffic.journeys),
        events=len(traffic.calls),
        by_type=by_type,
        by_name=by_name,
        revenue=round(revenue, 2),
        abandoned_checkouts=len(started - ordered),
        went_quiet=sum(journey.went_quiet for journey in traffic.journeys),
        came_back=sum(journey.came_back for journey in traffic.journeys),
    )
