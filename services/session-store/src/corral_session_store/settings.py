from __future__ import annotations

from pydantic import Field

from corral_common.settings import CorralSettings


class SessionStoreSettings(CorralSettings):
    health_port: int = 8102
    # The MongoDB database holding `sessions`, `turns` and `calibration`.
    mongo_database: str = Field(default="corral", min_length=1, max_length=63)
    # How long a MongoDB operation may wait for a usable server before it fails.
    mongo_timeout_ms: int = Field(default=5_000, ge=100)

    # The context window when neither the client (`options.num_ctx`) nor the model-manager says
    # otherwise; Ollama's own default. A model's larger context is capped at this, since the
    # backend runs with this window unless asked for more.
    default_num_ctx: int = Field(default=4096, ge=64)
    # Room kept for the answer when the client sets no `num_predict`: this many tokens, but at
    # most `answer_reserve_fraction` of the window, so tiny contexts keep room for history.
    answer_reserve: int = Field(default=512, ge=0)
    answer_reserve_fraction: float = Field(default=0.25, ge=0, lt=1)

    # The model-manager's `model_info` lookup: its timeout, and how long answers (and the
    # absence of an answer) are remembered.
    model_info_timeout_s: float = Field(default=0.5, gt=0)
    model_info_ttl_s: float = Field(default=300.0, ge=0)
    model_info_failure_ttl_s: float = Field(default=30.0, ge=0)

    # Turn events held unacked at once (turns of different sessions are written concurrently;
    # turns of one session one after another, in arrival order).
    turns_prefetch: int = Field(default=64, ge=1)
    # The turns queue keeps at most this many events while no store consumes it (the oldest
    # go first); it is part of the queue's declaration, so every replica must agree.
    turns_queue_max_length: int = Field(default=100_000, ge=1)
    # A turn whose write fails on a database error is retried in place (keeping its session's
    # order) for this long before it goes back to the queue.
    turn_retry_s: float = Field(default=30.0, ge=0)
