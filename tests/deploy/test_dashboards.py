"""The Grafana dashboards (deploy/grafana) against a live Prometheus scraping a running cluster.

The committed JSON is what deploy/grafana/generate.py makes. Then Debian's Prometheus, started on
a loopback port with deploy/prometheus/prometheus.yml (its targets pointed at a whole cluster with
a standby scheduler and at a broker of its own with the Prometheus plugin on, a 1 s scrape
interval, the alert rules loaded), scrapes the cluster while the test drives traffic: chats with
and without a session, streamed and not, queued behind each other, an error, a model unload and
load. Every panel's query, with Grafana's variables
substituted, must then parse and return a number, and every alert rule must evaluate cleanly;
alerts are then raised for real (a dead-lettered job, the standby scheduler killed).

Without the `prometheus` binary (`make deploy-tools`) the live test skips, except under CI.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import pytest
import yaml

from corral_common.ids import new_id
from corral_common.topology import JOBS_EXCHANGE, JOBS_ROUTING_KEY
from corral_devstack.cluster import Cluster
from corral_devstack.ports import free_port
from corral_devstack.rabbitmq import RabbitNode
from corral_emulator import EmulatorControl
from tests.deploy.conftest import unavailable
from tests.fixtures import Emulator, start_cluster
from tests.gateway_http import call, create_user_key, keyed_cluster
from tests.polling import eventually, until
from tests.processes import stop

ROOT = Path(__file__).resolve().parents[2]
GRAFANA_DIR = ROOT / "deploy" / "grafana"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"

SCRAPE_S = 1
# What Grafana puts in for its variables, with a 1 s scrape interval: $__rate_interval is
# max($__interval + scrape interval, 4 x scrape interval).
GRAFANA_VARIABLES = {"__rate_interval": "4s", "__interval": "1s", "__range": "5m"}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
# deploy/prometheus/prometheus.yml's jobs on the broker's plugin: totals, per-queue depths
BROKER_JOBS = ("rabbitmq", "rabbitmq-queues")


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("corral_dashboards", GRAFANA_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text())
        for path in sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
    }


@dataclass(frozen=True)
class PanelQuery:
    where: str
    expr: str


def substitute(expr: str, variables: dict[str, str]) -> str:
    """`$name`, `${name}` and `[[name]]` as Grafana fills them in."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        return variables.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)


def panel_queries() -> list[PanelQuery]:
    queries = []
    for name, board in dashboards().items():
        variables = dict(GRAFANA_VARIABLES)
        for variable in board.get("templating", {}).get("list", []):
            # "All" is the default of every variable here: its value is the variable's allValue.
            variables[variable["name"]] = variable.get("allValue") or ".*"
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                queries.append(
                    PanelQuery(
                        f"{name} / {panel['title']} / {target['refId']}",
                        substitute(target["expr"], variables),
                    )
                )
    return queries


# -- the files --------------------------------------------------------------------------------


def test_committed_dashboards_are_what_the_generator_makes() -> None:
    rendered = load_generator().render()
    committed = {name: path.read_text() for name, path in _files().items()}
    assert set(committed) == set(rendered), "run: uv run python deploy/grafana/generate.py"
    for name, text in rendered.items():
        assert committed[name] == text, f"{name} is stale: uv run python deploy/grafana/generate.py"


def _files() -> dict[str, Path]:
    return {path.name: path for path in (GRAFANA_DIR / "dashboards").glob("*.json")}


def test_dashboards_use_the_provisioned_datasource_and_cover_the_issue() -> None:
    datasources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uid = datasources["datasources"][0]["uid"]
    # Grafana's $__rate_interval is right only if it knows Prometheus's scrape interval.
    scrape = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["global"]
    assert datasources["datasources"][0]["jsonData"]["timeInterval"] == scrape["scrape_interval"]
    boards = dashboards()
    assert {board["uid"] for board in boards.values()} == {
        "corral-overview",
        "corral-queue",
        "corral-models",
        "corral-sessions",
        "corral-broker",
    }
    for name, board in boards.items():
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == uid, f"{name} / {panel['title']}"
            assert panel["targets"], f"{name} / {panel['title']} has no query"
    provider = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "corral.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"]


