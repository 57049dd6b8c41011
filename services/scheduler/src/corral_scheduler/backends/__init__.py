"""The backends the lane drives, behind one interface (`base.Backend`), and the one place that
picks which (`CORRAL_BACKEND_KIND`)."""

from __future__ import annotations

import aiohttp

from corral_scheduler.backends.base import Backend
from corral_scheduler.backends.ollama import OllamaBackend
from corral_scheduler.backends.openai_compat import OpenAIBackend
from corral_scheduler.settings import SchedulerSettings


def open_backend(settings: SchedulerSettings, session: aiohttp.ClientSession) -> Backend:
    """The backend the settings name, over `session`."""
    timeouts = {
        "connect_timeout_s": settings.backend_connect_timeout_s,
        "read_timeout_s": settings.backend_read_timeout_s,
    }
    url = settings.model_server_url()
    if settings.backend_kind == "openai":
        return OpenAIBackend(session, url, api_key=settings.backend_api_key, **timeouts)
    return OllamaBackend(session, url, **timeouts)
