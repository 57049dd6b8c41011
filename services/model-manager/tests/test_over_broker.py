"""The model manager in-process over a real RabbitMQ and the Ollama emulator, driven the way a
gateway and a scheduler drive it: RPC calls, events on a gateway queue, status broadcasts, and
jobs in the lane (observed on a queue of the test's own bound to the jobs exchange)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiohttp import ClientSession, web
from prometheus_client import REGISTRY

from corral_common.blobs import BLOB_CHUNK_BYTES, encode_chunk
from corral_common.broker import Broker, encode
from corral_common.contracts.model_manager import (
    MODEL_MANAGER,
    BlobUploadBeginResult,
    BlobUploadChunkResult,
    BlobUploadFinishResult,
)
from corral_common.errors import CorralError
from corral_common.ids import new_id
from corral_common.messages import (
    EVENT_ADAPTER,
    BackendStatus,
    Done,
    Event,
    Failed,
    Job,
    ModelActivity,
    ModelList,
    Progress,
    QueueStatus,
    SchedulerStatus,
)
from corral_common.rpc import RpcClient
from corral_common.settings import CorralSettings
from corral_common.topology import (
    EVENTS_EXCHANGE,
    JOBS_EXCHANGE,
    JOBS_ROUTING_KEY,
    MODELS_ROUTING_KEY,
    STATUS_REQUEST_KEY,
    STATUS_ROUTING_KEY,
    event_key,
)
from corral_devstack.ports import free_port
from corral_emulator import RunningEmulator, running_emulator
from corral_emulator.registry import MANIFEST_NOT_FOUND
from corral_emulator.state import GatePurpose
from corral_emulator.testing import wait_for_state
from corral_model_manager.app import OPERATIONS, SETTINGS, UNLOADER, create_app
from corral_model_manager.settings import ModelManagerSettings

WAIT_S = 10.0
SERVICE = "model-manager"


@pytest.fixture(scope="module")
def vhost_url(request: pytest.FixtureRequest, amqp_url: str) -> str:
    """A virtual host of this module's own on the session's throwaway node, so its jobs and
    RPC queues meet no other test's; an external broker (`CORRAL_AMQP_URL`) is shared."""
    if os.environ.get("CORRAL_AMQP_URL"):
        return amqp_url
    node = request.getfixturevalue("rabbit_node")
    return str(node.add_vhost(f"model-manager-{new_id()[:8]}"))


@pytest.fixture
async def backend() -> AsyncIterator[RunningEmulator]:
    async with running_emulator() as emulator:
        yield emulator


