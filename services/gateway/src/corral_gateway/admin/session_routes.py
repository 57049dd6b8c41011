"""`DELETE /admin/sessions?confirm=delete-all-sessions`: every session and turn deleted, for
operators (an admin key; audited by the gate like every admin change).

The confirmation is a query parameter with one exact value, so a stray `DELETE /admin/sessions`
(a script's typo, a replayed request) deletes nothing: without it, or with any other value, the
answer is 400 naming what to send.
"""

from __future__ import annotations

from aiohttp import web

from corral_common.clip import clip
from corral_common.contracts.session_store import (
    CLEAR_CONFIRMATION,
    SESSION_STORE,
    ClearParams,
)
from corral_common.errors import CorralError, ErrorType
from corral_gateway.responses import json_response
from corral_gateway.state import GATEWAY


async def clear_sessions(request: web.Request) -> web.Response:
    """Delete every session and its turns (`?confirm=delete-all-sessions`)."""
    confirm = request.query.get("confirm")
    if confirm != CLEAR_CONFIRMATION:
        shown = "no confirm" if confirm is None else f"confirm={clip(confirm)!r}"
        raise CorralError(
            ErrorType.INVALID_REQUEST,
            f"deleting every session needs ?confirm={CLEAR_CONFIRMATION} (got {shown})",
            details={"parameter": "confirm", "expected": CLEAR_CONFIRMATION},
        )
    await request.app[GATEWAY].turns.settled()
    cleared = await request.app[GATEWAY].rpc.call(
        SESSION_STORE.clear, ClearParams(confirm=CLEAR_CONFIRMATION)
    )
    return json_response(cleared.wire(), 200)
