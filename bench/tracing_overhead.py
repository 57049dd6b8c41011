"""What tracing with nowhere to send spans cost, per request, against tracing off as it is now.

    uv run python bench/tracing_overhead.py [--requests 3000] [--spans 20000] [--repeats 3]

Each variant runs in a fresh interpreter (the tracer provider and aiohttp's instrumentation are
process-wide): an aiohttp server and client in one process exchange `--requests` small POSTs,
and the process's CPU time per request is taken; then `--spans` spans are made the way the
scheduler makes one per job (the trace context read from a job's headers, a span, the context
written into the next message's headers). Variants:

- `before`: what `setup_tracing` used to do without an exporter: an SDK tracer provider
  with no span processor, aiohttp's server and client instrumented, contexts always carried;
- `server`, `client`: `before` with only one side of aiohttp instrumented (the gateway
  instruments its server, the scheduler and model manager their backend client);
- `off`: what it does now: nothing installed, no context in the headers;
- `none`: `off` without the span calls at all (the headers dict alone), the floor `off` is
  measured against: what a span costs with tracing off is `off` minus `none`.

The side by side through a whole cluster is `bench/latency.py` run twice (docs/observability.md).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

VARIANTS = ("before", "server", "client", "off", "none")
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def install(variant: str) -> None:
    if variant in ("off", "none"):
        return
    from opentelemetry import trace
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())
    if variant in ("before", "server"):
        AioHttpServerInstrumentor().instrument()
    if variant in ("before", "client"):
        AioHttpClientInstrumentor().instrument()


async def per_request_us(requests: int) -> float:
    import aiohttp
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/api/chat", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}/api/chat"
    try:
        async with aiohttp.ClientSession() as session:
            for n in range(requests // 10 + requests):
                if n == requests // 10:
                    started = time.process_time()
                async with session.post(url, data=b"{}") as response:
                    await response.read()
            return (time.process_time() - started) / requests * 1e6
    finally:
        await runner.cleanup()


def per_span_us(variant: str, spans: int) -> float:
    from corral_common.telemetry import extract_context, inject_context, tracer

    carried = {"x-corral": "1"} if variant in ("off", "none") else {"traceparent": TRACEPARENT}
    bare = variant == "none"
    started = time.process_time()
    for _ in range(spans):
        headers: dict[str, object] = {}
        if bare:
            continue
        with tracer().start_as_current_span("backend generation", context=extract_context(carried)):
            inject_context(headers)
    return (time.process_time() - started) / spans * 1e6


def child(variant: str, requests: int, spans: int) -> None:
    install(variant)
    request_us = asyncio.run(per_request_us(requests))
    print(f"{request_us:.1f} {per_span_us(variant, spans):.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--spans", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.requests, args.spans)
        return 0
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        # Interleaved, so machine noise lands on every variant.
        for variant in VARIANTS:
            argv = ["--child", variant, "--requests", str(args.requests)]
            argv += ["--spans", str(args.spans)]
            out = subprocess.run(
                [sys.executable, __file__, *argv],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            results[variant].append((float(out[0]), float(out[1])))
    print("| tracing | CPU per HTTP request, server + client (µs) | per span with context (µs) |")
    print("| --- | ---: | ---: |")
    for variant in VARIANTS:
        request_us = statistics.median(r for r, _ in results[variant])
        span_us = statistics.median(s for _, s in results[variant])
        print(f"| {variant} | {request_us:.0f} | {span_us:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
