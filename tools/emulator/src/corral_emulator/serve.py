"""Running the emulator: in-process on a free port (for tests) or in the foreground (CLI)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from corral_emulator.app import create_app
from corral_emulator.config import EmulatorConfig
from corral_emulator.state import STATE_KEY, EmulatorState


@dataclass(slots=True)
class RunningEmulator:
    url: str
    """Base URL, e.g. http://127.0.0.1:54321 (no trailing slash)."""
    app: web.Application
    runner: web.AppRunner

    @property
    def state(self) -> EmulatorState:
        return self.app[STATE_KEY]

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_emulator(
    config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> RunningEmulator:
    """Serve on `host:port` (port 0 picks a free one) inside the current event loop."""
    app = create_app(config)
    # Handler cancellation is how client disconnects become visible mid-sleep.
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    return RunningEmulator(url=f"http://{bound_host}:{bound_port}", app=app, runner=runner)


@asynccontextmanager
async def running_emulator(
    config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningEmulator]:
    emulator = await start_emulator(config, host, port)
    try:
        yield emulator
    finally:
        await emulator.close()


def serve_forever(config: EmulatorConfig) -> None:
    web.run_app(create_app(config), host=config.host, port=config.port, handler_cancellation=True)
