"""One snapshot of the lane for the operator's page: every scheduler's status as last reported
(flags, health, queue counts, pool servers), the running and waiting jobs in lane order with
whose they are, per-caller counts, per-model activity, this gateway's recent requests and tokens
per second. Plain JSON-ready data built from what the feed holds; no I/O."""

from __future__ import annotations

from typing import Any

from corral_common.messages import LaneEntry, SchedulerStatus
from corral_gateway.ui.recent import RecentRequests
from corral_gateway.ui.throughput import SERIES_S, Throughput

ANONYMOUS = "anonymous"


def caller_of(entry: LaneEntry) -> str:
    """Whose job it is, as the page groups them: the principal, else the fair-share key."""
    return entry.owner or entry.client_key or ANONYMOUS


def lane_snapshot(
    statuses: list[SchedulerStatus], recent: RecentRequests, throughput: Throughput
) -> dict[str, Any]:
    statuses = sorted(statuses, key=lambda s: s.scheduler_id)
    placed = [(status.scheduler_id, entry) for status in statuses for entry in status.lane]
    running = [_running(sid, entry, throughput) for sid, entry in placed if entry.position == 0]
    waiting = sorted(
        (_entry(sid, entry) for sid, entry in placed if entry.position > 0),
        key=lambda e: (e["position"], e["scheduler_id"]),
    )
    series = throughput.series()
    return {
        "paused": any(s.paused for s in statuses),
        "draining": any(s.draining for s in statuses),
        "stuck": any(s.health.stuck for s in statuses),
        "schedulers": [_scheduler(s) for s in statuses],
        "servers": [
            {"scheduler_id": s.scheduler_id, **server.model_dump()}
            for s in statuses
            for server in s.servers
        ],
        "running": running,
        "waiting": waiting,
        "waiting_total": sum(s.queue.waiting for s in statuses),
        "callers": _callers(placed),
        "models": _models(statuses),
        "recent": recent.listing(),
        "throughput": {
            "series": series,
            "series_s": SERIES_S,
            "last_second": series[-1] if series else 0,
        },
    }


def _entry(scheduler_id: str, entry: LaneEntry) -> dict[str, Any]:
    return {"scheduler_id": scheduler_id, "caller": caller_of(entry), **entry.model_dump()}


def _running(scheduler_id: str, entry: LaneEntry, throughput: Throughput) -> dict[str, Any]:
    generation = throughput.running(entry.request_id)
    rate = generation.rate() if generation is not None else None
    return {
        **_entry(scheduler_id, entry),
        # Known for this gateway's requests only (their token events come here).
        "tokens": generation.tokens if generation is not None else None,
        "tokens_per_s": round(rate, 1) if rate is not None else None,
    }


def _scheduler(status: SchedulerStatus) -> dict[str, Any]:
    return {
        "scheduler_id": status.scheduler_id,
        "sent_at": status.sent_at,
        "paused": status.paused,
        "draining": status.draining,
        "health": status.health.model_dump(),
        "queue": status.queue.model_dump(),
        "backend": status.backend.model_dump(),
    }


def _callers(placed: list[tuple[str, LaneEntry]]) -> list[dict[str, Any]]:
    counts: dict[str, dict[str, Any]] = {}
    for _, entry in placed:
        caller = counts.setdefault(
            caller_of(entry), {"caller": caller_of(entry), "running": 0, "waiting": 0}
        )
        caller["running" if entry.position == 0 else "waiting"] += 1
    return sorted(counts.values(), key=lambda c: (-c["running"] - c["waiting"], c["caller"]))


def _models(statuses: list[SchedulerStatus]) -> list[dict[str, Any]]:
    models: dict[str, dict[str, Any]] = {}

    def model(name: str) -> dict[str, Any]:
        return models.setdefault(
            name,
            {"model": name, "queued": 0, "running": 0, "last_used_at": None, "loaded_on": []},
        )

    for status in statuses:
        for activity in status.models:
            one = model(activity.model)
            one["queued"] += activity.queued
            one["running"] += activity.running
            if activity.last_used_at is not None:
                one["last_used_at"] = max(one["last_used_at"] or 0.0, activity.last_used_at)
        servers = status.servers or []
        for server in servers:
            if server.loaded_model:
                model(server.loaded_model)["loaded_on"].append(server.name)
        if not servers and status.backend.loaded_model:
            model(status.backend.loaded_model)["loaded_on"].append(status.scheduler_id)
    return sorted(models.values(), key=lambda m: m["model"])
