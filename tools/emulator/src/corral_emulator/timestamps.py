"""Go `time.Time` JSON formatting (RFC 3339 with up to nine fraction digits)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

_NANOS = 1_000_000_000
_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)$")


def rfc3339_nano(epoch_ns: int) -> str:
    """Format like Go's RFC3339Nano in UTC: trailing zeros of the fraction are trimmed."""
    seconds, fraction = divmod(epoch_ns, _NANOS)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return stamp + _fraction(fraction) + "Z"


def now_rfc3339() -> str:
    return rfc3339_nano(time.time_ns())


def local_rfc3339_nano(epoch_ns: int) -> str:
    """Go's RFC3339Nano in the machine's zone, as `modified_at` comes out (a file's mtime)."""
    seconds, fraction = divmod(epoch_ns, _NANOS)
    local = datetime.fromtimestamp(seconds, UTC).astimezone()
    offset = local.strftime("%z")
    # Go writes a zero offset as "Z" and others as ±hh:mm.
    zone = "Z" if offset in ("+0000", "-0000") else f"{offset[:3]}:{offset[3:]}"
    return local.strftime("%Y-%m-%dT%H:%M:%S") + _fraction(fraction) + zone


def now_local_rfc3339() -> str:
    return local_rfc3339_nano(time.time_ns())


def unix_seconds(stamp: str) -> int:
    """Whole seconds of an RFC 3339 time (what Go compares when sorting `/api/tags`); 0 if
    the text is not one."""
    match = _RFC3339.match(stamp)
    if match is None:
        return 0
    zone = "+00:00" if match.group(2) == "Z" else match.group(2)
    return int(datetime.fromisoformat(match.group(1) + zone).timestamp())


def _fraction(nanos: int) -> str:
    return "." + f"{nanos:09d}".rstrip("0") if nanos else ""
