"""Idle and memory-pressure unloading, per model server.

Every check reads which models each server holds (its `/api/ps`) and what the schedulers' lanes
hold for each model (their status broadcasts), and decides per (server, model). A model with
work queued (which may go to any server) is unloaded nowhere; one with a job running is not
unloaded where it runs. Otherwise a model idle for `idle_unload_s` on a server (since its last
job there, or since it was first seen there if none ran there) is unloaded there, and a server
under memory pressure has its least recently used idle model unloaded, one per check. A
status that cannot tell servers apart (a scheduler older than `ModelActivity.last_used_on`,
or one whose servers do not include this one) counts its model-wide activity on every server.
Without a fresh scheduler status nothing is unloaded: the lane's activity is then unknown, and
an unload on a guess could land between a client's request and its generation.

Memory is measured where the models live (`server_memory_percent`): a server with a memory
budget (`CORRAL_MODEL_MEMORY_BUDGET_BYTES`) is as full as its loaded models' `size` (from its
own `/api/ps`) is of that budget; one without a budget on this host (a loopback URL) is as full
as this host's memory; a remote one without a budget is never judged under pressure.

An unload is a job in the scheduler's lane (`kind: "unload"`, with `server` set to the pool
server it is for), which re-checks for queued work when its turn comes and refuses
(`409 model_busy`) if some arrived meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import psutil
import structlog

from corral_common.errors import CorralError
from corral_common.messages import Event, ModelActivity, SchedulerStatus
from corral_common.model_names import canonical_model_name
from corral_common.status_board import StatusBoard
from corral_model_manager import metrics
from corral_model_manager.jobs import JobSubmitter, PendingJob
from corral_model_manager.servers import ServerModels

log = structlog.get_logger(__name__)

UnloadReason = Literal["idle", "memory"]
MemoryProbe = Callable[[], float]


def host_memory_percent() -> float:
    return float(psutil.virtual_memory().percent)


@dataclass(frozen=True, slots=True)
class UnloadPolicy:
    idle_unload_s: float
    memory_pressure_percent: float
    # Bytes each server's loaded models may take, by server name (0: no budget).
    budgets: Mapping[str, int] = field(default_factory=dict)
    # The budget of a server not named in `budgets`.
    default_budget: int = 0

    def budget(self, server: str) -> int:
        return self.budgets.get(server, self.default_budget)


@dataclass(frozen=True, slots=True)
class Unload:
    model: str
    """As the backend names it in `/api/ps`."""
    reason: UnloadReason
    server: str | None = None
    """The pool server it is unloaded from (`Job.server`); None with one server."""


def loaded_bytes(models: Iterable[dict[str, Any]]) -> int:
    """The memory a server's loaded models take by its own report: each `/api/ps` entry's
    `size` (Ollama's whole footprint, VRAM and RAM), else its `size_vram`."""
    total = 0
    for entry in models:
        size = entry.get("size")
        if isinstance(size, bool) or not isinstance(size, int):
            size = entry.get("size_vram")
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            total += size
    return total


def server_memory_percent(
    server: ServerModels, budget: int, host_percent: float | None
) -> float | None:
    """How full a server's memory is: its loaded models' size against its budget; without a
    budget, this host's memory if the server runs here; else unknown (None: no pressure)."""
    if budget > 0:
        return 100.0 * loaded_bytes(server.models) / budget
    return host_percent if server.local else None


@dataclass(frozen=True, slots=True)
class Plan:
    unloads: list[Unload] = field(default_factory=list)
    # Why a model that met a criterion was left loaded (for the skipped-unloads metric).
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Loaded:
    name: str
    last_use: float
    busy: bool


def _busy_on(activity: ModelActivity, server: str, knows_server: bool) -> bool:
    """Whether the model's work keeps it on `server`: queued work may go to any server; a
    running job holds its own only, or every one when the status cannot say where it runs
    (an older scheduler, or one that does not know this server)."""
    if activity.queued > 0:
        return True
    if activity.running <= 0:
        return False
    if knows_server and activity.running_on:
        return server in activity.running_on
    return True


def _last_used_on(activity: ModelActivity, server: str, knows_server: bool) -> float | None:
    """When the model was last used on `server` by this status; None: not since the
    scheduler started. Model-wide when the status cannot say where (as `_busy_on`): a use
    elsewhere then counts here too, so a guess never makes a model look idler than it is."""
    if knows_server and activity.last_used_on:
        return activity.last_used_on.get(server)
    return activity.last_used_at


def _activity_on(server: str, statuses: list[SchedulerStatus]) -> tuple[set[str], dict[str, float]]:
    """The models busy on `server`, and when each was last used there, by canonical name."""
    busy: set[str] = set()
    last_used: dict[str, float] = {}
    for status in statuses:
        knows_server = any(one.name == server for one in status.servers)
        for activity in status.models:
            key = canonical_model_name(activity.model)
            if _busy_on(activity, server, knows_server):
                busy.add(key)
            used = _last_used_on(activity, server, knows_server)
            if used is not None:
                last_used[key] = max(last_used.get(key, -math.inf), used)
    return busy, last_used


def plan_unloads(
    loaded: Iterable[str],
    statuses: list[SchedulerStatus],
    first_seen: Mapping[str, float],
    *,
    server: str,
    now: float,
    memory_percent: float | None,
    policy: UnloadPolicy,
    pending: set[str],
) -> Plan:
    """What to unload now from `server` (its name, as the schedulers' statuses name it), which
    holds `loaded`. `first_seen` (on that server) and `pending` are keyed by canonical name;
    times are epoch seconds. `statuses` must be fresh and non-empty (the caller checks)."""
    busy, last_used = _activity_on(server, statuses)
    candidates: list[_Loaded] = []
    for name in loaded:
        key = canonical_model_name(name)
        if key in pending:
            continue  # one unload at a time per model; its answer is still to come
        last_use = max(first_seen.get(key, now), last_used.get(key, -math.inf))
        candidates.append(_Loaded(name, last_use, key in busy))

    unloads: list[Unload] = []
    skipped: list[str] = []
    if policy.idle_unload_s > 0:
        for model in candidates:
            if now - model.last_use < policy.idle_unload_s:
                continue
            if model.busy:
                skipped.append("busy")
            else:
                unloads.append(Unload(model.name, "idle"))

    pressure = (
        policy.memory_pressure_percent > 0
        and memory_percent is not None
        and memory_percent >= policy.memory_pressure_percent
    )
    # One memory unload per check, and none while another unload is on its way: host memory
    # only shows the relief once it is done.
    if pressure and not unloads and not pending:
        idle = [model for model in candidates if not model.busy]
        if idle:
            victim = min(idle, key=lambda model: model.last_use)
            unloads.append(Unload(victim.name, "memory"))
        elif candidates:
            skipped.append("busy")
    return Plan(unloads, skipped)


def loaded_names(ps: Any) -> list[str]:
    models = ps.get("models") if isinstance(ps, dict) else None
    names: list[str] = []
    for entry in models if isinstance(models, list) else []:
        if isinstance(entry, dict):
            name = entry.get("name") or entry.get("model")
            if isinstance(name, str) and name:
                names.append(name)
    return names


class Unloader:
    def __init__(
        self,
        *,
        policy: UnloadPolicy,
        board: StatusBoard,
        # What each server holds loaded (`ModelServers.loaded`).
        running_models: Callable[[], Awaitable[list[ServerModels]]],
        submitter: JobSubmitter,
        interval_s: float,
        memory_probe: MemoryProbe = host_memory_percent,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self._board = board
        self._running_models = running_models
        self._submitter = submitter
        self._interval_s = interval_s
        self._memory_probe = memory_probe
        self._clock = clock
        # When each loaded model was first seen loaded, per server (keyed as its unloads'
        # `Job.server`): a model whose use no scheduler reports counts as used then, never as
        # idle since forever.
        self._first_seen: dict[str | None, dict[str, float]] = {}
        # What the last check found on each server, by name (for /health).
        self.seen: dict[str, dict[str, Any]] = {}
        # Answers handled so far, so a caller can wait for one on the broker's schedule.
        self.answers_handled = 0
        self._answer_handled = asyncio.Event()

    async def wait_answers(self, count: int) -> None:
        """Return once `count` answers have been handled in all."""
        while self.answers_handled < count:
            await self._answer_handled.wait()

    async def run_forever(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("unload check failed")
            await asyncio.sleep(self._interval_s)

    async def check(self) -> Plan | None:
        """One look; None when there was nothing to decide on (no status, no backend)."""
        memory = self._probe_memory()
        for expired in self._submitter.expire():
            log.warning("job never answered", kind=expired.job.kind, model=expired.job.model)
        statuses = self._board.fresh()
        if not statuses:
            log.debug("no fresh scheduler status; lane activity unknown, nothing unloaded")
            return None
        try:
            servers = await self._running_models()
        except CorralError as exc:
            log.info("loaded models unknown", error=exc.message)
            return None
        for server in servers:
            if server.error is not None:
                log.info("loaded models unknown", server=server.server, error=server.error.message)
                self.seen[server.server] = {"error": server.error.message, "at": self._clock()}
        answered = [server for server in servers if server.error is None]
        if not answered:
            return None
        now = self._clock()
        unloads: list[Unload] = []
        skipped: list[str] = []
        for server in answered:
            plan = self._plan(server, statuses, now, memory)
            unloads += [dataclasses.replace(u, server=server.target) for u in plan.unloads]
            skipped += plan.skipped
        for reason in skipped:
            metrics.UNLOADS_SKIPPED.labels(reason).inc()
        for unload in unloads:
            await self._submit(unload)
        return Plan(unloads, skipped)

    def _plan(
        self,
        server: ServerModels,
        statuses: list[SchedulerStatus],
        now: float,
        host_percent: float | None,
    ) -> Plan:
        loaded = loaded_names({"models": server.models})
        first_seen = self._first_seen.setdefault(server.target, {})
        keys = {canonical_model_name(name) for name in loaded}
        for key in set(first_seen) - keys:
            del first_seen[key]  # unloaded: a reload starts its idle time afresh
        for key in keys:
            first_seen.setdefault(key, now)
        budget = self.policy.budget(server.server)
        percent = server_memory_percent(server, budget, host_percent)
        size = loaded_bytes(server.models)
        metrics.SERVER_LOADED_BYTES.labels(server.server).set(size)
        if percent is not None:
            metrics.SERVER_MEMORY.labels(server.server).set(percent)
        self.seen[server.server] = {
            "loaded": sorted(loaded),
            "loaded_bytes": size,
            "budget_bytes": budget,
            "memory_percent": None if percent is None else round(percent, 1),
            "at": now,
        }
        return plan_unloads(
            loaded,
            statuses,
            first_seen,
            server=server.server,
            now=now,
            memory_percent=percent,
            policy=self.policy,
            pending=self._submitter.pending("unload", server=server.target),
        )

    def answered(self, pending: PendingJob, event: Event) -> None:
        """The scheduler's answer to one of our jobs."""
        try:
            self._take_answer(pending, event)
        finally:
            self.answers_handled += 1
            self._answer_handled.set()
            self._answer_handled = asyncio.Event()

    def _take_answer(self, pending: PendingJob, event: Event) -> None:
        job = pending.job
        if job.kind != "unload":
            outcome = "done" if event.kind == "done" else event.kind
            log.info("job answered", kind=job.kind, model=job.model, outcome=outcome)
            return
        if event.kind == "done":
            metrics.UNLOADS.labels(pending.reason).inc()
            self._first_seen.get(job.server, {}).pop(pending.key, None)
            log.info("model unloaded", model=job.model, server=job.server, reason=pending.reason)
            return
        error_type = getattr(event, "error_type", None)
        skipped = "model_busy" if error_type == "model_busy" else event.kind
        metrics.UNLOADS_SKIPPED.labels("failed" if skipped == "error" else skipped).inc()
        log.info("unload not done", model=job.model, reason=pending.reason, outcome=skipped)

    def _probe_memory(self) -> float | None:
        try:
            memory = float(self._memory_probe())
        except Exception as exc:
            log.warning("host memory unknown", error=str(exc))
            return None
        metrics.HOST_MEMORY.set(memory)
        return memory

    async def _submit(self, unload: Unload) -> None:
        payload = {"model": unload.model, "keep_alive": 0}
        try:
            await self._submitter.submit(
                "unload", unload.model, payload, reason=unload.reason, server=unload.server
            )
        except Exception as exc:
            metrics.UNLOADS_SKIPPED.labels("submit_failed").inc()
            log.warning(
                "unload not submitted", model=unload.model, server=unload.server, error=str(exc)
            )