# -- live: Prometheus scraping a cluster --------------------------------------------------------


@dataclass(frozen=True)
class Watched:
    """The whole cluster with keys on, as compose runs it, a standby scheduler, and keys."""

    cluster: Cluster
    admin: str
    user: str
    broker_metrics: str  # host:port of the broker's Prometheus plugin


@pytest.fixture(scope="session")  # session: set up before the session's broker and database
def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        unavailable("Prometheus is not installed (make deploy-tools: apt-get install prometheus)")
    return path


@dataclass(frozen=True)
class MeteredBroker:
    """A RabbitMQ node of this module's own with its Prometheus plugin on, as compose runs it
    (the session's shared broker runs without plugins: they cost start time)."""

    url: str
    metrics: str  # host:port of the plugin's /metrics


@pytest.fixture(scope="module")
def metered_broker(
    prometheus_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MeteredBroker]:
    port = free_port("127.0.0.1")
    config = {"prometheus.tcp.ip": "127.0.0.1", "prometheus.tcp.port": str(port)}
    node = RabbitNode(
        tmp_path_factory.mktemp("rabbitmq"), config=config, plugins=("rabbitmq_prometheus",)
    )
    with node:
        yield MeteredBroker(node.url, f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def watched(
    metered_broker: MeteredBroker,
    emulator: Emulator,
    mongo_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Watched]:
    """Asks for Prometheus first (through the broker): a machine without it starts nothing."""

    def on_metered_broker(name: str, *, whole: bool = False, **env: str) -> Cluster:
        workdir = tmp_path_factory.mktemp(name)
        store = mongo_url if whole else None
        return start_cluster(metered_broker.url, emulator.url, workdir, mongo_url=store, **env)

    with keyed_cluster(
        on_metered_broker, "dashboards", CORRAL_HEARTBEAT_S="1", CORRAL_STATUS_INTERVAL_S="0.5"
    ) as (cluster, admin):
        # Not waited for here: it comes up while Prometheus starts, and the test waits until
        # Prometheus scrapes every target.
        cluster.start_scheduler("scheduler-standby", wait=False)
        user = create_user_key(cluster.gateway_url, admin, "dashboards")["key"]
        yield Watched(cluster, admin, user, metered_broker.metrics)


def scrape_config(watched: Watched, key_file: Path) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with its jobs pointed at this cluster and its broker,
    and the gateway's key read from `key_file` (compose's secret)."""
    config: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=f"{SCRAPE_S}s", evaluation_interval=f"{SCRAPE_S}s")
    config["rule_files"] = [str(PROMETHEUS_DIR / rules) for rules in config["rule_files"]]
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"].startswith("rabbitmq"):
            targets = [watched.broker_metrics]
        else:
            targets = [
                urlsplit(service.ready_url).netloc
                for name, service in watched.cluster.services.items()
                if service.ready_url is not None and name.startswith(job["job_name"])
            ]
        if not targets:
            continue
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(key_file)
        jobs.append({**job, "static_configs": [{"targets": sorted(targets)}]})
    assert {job["job_name"] for job in jobs} == {
        "gateway",
        "scheduler",
        "session-store",
        "model-manager",
        *BROKER_JOBS,
    }
    config["scrape_configs"] = jobs
    return config


@pytest.fixture(scope="module")
def prometheus_url(
    prometheus_binary: str, watched: Watched, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("prometheus")
    key_file = workdir / "corral_admin_key"
    key_file.write_text(watched.admin + "\n")
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(watched, key_file)))
    port = free_port("127.0.0.1")
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                prometheus_binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        until(
            lambda: process.poll() is not None or _ready(url),
            30,
            "Prometheus ready",
        )
        assert process.poll() is None, f"Prometheus exited:\n{log.read_text()[-3000:]}"
        yield url
    finally:
        stop(process)


def _ready(url: str) -> bool:
    try:
        with _no_proxy_open(f"{url}/-/ready") as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _no_proxy_open(url: str) -> Any:
    import urllib.request

    return urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=2)


class Prom:
    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.http = http

    async def api(self, path: str, **params: str) -> Any:
        async with self.http.get(f"{self.url}/api/v1/{path}", params=params) as response:
            body = await response.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    async def value(self, expr: str) -> float:
        result = (await self.api("query", query=expr))["result"]
        return float(result[0]["value"][1]) if result else 0.0

    async def has_number(self, expr: str, start: float) -> bool:
        """The query parses (else the API call fails) and some step of it is a number."""
        data = await self.api(
            "query_range", query=expr, start=str(start), end=str(time.time()), step=f"{SCRAPE_S}s"
        )
        return any(
            math.isfinite(float(value))
            for series in data["result"]
            for _, value in series["values"]
        )


@pytest.fixture
async def prom(prometheus_url: str) -> AsyncIterator[Prom]:
    async with aiohttp.ClientSession(trust_env=False) as http:
        yield Prom(prometheus_url, http)


async def chat(
    watched: Watched,
    content: str,
    *,
    session_id: str | None = None,
    model: str = "llama3.2",
    stream: bool = False,
) -> int:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
    }
    if session_id is not None:
        body["session_id"] = session_id
    url = watched.cluster.gateway_url
    status, _, _ = await call("POST", f"{url}/api/chat", key=watched.user, body=body)
    return status


async def drive_traffic(watched: Watched, emu: EmulatorControl) -> None:
    """One round of what the dashboards watch."""
    # A model operation through the lane, then a load the scheduler sees (load_duration).
    url = watched.cluster.gateway_url
    status, _, answer = await call("POST", f"{url}/admin/models/llama3.2/unload", key=watched.admin)
    assert status == 200, answer
    await emu.configure(load_ms=80, token_delay_ms=5)
    session_id = new_id()
    statuses = list(
        await asyncio.gather(
            chat(watched, "first, stateless"),
            chat(watched, "streamed", stream=True),
            chat(watched, "queued behind the others"),
            chat(watched, "a session's first turn", session_id=session_id),
        )
    )
    assert statuses == [200, 200, 200, 200]
    assert await chat(watched, "a session's second turn", session_id=session_id) == 200
    # An error the gateway counts.
    assert await chat(watched, "no such model", model="no-such-model") == 404


def series_names(exposition: str) -> set[str]:
    """The series names a /metrics text declares (`# TYPE` lines: labelled metrics are declared
    before any of their series exist), a histogram's `_bucket`, `_sum` and `_count` with it."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names.update(name + suffix for suffix in HISTOGRAM_SERIES)
    return names


