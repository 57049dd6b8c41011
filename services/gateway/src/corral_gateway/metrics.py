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

# The request-level series monitoring needs, as this gateway sees its own requests (per
# replica; the scheduler's and session store's own series are listed with these in
# docs/observability.md).
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
QUEUE_WAIT = Histogram(
    "corral_gateway_queue_wait_seconds",
    "Time the gateway's answered jobs waited in the lane before the backend started them",
    ["endpoint"],
    buckets=WAIT_BUCKETS,
)
TOKENS = Counter(
    "corral_gateway_tokens_total",
    "Tokens of the gateway's answered jobs, by model and kind (prompt, generated)",
    ["model", "kind"],
)
CONTEXT_TRUNCATIONS = Counter(
    "corral_gateway_context_truncations_total",
    "Answers whose context dropped messages to fit the model's window (sessions and stateless)",
    ["model"],
)
MODEL_LOAD_TIME = Histogram(
    "corral_gateway_model_load_time_seconds",
    "Model loads the gateway's requests waited for (the backend's load_duration, 50 ms and up)",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
QUEUE_DEPTH = Gauge(
    "corral_gateway_queue_depth",
    "Jobs in the lane as the schedulers last reported them, waiting or running",
    ["state"],
)
