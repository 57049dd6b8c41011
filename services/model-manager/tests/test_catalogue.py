"""Model metadata from a real HTTP backend (the emulator, in-process), cached."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from corral_common.context_lengths import context_length_of
from corral_common.errors import CorralError, ErrorType
from corral_devstack.ports import free_port
from corral_emulator import RunningEmulator, running_emulator
from corral_model_manager.catalogue import ModelCatalogue


@pytest.fixture
async def backend() -> AsyncIterator[RunningEmulator]:
    async with running_emulator() as emulator:
        yield emulator


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_context_length_comes_from_the_architecture_key() -> None:
    show = {"model_info": {"general.architecture": "llama", "llama.context_length": 8192}}
    assert context_length_of(show) == 8192
    assert context_length_of({"model_info": {"qwen2.context_length": 32768}}) == 32768
    assert context_length_of({"model_info": None}) is None
    assert context_length_of({}) is None


async def test_model_info_is_fetched_once_then_cached(backend: RunningEmulator) -> None:
    clock = Clock()
    async with aiohttp.ClientSession() as session:
        catalogue = ModelCatalogue(session, backend.url, ttl_s=60, timeout_s=5, clock=clock)
        info = await catalogue.model_info("tiny")
        assert info["context_length"] == 256
        assert info["model"] == "tiny"
        assert (await catalogue.model_info("TINY"))["model"] == "TINY"
        assert len(backend.state.requests.bodies("show")) == 1
        clock.now = 61  # expired: asked again
        await catalogue.model_info("tiny")
        assert len(backend.state.requests.bodies("show")) == 2


async def test_unknown_model_is_the_backends_404(backend: RunningEmulator) -> None:
    async with aiohttp.ClientSession() as session:
        catalogue = ModelCatalogue(session, backend.url, ttl_s=60, timeout_s=5)
        with pytest.raises(CorralError) as info:
            await catalogue.model_info("no-such-model")
    assert info.value.error_type is ErrorType.MODEL_NOT_FOUND
    assert info.value.message == "model 'no-such-model' not found"


async def test_unreachable_backend_is_ollama_connection_error() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with aiohttp.ClientSession() as session:
        catalogue = ModelCatalogue(session, dead, ttl_s=60, timeout_s=5)
        with pytest.raises(CorralError) as info:
            await catalogue.model_info("tiny")
    assert info.value.error_type is ErrorType.OLLAMA_CONNECTION_ERROR
    assert info.value.status == 503
    assert dead in info.value.message
