"""The gateway's Prometheus metrics (served on its /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "corral_requests_total", "Generation requests by endpoint and outcome", ["endpoint", "outcome"]
)
IN_FLIGHT = Gauge("corral_gateway_in_flight_requests", "Generation requests being served")
CLIENT_TTFT = Histogram(
    "corral_client_time_to_first_token_seconds",
    "From request arrival at the gateway to the first token written to the client",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
REQUEST_SECONDS = Histogram(
    "corral_request_duration_seconds",
    "From request arrival to the last byte, generation requests",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
