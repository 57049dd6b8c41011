"""The last request bodies received per endpoint, so tests can see what a client really sent."""

from __future__ import annotations

from collections import deque
from typing import Any


class RequestLog:
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._bodies: dict[str, deque[Any]] = {}

    def record(self, endpoint: str, body: Any) -> None:
        bodies = self._bodies.get(endpoint)
        if bodies is None:
            bodies = self._bodies[endpoint] = deque(maxlen=self._limit)
        bodies.append(body)

    def bodies(self, endpoint: str) -> list[Any]:
        """Oldest first."""
        return list(self._bodies.get(endpoint, ()))

    def all(self) -> dict[str, list[Any]]:
        return {endpoint: list(bodies) for endpoint, bodies in self._bodies.items()}

    def clear(self) -> None:
        self._bodies.clear()
