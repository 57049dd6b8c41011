"""The embedded MongoDB-protocol server (SecantusDB as its own process)."""

from __future__ import annotations

import time
from pathlib import Path

from pymongo import MongoClient

from corral_devstack.mongo import SecantusNode, ping
from corral_devstack.ports import free_port


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat.rsplit(b")", 1)[1].split()[0] == b"Z"


def test_in_memory_node_starts_answers_and_stops() -> None:
    node = SecantusNode()
    started = time.monotonic()
    node.start()
    try:
        elapsed = time.monotonic() - started
        assert ping(node.url)
        client: MongoClient[dict[str, object]] = MongoClient(node.url)
        info = client.admin.command("buildInfo")
        assert info.get("secantusVersion")
        client.close()
        pid = node.pid
        assert pid is not None
        print(f"secantusd ready in {elapsed:.2f}s")
    finally:
        node.close()
    assert not node.running
    assert _gone(pid)
    assert not ping(node.url, timeout=0.3)


def test_data_survives_a_restart(tmp_path: Path) -> None:
    with SecantusNode(tmp_path / "data") as node:
        client: MongoClient[dict[str, object]] = MongoClient(node.url)
        client["t"]["c"].insert_one({"_id": 1, "x": "kept"})
        client.close()
        url = node.url
        node.restart()
        assert node.url == url  # clients keep their URL across a restart
        client = MongoClient(node.url)
        assert client["t"]["c"].find_one({"_id": 1}) == {"_id": 1, "x": "kept"}
        client.close()
    assert (tmp_path / "data").is_dir()
    assert (tmp_path / "data.log").exists()


def test_nothing_listening_is_not_reachable() -> None:
    assert not ping(f"mongodb://127.0.0.1:{free_port()}/", timeout=0.3)
