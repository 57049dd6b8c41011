"""Manifest layers: what a model is made of, as pull and create report it.

No blob is ever stored; a layer's digest is the sha256 of the content it would hold, so equal
content shares a digest across models (which is what makes "using existing layer" and a
re-pull's instant progress come out as they do in Ollama).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import orjson


class MediaType(StrEnum):
    MODEL = "application/vnd.ollama.image.model"
    TEMPLATE = "application/vnd.ollama.image.template"
    SYSTEM = "application/vnd.ollama.image.system"
    LICENSE = "application/vnd.ollama.image.license"
    PARAMS = "application/vnd.ollama.image.params"
    MESSAGES = "application/vnd.ollama.image.messages"
    CONFIG = "application/vnd.docker.container.image.v1+json"


MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


@dataclass(frozen=True, slots=True)
class Layer:
    media_type: MediaType
    digest: str
    """`sha256:<64 hex>`."""
    size: int

    @property
    def short_digest(self) -> str:
        """The 12 hex digits pull progress names a layer by (Go's `digest[7:19]`)."""
        return self.digest[7:19]

    def to_mapping(self) -> dict[str, object]:
        return {"mediaType": self.media_type.value, "digest": self.digest, "size": self.size}


def content_layer(media_type: MediaType, content: bytes) -> Layer:
    return Layer(media_type, sha256_digest(content), len(content))


def weights_layer(identity: str, size: int) -> Layer:
    """The GGUF weights, named by an identity instead of their (absent) bytes."""
    return Layer(
        MediaType.MODEL, sha256_digest(f"corral-emulator weights {identity}".encode()), size
    )


def json_layer(media_type: MediaType, value: object) -> Layer:
    # Go's json.Encoder: map keys sorted, and a trailing newline.
    return content_layer(media_type, orjson.dumps(value, option=orjson.OPT_SORT_KEYS) + b"\n")


def config_layer(config: dict[str, object], layers: Iterable[Layer]) -> Layer:
    rootfs = {"type": "layers", "diff_ids": [layer.digest for layer in layers]}
    return json_layer(MediaType.CONFIG, {**config, "rootfs": rootfs})


def manifest_digest(config: Layer, layers: Iterable[Layer]) -> str:
    """The hex digest `/api/tags` shows: the sha256 of the manifest, so copies share it."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.to_mapping(),
        "layers": [layer.to_mapping() for layer in layers],
    }
    return hashlib.sha256(orjson.dumps(manifest)).hexdigest()


def sha256_digest(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()
