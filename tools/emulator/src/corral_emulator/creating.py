"""Creating a model (Ollama's `CreateHandler` goroutine and `createModel`), as progress lines.

From an existing model: its layers are reused (`using existing layer sha256:...`), then the
request's template and system replace the model's, licenses are added, parameters are merged
over the model's, and messages replace the model's; each such layer is `creating new layer`
unless some model already holds the same content. A `from` that is not local is pulled first,
as Ollama does. From `files` (blobs uploaded first through `POST /api/blobs/:digest`): each
GGUF is "parsed" (its magic checked) and the first one, by path, becomes the weights layer; a
missing blob fails with the `open ...: no such file or directory` Ollama's create reports, a
blob that is not GGUF with `supplied file was not in GGUF format` (400).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from corral_emulator.api_types import CreateRequest
from corral_emulator.blobs import (
    GGUF_MAGIC,
    INVALID_DIGEST_FORMAT,
    Blob,
    blob_key,
    valid_digest,
)
from corral_emulator.layers import Layer, MediaType, content_layer, json_layer, weights_layer
from corral_emulator.model_names import parse_model_name
from corral_emulator.modelfile import BLOBS_DIR
from corral_emulator.models import ModelSpec
from corral_emulator.progress import ProgressFailed, ProgressStream, progress
from corral_emulator.pulling import pull_model
from corral_emulator.state import EmulatorState
from corral_emulator.timestamps import now_local_rfc3339
from corral_emulator.wire import json_kind

INVALID_MODEL_NAME = "invalid model name"
NEITHER_FROM_NOR_FILES = "neither 'from' or 'files' was specified"
FILE_PATH_NOT_RELATIVE = "file path must be relative"
UNKNOWN_FILE_TYPE = "unknown type"
QUANTIZE_NEEDS_FLOAT = "quantization is only supported for F16 and F32 models"
NO_FILES_PROVIDED = "no files provided to convert"
ONLY_GGUF_SUPPORTED = "supplied file was not in GGUF format"
FILE_MODEL_CONTEXT_LENGTH = 4096
"""The emulator reads no GGUF metadata; a created model gets this window."""
_QUANTIZE_DIGEST = "0000000000000000000"
"""The placeholder digest Ollama puts on quantization progress."""

QUANTIZATION_BITS: Mapping[str, float] = {
    "F32": 32,
    "F16": 16,
    "BF16": 16,
    "Q8_0": 8.5,
    "Q4_K_S": 4.58,
    "Q4_K_M": 4.85,
}
"""What `ggml.ParseFileType` accepts, with bits per weight to size a quantized model."""
_QUANTIZATION_ALIASES = {"Q4_K": "Q4_K_M"}
_SUPPORTED_QUANTIZATIONS = "F32, F16, Q4_K_S, Q4_K_M, Q8_0"


def valid_file_path(path: str) -> bool:
    """Go's `fs.ValidPath`: relative, slash-separated, no empty, `.` or `..` elements."""
    return path == "." or all(part not in ("", ".", "..") for part in path.split("/"))


@dataclass(slots=True)
class _Draft:
    """The model being written: its layers in manifest order, each with the status line
    Ollama reports for it, and the spec it will be stored as."""

    spec: ModelSpec
    layers: list[tuple[Layer, str]] = field(default_factory=list)

    def replace(self, layer: Layer, status: str) -> None:
        """Drop the layers of this kind and append the new one (Ollama's removeLayer)."""
        kind = layer.media_type
        self.layers = [entry for entry in self.layers if entry[0].media_type is not kind]
        self.layers.append((layer, status))


async def create_model(
    state: EmulatorState, request: CreateRequest, name: str, out: ProgressStream
) -> ModelSpec:
    """Create `name` (a valid model name) as `request` asks; ProgressFailed as Ollama fails."""
    if request.base:
        base = await _base_model(state, request.base, out)
    elif request.files is not None:
        base = await _from_files(state, request.files, name, out)
    else:
        raise ProgressFailed(NEITHER_FROM_NOR_FILES, 400)

    draft = _Draft(base.derive(name=name))
    weights = await _weights(state, request.quantize, base, draft, out)
    for layer in base.layers:
        if layer.media_type is MediaType.MODEL:
            draft.layers.append(weights)
        else:
            draft.layers.append((layer, f"using existing layer {layer.digest}"))
    _apply_request(state, request, draft)

    for _, status in draft.layers:
        await out.send(progress(status))
    await out.send(progress("writing manifest"))
    created = draft.spec.derive(modified_at=now_local_rfc3339())
    state.put_model(created)
    state.activity.created()
    await out.send(progress("success"))
    return created


async def _base_model(state: EmulatorState, text: str, out: ProgressStream) -> ModelSpec:
    parsed = parse_model_name(text)
    if not parsed.is_valid:
        raise ProgressFailed(INVALID_MODEL_NAME, 400)
    local = state.catalogue.find(parsed.display_shortest)
    if local is not None:
        return local
    return await pull_model(state, parsed.display_shortest, out)


