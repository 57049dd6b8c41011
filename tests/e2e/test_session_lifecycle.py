"""The session lifecycle through the whole cluster: session ids
made up on request, default system prompts, the message cap beside the token budget, metadata
kept with turns, export and import, honest `context_info` without a session, and archiving,
resuming, retention and clearing everything with short settings.

Two clusters: `life`, with keys on (two user keys, A and B, and the operator's) and default
system prompts set, for everything but time; `short`, with auth off and sessions archived
after 1 s and deleted 5 s later, for the lifecycle job and the operators' clear-all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import ollama
import orjson
import pytest

from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl, expected_reply
from tests.fixtures import ClusterFactory
from tests.gateway_http import TwoUsers, bearer, call, two_users
from tests.polling import eventually

pytestmark = pytest.mark.e2e

DEFAULT_PROMPT = "You are Corral's assistant."
QWEN_PROMPT = "You are Qwen, briefly."


@pytest.fixture(scope="module")
def life(new_cluster: ClusterFactory) -> Iterator[TwoUsers]:
    """Keys on; users A (`first`) and B (`second`)."""
    with two_users(
        new_cluster,
        "lifecycle",
        ("A", "B"),
        CORRAL_SYSTEM_PROMPT=DEFAULT_PROMPT,
        CORRAL_SYSTEM_PROMPTS=orjson.dumps({"qwen2.5:0.5b": QWEN_PROMPT}).decode(),
    ) as users:
        yield users


@pytest.fixture(scope="module")
def short(new_cluster: ClusterFactory) -> Iterator[Cluster]:
    with new_cluster(
        "archiving",
        whole=True,
        CORRAL_SESSION_ARCHIVE_AFTER_S="1",
        CORRAL_SESSION_RETENTION_S="5",
        CORRAL_SESSION_SWEEP_INTERVAL_S="0.2",
    ) as cluster:
        yield cluster


async def chat(
    url: str, body: dict[str, Any], key: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    return await call("POST", f"{url}/api/chat", key=key, body=body, headers=headers)


def ask(text: str, model: str = "llama3.2", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "stream": False,
        **extra,
    }


async def sent(emu: EmulatorControl) -> list[dict[str, Any]]:
    """The messages the backend got with the last chat."""
    messages: list[dict[str, Any]] = (await emu.requests("chat"))[-1]["messages"]
    return messages


# -- session ids on request ------------------------------------------------------------------


async def test_new_makes_up_a_session_id_in_the_answer_and_its_header(
    life: TwoUsers, emu: EmulatorControl
) -> None:
    status, headers, answer = await chat(
        life.url, ask("My name is Alice", session_id="new"), life.first
    )
    assert status == 200
    session_id = answer["session_id"]
    assert len(session_id) == 32 and session_id != "new"
    assert headers["X-Session-Id"] == session_id

    # The official client, streaming, with the id in its headers (it drops fields it does not
    # know, so the id is checked on the raw stream below): the history is there.
    client = ollama.AsyncClient(
        host=life.url, headers={**bearer(life.first), "X-Session-Id": session_id}
    )
    chunks = [
        chunk
        async for chunk in await client.chat(
            model="llama3.2", messages=[{"role": "user", "content": "Who am I?"}], stream=True
        )
    ]
    assert chunks[-1].done is True
    assert [m["content"] for m in await sent(emu)][-3:] == [
        "My name is Alice",
        expected_reply("My name is Alice"),
        "Who am I?",
    ]

    # Streaming raw, with the header asking: the final chunk carries the new id, as the header.
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{life.url}/api/chat",
            data=orjson.dumps({**ask("Hi"), "stream": True}),
            headers={**bearer(life.first), "X-Session-Id": "new"},
        ) as response,
    ):
        lines = [orjson.loads(line) for line in (await response.read()).splitlines() if line]
        made_up = response.headers["X-Session-Id"]
    assert lines[-1]["done"] is True and lines[-1]["session_id"] == made_up != session_id

    # /v1 too: OpenAI's metadata.session_id, answered in the body and the header.
    status, headers, completion = await call(
        "POST",
        f"{life.url}/v1/chat/completions",
        key=life.first,
        body={
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "Hello"}],
            "metadata": {"session_id": "new"},
        },
    )
    assert status == 200
    assert completion["session_id"] == headers["X-Session-Id"]
    assert len(completion["session_id"]) == 32


async def test_post_sessions_creates_an_owned_empty_session(
    life: TwoUsers, emu: EmulatorControl
) -> None:
    status, headers, created = await call(
        "POST", f"{life.url}/sessions", key=life.first, body={"system_prompt": "Answer in French."}
    )
    assert status == 201
    session_id = created["session_id"]
    assert headers["X-Session-Id"] == session_id
    assert headers["Location"] == f"/sessions/{session_id}/history"
    assert created["message_count"] == 0 and created["system_prompt"] == "Answer in French."

    # Its own system prompt is used by its chats (they send none).
    _, _, answer = await chat(life.url, ask("Bonjour", session_id=session_id), life.first)
    assert answer["context_info"]["system_prompt"] == "session"
    assert (await sent(emu))[0] == {"role": "system", "content": "Answer in French."}

    status, _, history = await call(
        "GET", f"{life.url}/sessions/{session_id}/history", key=life.first
    )
    assert status == 200 and history["message_count"] == 2
    _, _, listing = await call("GET", f"{life.url}/sessions?limit=500", key=life.first)
    mine = {s["session_id"]: s for s in listing["sessions"]}
    assert mine[session_id]["title"] == "Bonjour"
    # B does not see it, and cannot chat into it; the operator sees it.
    status, _, missing = await call(
        "GET", f"{life.url}/sessions/{session_id}/history", key=life.second
    )
    assert (status, missing["error"]["type"]) == (404, "session_not_found")
    status, _, _ = await chat(life.url, ask("Intrusion", session_id=session_id), life.second)
    assert status == 404
    status, _, _ = await call("GET", f"{life.url}/sessions/{session_id}/history", key=life.admin)
    assert status == 200


# -- system prompts, the message cap ---------------------------------------------------------


async def test_default_system_prompts_when_the_conversation_has_none(
    life: TwoUsers, emu: EmulatorControl
) -> None:
    _, _, answer = await chat(life.url, ask("Hello", session_id="new"), life.first)
    assert answer["context_info"]["system_prompt"] == "default"
    assert (await sent(emu))[0] == {"role": "system", "content": DEFAULT_PROMPT}
    # The per-model default, for qwen (names as Ollama matches them).
    _, _, answer = await chat(life.url, ask("Hello", "qwen2.5:0.5b", session_id="new"), life.first)
    assert answer["context_info"]["system_prompt"] == "model_default"
    assert (await sent(emu))[0] == {"role": "system", "content": QWEN_PROMPT}
    # The request's own system message wins, and is the conversation's from then on.
    own = {"role": "system", "content": "Be terse."}
    body = {**ask("Hello", session_id="new"), "messages": [own, {"role": "user", "content": "x"}]}
    _, _, answer = await chat(life.url, body, life.first)
    assert "system_prompt" not in answer["context_info"]
    _, _, answer = await chat(life.url, ask("Again", session_id=answer["session_id"]), life.first)
    assert (await sent(emu))[0] == own
    # Without a session the request goes as sent, exactly as to Ollama.
    await chat(life.url, ask("Stateless"), life.first)
    assert await sent(emu) == [{"role": "user", "content": "Stateless"}]


async def test_max_history_length_caps_the_replayed_history(
    life: TwoUsers, emu: EmulatorControl
) -> None:
    _, _, first = await chat(life.url, ask("one", session_id="new"), life.first)
    session_id = first["session_id"]
    for text in ("two", "three"):
        await chat(life.url, ask(text, session_id=session_id), life.first)
    # Through options (where the official client can carry it): two history messages.
    status, _, answer = await chat(
        life.url,
        {
            **ask("four"),
            "options": {"session_id": session_id, "max_history_length": 2, "temperature": 0},
        },
        life.first,
    )
    assert status == 200
    assert [m["content"] for m in await sent(emu)] == [
        DEFAULT_PROMPT,
        "three",
        expected_reply("three"),
        "four",
    ]
    info = answer["context_info"]
    assert info["truncated"] is True
    assert info["limited_by"] == "max_history_length" and info["max_history_length"] == 2
    assert info["turns_dropped"] == 2
    # No body field reaches the backend; 0 sends no history at all.
    _, _, answer = await chat(
        life.url, ask("five", session_id=session_id, max_history_length=0), life.first
    )
    assert [m["content"] for m in await sent(emu)] == [DEFAULT_PROMPT, "five"]
    last = (await emu.requests("chat"))[-1]
    assert "max_history_length" not in last and "max_history_length" not in last.get("options", {})
    status, _, refused = await chat(
        life.url, ask("six", session_id=session_id, max_history_length=-1), life.first
    )
    assert status == 400 and "max_history_length" in refused["error"]


# -- metadata ---------------------------------------------------------------------------------


async def test_metadata_is_kept_with_the_turn_never_sent_to_the_backend(
    life: TwoUsers, emu: EmulatorControl
) -> None:
    metadata = {"user_id": "123", "task": "story_generation", "tags": ["a", 1]}
    _, headers, _ = await chat(
        life.url, ask("Tell a story", session_id="new", metadata=metadata), life.first
    )
    session_id = headers["X-Session-Id"]
    backend = (await emu.requests("chat"))[-1]
    assert "metadata" not in backend and "metadata" not in backend.get("options", {})
    _, _, history = await call("GET", f"{life.url}/sessions/{session_id}/history", key=life.first)
    assert [m.get("metadata") for m in history["messages"]] == [metadata, metadata]
    _, _, exported = await call("GET", f"{life.url}/sessions/{session_id}/export", key=life.first)
    assert exported["turns"][0]["metadata"] == metadata

    status, _, refused = await chat(
        life.url, ask("x", session_id=session_id, metadata={"big": "x" * 5000}), life.first
    )
    assert status == 400 and "4096" in refused["error"]
    status, _, refused = await chat(life.url, ask("x", metadata="a string"), life.first)
    assert (status, refused) == (400, {"error": "metadata must be a JSON object"})


# -- export and import -----------------------------------------------------------------------


async def test_export_then_import_restores_the_session_for_its_importer(
    life: TwoUsers, emu: EmulatorControl
) -> None:
    _, headers, _ = await chat(
        life.url, ask("First", session_id="new", metadata={"n": 1}), life.first
    )
    session_id = headers["X-Session-Id"]
    await chat(life.url, ask("Second", "qwen2.5:0.5b", session_id=session_id), life.first)
    history_url = f"{life.url}/sessions/{session_id}/history"
    _, _, before = await call("GET", history_url, key=life.first)
    status, headers, exported = await call(
        "GET", f"{life.url}/sessions/{session_id}/export", key=life.first
    )
    assert status == 200
    assert headers["Content-Disposition"] == f'attachment; filename="session-{session_id}.json"'
    assert exported["format"] == "corral.session.v1"
    assert [t["model"] for t in exported["turns"]] == ["llama3.2", "qwen2.5:0.5b"]
    assert all(t["stats"]["eval_count"] > 0 for t in exported["turns"])
    # B may not export A's session, nor import over it.
    status, _, _ = await call("GET", f"{life.url}/sessions/{session_id}/export", key=life.second)
    assert status == 404
    status, _, _ = await call("POST", f"{life.url}/sessions/import", key=life.second, body=exported)
    assert status == 404

    # Deleted, then restored: the same history, and the conversation goes on with it.
    status, _, _ = await call("DELETE", f"{life.url}/sessions/{session_id}", key=life.first)
    assert status == 200
    status, headers, restored = await call(
        "POST", f"{life.url}/sessions/import", key=life.first, body=exported
    )
    assert status == 201 and headers["X-Session-Id"] == session_id
    assert (restored["turns_imported"], restored["turns_skipped"]) == (2, 0)
    _, _, after = await call("GET", history_url, key=life.first)
    assert after["messages"] == before["messages"]
    await chat(life.url, ask("Third", session_id=session_id), life.first)
    assert [m["content"] for m in await sent(emu)][-3:] == [
        "First",
        expected_reply("First"),
        "Third",
    ]
    # Idempotent by turn id: importing again adds nothing.
    status, _, again = await call(
        "POST", f"{life.url}/sessions/import", key=life.first, body=exported
    )
    assert status == 200
    assert (again["turns_imported"], again["turns_skipped"]) == (0, 2)
    _, _, now = await call("GET", history_url, key=life.first)
    assert now["message_count"] == 6

    # A broken export is a 400 naming the field.
    broken = {**exported, "turns": [{**exported["turns"][0], "asked_at": "yesterday"}]}
    status, _, refused = await call(
        "POST", f"{life.url}/sessions/import", key=life.first, body=broken
    )
    assert status == 400
    assert refused["error"]["details"]["errors"][0]["field"] == "turns.0.asked_at"


# -- context_info without a session ----------------------------------------------------------


async def test_a_stateless_prompt_larger_than_the_window_is_reported_or_refused(
    life: TwoUsers, emu: EmulatorControl
) -> None:
    # "tiny" has a 256-token window: eight 40-word messages cannot all fit.
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": " ".join(["word"] * 40)}
        for i in range(8)
    ]
    body = {
        "model": "tiny",
        "stream": False,
        "messages": [*history, {"role": "user", "content": "ok?"}],
    }
    status, _, answer = await chat(life.url, body, life.first)
    assert status == 200
    info = answer["context_info"]
    assert info["truncated"] is True and info["estimated"] is True
    assert info["context_length"] == 256
    assert info["messages_dropped"] >= 4
    assert info["messages_used"] + info["messages_dropped"] == 9
    # Corral sent it as it came; the backend dropped what did not fit, as Ollama does.
    assert len(await sent(emu)) == 9
    # A window large enough: nothing to say.
    status, _, answer = await chat(life.url, {**body, "options": {"num_ctx": 4096}}, life.first)
    assert status == 200 and answer["context_info"]["truncated"] is False

    # The message to answer alone does not fit: 413 `context_limit_exceeded`, nothing queued.
    generations = (await emu.stats())["generations"]
    huge = " ".join(["word"] * 2000)
    status, _, refused = await chat(life.url, ask(huge, "tiny"), life.first)
    assert status == 413
    assert "context window" in refused["error"]
    status, _, refused = await call(
        "POST",
        f"{life.url}/api/generate",
        key=life.first,
        body={"model": "tiny", "prompt": huge, "stream": False},
    )
    assert status == 413
    assert (await emu.stats())["generations"] == generations


# -- archiving, resuming, retention, clearing (short settings) -------------------------------


async def test_idle_sessions_are_archived_resumed_by_a_chat_and_purged_after_retention(
    short: Cluster, emu: EmulatorControl
) -> None:
    url = short.gateway_url
    _, headers, _ = await chat(url, ask("Remember 42", session_id="new"))
    kept = headers["X-Session-Id"]
    _, headers, _ = await chat(url, ask("Forget me", session_id="new"))
    dropped = headers["X-Session-Id"]

    async def archived() -> bool:
        _, _, listing = await call("GET", f"{url}/sessions?archived=true&limit=500")
        return {kept, dropped} <= {s["session_id"] for s in listing["sessions"]}

    await eventually(archived, within_s=15, what="both sessions archived")
    _, _, active = await call("GET", f"{url}/sessions?limit=500")
    assert not {kept, dropped} & {s["session_id"] for s in active["sessions"]}
    status, _, history = await call("GET", f"{url}/sessions/{kept}/history")
    assert status == 200 and history["archived"] is True

    # A chat naming an archived session resumes it, with its history.
    status, _, answer = await chat(url, ask("What number?", session_id=kept))
    assert status == 200 and answer["context_info"]["resumed"] is True
    assert [m["content"] for m in await sent(emu)] == [
        "Remember 42",
        expected_reply("Remember 42"),
        "What number?",
    ]
    _, _, history = await call("GET", f"{url}/sessions/{kept}/history")
    assert "archived" not in history and history["message_count"] == 4

    # The other one stays archived and goes, turns and all, once its retention is over.
    async def purged() -> bool:
        status, _, _ = await call("GET", f"{url}/sessions/{dropped}/history")
        return status == 404

    await eventually(purged, within_s=30, what="the archived session purged")


async def test_clear_all_needs_the_confirmation(short: Cluster, emu: EmulatorControl) -> None:
    url = short.gateway_url
    await chat(url, ask("something", session_id="new"))
    status, _, refused = await call("DELETE", f"{url}/admin/sessions")
    assert status == 400
    assert refused["error"]["details"]["expected"] == "delete-all-sessions"
    status, _, cleared = await call("DELETE", f"{url}/admin/sessions?confirm=delete-all-sessions")
    assert status == 200
    assert cleared["deleted"] is True and cleared["sessions_deleted"] >= 1
    for query in ("", "?archived=true"):
        _, _, listing = await call("GET", f"{url}/sessions{query}")
        assert listing["total"] == 0
