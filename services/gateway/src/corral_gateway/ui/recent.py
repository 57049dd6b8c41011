"""Recent requests this gateway finished, for the operator's page: a small ring buffer.

Each entry is one request's final event as this gateway received it (done, error, cancelled):
its id, model, outcome and status, latency (from the job's enqueueing at this gateway to its
final event), queue wait and tokens. Only this replica's requests: each gateway answers its own
clients, so with several replicas each page shows the requests that went through it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Literal

# Enough for a screenful; the page shows them newest first.
RECENT_KEPT = 50

Outcome = Literal["done", "error", "cancelled"]


@dataclass(frozen=True)
class Finished:
    request_id: str
    model: str
    outcome: Outcome
    status: int
    finished_at: float
    """Epoch seconds."""
    latency_ms: int | None = None
    waited_ms: int | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None
    owner: str | None = None
    error: str | None = None


class RecentRequests:
    def __init__(self, size: int = RECENT_KEPT) -> None:
        self._ring: deque[Finished] = deque(maxlen=size)

    def add(self, finished: Finished) -> None:
        self._ring.append(finished)

    def __len__(self) -> int:
        return len(self._ring)

    def listing(self) -> list[dict[str, Any]]:
        """Newest first."""
        return [asdict(finished) for finished in reversed(self._ring)]