async def _weights(
    state: EmulatorState, quantize: str, base: ModelSpec, draft: _Draft, out: ProgressStream
) -> tuple[Layer, str]:
    """The weights layer and its status line, quantized first if asked."""
    original = base.layers[0]
    reuse = (original, f"using existing layer {original.digest}")
    if not quantize:
        return reuse
    wanted = _QUANTIZATION_ALIASES.get(quantize, quantize)
    if wanted not in QUANTIZATION_BITS:
        raise ProgressFailed(
            f"unsupported quantization type {quantize} - supported types are "
            + _SUPPORTED_QUANTIZATIONS
        )
    current = base.quantization_level
    if current not in ("F16", "F32"):
        raise ProgressFailed(QUANTIZE_NEEDS_FLOAT)
    if wanted == current:
        return reuse
    status = f"quantizing {current} model to {quantize}"
    steps = state.config.pull_steps
    for step in range(1, steps + 1):
        if state.config.pull_step_ms > 0:
            await asyncio.sleep(state.config.pull_step_ms / 1000)
        completed = original.size * step // steps
        await out.send(progress(status, _QUANTIZE_DIGEST, original.size, completed))
    await out.send(progress("verifying conversion"))
    size = int(base.size * QUANTIZATION_BITS[wanted] / QUANTIZATION_BITS[current])
    identity = f"{base.weights_identity}+{wanted}"
    draft.spec = draft.spec.derive(quantization_level=wanted, size=size, weights=identity)
    return _new_layer(state, weights_layer(identity, size))


def _apply_request(state: EmulatorState, request: CreateRequest, draft: _Draft) -> None:
    """Template, system, license, parameters, messages: in Ollama's order and manner."""
    spec = draft.spec
    if request.template:
        layer = content_layer(MediaType.TEMPLATE, request.template.encode())
        draft.replace(*_new_layer(state, layer))
        spec = spec.derive(template=request.template)
    if request.system:
        layer = content_layer(MediaType.SYSTEM, request.system.encode())
        draft.replace(*_new_layer(state, layer))
        spec = spec.derive(system=request.system)
    licenses = _licenses(request.license)
    for text in licenses:
        # Added, not replacing: Ollama's setLicense appends.
        draft.layers.append(_new_layer(state, content_layer(MediaType.LICENSE, text.encode())))
    parameters = {**spec.parameters, **request.parameters}
    if parameters:
        layer = json_layer(MediaType.PARAMS, parameters)
        draft.replace(*_new_layer(state, layer))
    if request.messages:
        layer = json_layer(MediaType.MESSAGES, [dict(m) for m in request.messages])
        draft.replace(*_new_layer(state, layer))
        spec = spec.derive(messages=request.messages)
    draft.spec = spec.derive(license=(*spec.license, *licenses), parameters=parameters)


def _new_layer(state: EmulatorState, layer: Layer) -> tuple[Layer, str]:
    """Ollama's NewLayer: the blob may already be there from another model."""
    verb = (
        "using existing layer" if state.catalogue.has_blob(layer.digest) else "creating new layer"
    )
    return layer, f"{verb} {layer.digest}"


def _licenses(value: object) -> tuple[str, ...]:
    """CreateRequest.license: a string, or anything that decodes as a list of strings."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        raise ProgressFailed(
            f"json: cannot unmarshal {json_kind(value)} into Go value of type []string"
        )
    for item in value:
        if not isinstance(item, str):
            raise ProgressFailed(
                f"json: cannot unmarshal {json_kind(item)} into Go value of type string"
            )
    return tuple(value)


async def _from_files(
    state: EmulatorState, files: Mapping[str, str], name: str, out: ProgressStream
) -> ModelSpec:
    """Ollama's convertModelFromFiles for GGUF files; safetensors need a converter the
    emulator does not have, so they fail as a conversion without its config.json does."""
    kind = _model_type(state, files)
    if kind == "safetensors":
        await out.send(progress("converting model"))
        raise ProgressFailed("open config.json: file does not exist")
    if kind != "gguf":
        raise ProgressFailed(UNKNOWN_FILE_TYPE, 400)
    if not files:
        raise ProgressFailed(NO_FILES_PROVIDED, 400)
    weights: tuple[str, Blob] | None = None
    for path in sorted(files):
        digest = files[path]
        await out.send(progress("parsing GGUF"))
        if not valid_digest(digest):
            raise ProgressFailed(INVALID_DIGEST_FORMAT)
        blob = state.blobs.get(digest)
        if blob is None:
            raise ProgressFailed(f"open {BLOBS_DIR}/{blob_key(digest)}: no such file or directory")
        if not blob.head.startswith(GGUF_MAGIC):
            raise ProgressFailed(ONLY_GGUF_SUPPORTED, 400)
        weights = weights or (digest, blob)
    assert weights is not None
    digest, blob = weights
    # What a bare GGUF gives: no license, template or parameters of a library model; the
    # request's own template, system and parameters are applied after, as for `from`.
    return ModelSpec(
        name=name,
        context_length=FILE_MODEL_CONTEXT_LENGTH,
        size=blob.size,
        quantization_level="F16",
        capabilities=("completion",),
        template="",
        license=(),
        parameters={},
        weights=f"blob {digest}",
        weights_digest=digest,
    )


def _model_type(state: EmulatorState, files: Mapping[str, str]) -> str:
    """Ollama's detectModelTypeFromFiles: by extension, else by sniffing the blob."""
    for path, digest in files.items():
        if path.endswith(".safetensors"):
            return "safetensors"
        if path.endswith(".gguf"):
            return "gguf"
        blob = state.blobs.get(digest) if valid_digest(digest) else None
        if blob is not None and blob.head.startswith(GGUF_MAGIC):
            return "gguf"
    return ""
