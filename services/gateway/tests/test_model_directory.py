"""The gateway's model directory: a failed lookup is remembered for a while, a broadcast ends it."""

from __future__ import annotations

from typing import Any, cast

import pytest

from corral_common.contracts.model_manager import ModelNames
from corral_common.errors import CorralError, ErrorType
from corral_common.messages import ModelList
from corral_common.rpc import RpcClient
from corral_gateway.directory import ModelDirectory


class Manager:
    """Answers `model_names` with `models`, or fails as an absent model manager does."""

    def __init__(self) -> None:
        self.calls = 0
        self.models: list[str] | None = None

    async def call(self, method: Any, params: Any) -> ModelNames:
        self.calls += 1
        if self.models is None:
            raise CorralError(ErrorType.BROKER_UNAVAILABLE, "no model manager answered")
        return ModelNames(models=self.models, updated_at=None)


async def test_without_a_model_manager_the_lookup_is_not_repeated_on_every_request() -> None:
    manager = Manager()
    directory = ModelDirectory(cast(RpcClient, manager))
    await directory.check("llama3.2")
    await directory.check("other")
    assert manager.calls == 1  # the backend decides; nobody is asked again for a while


async def test_a_model_list_broadcast_ends_the_wait() -> None:
    manager = Manager()
    directory = ModelDirectory(cast(RpcClient, manager))
    await directory.check("llama3.2")
    directory.update(ModelList(sent_at=0.0, models=["llama3.2"]))
    await directory.check("llama3.2")  # known: nothing asked
    manager.models = ["llama3.2"]
    with pytest.raises(CorralError) as raised:
        await directory.check("missing")
    assert raised.value.error_type == ErrorType.MODEL_NOT_FOUND
    assert manager.calls == 2
