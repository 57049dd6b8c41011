"""Explicit loads and unloads (empty requests), as operations in the concurrency record.

Chat, generate, embed and embeddings all load a model when asked with no input; chat and
generate also unload one when keep_alive is 0.
"""

from __future__ import annotations

from corral_emulator.activity import OperationKind, Outcome
from corral_emulator.durations import KeepAlive
from corral_emulator.models import ModelSpec
from corral_emulator.state import EmulatorState


async def load_model(
    state: EmulatorState, spec: ModelSpec, context_length: int, keep_alive: KeepAlive | None
) -> None:
    """Load the model (applying keep_alive) and let it go idle again."""
    ticket = state.activity.start(spec.full_name, OperationKind.LOAD)
    try:
        runner = await state.runners.acquire(spec, context_length, keep_alive)
        state.runners.release(runner)
        ticket.finish(Outcome.COMPLETED)
    finally:
        # Only reached unfinished when the client went away during the load.
        ticket.finish(Outcome.CANCELLED)


def unload_model(state: EmulatorState, spec: ModelSpec) -> None:
    """Unload now if idle, else once idle; the request itself is over at once."""
    ticket = state.activity.start(spec.full_name, OperationKind.UNLOAD)
    state.runners.expire(spec)
    ticket.finish(Outcome.COMPLETED)
