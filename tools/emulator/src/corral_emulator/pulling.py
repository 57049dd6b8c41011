"""Pulling a model from the registry (Ollama's `PullModel`), as progress lines.

`pulling manifest`, then one `pulling <digest>` line per blob already held (complete at once)
and for blobs fetched anew a first line with only `total` and then `pull_steps` updates of
`completed` (`pull_step_ms` apart; the weights wait at the hold gate first), then `verifying
sha256 digest`, `writing manifest` and `success`. The model joins the catalogue just before
`success`; a pull whose client goes away adds nothing.
"""

from __future__ import annotations

import asyncio

from corral_emulator.activity import Outcome
from corral_emulator.layers import Layer, MediaType
from corral_emulator.models import ModelSpec
from corral_emulator.progress import ProgressFailed, ProgressStream, progress
from corral_emulator.registry import MANIFEST_NOT_FOUND, pull_layers
from corral_emulator.state import EmulatorState, GatePurpose
from corral_emulator.timestamps import now_local_rfc3339


async def pull_model(state: EmulatorState, name: str, out: ProgressStream) -> ModelSpec:
    """Pull `name` (a valid model name); ProgressFailed if the registry does not have it."""
    ticket = state.activity.start_pull()
    try:
        await out.send(progress("pulling manifest"))
        spec = state.registry.find(name)
        if spec is None:
            raise ProgressFailed(MANIFEST_NOT_FOUND)
        for layer in pull_layers(spec):
            await _download(state, layer, out)
        await out.send(progress("verifying sha256 digest"))
        await out.send(progress("writing manifest"))
        # A (re)written manifest is what `modified_at` reports.
        pulled = spec.derive(modified_at=now_local_rfc3339())
        state.put_model(pulled)
        ticket.finish(Outcome.COMPLETED)
        await out.send(progress("success"))
        return pulled
    except ProgressFailed:
        ticket.finish(Outcome.FAILED)
        raise
    except (asyncio.CancelledError, ConnectionError):
        ticket.finish(Outcome.CANCELLED)
        raise
    finally:
        # Any other exception is an emulator bug; keep the record consistent anyway.
        ticket.finish(Outcome.FAILED)


async def _download(state: EmulatorState, layer: Layer, out: ProgressStream) -> None:
    status = f"pulling {layer.short_digest}"
    if state.catalogue.has_blob(layer.digest):
        # Ollama's cache hit: reported complete at once, without a transfer.
        await out.send(progress(status, layer.digest, layer.size, layer.size))
        return
    steps = 1
    if layer.media_type is MediaType.MODEL:
        steps = state.config.pull_steps
        await out.send(progress(status, layer.digest, layer.size))
        await state.gate.pass_through(GatePurpose.PULL)
    for step in range(1, steps + 1):
        # Read per step: /_emulator/config may change the delay mid-pull.
        delay_ms = state.config.pull_step_ms
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        await out.send(progress(status, layer.digest, layer.size, layer.size * step // steps))