class FakeGateway:
    """What a gateway does with the model manager: RPC calls, its own event queue (with the
    model list broadcasts), and, playing the scheduler, status broadcasts and job answers."""

    def __init__(self, amqp_url: str) -> None:
        self.id = new_id()
        self.broker = Broker(CorralSettings(amqp_url=amqp_url, instance_id=self.id), "test")
        self.rpc = RpcClient(self.broker, timeout_s=WAIT_S)
        self.events: defaultdict[str, asyncio.Queue[Event]] = defaultdict(asyncio.Queue)
        self.model_lists: asyncio.Queue[ModelList] = asyncio.Queue()
        self.jobs: asyncio.Queue[Job] = asyncio.Queue()
        self._channel: AbstractChannel | None = None

    async def start(self) -> None:
        await self.broker.start()
        await self.rpc.start()
        self._channel = await self.broker.channel()
        events = await self._channel.get_exchange(EVENTS_EXCHANGE)
        queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(events, f"gw.{self.id}.#")
        await queue.bind(events, MODELS_ROUTING_KEY)
        await queue.consume(self._on_event, no_ack=True)
        # A copy of every job in the lane, next to the scheduler's own queue.
        jobs = await self._channel.get_exchange(JOBS_EXCHANGE)
        lane = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await lane.bind(jobs, JOBS_ROUTING_KEY)
        await lane.consume(self._on_job, no_ack=True)

    async def close(self) -> None:
        await self.rpc.close()
        if self._channel is not None:
            await self._channel.close()
        await self.broker.close()

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        if message.routing_key == MODELS_ROUTING_KEY:
            self.model_lists.put_nowait(ModelList.model_validate_json(message.body))
            return
        event = EVENT_ADAPTER.validate_json(message.body)
        self.events[event.request_id].put_nowait(event)

    async def _on_job(self, message: AbstractIncomingMessage) -> None:
        self.jobs.put_nowait(Job.model_validate_json(message.body))

    async def call(self, method: str, **params: Any) -> Any:
        return await self.rpc.call_raw(SERVICE, method, **params)

    async def next_event(self, request_id: str) -> Event:
        async with asyncio.timeout(WAIT_S):
            return await self.events[request_id].get()

    async def start_operation(self, method: str, **params: Any) -> tuple[str, Any]:
        """Start a pull or create as a gateway does: listening before the call."""
        request_id = new_id()
        result = await self.call(method, request_id=request_id, gateway_id=self.id, **params)
        return request_id, result

    async def outcome(self, request_id: str) -> tuple[list[Progress], Failed | None]:
        """The operation's progress events up to the final one, or up to its failure."""
        progress: list[Progress] = []
        while True:
            event = await self.next_event(request_id)
            if isinstance(event, Failed):
                return progress, event
            assert isinstance(event, Progress), event
            progress.append(event)
            if event.final:
                return progress, None

    async def list_with(self, model: str, present: bool = True) -> ModelList:
        """The first broadcast list that has (or lacks) `model`."""
        while True:
            listed = await self.next_list()
            if (model in listed.models) == present:
                return listed

    async def next_list(self) -> ModelList:
        async with asyncio.timeout(WAIT_S):
            return await self.model_lists.get()

    async def next_job(self, submitter_id: str) -> Job:
        async with asyncio.timeout(WAIT_S):
            while True:
                job = await self.jobs.get()
                if job.gateway_id == submitter_id:
                    return job

    async def report_status(self, *activity: ModelActivity) -> None:
        status = SchedulerStatus(
            scheduler_id="scheduler-under-test",
            sent_at=time.time(),
            backend=BackendStatus(url="http://backend", connected=True),
            queue=QueueStatus(waiting=0, running=0, average_wait_ms=0, processing_rate=0.0),
            models=list(activity),
        )
        await self.broker.publish_event(STATUS_ROUTING_KEY, encode(status), durable=False)

    async def answer(self, job: Job, event: Done | Failed) -> None:
        await self.broker.publish_event(
            event_key(job.gateway_id, job.request_id, event.kind), encode(event), durable=True
        )


@pytest.fixture
async def gateway(vhost_url: str) -> AsyncIterator[FakeGateway]:
    gateway = FakeGateway(vhost_url)
    await gateway.start()
    yield gateway
    await gateway.close()


StartManager = Callable[..., Awaitable[web.Application]]


@pytest.fixture
async def start_manager(vhost_url: str, backend: RunningEmulator) -> AsyncIterator[StartManager]:
    runners: list[web.AppRunner] = []

    async def start(
        memory_probe: Callable[[], float] = lambda: 10.0, **settings: Any
    ) -> web.Application:
        defaults: dict[str, Any] = {
            "amqp_url": vhost_url,
            "ollama_url": backend.url,
            "instance_id": new_id(),
            "pull_progress_interval_s": 0.0,
        }
        app = create_app(
            ModelManagerSettings(**{**defaults, **settings}), memory_probe=memory_probe
        )
        runner = web.AppRunner(app)
        await runner.setup()  # runs the app's cleanup contexts: broker, RPC, background tasks
        runners.append(runner)
        return app

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def load(backend: RunningEmulator, model: str) -> None:
    async with (
        ClientSession() as session,
        session.post(
            f"{backend.url}/api/generate", json={"model": model, "prompt": "hi", "stream": False}
        ) as response,
    ):
        assert response.status == 200


# -- read-only calls and the model list ---------------------------------------------------------


async def test_read_only_calls_still_answer(
    start_manager: StartManager, gateway: FakeGateway
) -> None:
    await start_manager()
    tags = await gateway.call("tags")
    assert "tiny:latest" in [model["name"] for model in tags["models"]]
    assert (await gateway.call("ps")) == {"models": []}
    show = await gateway.call("show", model="tiny")
    assert "model_info" in show
    info = await gateway.call("model_info", model="tiny")
    assert info["context_length"] == 256
    with pytest.raises(CorralError) as refused:
        await gateway.call("show", model="no-such-model")
    assert (refused.value.status, refused.value.message) == (404, "model 'no-such-model' not found")


