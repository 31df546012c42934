"""Prometheus metrics of the ingest API."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS_ACCEPTED = Counter("clm_ingest_events_accepted_total", "Events acknowledged by Kafka.", ["type"])
EVENTS_REJECTED = Counter("clm_ingest_events_rejected_total", "Requests refused, by reason.", ["reason"])
REQUEST_SECONDS = Histogram(
    "clm_ingest_request_seconds",
    "Time to answer an ingest request.",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PUBLISH_SECONDS = Histogram(
    "clm_ingest_publish_seconds",
    "Time from handing a request's events to the producer until the broker acknowledged all.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
