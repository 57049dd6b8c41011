"""Pushing a model to the registry (Ollama's `PushModel` and `uploadBlob`), as progress lines.

`retrieving manifest`; then per blob (the manifest's layers, then its config) `pushing
<short digest>` with `digest` and `total`: a blob the registry already has is complete at
once (Ollama's HEAD hit), a new one first reports only `total` and then `pull_steps` updates of
`completed`, `pull_step_ms` apart; then `pushing manifest` and `success`. The pushed model
joins the emulator's registry, so it can be pulled back. A model that is not local fails after
`couldn't retrieve manifest` with the manifest file's `no such file or directory`, and an
`http://` name without `insecure` with `insecure protocol http`, as in Ollama.
"""

from __future__ import annotations

import asyncio

from corral_emulator.layers import Layer
from corral_emulator.model_names import ModelName
from corral_emulator.models import ModelCatalogue, ModelSpec
from corral_emulator.progress import ProgressFailed, ProgressStream, progress
from corral_emulator.registry import pull_layers
from corral_emulator.state import EmulatorState

MANIFESTS_DIR = "/root/.ollama/models/manifests"
INSECURE_PROTOCOL = "insecure protocol http"


def manifest_path(name: ModelName) -> str:
    return f"{MANIFESTS_DIR}/{name.host}/{name.namespace}/{name.model}/{name.tag}"


async def push_model(
    state: EmulatorState, name: ModelName, out: ProgressStream, *, insecure: bool, http: bool
) -> ModelSpec:
    await out.send(progress("retrieving manifest"))
    if http and not insecure:
        raise ProgressFailed(INSECURE_PROTOCOL)
    spec = state.catalogue.find(name.display_shortest) if name.is_valid else None
    if spec is None:
        await out.send(progress("couldn't retrieve manifest"))
        if not name.is_valid:
            raise ProgressFailed(f"unqualified name: {_go_name(name)}")
        raise ProgressFailed(f"open {manifest_path(name)}: no such file or directory")
    # A registry keeps blobs per repository: only a tag of the same model already pushed
    # (or published) spares an upload, as Ollama's HEAD on `v2/<namespace>/<model>/blobs`.
    repository = ModelCatalogue.of(
        other
        for other in state.registry.specs
        if _repository(other.full_name) == _repository(spec.full_name)
    )
    for layer in pull_layers(spec):
        await _upload(state, repository.has_blob(layer.digest), layer, out)
    await out.send(progress("pushing manifest"))
    state.push_model(spec)
    await out.send(progress("success"))
    return spec


async def _upload(state: EmulatorState, present: bool, layer: Layer, out: ProgressStream) -> None:
    status = f"pushing {layer.short_digest}"
    if present:
        await out.send(progress(status, layer.digest, layer.size, layer.size))
        return
    steps = state.config.pull_steps
    await out.send(progress(status, layer.digest, layer.size))
    for step in range(1, steps + 1):
        # Read per step: /_emulator/config may change the delay mid-push.
        delay_ms = state.config.pull_step_ms
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        await out.send(progress(status, layer.digest, layer.size, layer.size * step // steps))


def _repository(full_name: str) -> str:
    return full_name.rsplit(":", 1)[0] if ":" in full_name.rsplit("/", 1)[-1] else full_name


def _go_name(name: ModelName) -> str:
    """Go's Name.String(): host/namespace/model:tag, parts as given."""
    return f"{name.host}/{name.namespace}/{name.model}:{name.tag}"