async def test_the_model_list_is_broadcast_at_start_and_on_request(
    start_manager: StartManager, gateway: FakeGateway, backend: RunningEmulator
) -> None:
    await start_manager()
    expected = sorted(spec.full_name for spec in backend.state.config.models)
    first = await gateway.next_list()
    assert first.models == expected
    answer = await gateway.call("model_names")
    assert answer["models"] == expected
    assert answer["updated_at"] == pytest.approx(time.time(), abs=30)
    assert (await gateway.call("model_names", refresh=True))["models"] == expected
    # A gateway that starts asks everyone for their broadcasts; the list is among them.
    await gateway.broker.publish_control(STATUS_REQUEST_KEY, b"{}")
    assert (await gateway.next_list()).models == expected


async def test_forced_refreshes_share_one_backend_call(
    start_manager: StartManager, gateway: FakeGateway, backend: RunningEmulator
) -> None:
    await start_manager()
    await gateway.next_list()
    asked = len(backend.state.requests.bodies("tags"))
    answers = await asyncio.gather(*(gateway.call("model_names", refresh=True) for _ in range(10)))
    assert len({tuple(answer["models"]) for answer in answers}) == 1
    # Ten gateways asking at once cost at most one more backend call (the start's list may
    # be young enough to serve them all).
    assert len(backend.state.requests.bodies("tags")) - asked <= 1


# -- the lane: preloads and unloads -------------------------------------------------------------


async def test_preloads_go_through_the_lane(
    start_manager: StartManager, gateway: FakeGateway
) -> None:
    app = await start_manager(preload_models=" tiny, llama3.2 ,")
    manager_id = app[SETTINGS].instance_id
    first = await gateway.next_job(manager_id)
    second = await gateway.next_job(manager_id)
    assert [(job.kind, job.model, job.payload) for job in (first, second)] == [
        ("load", "tiny", {"model": "tiny"}),
        ("load", "llama3.2", {"model": "llama3.2"}),
    ]
    assert first.queue_progress is False


async def test_an_idle_model_is_unloaded_through_the_lane(
    start_manager: StartManager, gateway: FakeGateway, backend: RunningEmulator
) -> None:
    await load(backend, "tiny")
    app = await start_manager(
        idle_unload_s=0.2, memory_pressure_percent=0, unload_check_interval_s=0.05
    )
    manager_id = app[SETTINGS].instance_id
    await gateway.report_status(ModelActivity(model="tiny", last_used_at=time.time() - 3600))
    job = await gateway.next_job(manager_id)
    assert job.kind == "unload"
    assert job.model == "tiny:latest"
    assert job.payload == {"model": "tiny:latest", "keep_alive": 0}
    assert job.queue_progress is False
    # The scheduler's answer comes back on the manager's own queue.
    before = sample("corral_model_unloads_total", reason="idle")
    handled = app[UNLOADER].answers_handled
    await gateway.answer(
        job,
        Done(
            request_id=job.request_id,
            token_batches=0,
            final={},
            text="",
            waited_ms=0,
            model=job.model,
            job_kind="unload",
        ),
    )
    await asyncio.wait_for(app[UNLOADER].wait_answers(handled + 1), WAIT_S)
    assert sample("corral_model_unloads_total", reason="idle") == before + 1


async def test_without_scheduler_status_nothing_is_unloaded(
    start_manager: StartManager, backend: RunningEmulator
) -> None:
    await load(backend, "tiny")
    app = await start_manager(
        idle_unload_s=0.01, memory_pressure_percent=1, unload_check_interval_s=3600
    )
    assert await app[UNLOADER].check() is None


async def test_memory_pressure_unloads_the_least_recently_used(
    start_manager: StartManager, gateway: FakeGateway, backend: RunningEmulator
) -> None:
    await load(backend, "tiny")
    await load(backend, "llama3.2")
    app = await start_manager(
        memory_probe=lambda: 97.5,
        idle_unload_s=0,
        memory_pressure_percent=90,
        unload_check_interval_s=0.05,
    )
    manager_id = app[SETTINGS].instance_id
    now = time.time()
    await gateway.report_status(
        ModelActivity(model="tiny", last_used_at=now + 60),
        ModelActivity(model="llama3.2:latest", last_used_at=now + 30),
    )
    job = await gateway.next_job(manager_id)
    assert (job.kind, job.model) == ("unload", "llama3.2:latest")
    assert sample("corral_host_memory_percent") == 97.5


# -- pulls, creates, deletes and copies ---------------------------------------------------------


