"""What follows a change Corral made to the backend's models (pull, create, delete, copy):
stale metadata is forgotten, the list is fetched again and every gateway is told at once."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from corral_common.errors import CorralError
from corral_model_manager.model_list import ModelListBroadcaster, ModelNames
from corral_model_manager.servers import ModelServers

log = structlog.get_logger(__name__)


class ModelChanges:
    def __init__(
        self,
        catalogue: ModelServers,
        names: ModelNames,
        broadcaster: ModelListBroadcaster,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._catalogue = catalogue
        self._names = names
        self._broadcaster = broadcaster
        self._clock = clock

    async def changed(self, *models: str) -> None:
        """`models` changed on the backend; returns once gateways have the new list."""
        changed_at = self._clock()
        for model in models:
            if model:
                self._catalogue.forget(model)
        try:
            # Only a list fetched after the change describes it.
            await self._names.refresh(newer_than=changed_at)
        except CorralError as exc:
            log.warning("model list not refreshed after a change", error=exc.message)
            return
        await self._broadcaster.publish()