async def declared_metrics(watched: Watched) -> set[str]:
    """What every service's /metrics declares, and the broker's, as Prometheus scrapes it."""
    urls = [
        service.ready_url.removesuffix("/ready") + "/metrics"
        for service in watched.cluster.services.values()
        if service.ready_url is not None
    ]
    broker = f"http://{watched.broker_metrics}/metrics"
    urls += [broker, broker + "/detailed?family=queue_coarse_metrics"]
    declared: set[str] = set()
    for url in urls:
        status, _, text = await call("GET", url, key=watched.admin)
        assert status == 200, (url, text)
        declared |= series_names(text)
    return declared


@pytest.mark.e2e
async def test_every_panel_query_returns_data(
    watched: Watched, prom: Prom, emu: EmulatorControl
) -> None:
    started = time.time()
    # a process each (two schedulers), and the broker's two jobs
    targets = len(watched.cluster.services) + len(BROKER_JOBS)

    async def all_up() -> bool:
        return await prom.value("sum(up)") == targets

    await eventually(all_up, 30, f"Prometheus scraping all {targets} targets")

    # Two rounds, a scrape of every target apart: series born in the first round (per model,
    # per outcome, per caller) have a sample before the second round moves them, so their
    # rates are not all zero.
    await drive_traffic(watched, emu)
    first_round_done = time.time()

    async def first_round_scraped() -> bool:
        return (
            await prom.value("min(timestamp(up))") > first_round_done
            # the session store writes a turn once its answer is out
            and await prom.value('sum(corral_turns_written_total{outcome="stored"})') >= 2
        )

    await eventually(first_round_scraped, 15, "the first round scraped")
    await drive_traffic(watched, emu)

    queries = panel_queries()
    missing: list[PanelQuery] = list(queries)

    async def all_have_data() -> bool:
        results = await asyncio.gather(*(prom.has_number(q.expr, started) for q in missing))
        missing[:] = [q for q, ok in zip(missing, results, strict=True) if not ok]
        return not missing

    try:
        await eventually(all_have_data, 20, "every panel's query returning data")
    except AssertionError:
        shown = "\n".join(f"{q.where}: {q.expr}" for q in missing)
        raise AssertionError(
            f"{len(missing)} of {len(queries)} queries have no data:\n{shown}"
        ) from None

    # The dashboards' model variable lists the model the traffic used.
    models = await prom.api("label/model/values", **{"match[]": "corral_queue_wait_seconds_count"})
    assert "llama3.2" in models

    # The alert rules, loaded from deploy/prometheus/alerts.yml, evaluate without errors.
    async def rules_evaluated() -> bool:
        groups = (await prom.api("rules"))["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return bool(rules) and all(rule["health"] != "unknown" for rule in rules)

    await eventually(rules_evaluated, 10, "the alert rules evaluated")
    groups = (await prom.api("rules"))["groups"]
    broken = {
        rule["name"]: rule.get("lastError")
        for group in groups
        for rule in group["rules"]
        if rule["health"] != "ok"
    }
    assert broken == {}
    # A query ending in `or on() vector(0)` returns data whatever its first half names, so every
    # series a query or an alert names must be one some service (or the broker's plugin)
    # declares on its /metrics.
    declared = await declared_metrics(watched)
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    exprs = [q.expr for q in queries] + [
        rule["expr"] for group in rules["groups"] for rule in group["rules"]
    ]
    named = {
        name for expr in exprs for name in re.findall(r"\b(?:corral|rabbitmq)_[a-z0-9_]+", expr)
    }
    assert named - declared == set(), "queries name series no service exports"

    # Alerts raised by the real series: a job no scheduler can read is dead-lettered (firing at
    # once), and the standby scheduler dies (pending: it fires after 5 minutes).
    connection = await aio_pika.connect(watched.cluster.amqp_url)
    async with connection:
        channel = await connection.channel()
        jobs = await channel.get_exchange(JOBS_EXCHANGE)
        await jobs.publish(aio_pika.Message(b"not a job"), routing_key=JOBS_ROUTING_KEY)
    watched.cluster.kill("scheduler-standby")
    expected = {
        "CorralJobsDeadLettered": "firing",
        "CorralDeadLettersWaiting": "pending",
        "CorralSchedulerStandbyMissing": "pending",
    }
    raised: dict[str, str] = {}

    async def alerts_raised() -> bool:
        alerts = (await prom.api("alerts"))["alerts"]
        raised.update({alert["labels"]["alertname"]: alert["state"] for alert in alerts})
        return all(raised.get(name) == state for name, state in expected.items())

    try:
        await eventually(alerts_raised, 20, f"alerts {expected}")
    except AssertionError:
        raise AssertionError(f"expected {expected}, raised {raised}") from None
    print(f"{len(queries)} panel queries checked in {time.time() - started:.1f}s")
