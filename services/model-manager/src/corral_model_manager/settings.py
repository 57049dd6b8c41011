from __future__ import annotations

import re

from pydantic import Field, field_validator

from corral_common.settings import CorralSettings

_BYTES = re.compile(r"^(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?))?b?$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """`17179869184`, `16GiB`, `16G`, `20GB` (decimal units; `i` for binary ones)."""
    match = _BYTES.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a byte count (e.g. 17179869184, 16GiB, 20GB)")
    number, unit, binary = match.groups()
    power = "kmgt".index(unit.lower()) + 1 if unit else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


def parse_budgets(text: str) -> tuple[dict[str, int], int]:
    """`CORRAL_MODEL_MEMORY_BUDGET_BYTES`: comma-separated `[server=]bytes`; an entry without a
    server name is every other server's. Returns (by server name, the default)."""
    budgets: dict[str, int] = {}
    default = 0
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, _, amount = entry.rpartition("=")
        value = parse_bytes(amount)
        if name.strip():
            budgets[name.strip()] = value
        else:
            default = value
    return budgets, default


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
    # Memory use (percent) at which a model server's least recently used idle model is
    # unloaded, one per check, before it starts swapping. 0: off. A server's use is its loaded
    # models' size (its own /api/ps) of its budget below; without one, the host's memory for
    # a server on this host (loopback URL), and unknown (never unloaded for memory) otherwise.
    memory_pressure_percent: float = Field(default=90.0, ge=0, le=100)
    # The memory each model server has for models, in bytes: one value for every server, or
    # per server `gpu1=24GiB,gpu2=8GiB` (an entry without a name is the others'). 0: none.
    model_memory_budget_bytes: str = "0"
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

    @field_validator("model_memory_budget_bytes")
    @classmethod
    def _budgets_parse(cls, value: str) -> str:
        parse_budgets(value)
        return value

    def memory_budgets(self) -> tuple[dict[str, int], int]:
        """(budget by server name, the other servers' budget); 0 is no budget."""
        return parse_budgets(self.model_memory_budget_bytes)

    def preload_list(self) -> list[str]:
        return [name.strip() for name in self.preload_models.split(",") if name.strip()]
