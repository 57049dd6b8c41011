from __future__ import annotations

from pydantic import Field

from corral_common.settings import CorralSettings


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
    # Priors for the wait estimate until the backend has been measured.
    prior_prompt_tokens_per_s: float = Field(default=400.0, gt=0)
    prior_eval_tokens_per_s: float = Field(default=15.0, gt=0)
    prior_load_ms: float = Field(default=3000.0, ge=0)
    prior_eval_count: float = Field(default=250.0, gt=0)
