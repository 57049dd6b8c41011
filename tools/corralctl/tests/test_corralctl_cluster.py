"""corralctl against a running cluster (keys on, the operator's key as CORRAL_API_KEY), run as
an operator runs it: the installed `corralctl` in a process of its own, its tables read as
text and its `--json` parsed, its exit codes and stderr checked on refusals."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from corral_common.topology import JOBS_EXCHANGE, JOBS_ROUTING_KEY
from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl
from tests.e2e.test_queue import busy_lane, queued, rest
from tests.fixtures import ClusterFactory
from tests.gateway_http import call, keyed_cluster
from tests.polling import eventually

pytestmark = pytest.mark.e2e

# The console script `uv sync` installed beside the interpreter running the tests.
CORRALCTL = Path(sys.executable).with_name("corralctl")
ADMIN = object()
"""`key=ADMIN`: the cluster's operator key (the default)."""


@dataclass(frozen=True)
class Ops:
    cluster: Cluster
    admin: str

    @property
    def url(self) -> str:
        return self.cluster.gateway_url


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture(scope="module")
def ops(new_cluster: ClusterFactory) -> Iterator[Ops]:
    assert CORRALCTL.exists(), f"{CORRALCTL} missing: run uv sync --all-packages"
    with keyed_cluster(
        new_cluster, "corralctl", CORRAL_STATUS_INTERVAL_S="0.5", CORRAL_HEARTBEAT_S="1"
    ) as (cluster, admin):
        yield Ops(cluster, admin)


