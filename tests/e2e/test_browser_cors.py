"""Cross-origin requests from a real browser: Debian's Chromium, headless, runs a page that calls
the gateway with `fetch`, as a web UI on another port would.

The page is served by this test from an origin of its own, `http://localhost:<port>` (allowed by
Ollama's defaults, and a different origin from the gateway's `http://127.0.0.1:<port>`) or
`http://127.0.0.2:<port>` (not allowed). Its script POSTs a streaming chat with
`Content-Type: application/json`, which a browser may only send cross-origin after a preflight,
reads the NDJSON stream with a reader, and reports what it saw back to its own origin, where the
test awaits it. Between the browser and the gateway sits a byte-for-byte TCP relay that keeps
what crossed it, so the test sees the preflight and the requests the browser really sent.

Nothing is downloaded: Chromium is Debian's `chromium` (`make test` installs it), driven by its
command line only. Without it these tests skip, except under CI, where they must run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import orjson
import pytest
from aiohttp import web

from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl, expected_reply
from tests.fixtures import ClusterFactory

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("CI"):
    pytest.fail("CI must run the browser tests: Debian's chromium is missing", pytrace=False)
if CHROMIUM is None:
    pytest.skip(
        "no chromium binary: install Debian's chromium (`make test` does) to run the browser tests",
        allow_module_level=True,
    )

REPORT_WITHIN_S = 60.0
"""Bound on each report from the page: a cold Chromium start on a busy 2-core machine included."""

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>Corral CORS check</title>
<script>
const params = new URLSearchParams(location.search);

async function report(kind, data) {
  await fetch("/report", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({kind, ...data}),
  });
}

(async () => {
  const lines = [];
  let reads = 0;
  try {
    const response = await fetch(params.get("gateway") + "/api/chat", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({
        model: "llama3.2",
        messages: [{role: "user", content: params.get("prompt")}],
        stream: true,
      }),
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      reads += 1;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\\n")) >= 0) {
        const line = buffer.slice(0, end).trim();
        buffer = buffer.slice(end + 1);
        if (!line) continue;
        lines.push(JSON.parse(line));
        if (lines.length === 1) await report("first", {line: lines[0]});
      }
    }
    await report("done", {
      status: response.status,
      contentType: response.headers.get("Content-Type"),
      lines,
      reads,
      rest: buffer,
    });
  } catch (error) {
    await report("error", {name: error.name, message: String(error.message), lines});
  }
})();
</script>
"""


@dataclass
class PageServer:
    """Serves PAGE on one or more loopback origins and queues the page's reports."""

    reports: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def report(self, request: web.Request) -> web.Response:
        self.reports.put_nowait(orjson.loads(await request.read()))
        return web.Response(status=204)


REQUEST_LINE = re.compile(rb"(?:^|\r\n)([A-Z]+) (/\S*) HTTP/1\.1\r\n")


@dataclass
class Relay:
    """A TCP relay to the gateway that keeps, per connection, the bytes each way unchanged."""

    upstream: tuple[str, int]
    sent: list[bytearray] = field(default_factory=list)
    answered: list[bytearray] = field(default_factory=list)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers += [writer, up_writer]
        sent, answered = bytearray(), bytearray()
        self.sent.append(sent)
        self.answered.append(answered)
        await asyncio.gather(
            self._pipe(reader, up_writer, sent), self._pipe(up_reader, writer, answered)
        )

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, kept: bytearray
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                kept += data
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    def requests(self) -> list[str]:
        """`METHOD /path` of every request the browser sent, in order per connection."""
        heads = (REQUEST_LINE.findall(bytes(connection)) for connection in self.sent)
        return [f"{m.decode()} {p.decode()}" for conn in heads for m, p in conn]

    def preflight_answers(self) -> list[tuple[int, dict[str, str]]]:
        """Status and headers (lower-case names) of each answer to an OPTIONS request."""
        answers = []
        for sent, answered in zip(self.sent, self.answered, strict=True):
            if not sent.startswith(b"OPTIONS "):
                continue
            head = bytes(answered).split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            status = int(head[0].split()[1])
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            answers.append((status, headers))
        return answers

    def close(self) -> None:
        for writer in self._writers:
            writer.close()


