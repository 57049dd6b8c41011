"""The session store's Prometheus metrics (served on its /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONTEXT_TRUNCATIONS = Counter(
    "corral_context_truncations_total",
    "Assembled contexts that dropped stored turns to fit the window",
    ["model"],
)
TURNS_WRITTEN = Counter(
    "corral_turns_written_total",
    "Turn events handled, by outcome (stored, duplicate, rejected, deleted: asked before its "
    "session was deleted, invalid)",
    ["outcome"],
)
TURN_WRITE_ERRORS = Counter(
    "corral_turn_write_errors_total", "Database errors while writing turns (each retried)"
)
CONTEXT_ASSEMBLY = Histogram(
    "corral_context_assembly_seconds",
    "Time to assemble a context (history read, budget, truncation)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
CONTEXT_LIMIT_EXCEEDED = Counter(
    "corral_context_limit_exceeded_total", "Requests refused because they cannot fit", ["model"]
)
CALIBRATION_FACTOR = Gauge(
    "corral_token_estimate_factor", "Per-model calibration of the token estimator", ["model"]
)
KEY_BROADCAST_FAILURES = Counter(
    "corral_key_broadcast_failures_total",
    "Key creations and revocations whose KeyChanged broadcast could not be published",
)
SESSIONS_ARCHIVED = Counter(
    "corral_sessions_archived_total", "Sessions archived by the lifecycle job after idling"
)
SESSIONS_RESUMED = Counter(
    "corral_sessions_resumed_total", "Archived sessions made active again by a chat"
)
SESSIONS_PURGED = Counter(
    "corral_sessions_purged_total",
    "Archived sessions deleted, with their turns, once their retention was over",
)
