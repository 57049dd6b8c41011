from __future__ import annotations

from pydantic import Field

from corral_common.settings import CorralSettings


class ModelManagerSettings(CorralSettings):
    health_port: int = 8103
    # Model metadata changes only on pull/create/delete; a cached answer is good this long.
    model_info_ttl_s: float = Field(default=300.0, gt=0)
    backend_timeout_s: float = Field(default=10.0, gt=0)
