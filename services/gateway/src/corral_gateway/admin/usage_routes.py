"""`GET /admin/usage`: what this gateway replica served since it started, as JSON.

    {"scope": "gateway", "gateway_id": "...", "since": <epoch s>, "uptime_s": 3600,
     "requests": 120, "errors": 3, "tokens": {"prompt": 9000, "generated": 4000, "total": 13000},
     "by_model": {"llama3.2": {"requests", "errors", "tokens"}, ...},
     "by_caller": {"key:alice": {...}, "ip:10.0.0.7": {...}, ...},
     "sessions": {"active": 42, "total": 128, "archived_today": 15, "counted_at": <epoch s>}}

Requests are those that named a model (answered or refused: an unknown model's 404 counts, as
an error); errors are answers with status 400 and up, 499 (the client left) included; tokens
are the backend's counts from the answers' final chunks. Callers are keys (by principal, else
key id), else `X-Client-Id` (auth off), else addresses. Per gateway replica and since it started
(usage.py): with several gateways, ask each and add them up, or use the Prometheus series. The
sessions are the session store's own count, the same whichever gateway answers.
"""

from __future__ import annotations

import time

from aiohttp import web

from corral_gateway.corral.health import sessions_block
from corral_gateway.responses import json_response
from corral_gateway.state import GATEWAY


async def usage_report(request: web.Request) -> web.Response:
    """This gateway's usage since it started: requests, tokens, errors, by model and caller."""
    gateway = request.app[GATEWAY]
    usage = gateway.usage
    return json_response(
        {
            "scope": "gateway",
            "gateway_id": gateway.settings.instance_id,
            "since": usage.since,
            "uptime_s": round(time.time() - usage.since),
            **usage.report(),
            "sessions": sessions_block(gateway),
        },
        200,
    )
