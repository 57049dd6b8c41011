"""The reload thrash guard: rewrites load-time settings so clients that disagree about them do
not make the backend reload a model on every request.

Ollama reloads a model whenever a request's `num_ctx` differs from the loaded runner's, and
unloads it after a request that says `keep_alive: 0`. With many clients behind one server,
one sending `num_ctx: 8192` and another sending nothing would swap the model back and forth.
The guard keeps, per model, the context the model was last loaded with and serves every
request that fits in it with that same context (a bigger window serves a smaller request
unchanged); only a request that needs more grows it, rounded up to a power of two so growth
happens rarely. `keep_alive` can be clamped into a configured range.

Never past what the model holds: Ollama loads a runner with at most the model's trained context
(`NewLlamaServer` in llm/server.go clamps `num_ctx` to `n_ctx_train` with a warning, and
`needsReload` in server/sched.go compares a request's `num_ctx` clamped the same way), so a
request asking for more is, to Ollama, a request for the model's context length. The guard does
the same with the model's context length when it knows it (`payload_for` asks a
`ContextLengths`, e.g. the backends' `/api/show`): otherwise one client's `num_ctx: 1e12` would
become the context the guard keeps, and sends, for everyone after it.

A `num_ctx` that Ollama would refuse (`option "num_ctx" must be of type integer`: a string, a
bool, ...) is left as it is, for the backend to refuse: the guard neither replaces it nor counts
it as the loaded context (the gateway refuses it at the edge already:
`corral_gateway.option_types`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import structlog

from corral_common.context_lengths import CachedContextLengths, ContextLengths, context_length_of
from corral_common.messages import Job
from corral_common.model_names import canonical_model_name
from corral_scheduler import metrics

log = structlog.get_logger(__name__)

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


class _Refused:
    """A `num_ctx` Ollama's `Options.FromMap` refuses (not a JSON number)."""


REFUSED: Final = _Refused()


def asked_num_ctx(value: Any) -> int | _Refused | None:
    """`options.num_ctx` as Ollama's `Options.FromMap` reads it (api/types.go): absent or null
    is no request (the default applies); any JSON number is taken, a fraction cut off
    (`field.SetInt(int64(t))`); anything else (a string, a bool) is refused. None also for a
    value below 1, which no window fits in (the guard then judges the request by the default,
    as before)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return REFUSED
    if isinstance(value, float) and not value < float("inf"):  # nan, inf: no JSON number
        return REFUSED
    number = int(value)
    return number if number >= 1 else None


class LoadGuard:
    def __init__(self, policy: GuardPolicy, lengths: ContextLengths | None = None) -> None:
        self.policy = policy
        # Where models' context lengths come from (None: unknown, no clamp).
        self.lengths = lengths
        # The num_ctx each model was last sent with, i.e. what its runner was loaded with.
        self._num_ctx: dict[str, int] = {}
        # Each model's context length, as last learned.
        self._context_length: dict[str, int] = {}

    def forget(self, model: str) -> None:
        """The model was unloaded: its next load may use a smaller context again."""
        self._num_ctx.pop(canonical_model_name(model), None)

    def learn_context_length(self, model: str, length: int | None) -> None:
        """The most `model` holds (its trained context); None or below 1: unknown."""
        key = canonical_model_name(model)
        if length is None or length < 1:
            self._context_length.pop(key, None)
            return
        self._context_length[key] = length
        loaded = self._num_ctx.get(key)
        if loaded is not None and loaded > length:
            # Kept from before the length was known: Ollama's runner holds no more than this.
            self._num_ctx[key] = length

    async def payload_for(self, job: Job) -> dict[str, Any]:
        """`payload(job)`, having first learned the model's context length if the request
        names a num_ctx (the only way a client can ask for more than the default; requests
        without one cost no lookup). The lookup's own cache and time limit apply
        (CachedContextLengths); unknown means no clamp."""
        if self.lengths is not None and self._sticky(job) and _asks_num_ctx(job.payload):
            try:
                length = await self.lengths.context_length(job.model)
            except Exception:
                # Never a reason to fail the job: the guard then works as without lengths.
                log.warning("context length lookup failed", model=job.model, exc_info=True)
                length = None
            if length is not None:
                self.learn_context_length(job.model, length)
        return self.payload(job)

    def _sticky(self, job: Job) -> bool:
        return self.policy.num_ctx == "sticky" and job.kind not in ("embeddings", "unload")

    def payload(self, job: Job) -> dict[str, Any]:
        """The payload to send for `job`, with load-time settings normalised."""
        if job.kind == "unload" or unloads_now(job):
            self.forget(job.model)
            return job.payload
        payload = dict(job.payload)
        self._keep_alive(payload, job.model)
        if self._sticky(job):
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
        requested = asked_num_ctx(options.get("num_ctx"))
        if requested is REFUSED:
            return  # Ollama answers 500 for it; replacing it would hide the client's error
        key = canonical_model_name(model)
        length = self._context_length.get(key)
        loaded = self._num_ctx.get(key)
        needed = requested if isinstance(requested, int) else self.policy.default_num_ctx
        if length is not None:
            # Ollama serves a request for more than the model holds with what it holds.
            needed = min(needed, length)
        if loaded is not None and needed <= loaded:
            chosen = loaded
        else:
            chosen = needed if loaded is None else _next_power_of_two(needed)
            if self.policy.num_ctx_max > 0:
                chosen = min(chosen, max(self.policy.num_ctx_max, needed))
            if length is not None:
                chosen = min(chosen, length)
        self._num_ctx[key] = chosen
        if chosen == (requested if isinstance(requested, int) else needed):
            return  # sent as asked (or left to the backend's default, which it clamps alike)
        options["num_ctx"] = chosen
        payload["options"] = options
        metrics.NUM_CTX_NORMALISED.labels(model).inc()


def _asks_num_ctx(payload: Mapping[str, Any]) -> bool:
    options = payload.get("options")
    return isinstance(options, dict) and isinstance(asked_num_ctx(options.get("num_ctx")), int)


class ShowsModels(Protocol):
    """What the lengths need of a backend (`backends.base.Backend` has it)."""

    async def show(self, model: str) -> Mapping[str, Any]: ...


def backend_context_lengths(
    backends: Mapping[str, ShowsModels],
    *,
    timeout_s: float = 0.5,
    ttl_s: float = 300.0,
    failure_ttl_s: float = 30.0,
) -> CachedContextLengths:
    """Models' context lengths from the backends' `/api/show` (`<architecture>.context_length`
    in `model_info`; an OpenAI-compatible server's `n_ctx_train`), the first server that knows
    the model answering, cached. A model none of them knows is unknown for `failure_ttl_s`."""

    async def fetch(model: str) -> int | None:
        for backend in backends.values():
            try:
                length = context_length_of(await backend.show(model))
            except Exception:  # not there, or not answering: the next server, else unknown
                continue
            if length is not None:
                return length
        return None

    return CachedContextLengths(
        fetch, timeout_s=timeout_s, ttl_s=ttl_s, failure_ttl_s=failure_ttl_s
    )


def _next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()
