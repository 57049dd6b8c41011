"""Which models the backend has, so a request for one it lacks is answered at once (404 with
the models that do exist) instead of after a wait in the queue.

The model manager broadcasts the list whenever it changes; a name missing from it triggers one
forced refresh before the gateway says no, so a model pulled behind Corral's back is still
found. Without a model manager the check steps aside and the backend decides, as before.
"""

from __future__ import annotations

import time

import structlog

from corral_common.clip import clip
from corral_common.contracts.model_manager import MODEL_MANAGER, ModelNamesParams
from corral_common.errors import CorralError, ErrorType
from corral_common.messages import ModelList
from corral_common.model_names import canonical_model_name
from corral_common.rpc import RpcClient
from corral_gateway.usage import note_model

log = structlog.get_logger(__name__)

# Ollama's names: host up to 350 characters, namespace, model and tag up to 80 each.
MODEL_NAME_MAX_CHARS = 1024
# How long a model list that could not be fetched is not asked for again.
UNAVAILABLE_REMEMBERED_S = 10.0


class ModelDirectory:
    def __init__(self, rpc: RpcClient) -> None:
        self._rpc = rpc
        self._names: frozenset[str] | None = None
        self.updated_at = 0.0
        # Until when a failed lookup stands (time.monotonic()): without a model manager every
        # request would otherwise pay a confirmed RPC publish that nobody takes.
        self._unavailable_until = 0.0

    @property
    def names(self) -> list[str]:
        return sorted(self._names or ())

    def update(self, models: ModelList) -> None:
        self._set(models.models)

    def _set(self, names: list[str]) -> None:
        self._unavailable_until = 0.0
        self._names = frozenset(canonical_model_name(name) for name in names)
        self.updated_at = time.time()

    def knows(self, model: str) -> bool:
        return self._names is not None and canonical_model_name(model) in self._names

    async def check(self, model: str, *, not_found: str | None = None) -> None:
        """Raise model_not_found unless the backend has `model`. `not_found` is the Ollama
        text for the endpoint at hand (chat and embed word it differently)."""
        # The request named a model: its access-log line and usage row say which.
        note_model(model)
        if self.knows(model):
            return
        if len(model) > MODEL_NAME_MAX_CHARS:
            # No backend has such a name (Ollama's longest valid one is about 600 characters):
            # answered here, so a huge name never travels to the model manager or the lane.
            raise CorralError(
                ErrorType.MODEL_NOT_FOUND,
                not_found or f"model '{clip(model)}' not found",
                details={"requested_model": clip(model)},
            )
        if time.monotonic() < self._unavailable_until:
            return  # no model manager answered a moment ago: the backend has its say
        try:
            answer = await self._rpc.call(MODEL_MANAGER.model_names, ModelNamesParams(refresh=True))
        except CorralError as exc:
            # No model manager, or the backend is down: let the backend have its say, and do
            # not ask again for a while (a model list broadcast ends the wait at once).
            log.debug("model list unavailable", error=exc.message)
            self._unavailable_until = time.monotonic() + UNAVAILABLE_REMEMBERED_S
            return
        self._set(answer.models)
        if self.knows(model):
            return
        raise CorralError(
            ErrorType.MODEL_NOT_FOUND,
            not_found or f"model '{clip(model)}' not found",
            details={"requested_model": clip(model), "available_models": self.names},
        )
