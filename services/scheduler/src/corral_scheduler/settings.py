from __future__ import annotations

from typing import Literal

from pydantic import Field

from corral_common.settings import CorralSettings
from corral_scheduler.ordering import PoolPolicy


class SchedulerSettings(CorralSettings):
    health_port: int = 8101
    # How many jobs the scheduler holds unacked (and so can order and report positions for);
    # jobs beyond it wait in RabbitMQ in arrival order.
    admission_window: int = Field(default=512, ge=1)
    backend_connect_timeout_s: float = Field(default=5.0, gt=0)
    # Longest silence from the backend mid-response (model loads count) before giving up.
    backend_read_timeout_s: float = Field(default=600.0, gt=0)
    # Position updates per job are coalesced to at most one per this interval.
    position_interval_s: float = Field(default=0.25, gt=0)
    status_interval_s: float = Field(default=2.0, gt=0)
    # A running job's tokens go to its gateway at most once per this window (the first at
    # once; events.TokenBatcher): at real token rates a message per few tokens, not per token.
    # 0: only what piles up while a publish is under way is batched.
    token_batch_ms: float = Field(default=50.0, ge=0)
    # Priors for the wait estimate until the backend has been measured.
    prior_prompt_tokens_per_s: float = Field(default=400.0, gt=0)
    prior_eval_tokens_per_s: float = Field(default=15.0, gt=0)
    prior_load_ms: float = Field(default=3000.0, ge=0)
    prior_eval_count: float = Field(default=250.0, gt=0)
    # The reload thrash guard (load_guard.py): "sticky" serves every request that fits in a
    # model's loaded context with that context, so differing num_ctx values do not reload it;
    # "pass" sends num_ctx as clients wrote it.
    num_ctx_policy: Literal["sticky", "pass"] = "sticky"
    # The backend's num_ctx when a request names none (OLLAMA_CONTEXT_LENGTH, 4096 by default).
    default_num_ctx: int = Field(default=4096, ge=1)
    # A context grown by the guard stops here (0: no cap beyond what a request asks for).
    num_ctx_max: int = Field(default=0, ge=0)
    # keep_alive from clients is clamped into [min, max] seconds when set; unset = untouched.
    keep_alive_min_s: float | None = Field(default=None, ge=0)
    keep_alive_max_s: float | None = Field(default=None, ge=0)
    # A job handed over from a scheduler that died waits this long before it starts, so the
    # backend has dropped the dead scheduler's request (it notices at its next token write).
    takeover_grace_s: float = Field(default=1.0, ge=0)
    # The watchdog (watchdog.py): a lane that holds work but neither starts nor finishes a job,
    # nor receives a chunk from the backend, for this long is stuck; the scheduler then fails
    # /ready and hands the lane to a standby. A little above backend_read_timeout_s, within
    # which a healthy running job always yields a chunk or a timeout.
    lane_stall_s: float = Field(default=660.0, gt=0)
    # Ordering (ordering.py). Callers (X-Client-Id, later API keys) take turns when on.
    fair_share: bool = True
    # A batch job that has waited this long counts as normal, so batch work always progresses
    # (0: no aging). Only batch ages: see ordering.py.
    aging_s: float = Field(default=30.0, ge=0)
    # A job for the already-loaded model may run before jobs that would swap models, but no
    # job is overtaken more than this many times (0: strict order, no grouping).
    group_bound: int = Field(default=2, ge=0)
    # How a pool (CORRAL_BACKENDS) hands jobs to free servers: "affinity" prefers a server
    # holding the job's model (ordering.py); "round_robin" ignores models, and is there to
    # measure against (bench/pool.py).
    pool_policy: PoolPolicy = "affinity"
    # Queued jobs one caller may hold in the lane; more are refused with 429 (0: no cap).
    max_queued_per_key: int = Field(default=64, ge=0)
    # Retrying a backend that is not ready, before its response starts (retries.py): connection
    # refused or reset, a connect timeout, 502/503. Retries per request unless it names its own
    # (`max_retries`, capped by max_retries_limit); 0 turns retrying off.
    max_retries: int = Field(default=3, ge=0)
    max_retries_limit: int = Field(default=10, ge=0)
    # The backoff's base (a request's `retry_backoff` overrides it) and the cap on one wait:
    # retry n waits a random time up to min(cap, base * 2**n) ("full jitter").
    retry_backoff_s: float = Field(default=1.0, ge=0)
    retry_backoff_max_s: float = Field(default=10.0, ge=0)
