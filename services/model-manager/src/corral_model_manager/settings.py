from __future__ import annotations

from pydantic import Field

from corral_common.settings import CorralSettings


class ModelManagerSettings(CorralSettings):
    health_port: int = 8103
    # Model metadata changes only on pull/create/delete; a cached answer is good this long.
    model_info_ttl_s: float = Field(default=300.0, gt=0)
    # Read-only calls (/api/tags, /api/show, /api/ps, delete, copy) answer in milliseconds; a
    # backend silent this long is reported as 504 rather than left hanging.
    backend_timeout_s: float = Field(default=10.0, gt=0)
    # Pulls and creates stream for minutes or hours; only a backend silent this long between
    # two status lines (a hung registry download, a stuck quantization) fails them with 504.
    operation_stall_timeout_s: float = Field(default=600.0, gt=0)

    # A model nobody used for this long is unloaded through the lane, freeing memory that
    # Ollama's own keep_alive (set per request by clients) might hold for much longer. 0: off.
    idle_unload_s: float = Field(default=900.0, ge=0)
    # Host memory use (percent) at which the least recently used idle model is unloaded, one
    # per check, before the machine starts swapping. 0: off.
    memory_pressure_percent: float = Field(default=90.0, ge=0, le=100)
    # How often loaded models, scheduler activity and host memory are looked at.
    unload_check_interval_s: float = Field(default=5.0, gt=0)
    # An unload whose answer never arrives (a scheduler failover lost it) stops blocking the
    # next unload of that model after this long.
    unload_answer_timeout_s: float = Field(default=300.0, gt=0)
    # Comma-separated models loaded through the lane at start, so the first user of each does
    # not pay its load time.
    preload_models: str = ""
    # Gateways answer unknown models from the broadcast list; a periodic repeat covers models
    # pulled or removed behind Corral's back and gateways that missed a change.
    models_broadcast_s: float = Field(default=30.0, gt=0)
    # Pull progress (bytes of one layer) can come hundreds of times a second; clients need a
    # few updates a second, and every update costs a confirmed publish per watcher.
    pull_progress_interval_s: float = Field(default=0.25, ge=0)
    # A scheduler status older than this describes a lane that may have moved on (or a
    # scheduler that died): activity is then unknown, and nothing is unloaded on a guess.
    status_stale_s: float = Field(default=10.0, gt=0)

    # A blob upload (`POST /api/blobs/:digest`, relayed in chunks) whose gateway sends nothing
    # for this long is cancelled, and the backend drops the partial blob.
    blob_upload_idle_s: float = Field(default=60.0, gt=0)
    # Blob uploads relayed at once; each holds one backend connection and up to two chunks.
    blob_uploads_max: int = Field(default=4, ge=1)

    def preload_list(self) -> list[str]:
        return [name.strip() for name in self.preload_models.split(",") if name.strip()]
