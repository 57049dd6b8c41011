"""What this gateway observes of the requests it serves: each request's record (for its
access-log line), the running totals behind `GET /admin/usage` and /health's `metrics`, and
the request-level Prometheus series (queue wait, tokens, truncations, model load time).

One `RequestRecord` per request lives in a context variable set by the access-log middleware
(access_log.py); the code that learns something about the request notes it there without
being handed the record: the ticket its model (`note_model`) and its answer (`note_done`), the
relay whether its context was truncated (`note_truncated`). Outside a request (a unit test of
a bare handler) there is no record and the notes only feed the metrics.

Everything here is per gateway replica and since it started: with several gateways, add their
reports up (or read the Prometheus series, which are summed across replicas the same way).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from corral_common.clip import clip
from corral_common.messages import STREAMED_KINDS, Done, JobKind, SchedulerStatus
from corral_common.status_board import StatusBoard
from corral_gateway import metrics

# A reported load_duration under this is the backend touching a model already loaded, not a
# load (the scheduler's rule for corral_model_loads_total).
LOAD_THRESHOLD_NS = 50_000_000
NS_PER_S = 1e9
# Per-model and per-caller rows kept in the usage report; the rest are added up under OTHER, so
# clients naming endless models or callers cannot grow the gateway's memory.
MAX_ROWS = 500
OTHER = "(other)"
HOUR_S = 3600.0


@dataclass
class RequestRecord:
    """What one request's access-log line and the usage totals say about it."""

    started: float = field(default_factory=time.monotonic)
    model: str | None = None
    kind: JobKind | None = None
    waited_ms: int | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    truncated: bool | None = None
    # The error that ended a stream after its 200 went out (the status says nothing of it).
    error: str | None = None


_RECORD: ContextVar[RequestRecord | None] = ContextVar("corral_request_record", default=None)


def begin() -> RequestRecord:
    """A new record for the request being served in this task (the middleware's)."""
    record = RequestRecord()
    _RECORD.set(record)
    return record


def current() -> RequestRecord | None:
    return _RECORD.get()


def note_model(model: str, kind: JobKind | None = None) -> None:
    """The model the request named (clipped: it is the client's text, and a usage row's key)."""
    record = _RECORD.get()
    if record is not None:
        record.model = clip(model)
        if kind is not None:
            record.kind = kind


def note_waited(waited_ms: int) -> None:
    record = _RECORD.get()
    if record is not None:
        record.waited_ms = waited_ms


def final_count(final: dict[str, Any], key: str) -> int:
    """A count from a final chunk (`eval_count`, ...): 0 unless a positive integer."""
    value = final.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def note_done(done: Done) -> None:
    """A job's answer: its queue wait, tokens and model load, into the record and the
    metrics. Once per job (the ticket settles once)."""
    model, kind, final = done.model, done.job_kind, done.final
    prompt, generated = final_count(final, "prompt_eval_count"), final_count(final, "eval_count")
    metrics.QUEUE_WAIT.labels(kind).observe(done.waited_ms / 1000)
    if prompt:
        metrics.TOKENS.labels(model, "prompt").inc(prompt)
    if generated:
        metrics.TOKENS.labels(model, "generated").inc(generated)
    load_ns = final_count(final, "load_duration")
    if load_ns >= LOAD_THRESHOLD_NS:
        metrics.MODEL_LOAD_TIME.labels(model).observe(load_ns / NS_PER_S)
    record = _RECORD.get()
    if record is not None:
        record.model = record.model or model
        record.kind = record.kind or kind
        record.waited_ms = done.waited_ms
        record.prompt_tokens = prompt
        record.generated_tokens = generated


def note_stream_error(error_type: str) -> None:
    """A stream that ended with an error frame after its headers (status 200) were sent."""
    record = _RECORD.get()
    if record is not None:
        record.error = error_type


def note_truncated(model: str, truncated: bool) -> None:
    """Whether the context sent for a chat or generate dropped messages to fit the window."""
    if truncated:
        metrics.CONTEXT_TRUNCATIONS.labels(model).inc()
    record = _RECORD.get()
    if record is not None:
        record.truncated = truncated


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0

    def add(self, record: RequestRecord, status: int) -> None:
        self.requests += 1
        if status >= 400 or record.error is not None:
            self.errors += 1
        self.prompt_tokens += record.prompt_tokens
        self.generated_tokens += record.generated_tokens

    def report(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "tokens": {
                "prompt": self.prompt_tokens,
                "generated": self.generated_tokens,
                "total": self.prompt_tokens + self.generated_tokens,
            },
        }


