"""Everything that crosses the broker, as pydantic models serialised to JSON.

A `Job` travels gateway -> scheduler on `corral.jobs`. Events travel scheduler -> gateway on
`corral.events` with routing key `gw.<gateway_id>.<request_id>.<kind>`; `SchedulerStatus` is
broadcast on `status.scheduler` so every gateway can answer /health without calling the backend.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

JobKind = Literal["chat", "generate", "embed", "embeddings", "load", "unload"]
# Kinds whose backend answer is a stream of chunks relayed as tokens; the others are one
# request and one JSON answer, carried whole in `Done.final`.
STREAMED_KINDS: frozenset[str] = frozenset({"chat", "generate"})
# Corral's own model operations (admin, model-manager): never part of a conversation.
MODEL_OPERATION_KINDS: frozenset[str] = frozenset({"load", "unload"})
CancelStage = Literal["admission", "queued", "loading", "prompt", "generating"]
Priority = Literal["interactive", "normal", "batch"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "normal", "batch")


class Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Job(Wire):
    """One unit of backend work. `payload` is exactly what the backend receives, minus `stream`."""

    request_id: str
    gateway_id: str
    kind: JobKind
    model: str
    payload: dict[str, Any]
    session_id: str | None = None
    # The messages this request adds to its session (the client's new messages), carried to
    # the `done` event so the session store can persist the turn without asking anyone.
    turn: list[dict[str, Any]] | None = None
    owner: str | None = None
    # The request's free-form `metadata` (a JSON object, size-capped at the edge), kept with
    # the turn in the session; never sent to the backend.
    metadata: dict[str, Any] | None = None
    client_key: str | None = None
    # False when the client turned queue chunks off (X-Queue-Progress: 0): it is then sent only
    # its first position (for queue_info), not every move of the lane.
    queue_progress: bool = True
    enqueued_at: float
    # Sizes for the wait estimate, measured at the edge where the request body is at hand.
    prompt_chars: int = 0
    num_predict: int | None = None
    # An unload normally yields to queued work for its model; `force` (admin) unloads anyway.
    force: bool = False
    priority: Priority = "normal"
    # Epoch seconds after which the job must not start (the client's queue timeout, or its
    # total deadline if that comes first).
    deadline: float | None = None
    # Epoch seconds by which the request must be answered, queue and generation together (its
    # `timeout_ms`, `options.timeout` or `X-Request-Timeout`): past it while running, the lane
    # stops the generation and answers 504 `backend_timeout`. None: no limit.
    finish_by: float | None = None
    # The request's own terms for retrying a backend that is not ready (its `max_retries`
    # and `retry_backoff`); None: the scheduler's settings.
    max_retries: int | None = Field(default=None, ge=0)
    retry_backoff_s: float | None = Field(default=None, ge=0)
    # How many jobs its `client_key` may have queued at once (the caller's key's own limit);
    # None: the scheduler's default (`max_queued_per_key`), 0: no cap.
    max_queued: int | None = Field(default=None, ge=0)
    # Run only on this server of the pool (`BackendServer.name`): a model operation aimed at
    # one server, such as an unload under that server's memory pressure. None: wherever the
    # lane's ordering sends it.
    server: str | None = None


class Accepted(Wire):
    kind: Literal["accepted"] = "accepted"
    request_id: str
    scheduler_id: str


class Position(Wire):
    kind: Literal["position"] = "position"
    request_id: str
    position: int
    estimated_wait_ms: int


class Positions(Wire):
    """Where every waiting job of one gateway now stands, for those whose place changed: one
    message per gateway each time the lane moves, instead of one per waiting job, so position
    traffic grows with the lane's changes, not with the clients waiting. The gateway hands each
    entry to its request as a `Position` (topology.positions_key)."""

    kind: Literal["positions"] = "positions"
    positions: list[Position]


class Started(Wire):
    """The backend accepted the request (status 200); tokens follow."""

    kind: Literal["started"] = "started"
    request_id: str
    waited_ms: int
    redelivered: bool = False


class Tokens(Wire):
    """A batch of the backend's own stream chunks, in order; `seq` counts batches from 0."""

    kind: Literal["token"] = "token"
    request_id: str
    seq: int
    chunks: list[dict[str, Any]]
    # The job's `started`, when it came just before the first batch and rode on it (one
    # message instead of two): the gateway hands it out first.
    started: Started | None = None


class Done(Wire):
    kind: Literal["done"] = "done"
    request_id: str
    gateway_id: str = ""
    # How many token batches were published before this event, so the gateway can wait for
    # stragglers: tokens and final events travel on different channels.
    token_batches: int
    final: dict[str, Any]
    text: str
    # Gathered from the whole stream: non-final chunks carry them, the final one need not.
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    enqueued_at: float = 0.0
    waited_ms: int
    model: str
    job_kind: JobKind = "chat"
    session_id: str | None = None
    turn: list[dict[str, Any]] | None = None
    owner: str | None = None
    metadata: dict[str, Any] | None = None


class Failed(Wire):
    kind: Literal["error"] = "error"
    request_id: str
    status: int
    error_type: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)
    token_batches: int = 0


class Stored(Wire):
    """From the session store: the turn of this request is written, so a client that asks
    again at once is answered with it in its history."""

    kind: Literal["stored"] = "stored"
    request_id: str
    outcome: str


class Cancelled(Wire):
    kind: Literal["cancelled"] = "cancelled"
    request_id: str
    stage: CancelStage


class Progress(Wire):
    """One status line of a model operation that streams progress (pull, create), exactly as
    the backend wrote it; `final` marks the closing `{"status": "success"}`."""

    kind: Literal["progress"] = "progress"
    request_id: str
    seq: int
    line: dict[str, Any]
    final: bool = False


