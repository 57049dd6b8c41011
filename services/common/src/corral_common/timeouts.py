"""`within`: await with a time limit, without `asyncio.wait_for`'s Python 3.11 flaw.

On 3.11, when the awaited thing completes in the same loop step as the caller is cancelled,
`wait_for` returns its result and drops the cancellation. A handler cancelled because its client
left (while token events arrive all the time) then carried on as if nothing happened, and a
service's background loop ignored its shutdown. `asyncio.timeout` has no such race.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float | None) -> T:
    """The awaitable's result; TimeoutError after `seconds` (None: no limit)."""
    async with asyncio.timeout(seconds):
        return await awaitable
