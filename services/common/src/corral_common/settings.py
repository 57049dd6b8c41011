"""Settings shared by every service; each service subclasses `CorralSettings` for its own knobs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from corral_common.backend_servers import BackendServer, default_name, parse_backends
from corral_common.ids import INSTANCE_ID_RULE, is_valid_instance_id, new_id
from corral_common.openai_models import BackendKind


class CorralSettings(BaseSettings):
    """Every setting is an environment variable with the `CORRAL_` prefix."""

    model_config = SettingsConfigDict(env_prefix="CORRAL_", extra="ignore")

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    ollama_url: str = "http://127.0.0.1:11434"
    # Which API the model server speaks: "ollama" (its own), or "openai" for any server with
    # an OpenAI-compatible /v1 API (llama.cpp's llama-server, llama-cpp-python's server, vLLM,
    # LM Studio), which the scheduler translates to and from (docs/backends.md).
    backend_kind: BackendKind = "ollama"
    # Where that server is; unset means `ollama_url`. With an OpenAI-compatible server, its
    # root (`http://host:8080`; a trailing `/v1` is accepted), and its API key if it wants one.
    backend_url: str | None = None
    backend_api_key: str | None = None
    # A pool of model servers instead of the one above (backend_servers.py has the format);
    # each runs at most one generation at a time.
    backends: Annotated[list[BackendServer], NoDecode] = Field(default_factory=list)
    mongo_url: str | None = None
    data_dir: Path = Path(".corral")
    log_level: str = "info"
    # Repeats of one log event (same name and level) beyond this many per interval are
    # counted and summarised in one line instead of written (0: no limit).
    log_burst: int = Field(default=50, ge=0)
    log_burst_interval_s: float = Field(default=10.0, gt=0)
    # CPython's oldest garbage-collector generation is collected on this period instead of
    # whenever it has grown by a quarter (gc_pauses.py; 0: CPython's own rule).
    gc_full_interval_s: float = Field(default=60.0, ge=0)

    # The ops endpoints (/health, /ready, /metrics) of services that have no public port.
    health_host: str = "127.0.0.1"
    health_port: int = 0

    # These shape the jobs queue's arguments; every service declares the queue, so they must
    # agree cluster-wide (RabbitMQ refuses a re-declaration with different arguments).
    queue_max_length: int = Field(default=10_000, ge=1)
    job_delivery_limit: int = Field(default=5, ge=1)

    # Bounds a publisher-confirm wait so a half-dead broker connection cannot hang a request.
    publish_timeout_s: float = Field(default=5.0, gt=0)

    # Part of routing keys (`gw.<instance_id>.<request_id>.<kind>`) and queue names; bounded so
    # no routing key can pass RabbitMQ's 255 bytes (see corral_common.ids).
    instance_id: str = Field(default_factory=new_id)

    @field_validator("instance_id")
    @classmethod
    def _instance_id_fits_routing_keys(cls, value: str) -> str:
        if not is_valid_instance_id(value):
            raise ValueError(f"CORRAL_INSTANCE_ID must be {INSTANCE_ID_RULE}")
        return value

    @field_validator("backends", mode="before")
    @classmethod
    def _parse_backends(cls, value: Any) -> list[BackendServer]:
        return parse_backends(value)

    def backend_servers(self) -> list[BackendServer]:
        """Every model server Corral drives: the pool, else the one server."""
        if self.backends:
            return list(self.backends)
        url = self.model_server_url().rstrip("/")
        return [
            BackendServer(
                name=default_name(url),
                kind=self.backend_kind,
                url=url,
                api_key=self.backend_api_key,
            )
        ]

    def model_server_url(self) -> str:
        """The model server's base URL (`backend_url`, else `ollama_url`)."""
        return self.backend_url or self.ollama_url

    def listen_address(self) -> tuple[str, int]:
        """Where this service's HTTP app listens: the ops endpoints, unless overridden."""
        return self.health_host, self.health_port
