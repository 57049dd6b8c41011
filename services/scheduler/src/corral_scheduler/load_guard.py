"""The reload thrash guard: rewrites load-time settings so clients that disagree about them do
not make the backend reload a model on every request.

Ollama reloads a model whenever a request's `num_ctx` differs from the loaded runner's, and
unloads it after a request that says `keep_alive: 0`. With many clients behind one server,
one sending `num_ctx: 8192` and another sending nothing would swap the model back and forth.
The guard keeps, per model, the context the model was last loaded with and serves every
request that fits in it with that same context (a bigger window serves a smaller request
unchanged); only a request that needs more grows it, rounded up to a power of two so growth
happens rarely. `keep_alive` can be clamped into a configured range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from corral_common.messages import Job
from corral_common.model_names import canonical_model_name
from corral_scheduler import metrics

NumCtxPolicy = Literal["sticky", "pass"]

_GO_UNITS_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def keep_alive_seconds(value: Any) -> float | None:
    """Seconds for a `keep_alive` Ollama accepts (a number, or a Go duration); None otherwise.
    Negative means forever, as in Ollama."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text == "0":
        return 0.0
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = _GO_PART.findall(body)
    if not parts or "".join(number + unit for number, unit in parts) != body:
        return None
    return sign * sum(float(number) * _GO_UNITS_S[unit] for number, unit in parts)


def unloads_now(job: Job) -> bool:
    """Ollama's unload idiom: nothing to say and `keep_alive: 0`."""
    payload = job.payload
    empty = not payload.get("messages") if job.kind == "chat" else not payload.get("prompt")
    return (
        job.kind in ("chat", "generate")
        and empty
        and keep_alive_seconds(payload.get("keep_alive")) == 0.0
    )


@dataclass(frozen=True)
class GuardPolicy:
    num_ctx: NumCtxPolicy = "sticky"
    # What the backend uses when a request names no num_ctx (OLLAMA_CONTEXT_LENGTH).
    default_num_ctx: int = 4096
    # A grown context never exceeds this (0: no cap beyond the request's own).
    num_ctx_max: int = 0
    # keep_alive is clamped into [min, max] seconds; None leaves that side alone. A negative
    # keep_alive (forever) counts as above any max.
    keep_alive_min_s: float | None = None
    keep_alive_max_s: float | None = None


class LoadGuard:
    def __init__(self, policy: GuardPolicy) -> None:
        self.policy = policy
        # The num_ctx each model was last sent with, i.e. what its runner was loaded with.
        self._num_ctx: dict[str, int] = {}

    def forget(self, model: str) -> None:
        """The model was unloaded: its next load may use a smaller context again."""
        self._num_ctx.pop(canonical_model_name(model), None)

    def payload(self, job: Job) -> dict[str, Any]:
        """The payload to send for `job`, with load-time settings normalised."""
        if job.kind == "unload" or unloads_now(job):
            self.forget(job.model)
            return job.payload
        payload = dict(job.payload)
        self._keep_alive(payload, job.model)
        if self.policy.num_ctx == "sticky" and job.kind != "embeddings":
            self._num_ctx_of(payload, job.model)
        return payload

    def _keep_alive(self, payload: dict[str, Any], model: str) -> None:
        seconds = keep_alive_seconds(payload.get("keep_alive"))
        if seconds is None:
            return
        low, high = self.policy.keep_alive_min_s, self.policy.keep_alive_max_s
        clamped: float = seconds
        if high is not None and (seconds < 0 or seconds > high):
            clamped = float(high)
        elif low is not None and 0 <= seconds < low:
            clamped = float(low)
        if clamped != seconds:
            payload["keep_alive"] = int(clamped) if clamped.is_integer() else clamped
            metrics.KEEP_ALIVE_CLAMPED.labels(model).inc()

    def _num_ctx_of(self, payload: dict[str, Any], model: str) -> None:
        options = payload.get("options")
        options = dict(options) if isinstance(options, dict) else {}
        requested = options.get("num_ctx")
        if isinstance(requested, bool) or not isinstance(requested, int) or requested <= 0:
            requested = None
        key = canonical_model_name(model)
        loaded = self._num_ctx.get(key)
        needed = requested if requested is not None else self.policy.default_num_ctx
        if loaded is not None and needed <= loaded:
            chosen = loaded
        else:
            chosen = needed if loaded is None else _next_power_of_two(needed)
            if self.policy.num_ctx_max > 0:
                chosen = min(chosen, max(self.policy.num_ctx_max, needed))
        self._num_ctx[key] = chosen
        if chosen == needed:
            return
        options["num_ctx"] = chosen
        payload["options"] = options
        metrics.NUM_CTX_NORMALISED.labels(model).inc()


def _next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()
