"""Go `time.Time` JSON formatting (RFC 3339 with up to nine fraction digits)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

_NANOS = 1_000_000_000


def rfc3339_nano(epoch_ns: int) -> str:
    """Format like Go's RFC3339Nano in UTC: trailing zeros of the fraction are trimmed."""
    seconds, fraction = divmod(epoch_ns, _NANOS)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        stamp += "." + f"{fraction:09d}".rstrip("0")
    return stamp + "Z"


def now_rfc3339() -> str:
    return rfc3339_nano(time.time_ns())
