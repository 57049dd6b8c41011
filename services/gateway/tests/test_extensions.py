"""Where Corral's extension fields come from, and that none of Corral's fields (extensions,
request terms, session fields) reaches the backend."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from corral_common.contracts.identity import KeyLimits
from corral_common.messages import Priority
from corral_gateway.extensions import backend_payload, clamp_priority, read_extensions
from corral_gateway.identity.principal import CALLER
from corral_gateway.validation import OllamaRequestError
from services.gateway.tests.fakes import alice


def request(**headers: str):  # type: ignore[no-untyped-def]
    return make_mocked_request("POST", "/api/chat", headers=headers)


def test_session_id_sources_in_order() -> None:
    body = {"session_id": "body", "options": {"session_id": "opt"}}
    assert read_extensions(request(**{"X-Session-Id": "hdr"}), body).session_id == "body"
    assert (
        read_extensions(
            request(**{"X-Session-Id": "hdr"}), {"options": {"session_id": "o"}}
        ).session_id
        == "hdr"
    )
    assert read_extensions(request(), {"options": {"session_id": "opt"}}).session_id == "opt"
    assert read_extensions(request(), {}).session_id is None


def test_request_id_is_generated_when_absent() -> None:
    ext = read_extensions(request(), {})
    assert len(ext.request_id) == 32
    assert read_extensions(request(**{"X-Request-Id": "req-1"}), {}).request_id == "req-1"


@pytest.mark.parametrize("bad", ["has.dot", "a b", "x" * 129, ""])
def test_unsafe_ids_are_rejected(bad: str) -> None:
    if bad == "":
        assert read_extensions(request(), {"session_id": bad}).session_id is None
        return
    with pytest.raises(OllamaRequestError):
        read_extensions(request(), {"session_id": bad})


def test_non_string_ids_are_rejected() -> None:
    with pytest.raises(OllamaRequestError):
        read_extensions(request(), {"request_id": 7})


def test_queue_progress_header() -> None:
    assert read_extensions(request(), {}).queue_progress is True
    assert read_extensions(request(**{"X-Queue-Progress": "0"}), {}).queue_progress is False


@pytest.mark.parametrize(
    ("fields", "options"),
    [
        pytest.param(
            {"stream": True, "session_id": "s", "request_id": "r"},
            {"session_id": "s"},
            id="extensions-and-stream",
        ),
        pytest.param(
            {"timeout_ms": 1000, "max_retries": 2, "retry_backoff": 1.0},
            {"timeout": 5, "max_retries": 1, "retry_backoff": 0.5},
            id="request-terms",
        ),
        pytest.param(
            {"metadata": {"a": 1}, "max_history_length": 3},
            {"metadata": {"b": 2}, "max_history_length": 1},
            id="session-fields",
        ),
    ],
)
def test_corrals_fields_never_reach_the_backend(
    fields: dict[str, Any], options: dict[str, Any]
) -> None:
    """Corral's fields, in the body or in `options`, are stripped; Ollama's own stay."""
    body = {
        "model": "m",
        "messages": [],
        "keep_alive": "5m",
        **fields,
        "options": {**options, "temperature": 0.2},
    }
    assert backend_payload(body) == {
        "model": "m",
        "messages": [],
        "keep_alive": "5m",
        "options": {"temperature": 0.2},
    }


# --- who asks: the caller's fair-share key, owner, queue cap and maximum priority -----------


def keyed(
    max_priority: Priority | None = None,
    max_queued: int | None = None,
    headers: dict[str, str] | None = None,
) -> web.Request:
    """A request whose guard resolved a user key of principal `alice`."""
    req: web.Request = request(**(headers or {}))
    req[CALLER] = alice(max_priority=max_priority, limits=KeyLimits(max_queued=max_queued))
    return req


@pytest.mark.parametrize(
    ("asked", "maximum", "runs_as"),
    [
        ("interactive", None, "interactive"),
        ("interactive", "normal", "normal"),
        ("interactive", "batch", "batch"),
        ("normal", "batch", "batch"),
        ("normal", "interactive", "normal"),
        ("batch", "normal", "batch"),
        ("batch", "batch", "batch"),
    ],
)
def test_priority_is_clamped_to_the_keys_maximum(
    asked: Priority, maximum: Priority | None, runs_as: Priority
) -> None:
    assert clamp_priority(asked, maximum) == runs_as
    ext = read_extensions(keyed(maximum, headers={"X-Priority": asked}), {})
    assert ext.priority == runs_as


def test_a_key_caller_is_its_principal_in_the_queue() -> None:
    # X-Client-Id is for auth-off setups only: a key's principal takes turns in the queue.
    ext = read_extensions(keyed(max_queued=3, headers={"X-Client-Id": "someone-else"}), {})
    assert (ext.owner, ext.client_key, ext.max_queued) == ("alice", "alice", 3)
    assert ext.priority == "normal"


def test_anonymous_callers_are_as_today() -> None:
    ext = read_extensions(request(**{"X-Client-Id": "team-a", "X-Priority": "interactive"}), {})
    assert (ext.owner, ext.client_key, ext.max_queued) == (None, "team-a", None)
    assert ext.priority == "interactive"
    assert read_extensions(request(), {}).client_key is None
    with pytest.raises(OllamaRequestError):
        read_extensions(request(**{"X-Client-Id": "has.dot"}), {})
