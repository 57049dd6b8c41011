"""Where Corral's extension fields come from, and that none reaches the backend."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from corral_gateway.extensions import backend_payload, read_extensions
from corral_gateway.validation import OllamaRequestError


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


def test_payload_strips_extensions_and_stream() -> None:
    body = {
        "model": "m",
        "stream": True,
        "session_id": "s",
        "request_id": "r",
        "options": {"session_id": "s", "temperature": 0.1},
        "messages": [],
    }
    assert backend_payload(body) == {
        "model": "m",
        "options": {"temperature": 0.1},
        "messages": [],
    }