# Event kinds by what they say about the job. Final events end it (published persistent and
# confirmed; the job's answer or failure); live ones mean it is still queued or running.
FINAL_KINDS: frozenset[str] = frozenset({"done", "error", "cancelled"})
LIVE_KINDS: frozenset[str] = frozenset({"accepted", "position", "started", "token"})
# The status of a request whose job was cancelled (an operator's cancel, or a cancel the lane
# reports): nginx's "client closed request". Not in errors.STATUS_OF: it is no error type.
CANCELED_STATUS = 499

JobEvent = Accepted | Position | Started | Tokens | Done | Failed | Cancelled
Event = Annotated[
    Accepted | Position | Started | Tokens | Done | Failed | Cancelled | Stored | Progress,
    Field(discriminator="kind"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


class BackendStatus(Wire):
    url: str
    connected: bool
    version: str | None = None
    error: str | None = None
    loaded_model: str | None = None


class ServerStatus(BackendStatus):
    """One server of the pool, as its scheduler sees it (`SchedulerStatus.servers`)."""

    name: str
    kind: str = "ollama"
    # False while the server is out of rotation (it failed; it is probed until it answers).
    in_rotation: bool = True
    # The request it is running (its lane's position 0), if any.
    running: str | None = None
    # Jobs it has finished, and model swaps it has made, since the scheduler started.
    jobs_done: int = 0
    swaps: int = 0


class QueueStatus(Wire):
    waiting: int
    running: int
    average_wait_ms: int
    processing_rate: float
    """Finished jobs per second over the recent window."""
    max_queued_per_key: int | None = None
    """The scheduler's per-caller cap for keys without their own (0: none); None from a
    scheduler older than the field. Gateways check it before publishing (queue_caps.py)."""


class ModelActivity(Wire):
    """What the lane holds for one model, so nobody unloads a model with work waiting, and
    where it was used, so a pool server that no longer runs it lets it go."""

    model: str
    queued: int = 0
    running: int = 0
    # Epoch seconds when its last job finished on this scheduler; None if none has. With a
    # pool, the latest of `last_used_on`.
    last_used_at: float | None = None
    # The same per pool server (`ServerStatus.name`): when its last job of this model finished
    # there, and the servers running one of its jobs now. Empty from a scheduler older than
    # these fields, which a reader then takes `last_used_at` and `running` for, model-wide.
    last_used_on: dict[str, float] = Field(default_factory=dict)
    running_on: list[str] = Field(default_factory=list)


class LaneEntry(Wire):
    """One job as the lane holds it, for ops (`GET /admin/queue`) and `GET /queue/{id}`."""

    request_id: str
    kind: JobKind
    model: str
    position: int
    estimated_wait_ms: int
    waited_ms: int
    priority: Priority = "normal"
    client_key: str | None = None
    # Whose job it is (the caller's principal), for ops and to tell a caller's own requests.
    owner: str | None = None
    # The pool server running it (running jobs only).
    server: str | None = None


class LaneHealth(Wire):
    """Whether the lane is moving, judged by the scheduler's watchdog (corral_scheduler.watchdog).

    `stuck` is set when the lane holds work (a running job, or waiting jobs while not paused)
    and nothing has started or finished for the watchdog's limit."""

    stuck: bool = False
    # Epoch seconds of the last job started or finished; None if none yet.
    last_progress_at: float | None = None
    # How long the lane has held work without progress (0 while it moves or is idle).
    stalled_for_s: float = 0.0


class SchedulerStatus(Wire):
    kind: Literal["status"] = "status"
    scheduler_id: str
    sent_at: float
    # The backend as one: with a pool, connected when any server is (and the first server's
    # URL and version); `servers` has each.
    backend: BackendStatus
    servers: list[ServerStatus] = Field(default_factory=list)
    queue: QueueStatus
    models: list[ModelActivity] = Field(default_factory=list)
    # The running job (position 0) and the first waiting ones, in the order they will run.
    lane: list[LaneEntry] = Field(default_factory=list)
    paused: bool = False
    draining: bool = False
    health: LaneHealth = Field(default_factory=LaneHealth)


class DatabaseStatus(Wire):
    """Whether the session store can write to its database, as its last health write found."""

    up: bool
    # Epoch seconds of the last successful health write; None if none yet.
    last_write_at: float | None = None
    error: str | None = None
    server: str | None = None


class SessionCounts(Wire):
    """The sessions in the store's database, as its last count found (every replica counts
    the same database: the newest count is the one to show, never a sum)."""

    # Not archived.
    active: int
    # Active and archived.
    total: int
    # Archived since midnight UTC (and not resumed since).
    archived_today: int
    # Epoch seconds of the count.
    counted_at: float


class StoreStatus(Wire):
    """A session store's state, broadcast on `status.session-store` (periodically, and at once
    when the database goes up or down), so gateways answer /health without an RPC."""

    kind: Literal["store_status"] = "store_status"
    instance_id: str
    sent_at: float
    database: DatabaseStatus
    # None until the store has counted its sessions once.
    sessions: SessionCounts | None = None


class ModelList(Wire):
    """The backend's models, broadcast by the model manager whenever they change (and
    periodically), so gateways can answer an unknown model at once without asking anyone."""

    kind: Literal["models"] = "models"
    sent_at: float
    models: list[str]


class LaneCommand(Wire):
    """An operator's command to every scheduler, on `corral.control` as `admin.lane`."""

    action: Literal["pause", "resume", "drain"]


class CancelRequest(Wire):
    request_id: str
    reason: str = "client disconnected"