def _row(rows: dict[str, Tally], key: str) -> Tally:
    row = rows.get(key)
    if row is None:
        key = key if len(rows) < MAX_ROWS else OTHER
        row = rows.setdefault(key, Tally())
    return row


class Usage:
    """This gateway's totals since it started: requests that named a model (answered or
    refused), their errors (status 400 and up) and tokens, overall, per model and per caller;
    and the generations (chat and generate answered) behind /health's derived metrics."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.since = clock()
        self.total = Tally()
        self.by_model: dict[str, Tally] = {}
        self.by_caller: dict[str, Tally] = {}
        self.generations = 0
        self.generation_tokens = 0
        self.truncated = 0
        self.with_context_info = 0

    def add(self, record: RequestRecord, status: int, caller: str) -> None:
        if record.model is None:
            return
        self.total.add(record, status)
        _row(self.by_model, record.model).add(record, status)
        _row(self.by_caller, caller).add(record, status)
        if record.kind in STREAMED_KINDS and status < 400 and record.error is None:
            self.generations += 1
            self.generation_tokens += record.prompt_tokens + record.generated_tokens
        if record.truncated is not None:
            self.with_context_info += 1
            self.truncated += record.truncated

    def truncation_rate(self) -> float:
        """Of the answers that said whether their context was truncated, the share that was."""
        if not self.with_context_info:
            return 0.0
        return round(self.truncated / self.with_context_info, 4)

    def tokens_per_request(self) -> int:
        """Prompt plus generated tokens per answered chat or generate."""
        return round(self.generation_tokens / self.generations) if self.generations else 0

    def report(self) -> dict[str, Any]:
        return {
            **self.total.report(),
            "by_model": {name: row.report() for name, row in sorted(self.by_model.items())},
            "by_caller": {name: row.report() for name, row in sorted(self.by_caller.items())},
        }


class SwapHistory:
    """Model swaps over the last hour, from the schedulers' cumulative per-server counts
    (`SchedulerStatus.servers[].swaps`). Only changes are kept, with the last one before the
    hour as the baseline; a scheduler first heard with swaps already made has them as its
    baseline (when they happened is unknown, so they are not counted)."""

    def __init__(self, window_s: float = HOUR_S) -> None:
        self.window_s = window_s
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def record(self, sender: str, at: float, total: int) -> None:
        samples = self._samples.setdefault(sender, deque())
        if samples and total < samples[-1][1]:
            # Counted afresh (a restart under the same id): start over from here.
            samples.clear()
        if not samples or total != samples[-1][1]:
            samples.append((at, total))
        self._prune(samples, at)

    def _prune(self, samples: deque[tuple[float, int]], now: float) -> None:
        start = now - self.window_s
        while len(samples) > 1 and samples[1][0] <= start:
            samples.popleft()

    def in_window(self, now: float) -> int:
        swaps = 0
        for sender, samples in list(self._samples.items()):
            self._prune(samples, now)
            if samples[-1][0] <= now - self.window_s and len(samples) == 1:
                # Nothing changed within the window: nothing to count, nothing to keep.
                del self._samples[sender]
                continue
            swaps += samples[-1][1] - samples[0][1]
        return swaps


class ObservedStatusBoard(StatusBoard):
    """The schedulers' status board, also keeping their model swaps for /health's
    `model_switches_per_hour`."""

    def __init__(self, stale_after_s: float, clock: Callable[[], float] = time.time) -> None:
        super().__init__(stale_after_s, clock)
        self.swaps = SwapHistory()
        self._now = clock
        # Read at each scrape: fresh statuses only, so a scheduler gone silent drops out.
        metrics.QUEUE_DEPTH.labels("waiting").set_function(
            lambda: sum(s.queue.waiting for s in self.fresh())
        )
        metrics.QUEUE_DEPTH.labels("running").set_function(
            lambda: sum(s.queue.running for s in self.fresh())
        )

    def update(self, status: SchedulerStatus) -> None:
        super().update(status)
        total = sum(server.swaps for server in status.servers)
        self.swaps.record(status.scheduler_id, status.sent_at, total)

    def swaps_per_hour(self) -> int:
        return self.swaps.in_window(self._now())