@dataclass
class Browser:
    pages: PageServer
    relay: Relay
    gateway: str
    """The gateway's URL as the page calls it: through the relay, on 127.0.0.1."""
    allowed_origin: str
    """http://localhost:<port>: allowed by the gateway's default origins."""
    refused_origin: str
    """http://127.0.0.2:<port>: in no default origin (only localhost, 127.0.0.1, 0.0.0.0)."""
    workdir: Path
    launched: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"chromium-{self.launched}.log"

    async def next_report(self) -> dict[str, Any]:
        """The page's next report; on time-out, fails with the end of Chromium's own log."""
        try:
            async with asyncio.timeout(REPORT_WITHIN_S):
                return await self.pages.reports.get()
        except TimeoutError:
            lines = self.log_path.read_text(errors="replace").splitlines()
            tail = "\n".join(line for line in lines if "dbus" not in line)[-3000:]
            raise AssertionError(f"no report from the page; Chromium said:\n{tail}") from None

    @contextlib.asynccontextmanager
    async def open(self, origin: str, prompt: str) -> AsyncIterator[None]:
        """Headless Chromium on the page at `origin`, killed on leaving."""
        assert CHROMIUM is not None
        url = f"{origin}/?" + urlencode({"gateway": self.gateway, "prompt": prompt})
        self.launched += 1
        profile = self.workdir / f"profile-{self.launched}"
        log = self.log_path.open("wb")
        process = await asyncio.create_subprocess_exec(
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-pings",
            "--disable-domain-reliability",
            "--disable-features=Translate,OptimizationHints,MediaRouter",
            # Only loopback traffic: every other name or address fails to resolve.
            "--host-resolver-rules=MAP * ~NOTFOUND, "
            + ", ".join(f"EXCLUDE {host}" for host in ("localhost", "127.0.0.1", "127.0.0.2")),
            url,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        try:
            yield
        finally:
            # Its own process group (start_new_session): the browser and every child it forked.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            async with asyncio.timeout(10):
                await process.wait()
            log.close()


@pytest.fixture(scope="module")
def browser_cluster(new_cluster: ClusterFactory) -> Iterator[Cluster]:
    with new_cluster("browser", CORRAL_HEARTBEAT_S="1", CORRAL_STATUS_INTERVAL_S="0.5") as cluster:
        yield cluster


@pytest.fixture
async def browser(browser_cluster: Cluster, tmp_path: Path) -> AsyncIterator[Browser]:
    parts = urlsplit(browser_cluster.gateway_url)
    assert parts.hostname is not None and parts.port is not None
    relay = Relay((parts.hostname, parts.port))
    relay_server = await asyncio.start_server(relay.serve, "127.0.0.1", 0)
    relay_port = relay_server.sockets[0].getsockname()[1]

    pages = PageServer()
    app = web.Application()
    app.router.add_get("/", pages.page)
    app.router.add_post("/report", pages.report)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sites = [web.TCPSite(runner, host, 0) for host in ("127.0.0.1", "127.0.0.2")]
    for site in sites:
        await site.start()
    allowed_port, refused_port = (address[1] for address in runner.addresses)
    try:
        yield Browser(
            pages,
            relay,
            gateway=f"http://127.0.0.1:{relay_port}",
            allowed_origin=f"http://localhost:{allowed_port}",
            refused_origin=f"http://127.0.0.2:{refused_port}",
            workdir=tmp_path,
        )
    finally:
        await runner.cleanup()
        relay_server.close()
        relay.close()
        await relay_server.wait_closed()


async def test_a_page_on_another_origin_streams_a_chat(
    browser: Browser, browser_cluster: Cluster, emu: EmulatorControl
) -> None:
    prompt = "Why is the sky blue?"
    await emu.hold()
    async with aiohttp.ClientSession() as session:
        # A first request holds the backend at the emulator's gate, so the page's request waits
        # in the lane: its first line (a queue chunk) can only come while nothing has been
        # generated for it, which shows the stream reaching the page piece by piece.
        running = asyncio.create_task(
            session.post(
                f"{browser_cluster.gateway_url}/api/chat",
                json={"model": "llama3.2", "messages": [{"role": "user", "content": "busy"}]},
            )
        )
        try:
            await emu.wait(held=1)
            async with browser.open(browser.allowed_origin, prompt):
                first = await browser.next_report()
                assert first["kind"] == "first", first
                assert "queue_info" in first["line"], first
                assert (await emu.stats())["generations"] == 1  # only the held one
                await emu.release()
                done = await browser.next_report()
        finally:
            await emu.release()
            (await running).close()

    assert done["kind"] == "done", done
    assert done["status"] == 200
    assert done["contentType"].startswith("application/x-ndjson")
    assert done["rest"] == ""
    lines = done["lines"]
    assert lines[0] == first["line"]
    # Queue chunks (not done, `queue_info` only), then the reply; the final line carries the
    # queue wait too.
    replies = [line for line in lines if line["done"] or "queue_info" not in line]
    assert "".join(line["message"]["content"] for line in replies) == expected_reply(prompt)
    assert replies[-1]["done"] is True
    assert all(line["done"] is False for line in replies[:-1])

    # The browser asked first (a JSON body is not a "simple" request), was let in, then posted.
    assert browser.relay.requests() == ["OPTIONS /api/chat", "POST /api/chat"]
    [(status, headers)] = browser.relay.preflight_answers()
    assert status == 204
    assert headers["access-control-allow-origin"] == browser.allowed_origin
    assert "POST" in headers["access-control-allow-methods"].split(",")
    assert "content-type" in headers["access-control-allow-headers"].lower().split(",")
    stats = await emu.wait(completed=2)
    assert stats["generations"] == 2


async def test_a_page_on_a_disallowed_origin_cannot_call(
    browser: Browser, emu: EmulatorControl
) -> None:
    async with browser.open(browser.refused_origin, "Are you there?"):
        report = await browser.next_report()

    # fetch rejects with a TypeError ("Failed to fetch") and hands the page nothing.
    assert report["kind"] == "error", report
    assert report["name"] == "TypeError"
    assert report["lines"] == []
    # The preflight was refused (Ollama's 403, no CORS headers), so the POST was never sent.
    assert browser.relay.requests() == ["OPTIONS /api/chat"]
    [(status, headers)] = browser.relay.preflight_answers()
    assert status == 403
    assert "access-control-allow-origin" not in headers
    stats = await emu.stats()
    assert stats["generations"] == 0
    assert await emu.requests("chat") == []
