"""Injected failures for the next chat/generate requests (`POST /_emulator/fail`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from corral_emulator.models import canonical_model_name

DEFAULT_FAILURE_MESSAGE = "emulated failure"


class FailureMode(StrEnum):
    REFUSE = "refuse"
    """Abort the connection without any response."""
    ERROR = "500"
    """Answer `{"error": message}` with `status` (500 unless given)."""
    MIDSTREAM = "midstream"
    """Stream `after_tokens` tokens, then an `{"error"}` line and end; non-stream answers 500."""
    HANG = "hang"
    """Send nothing until the client gives up."""
    NOT_FOUND = "404"
    """Answer 404 `model '<name>' not found`, as if the model had been deleted."""


@dataclass(slots=True)
class FailurePlan:
    mode: FailureMode
    remaining: int
    """Requests still to fail; negative means every request until reset."""
    after_tokens: int = 1
    message: str = DEFAULT_FAILURE_MESSAGE
    status: int = 500
    model: str | None = None
    """Only requests for this model (any spelling) fail; None means all."""
    endpoint: str | None = None
    """"chat" or "generate"; None means both."""

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> FailurePlan:
        try:
            mode = FailureMode(str(data.get("mode")))
        except ValueError:
            modes = ", ".join(m.value for m in FailureMode)
            raise ValueError(f"'mode' must be one of: {modes}") from None
        count = _int(data, "count", 1)
        after_tokens = _int(data, "after_tokens", 1)
        status = _int(data, "status", 500)
        if after_tokens < 0 or not 400 <= status <= 599:
            raise ValueError("'after_tokens' must be >= 0 and 'status' an HTTP error status")
        message = data.get("message", DEFAULT_FAILURE_MESSAGE)
        model = data.get("model")
        endpoint = data.get("endpoint")
        if not isinstance(message, str):
            raise ValueError("'message' must be a string")
        if model is not None and not isinstance(model, str):
            raise ValueError("'model' must be a string")
        if endpoint not in (None, "chat", "generate"):
            raise ValueError("'endpoint' must be 'chat' or 'generate'")
        return cls(mode, count, after_tokens, message, status, model, endpoint)

    def matches(self, endpoint: str, model: str) -> bool:
        if self.remaining == 0:
            return False
        if self.endpoint is not None and self.endpoint != endpoint:
            return False
        return self.model is None or canonical_model_name(self.model) == canonical_model_name(model)

    def to_mapping(self) -> dict[str, object]:
        return {
            "mode": self.mode.value,
            "count": self.remaining,
            "after_tokens": self.after_tokens,
            "message": self.message,
            "status": self.status,
            "model": self.model,
            "endpoint": self.endpoint,
        }


class FailureQueue:
    """Plans are consumed in the order they were added. Every failure handed out is counted
    by mode, so a test can see how many attempts a client made against them (a client that
    retries a refused connection twice and then succeeds made 3 requests, 2 of them failed)."""

    def __init__(self) -> None:
        self._plans: list[FailurePlan] = []
        self.injected: Counter[FailureMode] = Counter()

    def add(self, plan: FailurePlan) -> None:
        if plan.remaining != 0:
            self._plans.append(plan)

    def take(self, endpoint: str, model: str) -> FailurePlan | None:
        for plan in self._plans:
            if plan.matches(endpoint, model):
                self.injected[plan.mode] += 1
                if plan.remaining > 0:
                    plan.remaining -= 1
                if plan.remaining == 0:
                    self._plans.remove(plan)
                return plan
        return None

    def pending(self) -> list[dict[str, object]]:
        return [plan.to_mapping() for plan in self._plans]

    def counts(self) -> dict[str, object]:
        """`failures_injected` (all modes) and `failures_injected_by_mode`, for the stats."""
        return {
            "failures_injected": sum(self.injected.values()),
            "failures_injected_by_mode": {mode.value: self.injected[mode] for mode in FailureMode},
        }

    def clear(self) -> None:
        """Drop the pending plans (the counts stay until `reset`)."""
        self._plans.clear()

    def reset(self) -> None:
        self._plans.clear()
        self.injected.clear()


def _int(data: Mapping[str, object], key: str, default: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"'{key}' must be an integer")
    return value
