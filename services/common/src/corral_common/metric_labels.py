"""Counters whose label values are known up front, exported at 0 from the start: Prometheus
sees no increase in a series that is born at 1, so a first dead letter or refusal would
otherwise never show on a rate panel or fire an alert."""

from __future__ import annotations

from prometheus_client import Counter


def zeroed(counter: Counter, *values: str) -> Counter:
    """`counter`, with one series per value of its (single) label made now, at 0."""
    for value in values:
        counter.labels(value)
    return counter
