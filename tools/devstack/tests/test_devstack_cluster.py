from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from corral_devstack.cluster import Cluster


def test_cluster_starts_services_with_their_env_and_stops_them(
    tmp_path: Path, fake_services: Path
) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    cluster = Cluster(
        "amqp://guest:guest@127.0.0.1:1/",
        "http://127.0.0.1:2",
        tmp_path / "work",
        {"PYTHONPATH": str(fake_services), "FAKE_REPORT_DIR": str(reports)},
    )
    with cluster:
        scheduler = cluster.start_scheduler(CORRAL_SCHEDULER_SLOTS=2)
        gateway = cluster.start_gateway()
        with urllib.request.urlopen(f"{cluster.gateway_url}/ready", timeout=5) as response:
            assert response.status == 200

        sched_env = json.loads((reports / "scheduler.json").read_text())["env"]
        gw_env = json.loads((reports / "gateway.json").read_text())["env"]
        for env in (sched_env, gw_env):
            assert env["CORRAL_AMQP_URL"] == "amqp://guest:guest@127.0.0.1:1/"
            assert env["CORRAL_OLLAMA_URL"] == "http://127.0.0.1:2"
            assert env["CORRAL_LOG_LEVEL"]
            assert env["CORRAL_HEALTH_PORT"]
        assert sched_env["CORRAL_SCHEDULER_SLOTS"] == "2"
        assert cluster.gateway_url == f"http://127.0.0.1:{gw_env['CORRAL_GATEWAY_PORT']}"
        assert gw_env["CORRAL_HEALTH_PORT"] != sched_env["CORRAL_HEALTH_PORT"]
        assert (tmp_path / "work" / "logs" / "scheduler.log").exists()

        with pytest.raises(RuntimeError, match="already running"):
            cluster.start_scheduler()
        second = cluster.start_scheduler("scheduler-2")
        assert second.running
    assert not scheduler.running
    assert not gateway.running
    assert not second.running
