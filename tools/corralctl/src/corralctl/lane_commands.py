"""`status`, `queue list|cancel`, `lane pause|resume|drain` and `dlq`: the cluster's health and
the lane, over `/health` and the `/admin` lane routes."""

from __future__ import annotations

import argparse
from typing import Any

from corralctl.client import ApiError, Gateway, segment
from corralctl.outcome import REFUSED, Outcome
from corralctl.tables import EMPTY, ago, cell, fields, millis, moment, seconds, table

LANE_ACTIONS = {"pause": "paused", "resume": "resumed", "drain": "draining"}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status_parser = commands.add_parser(
        "status", help="health of the cluster and the lane at a glance"
    )
    status_parser.set_defaults(run=status)

    queue = commands.add_parser("queue", help="the requests in the lane").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    queue.add_parser("list", help="the lane in the order it will run").set_defaults(run=queue_list)
    cancel = queue.add_parser("cancel", help="cancel a queued or running request")
    cancel.add_argument("request_id", metavar="REQUEST_ID")
    cancel.set_defaults(run=queue_cancel)

    lane = commands.add_parser("lane", help="pause, resume or drain the lane").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    helps = {
        "pause": "hold the lane (the running job finishes)",
        "resume": "carry on after a pause or a drain",
        "drain": "refuse new work (503) while the queue empties",
    }
    for action, text in helps.items():
        lane.add_parser(action, help=text).set_defaults(run=lane_command, lane_action=action)

    dlq = commands.add_parser("dlq", help="dead-lettered jobs (peeking returns them)")
    dlq.add_argument("what", nargs="?", choices=["list"], default="list", help=argparse.SUPPRESS)
    dlq.add_argument("--limit", type=int, default=20, help="how many jobs to show (0-100)")
    dlq.set_defaults(run=dlq_list)


