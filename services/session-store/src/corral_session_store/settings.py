from __future__ import annotations

from pydantic import Field

from corral_common.contracts.session_store import MAX_HISTORY_LENGTH, MAX_SYSTEM_PROMPT
from corral_common.settings import CorralSettings


class SessionStoreSettings(CorralSettings):
    health_port: int = 8102
    # The MongoDB database holding `sessions`, `turns`, `calibration` and the identity
    # collections (`api_keys`, `rate_counters`, `audit_log`).
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

    # Sessions' lifecycle (docs/session-store.md, "Lifecycle").
    # The system prompt of a session's chat that has none of its own (none in the request, none
    # stored, none given when the session was created): the model's entry in `system_prompts`
    # (CORRAL_SYSTEM_PROMPTS, JSON `{"<model>": "<prompt>"}`, names matched as Ollama matches
    # them: `llama3.2` is `llama3.2:latest`), else `system_prompt` (CORRAL_SYSTEM_PROMPT); empty
    # or unset: none, and the model's own Modelfile SYSTEM applies, as with Ollama.
    system_prompt: str = Field(default="", max_length=MAX_SYSTEM_PROMPT)
    system_prompts: dict[str, str] = Field(default_factory=dict)
    # At most this many stored history messages (system prompts not counted) go with a chat's
    # new messages, unless the request says otherwise (`max_history_length`); the token budget
    # applies too, whichever is tighter. 0: no history is sent (it is still stored).
    max_history_length: int = Field(default=50, ge=0, le=MAX_HISTORY_LENGTH)
    # A session nobody has used (no turn, no import, no resume) for this long is archived: no
    # longer listed unless `?archived=true` is asked for; a chat naming it resumes it, with its
    # history. 0: never archived.
    session_archive_after_s: float = Field(default=86_400.0, ge=0)
    # An archived session is deleted, with its turns, this long after it was archived.
    # 0: archived sessions are kept.
    session_retention_s: float = Field(default=0.0, ge=0)
    # How often the lifecycle job (archive, then purge) runs in each store replica.
    session_sweep_interval_s: float = Field(default=60.0, gt=0)
    # A deleted session's tombstone is kept this long: a turn asked before the deletion and
    # done later is not written (it would make the session again). Far beyond the longest a
    # job can wait and run (the gateway's CORRAL_QUEUE_TIMEOUT_MAX_S, an hour, plus the
    # generation) and a `done` can wait in the turns queue for a store.
    session_tombstone_ttl_s: float = Field(default=7 * 86_400.0, ge=3600)

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
    # Context assembly waits this long at most for a turn of its session that this store is
    # writing (received, not yet written), so it never reads the session half written.
    assembly_write_wait_s: float = Field(default=2.0, ge=0)

    # Searches scan the turns (no text index on SecantusDB) in the database chats need too, so
    # their cost is bounded: each stops after `search_timeout_ms` (answering what it found,
    # marked `partial`), returns at most `search_max_results` results, and only
    # `search_concurrency` run at once, `search_concurrency_per_caller` of them per caller; one
    # over either bound is refused at once (503 / 429 with Retry-After).
    search_timeout_ms: int = Field(default=2_000, ge=10)
    search_max_results: int = Field(default=200, ge=1, le=200)
    search_concurrency: int = Field(default=2, ge=1)
    search_concurrency_per_caller: int = Field(default=1, ge=1)
    search_retry_after_s: int = Field(default=1, ge=1)
    # RPC prefetch windows: the hot path (context assembly, rename, delete) on
    # `rpc.session-store`, and the heavy reads (search, stats, history, list) on
    # `rpc.session-store.reads`, each consumed apart so reads never queue in front of chats.
    rpc_prefetch: int = Field(default=32, ge=1)
    reads_prefetch: int = Field(default=8, ge=1)
    # The identity methods (key lookups, rate-limit counters, audit) on
    # `rpc.session-store.identity`: small, and asked by the gateways on nearly every request.
    identity_prefetch: int = Field(default=64, ge=1)
    # Rate-limit counters are kept one window past their end, then deleted by a sweep this often.
    counter_purge_interval_s: float = Field(default=60.0, gt=0)

    # Health: a small upsert into the `health` collection every `health_interval_s`, bounded
    # by `health_write_timeout_s`; the store is "up" only while these writes succeed. The
    # status (with the last write's time) is broadcast to gateways every `status_interval_s`,
    # and at once when it changes.
    health_interval_s: float = Field(default=5.0, gt=0)
    health_write_timeout_s: float = Field(default=2.0, gt=0)
    status_interval_s: float = Field(default=2.0, gt=0)
    # The sessions are counted (active, total, archived today: the gateways' /health) this
    # often, in the background: three indexed counts, never one per /health call.
    session_count_interval_s: float = Field(default=15.0, gt=0)