async def test_a_pull_streams_its_progress_in_order_and_ends_with_success(
    start_manager: StartManager, gateway: FakeGateway
) -> None:
    app = await start_manager()
    pulled_before = sample("corral_model_pulls_total", outcome="success")
    request_id, started = await gateway.start_operation("pull", model="llama3.2:1b")
    assert started == {"model": "llama3.2:1b", "joined": False}
    progress, failed = await gateway.outcome(request_id)
    assert failed is None
    assert [event.seq for event in progress] == list(range(len(progress)))
    lines = [event.line for event in progress]
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-3:] == [
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    assert [event.final for event in progress] == [False] * (len(progress) - 1) + [True]
    # Every layer is seen complete.
    last_per_layer = {line["digest"]: line for line in lines if "digest" in line}
    assert last_per_layer
    assert all(line["completed"] == line["total"] for line in last_per_layer.values())
    # Gateways are told of the new model.
    assert "llama3.2:1b" in (await gateway.list_with("llama3.2:1b")).models
    assert "llama3.2:1b" in (await gateway.call("model_names"))["models"]
    [pull] = (await gateway.call("pulls"))["pulls"]
    assert pull["model"] == "llama3.2:1b"
    assert (pull["state"], pull["status"], pull["percent"]) == ("success", "success", 100.0)
    assert pull["watchers"] == 1
    await app[OPERATIONS].settled()
    assert sample("corral_model_pulls_total", outcome="success") == pulled_before + 1


async def test_a_second_pull_of_the_same_model_joins_the_first(
    start_manager: StartManager, gateway: FakeGateway, backend: RunningEmulator
) -> None:
    await start_manager()
    state = backend.state
    state.gate.hold()
    first, started = await gateway.start_operation("pull", model="llama3.2:1b")
    assert started["joined"] is False
    await wait_for_state(state, lambda: state.gate.waiting_for(GatePurpose.PULL) == 1)
    # The weights layer was announced (its size, nothing downloaded yet) and the pull waits.
    seen = [await gateway.next_event(first) for _ in range(2)]
    announced = seen[-1]
    assert isinstance(announced, Progress) and "total" in announced.line

    second, joined = await gateway.start_operation("pull", model="llama3.2:1b")
    assert joined == {"model": "llama3.2:1b", "joined": True}
    catch_up = await gateway.next_event(second)
    assert isinstance(catch_up, Progress)
    assert (catch_up.seq, catch_up.line) == (0, announced.line)
    running = (await gateway.call("pulls"))["pulls"][0]
    assert (running["state"], running["watchers"]) == ("running", 2)
    assert running["total"] == announced.line["total"]

    state.gate.release()
    rest_first, failed_first = await gateway.outcome(first)
    rest_second, failed_second = await gateway.outcome(second)
    assert failed_first is None and failed_second is None
    assert [e.line for e in rest_first] == [e.line for e in rest_second]
    assert rest_second[-1].line == {"status": "success"}
    assert len(state.requests.bodies("pull")) == 1


async def test_a_pull_of_an_unknown_model_fails(
    start_manager: StartManager, gateway: FakeGateway
) -> None:
    app = await start_manager()
    failed_before = sample("corral_model_pulls_total", outcome="error")
    request_id, _ = await gateway.start_operation("pull", model="no-such-model-anywhere")
    progress, failed = await gateway.outcome(request_id)
    assert [event.line for event in progress] == [{"status": "pulling manifest"}]
    assert failed is not None
    assert (failed.status, failed.error_type, failed.message) == (
        500,
        "backend_error",
        MANIFEST_NOT_FOUND,
    )
    [pull] = (await gateway.call("pulls"))["pulls"]
    assert (pull["state"], pull["error"]) == ("error", MANIFEST_NOT_FOUND)
    await app[OPERATIONS].settled()
    assert sample("corral_model_pulls_total", outcome="error") == failed_before + 1
    # A name the backend refuses before streaming: its own status and text.
    request_id, _ = await gateway.start_operation("pull", model="bad name!")
    progress, failed = await gateway.outcome(request_id)
    assert progress == []
    assert failed is not None and failed.status == 400
    # No model at all is the caller's mistake.
    with pytest.raises(CorralError) as refused:
        await gateway.start_operation("pull", model="")
    assert refused.value.status == 400


async def test_a_pull_from_an_absent_backend_fails_with_503(
    start_manager: StartManager, gateway: FakeGateway
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    await start_manager(ollama_url=dead)
    request_id, _ = await gateway.start_operation("pull", model="tiny")
    progress, failed = await gateway.outcome(request_id)
    assert progress == []
    assert failed is not None
    assert (failed.status, failed.error_type) == (503, "ollama_connection_error")
    assert (
        failed.message
        == f"Cannot connect to Ollama server. Please ensure Ollama is running on {dead}"
    )
    assert failed.details["ollama_host"] == dead


async def test_create_streams_to_success_and_lists_the_model(
    start_manager: StartManager, gateway: FakeGateway
) -> None:
    await start_manager()
    body = {"model": "pirate", "from": "tiny", "system": "Talk like a pirate.", "stream": False}
    request_id, started = await gateway.start_operation("create", body=body)
    assert started == {"model": "pirate"}
    progress, failed = await gateway.outcome(request_id)
    assert failed is None
    assert progress[-1].line == {"status": "success"}
    await gateway.list_with("pirate:latest")
    assert (await gateway.call("pulls"))["pulls"] == []


async def test_delete_and_copy_pass_the_backends_answers_through(
    start_manager: StartManager, gateway: FakeGateway
) -> None:
    await start_manager()
    with pytest.raises(CorralError) as deleted:
        await gateway.call("delete", model="no-such-model")
    assert (deleted.value.status, deleted.value.message) == (404, "model 'no-such-model' not found")
    with pytest.raises(CorralError) as copied:
        await gateway.call("copy", source="no-such-model", destination="anything")
    assert (copied.value.status, copied.value.message) == (404, 'model "no-such-model" not found')
    with pytest.raises(CorralError) as invalid:
        await gateway.call("delete", model="")
    assert invalid.value.status == 400

    assert await gateway.call("copy", source="tiny", destination="tiny-copy") == {}
    await gateway.list_with("tiny-copy:latest")
    assert (await gateway.call("model_info", model="tiny-copy"))["context_length"] == 256
    assert await gateway.call("delete", model="tiny-copy") == {}
    await gateway.list_with("tiny-copy:latest", present=False)
    # Its cached metadata went with it.
    with pytest.raises(CorralError) as gone:
        await gateway.call("model_info", model="tiny-copy")
    assert gone.value.status == 404


# -- blobs and push (the gateway's `HEAD/POST /api/blobs/:digest` and `POST /api/push`) ------


GGUF = b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 4096  # 1 MiB and a bit: several chunks


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def upload_blob(gateway: FakeGateway, data: bytes, digest: str) -> int:
    """What the gateway's `POST /api/blobs/:digest` does: begin, chunks in order, finish."""
    begun = BlobUploadBeginResult.model_validate(
        await gateway.call(MODEL_MANAGER.blob_upload_begin.name, digest=digest)
    )
    if begun.upload_id is None:
        assert begun.status is not None
        return begun.status
    for offset in range(0, len(data), BLOB_CHUNK_BYTES):
        piece = data[offset : offset + BLOB_CHUNK_BYTES]
        answer = await gateway.call(
            MODEL_MANAGER.blob_upload_chunk.name,
            upload_id=begun.upload_id,
            offset=offset,
            data=encode_chunk(piece),
        )
        assert BlobUploadChunkResult.model_validate(answer).received == offset + len(piece)
    finished = await gateway.call(MODEL_MANAGER.blob_upload_finish.name, upload_id=begun.upload_id)
    return BlobUploadFinishResult.model_validate(finished).status


async def test_a_blob_upload_over_the_broker_then_a_create_from_it(
    start_manager: StartManager, gateway: FakeGateway, backend: RunningEmulator
) -> None:
    await start_manager()
    digest = sha256_digest(GGUF)
    assert await gateway.call(MODEL_MANAGER.blob_head.name, digest=digest) == {"exists": False}
    assert await upload_blob(gateway, GGUF, digest) == 201
    assert await gateway.call(MODEL_MANAGER.blob_head.name, digest=digest) == {"exists": True}
    blob = backend.state.blobs.get(digest)
    assert blob is not None and blob.size == len(GGUF)
    # Again: the backend has it, so nothing is sent.
    assert await upload_blob(gateway, GGUF, digest) == 200

    body = {"model": "imported", "files": {"model.gguf": digest}}
    request_id, _ = await gateway.start_operation("create", body=body)
    progress, failed = await gateway.outcome(request_id)
    assert failed is None
    assert progress[0].line == {"status": "parsing GGUF"}
    assert progress[-1].line == {"status": "success"}
    await gateway.list_with("imported:latest")


async def test_blob_refusals_over_the_broker(
    start_manager: StartManager, gateway: FakeGateway
) -> None:
    await start_manager()
    claimed = sha256_digest(b"something else")
    with pytest.raises(CorralError) as mismatch:
        await upload_blob(gateway, GGUF, claimed)
    assert (mismatch.value.status, mismatch.value.message) == (
        400,
        f'digest mismatch, expected "{claimed}", got "{sha256_digest(GGUF)}"',
    )
    for method in (MODEL_MANAGER.blob_head.name, MODEL_MANAGER.blob_upload_begin.name):
        with pytest.raises(CorralError) as malformed:
            await gateway.call(method, digest="sha256:nothex")
        assert (malformed.value.status, malformed.value.message) == (400, "invalid digest format")
    with pytest.raises(CorralError) as unknown:
        await gateway.call(
            MODEL_MANAGER.blob_upload_chunk.name, upload_id="nope", offset=0, data=""
        )
    assert unknown.value.status == 404
    begun = await gateway.call(MODEL_MANAGER.blob_upload_begin.name, digest=sha256_digest(b"x"))
    with pytest.raises(CorralError) as not_base64:
        await gateway.call(
            MODEL_MANAGER.blob_upload_chunk.name, upload_id=begun["upload_id"], offset=0, data="@@"
        )
    assert not_base64.value.status == 400
    await gateway.call(MODEL_MANAGER.blob_upload_abort.name, upload_id=begun["upload_id"])
    with pytest.raises(CorralError) as missing_params:
        await gateway.call(MODEL_MANAGER.blob_upload_chunk.name, upload_id="x")
    assert missing_params.value.status == 400


async def test_a_push_streams_its_progress_and_a_second_push_joins(
    start_manager: StartManager, gateway: FakeGateway, backend: RunningEmulator
) -> None:
    app = await start_manager()
    pushed_before = sample("corral_model_pushes_total", outcome="success")
    assert await gateway.call("copy", source="tiny", destination="me/tiny") == {}
    request_id, started = await gateway.start_operation(MODEL_MANAGER.push.name, model="me/tiny")
    assert started == {"model": "me/tiny", "joined": False}
    progress, failed = await gateway.outcome(request_id)
    assert failed is None
    lines = [event.line for event in progress]
    assert lines[0] == {"status": "retrieving manifest"}
    assert lines[-2:] == [{"status": "pushing manifest"}, {"status": "success"}]
    assert all(line["status"].startswith("pushing ") for line in lines[1:-1])
    last_per_layer = {line["digest"]: line for line in lines if "digest" in line}
    assert all(line["completed"] == line["total"] for line in last_per_layer.values())
    assert backend.state.registry.find("me/tiny") is not None
    # A push is no pull: /admin/pulls does not list it.
    assert all(pull["model"] != "me/tiny" for pull in (await gateway.call("pulls"))["pulls"])
    await app[OPERATIONS].settled()
    assert sample("corral_model_pushes_total", outcome="success") == pushed_before + 1

    # Two pushes of one model at once: the backend pushes it once.
    pushes = len(backend.state.requests.bodies("push"))
    first, _ = await gateway.start_operation(MODEL_MANAGER.push.name, model="me/tiny")
    second, joined = await gateway.start_operation(MODEL_MANAGER.push.name, model="me/tiny")
    first_outcome, second_outcome = await gateway.outcome(first), await gateway.outcome(second)
    assert first_outcome[1] is None and second_outcome[1] is None
    assert first_outcome[0][-1].line == second_outcome[0][-1].line == {"status": "success"}
    assert len(backend.state.requests.bodies("push")) - pushes == (1 if joined["joined"] else 2)


async def test_a_push_of_a_missing_model_fails_as_ollama_does(
    start_manager: StartManager, gateway: FakeGateway
) -> None:
    await start_manager()
    request_id, _ = await gateway.start_operation(MODEL_MANAGER.push.name, model="me/nothing")
    progress, failed = await gateway.outcome(request_id)
    assert [event.line for event in progress] == [
        {"status": "retrieving manifest"},
        {"status": "couldn't retrieve manifest"},
    ]
    assert failed is not None
    assert (failed.status, failed.message) == (
        500,
        "open /root/.ollama/models/manifests/registry.ollama.ai/me/nothing/latest: "
        "no such file or directory",
    )
    with pytest.raises(CorralError) as nameless:
        await gateway.start_operation(MODEL_MANAGER.push.name, model="")
    assert (nameless.value.status, nameless.value.message) == (400, "model is required")
