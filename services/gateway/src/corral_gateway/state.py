"""What the gateway's handlers share, under typed app keys."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from corral_common.broker import Broker
from corral_common.context_lengths import CachedContextLengths
from corral_common.messages import Job
from corral_common.rpc import RpcClient
from corral_common.supervision import spawn
from corral_gateway.caller_queues import CallerQueues
from corral_gateway.directory import ModelDirectory
from corral_gateway.hub import Hub
from corral_gateway.settings import GatewaySettings
from corral_gateway.submit import Submitter
from corral_gateway.turns_in_flight import TurnsInFlight
from corral_gateway.usage import Usage


class QueueView(Protocol):
    @property
    def where(self) -> tuple[int, int] | None:
        """(position, estimated wait ms) as last heard; None before the first position."""

    @property
    def job(self) -> Job | None:
        """The job as submitted (whose it is, its model and priority); None before."""


@dataclass
class Gateway:
    settings: GatewaySettings
    broker: Broker
    hub: Hub
    submitter: Submitter
    rpc: RpcClient
    models: ModelDirectory
    started_at: float = field(default_factory=time.monotonic)
    # When this replica last asked the schedulers for a fresh status (queue views).
    status_asked_at: float = 0.0
    # Requests this replica is relaying, for GET /queue/{request_id}.
    relays: dict[str, QueueView] = field(default_factory=dict)
    # Cancels published after a client left; kept so shutdown can wait for them.
    background: set[asyncio.Task[None]] = field(default_factory=set)
    # Models' context lengths, for stateless prompts (context_check.py); made on first use.
    context_lengths: CachedContextLengths | None = None
    # What this replica observed of its requests (GET /admin/usage, /health's `metrics`).
    usage: Usage = field(default_factory=Usage)
    # Session turns answered here and not yet stored (read your writes; turns_in_flight.py),
    # given the hub's events in app.gateway_ctx.
    turns: TurnsInFlight = field(default_factory=TurnsInFlight)
    # This replica's waiting jobs per caller, for the queue cap at the edge (caller_queues.py),
    # given the hub's events in app.gateway_ctx.
    callers: CallerQueues = field(default_factory=CallerQueues)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # Named after the coroutine (`Submitter.cancel`), for the failure log.
        spawn(coro, name=getattr(coro, "__qualname__", "background"), keep=self.background)


SETTINGS = web.AppKey("settings", GatewaySettings)
GATEWAY = web.AppKey("gateway", Gateway)
