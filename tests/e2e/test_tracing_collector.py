"""Tracing to a real collector: the whole cluster exports OTLP/HTTP to a rotel
collector process (PyPI `rotel`, a collector in Rust, run through uv's cache at a pinned
version), and one request through the gateway is one trace with spans from the gateway, the
scheduler and the session store, each span's parent in the same trace.

The collector prints what it receives (`--debug-log traces --debug-log-verbosity detailed`,
the blackhole exporter behind it); the test reads that output. Where rotel cannot be run (no
network for uv's first download, no libpython3.11 for the binary) the test is skipped saying
why, except under CI, where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral_devstack.cluster import Cluster
from corral_devstack.ports import free_port
from corral_emulator import EmulatorControl
from tests.fixtures import ClusterFactory
from tests.gateway_http import call
from tests.polling import eventually, until
from tests.processes import stop

pytestmark = pytest.mark.e2e

ROTEL = "rotel==0.0.1a15"
LOOPBACK = "127.0.0.1"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def unavailable(reason: str) -> None:
    """Skip (fail under CI, where the collector must run)."""
    if os.environ.get("CI"):
        pytest.fail(f"the rotel collector cannot run: {reason}")
    pytest.skip(f"the rotel collector cannot run: {reason}")


def rotel_agent() -> Path:
    """The `rotel-agent` binary inside the pinned PyPI package (it declares no entry point, so
    uvx finds it through the package's own `Agent`)."""
    uvx = shutil.which("uvx") or str(Path.home() / ".local" / "bin" / "uvx")
    try:
        found = subprocess.run(
            [
                uvx,
                "--from",
                ROTEL,
                "python",
                "-c",
                "from rotel.agent import agent; print(agent.agent_path)",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"uvx --from {ROTEL} failed: {exc}")
    if found.returncode != 0:
        unavailable(f"uvx --from {ROTEL}: {found.stderr.strip()[-500:]}")
    return Path(found.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Span:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str


def received_spans(output: str) -> list[Span]:
    """The spans in rotel's detailed debug output: each `ResourceSpans` block names its
    service in its resource attributes, then lists its spans' ids and names."""
    spans: list[Span] = []
    service = ""
    in_resource = False
    current: dict[str, str] = {}

    def flush() -> None:
        if "trace" in current and "name" in current:
            spans.append(
                Span(
                    service,
                    current["trace"],
                    current.get("id", ""),
                    current.get("parent", ""),
                    current["name"],
                )
            )
        current.clear()

    for raw in output.splitlines():
        line = ANSI.sub("", raw).strip()
        if line.startswith("ResourceSpans #"):
            flush()
            service, in_resource = "", False
        elif line == "Resource attributes:":
            in_resource = True
        elif line.startswith("ScopeSpans #"):
            in_resource = False
        elif in_resource and (found := re.match(r"-> service\.name: Str\((.*)\)$", line)):
            service = found.group(1)
        elif line.startswith("Span #"):
            flush()
        elif (found := re.match(r"(Trace ID|Parent ID|ID|Name)\s*:\s*(.*)$", line)) is not None:
            key = {"Trace ID": "trace", "Parent ID": "parent", "ID": "id", "Name": "name"}
            current[key[found.group(1)]] = found.group(2).strip()
    flush()
    return spans


def test_the_output_parser_reads_rotels_detailed_log() -> None:
    output = """\x1b[2m2026\x1b[0m INFO Starting Rotel.
ResourceSpans #0
Resource attributes:
     -> service.name: Str(corral-gateway)
ScopeSpans #0
InstrumentationScope corral
Span #0
    Trace ID       : t1
    Parent ID      :
    ID             : a
    Name           : POST /api/chat
Attributes:
     -> service.name: Str(not-a-resource)
Span #1
    Trace ID       : t1
    Parent ID      : a
    ID             : b
    Name           : publish
"""
    assert received_spans(output) == [
        Span("corral-gateway", "t1", "a", "", "POST /api/chat"),
        Span("corral-gateway", "t1", "b", "a", "publish"),
    ]


@dataclass(frozen=True)
class Collector:
    endpoint: str
    output: Path

    def spans(self) -> list[Span]:
        return received_spans(self.output.read_text(errors="replace"))


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    agent = rotel_agent()
    workdir = tmp_path_factory.mktemp("rotel")
    http_port, grpc_port = free_port(LOOPBACK), free_port(LOOPBACK)
    output = workdir / "rotel.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [
                str(agent),
                "start",
                "--otlp-http-endpoint",
                f"{LOOPBACK}:{http_port}",
                "--otlp-grpc-endpoint",
                f"{LOOPBACK}:{grpc_port}",
                "--exporter",
                "blackhole",
                "--debug-log",
                "traces",
                "--debug-log-verbosity",
                "detailed",
                "--pid-file",
                str(workdir / "rotel.pid"),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:

        def listening() -> bool:
            if process.poll() is not None:
                return True
            with socket.socket() as probe:
                return probe.connect_ex((LOOPBACK, http_port)) == 0

        until(listening, 30, "the rotel collector listening")
        if process.poll() is not None:
            unavailable(f"rotel-agent exited: {output.read_text(errors='replace')[-500:]}")
        yield Collector(f"http://{LOOPBACK}:{http_port}", output)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def traced(new_cluster: ClusterFactory, collector: Collector) -> Iterator[Cluster]:
    """The whole cluster exporting its spans to the collector (batched every 200 ms)."""
    with new_cluster(
        "traced",
        whole=True,
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="200",
    ) as cluster:
        yield cluster


async def test_one_request_is_one_trace_across_the_services(
    traced: Cluster, collector: Collector, emu: EmulatorControl
) -> None:
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "trace me"}],
        "stream": False,
        "session_id": "new",
    }
    status, _, answer = await call("POST", f"{traced.gateway_url}/api/chat", body=body)
    assert status == 200, answer
    wanted = {"corral-gateway", "corral-scheduler", "corral-session-store"}
    trace: list[Span] = []

    async def whole() -> bool:
        spans = collector.spans()
        roots = [
            s
            for s in spans
            if s.service == "corral-gateway" and s.name.endswith("/api/chat") and not s.parent_id
        ]
        if len(roots) != 1:
            return False
        trace[:] = [s for s in spans if s.trace_id == roots[0].trace_id]
        return wanted <= {s.service for s in trace} and any(
            s.name == "session-store write turn" for s in trace
        )

    await eventually(whole, 20, "the request's spans from every service at the collector")
    ids = {s.span_id for s in trace}
    # One tree: every span but the gateway's root hangs from a span of the same trace.
    [root] = [s for s in trace if not s.parent_id]
    assert (root.service, root.name.endswith("/api/chat")) == ("corral-gateway", True)
    assert all(s.parent_id in ids for s in trace if s.parent_id), trace
    by_service = {s.service for s in trace}
    assert wanted <= by_service, by_service
