"""Epoch seconds (what the identity contracts carry) to and from BSON dates (what is stored).

Dates keep the collections readable and let a MongoDB deployment put a TTL index on them;
BSON holds milliseconds, so a time is trimmed to them on the way in and what a method returns
is what a later read returns. A time no date can hold (negative, past the year 3000, not
finite) is the caller's mistake: `invalid_request`, never a crash in the driver.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from corral_common.errors import CorralError, ErrorType

# 3000-01-01T00:00:00Z: far enough for any expiry, and well inside what a BSON date holds.
LATEST = 32_503_680_000.0


def to_date(epoch: float, field: str = "time") -> datetime:
    if not math.isfinite(epoch) or not 0 <= epoch < LATEST:
        raise CorralError(
            ErrorType.INVALID_REQUEST,
            f"{field} must be epoch seconds between 1970 and 3000",
            details={"field": field},
        )
    return datetime.fromtimestamp(math.floor(epoch * 1000) / 1000, UTC)


def to_epoch(value: datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def optional_epoch(value: object) -> float | None:
    return to_epoch(value) if isinstance(value, datetime) else None
