"""The session store's core: context assembly over stored history, and storing finished turns.

Both the RPC methods and the turns consumer call into `SessionService`; it owns the per-model
token calibration and the estimates it made for requests still running.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from corral_common.errors import CorralError, ErrorType
from corral_common.messages import Done
from corral_common.model_names import canonical_model_name
from corral_session_store import metrics
from corral_session_store.context import (
    Assembled,
    Fallback,
    assemble,
    compute_budget,
    passthrough,
)
from corral_session_store.model_info import ContextLengths
from corral_session_store.settings import SessionStoreSettings
from corral_session_store.store import (
    STAT_KEYS,
    SessionStore,
    TurnRecord,
    WriteOutcome,
    clean_message,
    is_archived,
    not_found,
    owned_by,
    utcnow,
)
from corral_session_store.tokens import Calibration, TokenEstimator, raw_prompt_tokens
from corral_session_store.writes import KeyedLocks

log = structlog.get_logger(__name__)

# Estimates made by `assemble` wait here for their request's `done` event; requests that
# never finish (cancelled, failed) age out.
PENDING_MAX = 10_000
PENDING_TTL_S = 3600.0
# A model's calibration is saved at most this often (seconds).
CALIBRATION_SAVE_S = 10.0


class SessionService:
    def __init__(
        self,
        store: SessionStore,
        lengths: ContextLengths,
        settings: SessionStoreSettings,
        calibrations: Mapping[str, Calibration] | None = None,
    ) -> None:
        self.store = store
        self.lengths = lengths
        self.settings = settings
        self.calibrations: dict[str, Calibration] = dict(calibrations or {})
        for model, calibration in self.calibrations.items():
            metrics.CALIBRATION_FACTOR.labels(model).set(calibration.factor)
        self._pending: OrderedDict[str, tuple[float, str, float]] = OrderedDict()
        # When each model's calibration was last saved (monotonic), and those changed since.
        self._saved_at: dict[str, float] = {}
        self._unsaved: set[str] = set()
        # The turns this process is writing, by session (the turns consumer holds them).
        self.writes = KeyedLocks()
        self._model_prompts = {
            canonical_model_name(name): prompt
            for name, prompt in settings.system_prompts.items()
            if prompt
        }

    def estimator(self, model: str) -> TokenEstimator:
        calibration = self.calibrations.get(model)
        return calibration.estimator() if calibration is not None else TokenEstimator()

    # -- context assembly ------------------------------------------------------------------

    async def assemble(
        self,
        *,
        session_id: str,
        model: str,
        kind: str,
        messages: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any] | None,
        owner: str | None,
        request_id: str | None = None,
        max_history_length: int | None = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        # A turn of this session received and not yet written here is waited for (bounded), so
        # assembly never reads it half applied, and a chat sent the moment its previous answer
        # came finds that answer (the gateway waits for its `stored`; this covers the store's
        # side, between the receipt and the write).
        await self.writes.settled(session_id, self.settings.assembly_write_wait_s)
        session = await self.store.find_session(session_id)
        if session is not None and not owned_by(session, owner):
            # Someone else's session (or nobody's, to an owner) looks exactly like no session
            # at all; its id cannot be taken over either. An id nobody has used is a new
            # session, created when its first turn is stored.
            raise not_found(session_id)
        resumed = False
        if session is not None and is_archived(session) and kind == "chat":
            # A chat naming an archived session resumes it, history and all.
            resumed = await self.store.resume(session_id)
            if resumed:
                metrics.SESSIONS_RESUMED.inc()
        cap = self.settings.max_history_length if max_history_length is None else max_history_length
        fallback = self.fallback_system(model, session)
        estimator = self.estimator(model)
        context_length = await self.lengths.context_length(model)
        budget = compute_budget(
            options,
            context_length,
            default_num_ctx=self.settings.default_num_ctx,
            answer_reserve=self.settings.answer_reserve,
            answer_reserve_fraction=self.settings.answer_reserve_fraction,
        )
        result: Assembled
        try:
            if kind == "generate":
                result = passthrough(messages, estimator)
            elif session is None:
                result = assemble(
                    [],
                    messages,
                    budget,
                    estimator,
                    stored_system=None,
                    max_history_length=cap,
                    fallback=fallback,
                )
            else:
                window = await self.store.history_window(
                    session_id, model, budget.prompt_tokens, estimator, session, max_messages=cap
                )
                result = assemble(
                    window.turns,
                    messages,
                    budget,
                    estimator,
                    stored_system=window.system,
                    older_turns=window.older_turns,
                    older_messages=window.older_messages,
                    older_limited_by=window.older_limited_by,
                    max_history_length=cap,
                    fallback=fallback,
                )
        except CorralError as exc:
            if exc.error_type is ErrorType.CONTEXT_LIMIT_EXCEEDED:
                metrics.CONTEXT_LIMIT_EXCEEDED.labels(model).inc()
            raise
        if result.info.truncated:
            metrics.CONTEXT_TRUNCATIONS.labels(model).inc()
        if request_id is not None:
            self._remember(request_id, model, raw_prompt_tokens(result.messages))
        metrics.CONTEXT_ASSEMBLY.observe(time.perf_counter() - started)
        log.debug(
            "context assembled",
            model=model,
            budget=budget.prompt_tokens,
            budget_source=budget.source,
            **result.info.as_dict(),
        )
        info = result.info.as_dict()
        if resumed:
            info["resumed"] = True
        return {
            "messages": [dict(m) for m in result.messages],
            "context_info": info,
            "context_length": budget.context_length,
        }

    def fallback_system(self, model: str, session: Mapping[str, Any] | None) -> Fallback | None:
        """The system prompt a chat gets when it has none of its own: the session's, else the
        server's default for the model, else the server's default (none when all are empty)."""
        own = session.get("system_prompt") if session is not None else None
        if isinstance(own, str) and own:
            return Fallback({"role": "system", "content": own}, "session")
        per_model = self._model_prompts.get(canonical_model_name(model))
        if per_model:
            return Fallback({"role": "system", "content": per_model}, "model_default")
        if self.settings.system_prompt:
            return Fallback({"role": "system", "content": self.settings.system_prompt}, "default")
        return None

    def _remember(self, request_id: str, model: str, raw_tokens: float) -> None:
        now = time.monotonic()
        self._pending[request_id] = (now, model, raw_tokens)
        self._pending.move_to_end(request_id)
        while self._pending:
            oldest_id, (at, _, _) = next(iter(self._pending.items()))
            if len(self._pending) <= PENDING_MAX and now - at <= PENDING_TTL_S:
                break
            del self._pending[oldest_id]

    # -- persisting turns ------------------------------------------------------------------

    async def store_turn(self, done: Done, *, look_first: bool = True) -> WriteOutcome:
        """Write the turn a `done` event finishes; calibrate the model's estimator from it.
        `look_first`: see `SessionStore.write_turn` (False for a `done` delivered the first
        time)."""
        assert done.session_id is not None
        pending = self._pending.get(done.request_id)
        raw_estimate = pending[2] if pending is not None and pending[1] == done.model else None
        record = turn_record(done, utcnow(), raw_estimate)
        outcome = await self.store.write_turn(record, look_first=look_first)
        # Kept until the write is through: a write retried after a database error calibrates
        # with it too.
        self._pending.pop(done.request_id, None)
        if outcome is WriteOutcome.STORED and raw_estimate is not None:
            await self._calibrate(done.model, raw_estimate, record.stats.get("prompt_eval_count"))
        return outcome

    async def delete(self, session_id: str, owner: str | None) -> dict[str, Any]:
        """Delete a session (DELETE /sessions/{id}, a conversation's delete). The turns of it
        this process has taken off the queue are written first (the consumer holds the
        session's lock from receipt to write), and those taken later wait for the deletion, so
        they see its tombstone: with one store replica no turn asked before the deletion can
        slip past it. Across replicas the tombstone alone decides (store.py, "Deletions")."""
        async with self.writes.hold(session_id):
            return await self.store.delete(session_id, owner)

    async def _calibrate(self, model: str, raw_estimate: float, prompt_eval_count: Any) -> None:
        if not isinstance(prompt_eval_count, int) or isinstance(prompt_eval_count, bool):
            return
        calibration = self.calibrations.setdefault(model, Calibration())
        if calibration.observe(raw_estimate, prompt_eval_count):
            metrics.CALIBRATION_FACTOR.labels(model).set(calibration.factor)
            # Saved at most once per CALIBRATION_SAVE_S per model (it was a database write on
            # every turn): it is a running mean, so what a crash loses is a few samples, and
            # this replica goes on with the factor it has.
            now = time.monotonic()
            if now - self._saved_at.get(model, -CALIBRATION_SAVE_S) >= CALIBRATION_SAVE_S:
                self._saved_at[model] = now
                await self.store.save_calibration(model, calibration)
            else:
                self._unsaved.add(model)

    async def save_calibrations(self) -> None:
        """Save the factors changed since they were last saved (at shutdown)."""
        for model in sorted(self._unsaved):
            await self.store.save_calibration(model, self.calibrations[model])
        self._unsaved.clear()


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _ms(value: datetime) -> datetime:
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def job_fingerprint(done: Done) -> str:
    """What makes a `done` the same request as a turn stored under its request id: the
    session, the owner, the model, the kind and the client's new messages. Every delivery of a
    job's `done` and every run of the job (a scheduler's failover runs it again) share them,
    and so does a client's retry of the same question with the same `X-Request-Id` (through
    any gateway, after its own was cut off), which is stored once, as documented; a request
    that reuses the id for another question, or in another session, is another turn. The
    enqueue time and the gateway are left out on purpose: they differ for such a retry.
    Hashed: it is stored with every turn."""
    identity = [done.session_id, done.owner, done.model, done.job_kind, done.turn]
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def turn_record(done: Done, now: datetime, raw_estimate: float | None = None) -> TurnRecord:
    """The turn a `done` event finishes: the client's new messages, then the answer.

    The answer's time is the backend's `created_at` of its final chunk (no later than now,
    the receipt time, in case the clocks disagree); the question's is when the gateway enqueued
    it (events from older schedulers lack that: then the answer's time minus the backend's
    `total_duration` and the time the job waited in the queue).
    """
    assert done.session_id is not None
    final = done.final
    answer: dict[str, Any] = {"role": "assistant", "content": done.text}
    if done.thinking:
        answer["thinking"] = done.thinking
    if done.tool_calls:
        answer["tool_calls"] = done.tool_calls
    stats: dict[str, Any] = {
        key: final[key]
        for key in STAT_KEYS
        if isinstance(final.get(key), int) and not isinstance(final.get(key), bool)
    }
    if isinstance(final.get("done_reason"), str):
        stats["done_reason"] = final["done_reason"]
    stats["waited_ms"] = done.waited_ms
    answered_at = _ms(min(_parse_time(final.get("created_at")) or now, now))
    took_ns = stats.get("total_duration", 0)
    if done.enqueued_at > 0:
        asked_at = _ms(min(datetime.fromtimestamp(done.enqueued_at, UTC), answered_at))
    else:
        asked_at = _ms(
            answered_at
            - timedelta(microseconds=took_ns / 1000, milliseconds=max(done.waited_ms, 0))
        )
    messages = [clean_message(m) for m in done.turn or [] if isinstance(m, dict)]
    messages.append(answer)
    return TurnRecord(
        request_id=done.request_id,
        session_id=done.session_id,
        model=done.model,
        kind=done.job_kind,
        messages=messages,
        asked_at=asked_at,
        answered_at=answered_at,
        owner=done.owner,
        stats=stats,
        estimate={"raw_tokens": round(raw_estimate, 1)} if raw_estimate is not None else None,
        metadata=done.metadata or None,
        job=job_fingerprint(done),
    )
