from __future__ import annotations

import pytest

from corral_emulator import STATE_KEY, EmulatorConfig, EmulatorState, create_app
from corral_emulator.testing import ClientFactory, EmulatorTestClient


@pytest.fixture
def config() -> EmulatorConfig:
    return EmulatorConfig()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, config: EmulatorConfig) -> EmulatorTestClient:
    return await aiohttp_client(create_app(config))


@pytest.fixture
def state(client: EmulatorTestClient) -> EmulatorState:
    return client.app[STATE_KEY]
