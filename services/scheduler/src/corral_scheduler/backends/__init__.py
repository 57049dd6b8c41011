"""The backends the lane drives, behind one interface (`base.Backend`), and the one place that
picks which (each server's kind: `CORRAL_BACKEND_KIND`, or its entry in `CORRAL_BACKENDS`)."""

from __future__ import annotations

import aiohttp

from corral_common.backend_servers import BackendServer
from corral_scheduler.backends.base import Backend
from corral_scheduler.backends.ollama import OllamaBackend
from corral_scheduler.backends.openai_compat import OpenAIBackend
from corral_scheduler.settings import SchedulerSettings


def open_backend(
    server: BackendServer, settings: SchedulerSettings, session: aiohttp.ClientSession
) -> Backend:
    """The backend of one server, over `session`."""
    timeouts = {
        "connect_timeout_s": settings.backend_connect_timeout_s,
        "read_timeout_s": settings.backend_read_timeout_s,
    }
    if server.kind == "openai":
        return OpenAIBackend(session, server.url, api_key=server.api_key, **timeouts)
    return OllamaBackend(session, server.url, **timeouts)


def open_backends(
    settings: SchedulerSettings, session: aiohttp.ClientSession
) -> dict[str, Backend]:
    """Every server's backend, by the server's name."""
    return {
        server.name: open_backend(server, settings, session)
        for server in settings.backend_servers()
    }
