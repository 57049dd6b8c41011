"""Corral's /health (`health`, with `judge` deciding the status) and what /ready answers
(`can_serve`). Both are served by the ops routes (corral_common.ops), not a surface's router."""

from __future__ import annotations

import time
from typing import Any

from corral_common import __version__
from corral_common.messages import SchedulerStatus
from corral_common.redaction import redact_url
from corral_common.status_board import StoreState
from corral_gateway.state import Gateway
from corral_gateway.usage import ObservedStatusBoard


def can_serve(gateway: Gateway) -> bool:
    """What /ready answers: the broker is up, a scheduler is alive, and no lane is stuck."""
    statuses = gateway.hub.status.fresh()
    return gateway.broker.connected and bool(statuses) and not any(s.health.stuck for s in statuses)


def judge(
    *,
    broker_ok: bool,
    schedulers: int,
    expected_schedulers: int,
    lane_stuck: bool,
    backend_ok: bool,
    store: StoreState,
) -> tuple[str, list[str]]:
    """The cluster's health as this gateway sees it, and why it is not "healthy".

    - `unhealthy` (503): the gateway cannot serve generation at all: the broker is down, no
      scheduler is alive, or the lane is stuck (holds work, makes no progress).
    - `degraded` (200): it serves, with something missing: the backend is unreachable (requests
      queue or fail with 503), the session store is down (its last status says its writes
      fail, or it fell silent: sessions are unavailable, stateless chats work), or fewer
      schedulers are alive than `CORRAL_EXPECTED_SCHEDULERS` (no standby to take over).
    - `healthy`: none of these. A session store never heard from ("unknown") does not count
      against it: the gateway cannot tell one not deployed from one not reported yet.
    """
    reasons: list[str] = []
    if not broker_ok:
        reasons.append("broker disconnected")
    if schedulers == 0:
        reasons.append("no scheduler is alive")
    if lane_stuck:
        reasons.append("the lane is stuck")
    if reasons:
        return "unhealthy", reasons
    if not backend_ok:
        reasons.append("backend unreachable")
    if store == "down":
        reasons.append("session store down")
    if schedulers < expected_schedulers:
        reasons.append(f"{schedulers} of {expected_schedulers} expected schedulers alive")
    return ("degraded" if reasons else "healthy"), reasons


def sessions_block(gateway: Gateway) -> dict[str, Any]:
    """The `sessions` block: the session store's last count (broadcast with its status); each
    count null while no store has reported one (none deployed, or just started)."""
    counts = gateway.hub.stores.sessions()
    if counts is None:
        return {"active": None, "total": None, "archived_today": None, "counted_at": None}
    return {
        "active": counts.active,
        "total": counts.total,
        "archived_today": counts.archived_today,
        "counted_at": counts.counted_at,
    }


def metrics_block(gateway: Gateway) -> dict[str, Any]:
    """The `metrics` block, from what this gateway observed since it started (usage.py), and
    the model swaps its schedulers reported over the last hour."""
    board = gateway.hub.status
    swaps = board.swaps_per_hour() if isinstance(board, ObservedStatusBoard) else 0
    return {
        "context_truncation_rate": gateway.usage.truncation_rate(),
        "average_tokens_per_request": gateway.usage.tokens_per_request(),
        "model_switches_per_hour": swaps,
    }


def servers_block(statuses: list[SchedulerStatus]) -> list[dict[str, Any]]:
    """Each model server of the pool (one without `CORRAL_BACKENDS`), as the scheduler holding
    the lane sees them: the one running jobs, else the one that last moved (a standby probes
    the servers too, but runs nothing)."""
    if not statuses:
        return []
    active = max(
        statuses, key=lambda s: (s.queue.running, s.health.last_progress_at or 0.0, s.sent_at)
    )
    return [
        {
            "name": server.name,
            "kind": server.kind,
            "url": redact_url(server.url),
            "connected": server.connected,
            "in_rotation": server.in_rotation,
            "running": server.running,
            "loaded_model": server.loaded_model,
            "jobs_done": server.jobs_done,
            "model_swaps": server.swaps,
        }
        for server in active.servers
    ]


def models_available(gateway: Gateway) -> int | None:
    """How many models the backend has, from the model manager's list; None before one came."""
    return len(gateway.models.names) if gateway.models.updated_at else None


async def health(gateway: Gateway) -> dict[str, Any]:
    """Corral's /health, with its parts: the lane, the schedulers (standby), the
    session store, the broker and the backend. See `judge` for what each status means.
    `sessions` and `metrics` are the documented blocks (`sessions_block`, `metrics_block`)."""
    statuses = gateway.hub.status.fresh()
    broker_ok = gateway.broker.connected
    backends = [s.backend for s in statuses]
    connected = [b for b in backends if b.connected]
    backend = connected[0] if connected else (backends[0] if backends else None)
    waiting = sum(s.queue.waiting for s in statuses)
    running = sum(s.queue.running for s in statuses)
    waits = [s.queue.average_wait_ms for s in statuses if s.queue.waiting]
    # The lane as its worst reporter sees it: a stuck scheduler is the news, whoever else is up.
    lanes = sorted(statuses, key=lambda s: (s.health.stuck, s.health.stalled_for_s))
    lane = lanes[-1].health if lanes else None
    progress = [s.health.last_progress_at for s in statuses if s.health.last_progress_at]
    stores = gateway.hub.stores
    store_state = stores.state()
    status, reasons = judge(
        broker_ok=broker_ok,
        schedulers=len(statuses),
        expected_schedulers=gateway.settings.expected_schedulers,
        lane_stuck=bool(lane and lane.stuck),
        backend_ok=bool(connected),
        store=store_state,
    )
    return {
        "status": status,
        "reasons": reasons,
        "version": __version__,
        "ollama": {
            "connected": bool(connected),
            # Credentials never shown (the scheduler masks them too; this covers older ones).
            "url": redact_url(backend.url if backend else gateway.settings.ollama_url),
            "version": backend.version if backend else None,
            "error": backend.error if backend and not backend.connected else None,
            "models_available": models_available(gateway),
            "current_model_loaded": backend.loaded_model if backend else None,
            "servers": servers_block(statuses),
        },
        "queue": {
            "depth": waiting + running,
            "waiting": waiting,
            "running": running,
            "average_wait_ms": max(waits) if waits else 0,
            "processing_rate": round(sum(s.queue.processing_rate for s in statuses), 3),
        },
        "lane": {
            "stuck": bool(lane and lane.stuck),
            "last_progress_at": max(progress) if progress else None,
            "stalled_for_s": round(lane.stalled_for_s, 3) if lane else 0.0,
        },
        "broker": {"connected": broker_ok},
        "schedulers": len(statuses),
        "standby": {
            "schedulers": len(statuses),
            "expected": gateway.settings.expected_schedulers,
            "available": len(statuses) >= 2,
        },
        "store": {
            "state": store_state,
            "last_write_at": stores.last_write_at(),
            "error": stores.error(),
        },
        "sessions": sessions_block(gateway),
        "metrics": metrics_block(gateway),
        "in_flight": gateway.hub.in_flight,
        "uptime": round(time.monotonic() - gateway.started_at),
    }
