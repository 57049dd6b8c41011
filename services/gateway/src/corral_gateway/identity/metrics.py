"""Identity's Prometheus metrics (served on the gateway's /metrics with the others)."""

from __future__ import annotations

from prometheus_client import Counter

AUTH_FAILURES = Counter(
    "corral_auth_failures_total",
    "Refused authentications, by reason (missing, malformed, conflicting, unknown, revoked, "
    "expired, blocked)",
    ["reason"],
)
RATE_LIMITED = Counter(
    "corral_rate_limited_total",
    "Requests answered 429 by a rate limit or quota, by limit",
    ["limit"],
)
LIMITS_UNCHECKED = Counter(
    "corral_rate_limit_unchecked_total",
    "Requests let through unchecked because the shared counters could not be reached",
)
AUDIT_LOST = Counter(
    "corral_audit_records_lost_total",
    "Admin actions whose audit record could not be written",
)