def status(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    """`/health` (a 503 still describes the cluster: it is unhealthy) and, with an admin key,
    each scheduler's lane and servers from `/admin/queue`; the health is shown whatever that
    answers (no key, a user key, no broker), with why the rest is missing on stderr."""
    health: dict[str, Any] = gateway.call("GET", "/health", accept=(503,))
    lane: dict[str, Any] | None = None
    note = None
    try:
        lane = gateway.call("GET", "/admin/queue")
    except ApiError as exc:
        note = f"no lane details: {exc}"
    code = REFUSED if health.get("status") == "unhealthy" else 0
    return Outcome(
        {"health": health, "queue": lane}, _status_text(gateway, health, lane), code, note
    )


def _status_text(gateway: Gateway, health: dict[str, Any], lane: dict[str, Any] | None) -> str:
    backend = health.get("ollama") or {}
    queue = health.get("queue") or {}
    lane_health = health.get("lane") or {}
    standby = health.get("standby") or {}
    store = health.get("store") or {}
    reasons = health.get("reasons") or []
    state = str(health.get("status"))
    headline = f"Corral {cell(health.get('version'))} at {gateway.url}: {state}"
    if reasons:
        headline += f" ({'; '.join(map(str, reasons))})"
    if backend.get("connected"):
        version = backend.get("version")
        shown = f"connected to {cell(backend.get('url'))}"
        shown += f" (version {version})" if version else ""
        available = backend.get("models_available")
        shown += f", {available} models" if available is not None else ""
        loaded = backend.get("current_model_loaded")
        shown += f", {loaded} loaded" if loaded else ", none loaded"
    else:
        shown = f"unreachable at {cell(backend.get('url'))}: {cell(backend.get('error'))}"
    if lane_health.get("stuck"):
        moving = f"STUCK for {seconds(lane_health.get('stalled_for_s'))}"
    else:
        last = lane_health.get("last_progress_at")
        moving = f"moving (last progress {ago(last)})" if last else "moving"
    rows = [
        ("backend", shown),
        (
            "queue",
            f"{cell(queue.get('running'))} running, {cell(queue.get('waiting'))} waiting, "
            f"average wait {millis(queue.get('average_wait_ms'))}, "
            f"{cell(queue.get('processing_rate'))} jobs/s",
        ),
        ("lane", moving),
        (
            "schedulers",
            f"{cell(standby.get('schedulers'))} alive of {cell(standby.get('expected'))} "
            f"expected, standby {'ready' if standby.get('available') else 'missing'}",
        ),
        ("broker", "connected" if (health.get("broker") or {}).get("connected") else "DOWN"),
        ("session store", _store(store)),
        ("sessions", _sessions(health.get("sessions"))),
        ("requests", _derived(health.get("metrics"))),
        ("in flight", health.get("in_flight")),
        ("uptime", seconds(health.get("uptime"))),
    ]
    parts = [headline, fields(rows)]
    if lane is not None and lane.get("schedulers"):
        parts.append(_schedulers(lane["schedulers"]))
        servers = _servers(lane["schedulers"])
        if servers:
            parts.append(servers)
    return "\n\n".join(parts)


def _sessions(sessions: dict[str, Any] | None) -> str:
    if not sessions or sessions.get("total") is None:
        return "not counted yet"
    return (
        f"{sessions.get('active')} active, {sessions.get('total')} in all, "
        f"{sessions.get('archived_today')} archived today"
    )


def _derived(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return EMPTY
    rate = metrics.get("context_truncation_rate")
    return (
        f"{cell(metrics.get('average_tokens_per_request'))} tokens each on average, "
        f"{_percent(rate)} truncated, "
        f"{cell(metrics.get('model_switches_per_hour'))} model swaps in the last hour"
    )


def _percent(fraction: Any) -> str:
    if not isinstance(fraction, int | float) or isinstance(fraction, bool):
        return EMPTY
    return f"{fraction * 100:.1f}%"


def _servers(schedulers: list[dict[str, Any]]) -> str | None:
    """Each backend server a lane drives (one without a pool), when the schedulers say."""
    rows = [
        [
            server.get("name"),
            server.get("kind"),
            server.get("url"),
            _server_state(server),
            server.get("loaded_model"),
            server.get("running"),
            server.get("jobs_done"),
            server.get("swaps"),
        ]
        for scheduler in schedulers
        for server in scheduler.get("servers") or []
    ]
    if not rows:
        return None
    headers = ["SERVER", "KIND", "URL", "STATE", "LOADED", "RUNNING", "JOBS", "SWAPS"]
    return table(headers, rows)


def _server_state(server: dict[str, Any]) -> str:
    if not server.get("connected"):
        return "down"
    return "up" if server.get("in_rotation", True) else "out of rotation"


def _store(store: dict[str, Any]) -> str:
    shown = str(store.get("state", "unknown"))
    if store.get("last_write_at"):
        shown += f", last write {ago(store['last_write_at'])}"
    if store.get("error"):
        shown += f": {store['error']}"
    return shown


def _schedulers(schedulers: list[dict[str, Any]]) -> str:
    return table(
        ["SCHEDULER", "LANE", "RUNNING", "WAITING"],
        (
            [s.get("scheduler_id"), _lane_state(s), s.get("running"), s.get("waiting")]
            for s in schedulers
        ),
    )


def _lane_state(scheduler: dict[str, Any]) -> str:
    if scheduler.get("draining"):
        return "draining"
    return "paused" if scheduler.get("paused") else "open"


def queue_list(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    listing: dict[str, Any] = gateway.call("GET", "/admin/queue")
    entries = listing.get("queue") or []
    parts = [_schedulers(listing.get("schedulers") or [])]
    servers = _servers(listing.get("schedulers") or [])
    if servers:
        parts.append(servers)
    if entries:
        parts.append(
            table(
                ["POS", "REQUEST", "KIND", "MODEL", "PRIORITY", "OWNER", "WAITED", "ETA", "SERVER"],
                (
                    [
                        e.get("position"),
                        e.get("request_id"),
                        e.get("kind"),
                        e.get("model"),
                        e.get("priority"),
                        e.get("owner") or e.get("client_key"),
                        millis(e.get("waited_ms")),
                        millis(e.get("estimated_wait_ms")),
                        e.get("server"),
                    ]
                    for e in entries
                ),
            )
        )
    else:
        parts.append("the lane is empty")
    return Outcome(listing, "\n\n".join(parts))


def queue_cancel(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    """A cancel is sent whether or not the gateway sees the request; one it does not see is
    reported (exit 1): usually a mistyped or finished id."""
    answer: dict[str, Any] = gateway.call("DELETE", f"/admin/queue/{segment(args.request_id)}")
    if answer.get("found"):
        return Outcome(answer, f"cancel requested for {args.request_id}")
    return Outcome(
        answer,
        None,
        REFUSED,
        f"no queued or running request {args.request_id!r} (a cancel was sent anyway)",
    )


def lane_command(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    action = args.lane_action
    answer: dict[str, Any] = gateway.call("POST", f"/admin/lane/{action}")
    schedulers = answer.get("schedulers") or []
    pending = [str(s.get("scheduler_id")) for s in schedulers if not s.get("applied")]
    note = None
    if not schedulers:
        note = "no scheduler has reported since the command: none may be running"
    elif pending:
        note = f"not yet applied by {', '.join(pending)} (they apply it when they hear it)"
    text = f"lane {LANE_ACTIONS[action]}\n\n" + table(
        ["SCHEDULER", "LANE", "APPLIED"],
        ([s.get("scheduler_id"), _lane_state(s), s.get("applied")] for s in schedulers),
    )
    return Outcome(answer, text, 0, note)


def dlq_list(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    answer: dict[str, Any] = gateway.call("GET", "/admin/dlq", params={"limit": str(args.limit)})
    jobs = answer.get("jobs") or []
    text = f"{answer.get('queue')}: {answer.get('messages')} dead-lettered"
    if jobs:
        text += "\n\n" + table(
            ["REQUEST", "KIND", "MODEL", "OWNER", "REASON", "ENQUEUED"],
            (
                [
                    j.get("request_id")
                    if j.get("readable")
                    else f"(unreadable, {j.get('bytes')} B)",
                    j.get("kind"),
                    j.get("model"),
                    j.get("owner") or j.get("client_key"),
                    j.get("reason"),
                    moment(j.get("enqueued_at")),
                ]
                for j in jobs
            ),
        )
    return Outcome(answer, text)
