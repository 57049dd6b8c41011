"""The whole cluster in front of an OpenAI-compatible server (`CORRAL_BACKEND_KIND=openai`): the
project's emulator serving only its `/v1` API, as llama-cpp-python's server does. Clients keep
speaking Ollama's API to Corral and get Ollama's answers; the server only ever sees `/v1`
requests; what it cannot do is a 501 naming the backend kind.

The Ollama modules' tests run here again, against this cluster and server (their `cluster`,
`queue_cluster`, `manager` and `emu` fixtures are this module's), wherever the operation exists
on such a server: the official clients (chat, generate, streamed or not, errors kept, a failure
mid-stream), the /v1 surface in front (tools, JSON output, images, completions, embeddings,
sessions, queue comments), the queue (fair share, priorities, caps, where-am-I, cancels, pause
and drain, dead letters, a client leaving mid-generation), retries and deadlines, and the wire
(request ids, queue chunks, the load idiom, bad input). Left out, because they check what such
a server does not have or say: the generate `context` array, load/unload read back from the
server's /api/ps, `/api/show`'s context length, `load_duration` (omitted when zero, as Ollama
does), Ollama's version, `think` (not sent: the server's own setting decides), the backend
request log's Ollama `options`, and the error naming an Ollama server (this kind names an
OpenAI-compatible one); and what does not involve the backend (rate limits, heartbeats)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from corral_common.ids import new_id
from corral_devstack.cluster import Cluster
from corral_devstack.ports import free_port
from corral_devstack.processes import ServiceProcess
from corral_emulator import EmulatorControl, expected_reply

# The Ollama modules' tests whose operation an OpenAI-compatible server has, run again here
# against it (see the module's docstring for those left out and why).
from tests.e2e.test_ollama_client import (  # noqa: F401 (run again here)
    test_backend_error_keeps_its_status,
    test_chat,
    test_chat_stream,
    test_error_mid_stream_is_a_final_error_line,
    test_generate_stream_with_num_predict,
    test_show_accepts_the_older_name_field,
    test_sync_client,
    test_unknown_model_is_a_404_response_error,
)
from tests.e2e.test_openai import (  # noqa: F401 (run again here)
    test_a_request_id_in_flight_is_a_conflict_in_the_sdk,
    test_a_stream_that_never_waited_has_no_queue_comment,
    test_async_streaming_chat_with_usage,
    test_backend_failure_mid_stream_raises_in_the_sdk,
    test_base64_embeddings_are_little_endian_float32,
    test_completions,
    test_embeddings,
    test_errors_in_openais_shape,
    test_images_in_content_parts,
    test_json_output,
    test_max_tokens_ends_with_length,
    test_models,
    test_queue_feedback_is_sse_comments,
    test_sessions_from_header_and_user,
    test_streamed_reasoning_comes_before_content,
    test_streamed_tool_call_deltas,
    test_sync_chat,
    test_tool_call_round_trip,
)
from tests.e2e.test_queue import (  # noqa: F401 (run again here)
    test_a_flooding_caller_does_not_starve_another,
    test_a_queue_timeout_is_a_408_and_the_job_never_runs,
    test_an_operator_cancels_a_queued_request,
    test_dead_letters_can_be_inspected,
    test_interactive_work_goes_before_batch,
    test_leaving_mid_generation_closes_the_backend_request,
    test_one_caller_may_queue_only_so_much,
    test_pause_resume_and_drain,
    test_where_am_i,
)
from tests.e2e.test_request_manager import (  # noqa: F401 (run again here)
    test_a_backend_refusing_twice_is_retried_and_the_client_only_waits,
    test_a_busy_backend_is_retried_through_the_official_client,
    test_a_stream_past_its_deadline_ends_with_an_error_line,
    test_past_its_deadline_a_generation_is_stopped_and_the_lane_moves_on,
    test_past_its_deadline_in_the_queue_is_a_408_and_never_runs,
    test_terms_that_cannot_be_are_a_400,
)
from tests.e2e.test_wire import (  # noqa: F401 (run again here)
    test_a_request_id_still_in_flight_is_a_409,
    test_bad_input,
    test_huge_body_is_refused,
    test_load_and_unload_answer_one_json_object,
    test_queue_chunks_while_waiting_and_opt_out,
    test_request_id_in_and_out,
)
from tests.fixtures import ClusterFactory

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def openai_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = ServiceProcess(
        "openai-emulator",
        [
            sys.executable,
            "-m",
            "corral_emulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--openai-only",
        ],
        {},
        f"{url}/v1/models",
        tmp_path_factory.mktemp("openai-emulator") / "emulator.log",
    )
    process.start()
    process.wait_ready(30)
    yield url
    process.stop()


@pytest.fixture(scope="module")
def openai_cluster(new_cluster: ClusterFactory, openai_server: str) -> Iterator[Cluster]:
    with new_cluster(
        "openai-cluster",
        whole=True,
        backend_url=openai_server,
        CORRAL_BACKEND_KIND="openai",
        # What the Ollama modules' clusters set for the tests run here again (below).
        CORRAL_STATUS_INTERVAL_S="0.2",
        CORRAL_HEARTBEAT_S="0.5",
        CORRAL_MAX_QUEUED_PER_KEY="2",
        CORRAL_QUEUE_TIMEOUT_MAX_S="120",
        CORRAL_RETRY_BACKOFF_S="0.05",
        CORRAL_RETRY_BACKOFF_MAX_S="0.2",
    ) as cluster:
        yield cluster


# The Ollama modules' fixtures, pointed at this cluster and this server.
@pytest.fixture(scope="module")
def cluster(openai_cluster: Cluster) -> Cluster:
    return openai_cluster


@pytest.fixture(scope="module")
def queue_cluster(openai_cluster: Cluster) -> Cluster:
    return openai_cluster


@pytest.fixture(scope="module")
def manager(openai_cluster: Cluster) -> Cluster:
    return openai_cluster


class V1Control(EmulatorControl):
    """The server's control API, its request log read as the Ollama modules' tests read it: the
    chat (or generate) the server was sent is its /v1/chat/completions (/v1/completions) body,
    whose `messages` have Ollama's shape."""

    async def requests(self, endpoint: str) -> list[Any]:
        return await super().requests(V1_ENDPOINTS.get(endpoint, endpoint))