async def corralctl(ops: Ops, *args: str, key: object = ADMIN, stdin: str | None = None) -> Run:
    """One run of the CLI; the gateway and key come from CORRAL_URL and CORRAL_API_KEY, as an
    operator's shell would set them (`key=None`: none)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CORRAL_URL", "CORRAL_API_KEY")}
    env["CORRAL_URL"] = ops.url
    if key is not None:
        env["CORRAL_API_KEY"] = ops.admin if key is ADMIN else str(key)
    process = await asyncio.create_subprocess_exec(
        str(CORRALCTL),
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(None if stdin is None else stdin.encode())
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


async def new_user_key(ops: Ops, label: str) -> dict[str, Any]:
    made = await corralctl(ops, "keys", "create", "--scope", "user", "--label", label, "--json")
    assert made.code == 0, made.err
    key: dict[str, Any] = made.json()
    return key


async def test_status_shows_health_and_each_schedulers_lane(ops: Ops) -> None:
    shown = await corralctl(ops, "status")
    assert shown.code == 0, shown.err
    assert f"at {ops.url}: " in shown.out
    assert "SCHEDULER" in shown.out and "open" in shown.out
    assert "connected to http://127.0.0.1:" in shown.out
    assert "SERVER" in shown.out and "sessions " in shown.out
    document = (await corralctl(ops, "status", "--json")).json()
    assert document["health"]["status"] in ("healthy", "degraded")
    assert document["queue"]["schedulers"][0]["paused"] is False
    # /health is open; the lane's details are not: shown without them, and said so.
    anonymous = await corralctl(ops, "status", key=None)
    assert anonymous.code == 0
    assert "SCHEDULER" not in anonymous.out
    assert anonymous.err.startswith("corralctl: no lane details: 401 unauthorized: ")


async def test_refusals_exit_non_zero_with_the_servers_words(ops: Ops) -> None:
    missing = await corralctl(ops, "queue", "list", key=None)
    assert missing.code == 1
    assert missing.out == ""
    assert missing.err.startswith("corralctl: error: 401 unauthorized: an API key is required")
    assert "CORRAL_API_KEY" in missing.err
    user = await new_user_key(ops, "refused")
    forbidden = await corralctl(ops, "queue", "list", key=user["key"])
    assert forbidden.code == 1
    assert "403" in forbidden.err and "admin key" in forbidden.err
    # With --json the server's error document is printed too, for scripts.
    unknown = await corralctl(ops, "--json", "sessions", "export", "no-such-session")
    assert unknown.code == 1
    assert unknown.json()["error"]["type"] == "session_not_found"
    assert "404 session_not_found: " in unknown.err
    nowhere = await corralctl(ops, "--url", "http://127.0.0.1:9", "status")
    assert (nowhere.code, nowhere.out) == (3, "")
    assert "cannot reach http://127.0.0.1:9" in nowhere.err
    usage = await corralctl(ops, "lane", "reverse")
    assert usage.code == 2 and "invalid choice" in usage.err


async def test_pull_shows_progress_then_the_model_is_listed_and_deleted(
    ops: Ops, emu: EmulatorControl
) -> None:
    pulled = await corralctl(ops, "models", "pull", "llama3.2:1b")
    assert pulled.code == 0, pulled.err
    assert pulled.out == "pulled llama3.2:1b\n"
    progress = pulled.err.splitlines()
    assert progress[0] == "pulling manifest"
    bars = [line for line in progress if line.startswith("pulling ") and "[" in line]
    assert bars and bars[-1].split("]")[1].split()[0] == "100%"
    assert "[" + "#" * 30 + "]" in bars[-1]
    assert progress[-1] == "success"
    listed = (await corralctl(ops, "models", "list", "--json")).json()
    assert "llama3.2:1b" in {m["name"] for m in listed["models"]}
    assert "llama3.2:1b" in (await corralctl(ops, "models", "list")).out
    # --json: the backend's own progress lines, one JSON object each.
    again = await corralctl(ops, "--json", "models", "pull", "tiny")
    lines = [json.loads(line) for line in again.out.splitlines()]
    assert (lines[0], lines[-1]) == ({"status": "pulling manifest"}, {"status": "success"})
    # The pulls the model manager ran, newest first, as a table and as JSON.
    pulls = (await corralctl(ops, "models", "pulls", "--json")).json()["pulls"]
    assert {(p["model"], p["state"]) for p in pulls} >= {
        ("llama3.2:1b", "success"),
        ("tiny", "success"),
    }
    table = (await corralctl(ops, "models", "pulls")).out.splitlines()
    assert table[0].split()[:3] == ["MODEL", "STATE", "STATUS"]
    assert any(row.split()[:2] == ["llama3.2:1b", "success"] for row in table[1:])
    deleted = await corralctl(ops, "models", "delete", "llama3.2:1b")
    assert (deleted.code, deleted.out) == (0, "deleted llama3.2:1b\n")
    listed = (await corralctl(ops, "models", "list", "--json")).json()
    assert "llama3.2:1b" not in {m["name"] for m in listed["models"]}
    failed = await corralctl(ops, "models", "pull", "no-such-model-anywhere")
    assert failed.code == 1
    assert failed.err.endswith("corralctl: error: pull model manifest: file does not exist\n")


async def test_load_and_unload_through_the_lane(ops: Ops, emu: EmulatorControl) -> None:
    loaded = await corralctl(ops, "models", "load", "llama3.2", "--keep-alive", "10m")
    assert loaded.code == 0, loaded.err
    assert loaded.out.startswith("loaded llama3.2")
    row = next(
        line
        for line in (await corralctl(ops, "models", "list")).out.splitlines()
        if line.startswith("llama3.2:latest ")
    )
    assert "until " in row
    unloaded = await corralctl(ops, "models", "unload", "llama3.2", "--json")
    assert unloaded.json()["action"] == "unload"
    listed = (await corralctl(ops, "models", "list", "--json")).json()
    assert "llama3.2:latest" not in {m["name"] for m in listed["loaded"]}


async def test_queue_lists_and_cancels_a_queued_request(ops: Ops, emu: EmulatorControl) -> None:
    admin = {"Authorization": f"Bearer {ops.admin}"}
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "doomed"}],
        "request_id": "ctl-doomed",
    }
    async with (
        busy_lane(emu, ops.cluster, "running", **admin) as session,
        queued(session, ops.cluster, body, **admin) as response,
    ):
        listing = (await corralctl(ops, "queue", "list", "--json")).json()
        assert [e["position"] for e in listing["queue"]] == [0, 1]
        assert listing["queue"][1]["request_id"] == "ctl-doomed"
        table = (await corralctl(ops, "queue", "list")).out.splitlines()
        assert table[-1].split()[:4] == ["1", "ctl-doomed", "chat", "llama3.2"]
        cancelled = await corralctl(ops, "queue", "cancel", "ctl-doomed")
        assert (cancelled.code, cancelled.out) == (0, "cancel requested for ctl-doomed\n")
        assert (await rest(response))[-1] == {"error": "request canceled"}
        await emu.release()
    unknown = await corralctl(ops, "queue", "cancel", "ctl-never-was")
    assert unknown.code == 1
    assert "no queued or running request 'ctl-never-was'" in unknown.err


async def test_lane_pause_drain_and_resume(ops: Ops) -> None:
    try:
        paused = await corralctl(ops, "lane", "pause")
        assert paused.code == 0, paused.err
        assert paused.out.startswith("lane paused\n")
        assert paused.out.splitlines()[-1].split()[1:] == ["paused", "yes"]
        status = (await corralctl(ops, "status", "--json")).json()
        assert status["queue"]["schedulers"][0]["paused"] is True
        # A drain resumes a paused lane: it runs what is held and refuses new work.
        drained = (await corralctl(ops, "lane", "drain", "--json")).json()
        assert drained["state"] == {"paused": False, "draining": True}
        assert all(s["applied"] for s in drained["schedulers"])
    finally:
        resumed = await corralctl(ops, "lane", "resume")
    assert resumed.code == 0, resumed.err
    assert resumed.out.splitlines()[-1].split()[1:] == ["open", "yes"]


async def test_a_session_exported_deleted_and_imported_comes_back_whole(
    ops: Ops, emu: EmulatorControl, tmp_path: Path
) -> None:
    chat = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "Remember the corral"}],
        "stream": False,
        "session_id": "new",
    }
    status, _, answer = await call("POST", f"{ops.url}/api/chat", key=ops.admin, body=chat)
    assert status == 200, answer
    session_id = answer["session_id"]
    listed = await corralctl(ops, "sessions", "list", "--limit", "500")
    assert session_id in listed.out
    saved = tmp_path / "session.json"
    exported = await corralctl(ops, "sessions", "export", session_id, "-o", str(saved))
    assert exported.code == 0, exported.err
    assert exported.out == f"exported session {session_id} (1 turns) to {saved}\n"
    original = json.loads(saved.read_text())
    deleted = await corralctl(ops, "sessions", "delete", session_id)
    assert deleted.out == f"deleted session {session_id} (1 turns)\n"
    gone = await corralctl(ops, "sessions", "export", session_id)
    assert gone.code == 1 and "404 session_not_found" in gone.err
    imported = await corralctl(ops, "sessions", "import", str(saved))
    assert imported.code == 0, imported.err
    assert imported.out == (
        f"imported session {session_id} (created): 1 turns imported, 0 already there\n"
    )
    back = (await corralctl(ops, "sessions", "export", session_id)).json()
    assert back["turns"] == original["turns"]
    # Idempotent by turn id, and read from stdin with `-`.
    again = await corralctl(ops, "sessions", "import", "-", "--json", stdin=saved.read_text())
    assert (again.json()["created"], again.json()["turns_skipped"]) == (False, 1)
    broken = await corralctl(ops, "sessions", "import", "-", stdin="not json")
    assert broken.code == 2
    assert "corralctl: error: <stdin> is not JSON" in broken.err


async def test_sessions_clear_asks_for_its_confirmation_then_deletes_every_session(
    ops: Ops, emu: EmulatorControl
) -> None:
    chat = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "Soon forgotten"}],
        "stream": False,
        "session_id": "new",
    }
    status, _, answer = await call("POST", f"{ops.url}/api/chat", key=ops.admin, body=chat)
    assert status == 200, answer
    session_id = answer["session_id"]
    # Without the exact confirmation nothing is sent: a usage error, the session still there.
    unconfirmed = await corralctl(ops, "sessions", "clear")
    assert unconfirmed.code == 2 and "--confirm" in unconfirmed.err
    wrong = await corralctl(ops, "sessions", "clear", "--confirm", "yes")
    assert wrong.code == 1, wrong.err
    assert (await corralctl(ops, "sessions", "export", session_id)).code == 0
    cleared = await corralctl(
        ops, "sessions", "clear", "--confirm", "delete-all-sessions", "--json"
    )
    assert cleared.code == 0, cleared.err
    assert cleared.json()["sessions_deleted"] >= 1
    gone = await corralctl(ops, "sessions", "export", session_id)
    assert gone.code == 1 and "404 session_not_found" in gone.err


async def test_keys_are_created_listed_used_and_revoked(ops: Ops) -> None:
    made = await corralctl(
        ops,
        "keys",
        "create",
        "--label",
        "ctl-alice",
        "--limit",
        "requests_per_minute=600",
        "--max-priority",
        "normal",
    )
    assert made.code == 0, made.err
    secret = made.out.splitlines()[0]
    assert secret.startswith("crl_")
    assert "The key is shown only this once." in made.out
    key_id = next(line.split()[1] for line in made.out.splitlines() if line.startswith("id "))
    listed = await corralctl(ops, "keys", "list")
    assert any(
        line.split()[0] == key_id and "ctl-alice" in line for line in listed.out.splitlines()
    )
    shown = (await corralctl(ops, "keys", "show", key_id, "--json")).json()
    assert shown["limits"]["requests_per_minute"] == 600
    assert "key" not in shown
    # The new key works (its own sessions), with --key given on the command line.
    mine = await corralctl(ops, "--key", secret, "sessions", "list", key=None)
    assert mine.code == 0, mine.err
    revoked = await corralctl(ops, "keys", "revoke", key_id)
    assert revoked.out.startswith(f"revoked {key_id} at ")
    everything = (await corralctl(ops, "keys", "list", "--all", "--json")).json()
    assert next(k for k in everything["keys"] if k["id"] == key_id)["revoked_at"]

    async def refused() -> bool:
        return (await corralctl(ops, "sessions", "list", key=secret)).code == 1

    await eventually(refused, what="the revoked key refused")

    async def audited() -> bool:
        # Audit records are written in the background, after the answer.
        audit = (await corralctl(ops, "audit", "--json")).json()
        actions = {(e["action"], e.get("target")) for e in audit["entries"]}
        return {("POST /admin/keys", key_id), ("DELETE /admin/keys/{key_id}", key_id)} <= actions

    await eventually(audited, what="the key's creation and revocation audited")
    audit = (await corralctl(ops, "audit", "--actor", "operator", "--limit", "5")).out
    assert audit.splitlines()[0].split() == ["AT", "ACTOR", "ACTION", "TARGET", "STATUS"]


async def test_dead_letters_are_shown(ops: Ops) -> None:
    # A broker shared with other clusters (CORRAL_AMQP_URL) may hold their dead letters too.
    before = (await corralctl(ops, "dlq", "--json")).json()["messages"]
    connection = await aio_pika.connect(ops.cluster.amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(JOBS_EXCHANGE)
        await exchange.publish(aio_pika.Message(b"not a job"), routing_key=JOBS_ROUTING_KEY)

    async def dead_lettered() -> bool:
        shown = await corralctl(ops, "dlq", "--json")
        return shown.code == 0 and shown.json()["messages"] > before

    await eventually(dead_lettered, what="the unreadable job dead-lettered")
    shown = await corralctl(ops, "dlq", "list", "--limit", "100")
    assert shown.out.startswith("scheduler.jobs.dlq: ")
    assert "(unreadable, 9 B)" in shown.out and "rejected" in shown.out


async def test_usage_counts_requests_by_model_and_caller(ops: Ops, emu: EmulatorControl) -> None:
    chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "count me"}]}
    status, _, _ = await call(
        "POST", f"{ops.url}/api/chat", key=ops.admin, body={**chat, "stream": False}
    )
    assert status == 200
    report = (await corralctl(ops, "usage", "--json")).json()
    assert report["requests"] >= 1
    assert report["by_model"]["llama3.2"]["tokens"]["generated"] > 0
    shown = (await corralctl(ops, "usage")).out
    assert "MODEL" in shown and "CALLER" in shown
    assert any(line.startswith("llama3.2 ") for line in shown.splitlines())
