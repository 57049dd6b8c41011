from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from corral_common.settings import CorralSettings
from corral_gateway.extensions import QueueLimits


class GatewaySettings(CorralSettings):
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    # Ollama sets no limit, but base64 images are large: generous, yet bounded.
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # One access-log line per request at info level (request id, key id, method, path, model,
    # status, queue wait, duration: docs/observability.md); false turns them off.
    access_log: bool = True
    # A scheduler status older than this no longer counts for /health.
    status_stale_s: float = Field(default=10.0, gt=0)
    # How many live schedulers /health expects (the active one and its standbys): fewer is
    # "degraded" (set 2 when a standby is deployed, as `make run` does); none is "unhealthy".
    expected_schedulers: int = Field(default=1, ge=1)
    # Tokens and final events travel on different channels; how long a final event waits for
    # token batches still on their way before the stream is declared broken.
    straggler_timeout_s: float = Field(default=5.0, gt=0)
    # While a streaming client waits, its last queue chunk is repeated this often so proxies
    # and clients do not cut an idle connection.
    heartbeat_s: float = Field(default=5.0, gt=0)
    # How long the next request on a session at this gateway waits for the session store to
    # confirm that the turn answered before it is written (so it sees that turn), before going
    # on anyway (turns_in_flight.py). The answer itself never waits for it. 0: nobody waits.
    stored_timeout_s: float = Field(default=2.0, ge=0)
    # Queries to the session store (context assembly, history, search).
    rpc_timeout_s: float = Field(default=10.0, gt=0)
    # How long a request may wait in the queue before it is answered 408 queue_timeout, unless
    # it asks otherwise (X-Queue-Timeout or options.queue_timeout, seconds); 0 = no default.
    queue_timeout_s: float = Field(default=600.0, ge=0)
    # The longest queue timeout a client may ask for (0 = no cap).
    queue_timeout_max_s: float = Field(default=3600.0, ge=0)
    # How long POST /api/providers/ollama/pull waits before answering 504; the pull itself
    # carries on in the model manager.
    provider_pull_timeout_s: float = Field(default=600.0, gt=0)
    # The context window the backend runs with when the request sets no `num_ctx` (a model's
    # larger context is capped at it); the session store's setting of the same name, which
    # both must share. Stateless prompts are sized against it (context_check.py): one that
    # cannot fit is a 413, one whose older messages the backend will drop says so in
    # `context_info`; `stateless_context_check=false` sends them as they are, as to Ollama.
    default_num_ctx: int = Field(default=4096, ge=64)
    stateless_context_check: bool = True
    # Whether OpenAI's `user` field names a session on /v1 when nothing more explicit does.
    # Off by default: OpenAI's clients (LibreChat, SDK users) set `user` for abuse tracking and
    # send the whole history every time, and the session store would add it a second time.
    openai_user_sessions: bool = False

    # The network edge (see host_check.py, origins.py, connections.py).
    # Extra Host names/addresses accepted while bound to loopback (comma-separated;
    # `*.example.com` for subdomains), beyond Ollama's local names.
    allowed_hosts: str = ""
    # Extra browser origins allowed, like OLLAMA_ORIGINS (comma-separated, `*` wildcards).
    origins: str = ""
    # From accepting a connection (or from a later request's first byte) to the end of the
    # request's headers; a slow or silent client is disconnected after this.
    header_timeout_s: float = Field(default=10.0, gt=0)
    # How long a kept-alive connection may sit idle between requests. A running request (a
    # queued client's stream with heartbeats) is never idle.
    idle_timeout_s: float = Field(default=75.0, gt=0)
    # Open connections per client address and in all (0 = no cap). Past a cap, the oldest idle
    # connection is closed to make room, or the new one is refused if none is idle. The total
    # is also held below the process's open-file limit.
    max_connections_per_ip: int = Field(default=256, ge=0)
    max_connections: int = Field(default=10_000, ge=0)

    # Identity (see identity/ and docs/security.md).
    # `off`: no keys, today's behaviour; allowed only while the gateway binds loopback, unless
    # `allow_open` says the operator knows (logged as a warning). `on`: every route but `/`,
    # `/health` and `/ready` needs a key.
    auth: Literal["off", "on"] = "off"
    allow_open: bool = False
    # An operator's admin key (any string of 32+ characters), taken as an admin key with id
    # `operator`. `make run` generates one under the data dir when auth is on and none is set.
    admin_key: SecretStr | None = None
    # How long a resolved key is trusted without asking the store again; revocations also
    # reach every gateway at once by broadcast (`keys.changed`), this bounds a lost one.
    key_cache_s: float = Field(default=5.0, ge=0)
    # Rate limits (0 = none). Keys: per key, overridable per key. Anonymous callers (auth off):
    # per client address. Defaults: 60 requests a minute per address, 120 per key.
    rate_limit_per_minute: int = Field(default=120, ge=0)
    anonymous_rate_limit_per_minute: int = Field(default=60, ge=0)
    # How often requests counted here are sent to the store (identity/request_counts.py); a
    # caller's first request in a window is always counted there first. 0: every request is
    # counted in the store before it is answered (exact across replicas, one call each).
    rate_limit_sync_ms: int = Field(default=1000, ge=0)
    tokens_per_minute: int = Field(default=0, ge=0)
    tokens_per_day: int = Field(default=0, ge=0)
    # Failed authentications per client address per minute before it is refused outright.
    auth_failures_per_minute: int = Field(default=20, ge=0)
    # Proxies whose X-Forwarded-For is believed (comma-separated addresses or CIDR networks).
    trusted_proxies: str = ""

    def allowed_host_list(self) -> list[str]:
        return [h.strip() for h in self.allowed_hosts.split(",") if h.strip()]

    def origin_list(self) -> list[str]:
        return [o.strip() for o in self.origins.split(",") if o.strip()]

    def listen_address(self) -> tuple[str, int]:
        # The gateway serves the API and its ops endpoints on one public port.
        return self.gateway_host, self.gateway_port

    def queue_limits(self) -> QueueLimits:
        return QueueLimits(self.queue_timeout_s or None, self.queue_timeout_max_s or None)