V1_ENDPOINTS = {"chat": "v1_chat", "generate": "v1_completions"}


@pytest.fixture
async def emu(openai_server: str) -> AsyncIterator[EmulatorControl]:
    async with V1Control(openai_server) as control:
        await control.reset()
        await control.configure(token_delay_ms=0, load_ms=0, prompt_ms_per_token=0)
        yield control
        await control.release()


@pytest.fixture
async def server(openai_server: str) -> AsyncIterator[EmulatorControl]:
    async with EmulatorControl(openai_server) as control:
        await control.reset()
        yield control
        await control.release()


async def post(
    cluster: Cluster, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, list[dict[str, Any]]]:
    """Status and the JSON lines of the answer (one line when it is not streamed)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{cluster.gateway_url}{path}", json=body, headers=headers) as response,
    ):
        raw = await response.read()
    return response.status, [orjson.loads(line) for line in raw.splitlines() if line.strip()]


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": content}], **extra}


async def test_a_streamed_chat_is_translated_both_ways(
    openai_cluster: Cluster, server: EmulatorControl
) -> None:
    prompt = "tell me about the serial lane please"
    status, lines = await post(
        openai_cluster, "/api/chat", chat(prompt, options={"num_predict": 3})
    )
    assert status == 200
    tokens = [line for line in lines if not line["done"] and "message" in line]
    assert "".join(t["message"]["content"] for t in tokens) == expected_reply(prompt, 3)
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "length"
    # Counts from the server's usage; durations measured by Corral (the server sends none).
    assert final["eval_count"] == 3 and final["prompt_eval_count"] > 0
    assert final["total_duration"] > 0 and final["eval_duration"] > 0
    sent = (await server.requests("v1_chat"))[-1]
    assert sent["max_tokens"] == 3 and sent["stream"] is True
    assert sent["messages"][-1] == {"role": "user", "content": prompt}
    assert (await server.stats())["max_active"] == 1


async def test_a_chat_without_streaming_and_a_generate(
    openai_cluster: Cluster, server: EmulatorControl
) -> None:
    status, [answer] = await post(openai_cluster, "/api/chat", chat("hello there", stream=False))
    assert status == 200
    assert answer["message"]["content"] == expected_reply("hello there")
    assert answer["done"] is True and answer["eval_count"] > 0
    body = {"model": "llama3.2", "prompt": "why is the sky blue", "stream": False}
    status, [generated] = await post(openai_cluster, "/api/generate", body)
    assert status == 200
    assert generated["response"] == expected_reply("why is the sky blue")
    assert generated["done_reason"] == "stop"


async def test_embeddings_go_to_v1_embeddings(
    openai_cluster: Cluster, server: EmulatorControl
) -> None:
    body = {"model": "llama3.2", "input": ["first", "second"]}
    status, [answer] = await post(openai_cluster, "/api/embed", body)
    assert status == 200
    assert len(answer["embeddings"]) == 2 and answer["prompt_eval_count"] > 0
    assert (await server.requests("v1_embeddings"))[-1]["input"] == ["first", "second"]


async def test_a_sessions_second_turn_sends_the_first(
    openai_cluster: Cluster, server: EmulatorControl
) -> None:
    headers = {"X-Session-Id": new_id()}
    status, _ = await post(openai_cluster, "/api/chat", chat("My name is Alice"), headers)
    assert status == 200
    status, lines = await post(openai_cluster, "/api/chat", chat("What is my name?"), headers)
    assert status == 200
    text = "".join(line.get("message", {}).get("content", "") for line in lines)
    assert text == expected_reply("What is my name?")
    sent = (await server.requests("v1_chat"))[-1]["messages"]
    assert [m["content"] for m in sent] == [
        "My name is Alice",
        expected_reply("My name is Alice"),
        "What is my name?",
    ]


async def test_the_model_list_comes_from_v1_models_and_a_pull_is_501(
    openai_cluster: Cluster, server: EmulatorControl
) -> None:
    base = openai_cluster.gateway_url
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/api/tags") as response:
            assert response.status == 200
            tags = await response.json()
        async with session.get(f"{base}/api/ps") as response:
            assert response.status == 200
            running = await response.json()
        async with session.post(f"{base}/api/show", json={"model": "llama3.2"}) as response:
            assert response.status == 200
        async with session.delete(f"{base}/api/delete", json={"model": "llama3.2"}) as response:
            deleted = (response.status, await response.json())
    assert "llama3.2:latest" in [m["name"] for m in tags["models"]]
    # The server holds what it serves: /api/ps is the same list.
    assert "llama3.2:latest" in [m["name"] for m in running["models"]]
    status, [refusal] = await post(openai_cluster, "/api/pull", {"model": "all-minilm"})
    assert status == 501
    assert "openai" in refusal["error"] and "pull" in refusal["error"]
    assert deleted[0] == 501
    assert deleted[1]["error"].startswith("delete is not supported by the openai backend")
    assert (await server.stats())["deletes"] == 0


async def test_a_server_not_ready_is_retried_and_a_midstream_failure_reported(
    openai_cluster: Cluster, server: EmulatorControl
) -> None:
    """Retries as for Ollama: connections dropped before any answer are retried (counted on the
    server, never timed); a stream that breaks after it began is not, and ends with an error."""
    await server.fail("refuse", count=2)
    terms = {"max_retries": 3, "retry_backoff": 0.01}
    status, [answer] = await post(
        openai_cluster, "/api/chat", chat("are you there", stream=False, options=terms)
    )
    assert status == 200
    assert answer["message"]["content"] == expected_reply("are you there")
    stats = await server.stats()
    assert stats["failures_injected"] == 2 and stats["completed"] == 1
    await server.fail("midstream", after_tokens=2, message="the model crashed")
    status, lines = await post(openai_cluster, "/api/chat", chat("one two three four"))
    assert status == 200
    assert "the model crashed" in lines[-1]["error"]
    assert not any(line.get("done") for line in lines)
    assert (await server.stats())["max_active"] == 1
