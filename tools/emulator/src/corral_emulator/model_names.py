"""Ollama's model-name grammar (`types/model/name.go`): which names pull, create, copy and delete
accept. Lookups elsewhere stay lenient (`models.canonical_model_name`), as Ollama's do."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
_MISSING = "!MISSING!"
"""Go's MissingPart: a separator promised a part that is not there, so the name is invalid."""

_HOST, _NAMESPACE, _MODEL, _TAG = range(4)
_MAX_LENGTH = {_HOST: 350, _NAMESPACE: 80, _MODEL: 80, _TAG: 80}


@dataclass(frozen=True, slots=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def display_shortest(self) -> str:
        """Go's DisplayShortest: the default host and namespace left out, the tag kept."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def is_valid(self) -> bool:
        parts = (self.host, self.namespace, self.model, self.tag)
        return all(_valid_part(kind, part) for kind, part in enumerate(parts))


def parse_model_name(text: str) -> ModelName:
    """`[host/][namespace/]model[:tag]` with Ollama's defaults filled in; check `is_valid`."""
    host = namespace = tag = ""
    rest = text
    # "/" cannot appear in a tag, so a ":" after the last "/" starts one.
    if rest.rfind(":") > rest.rfind("/"):
        rest, tag = _cut_last(rest, ":")
    if "/" not in rest:
        return _with_defaults(host, namespace, rest, tag)
    rest, model = _cut_last(rest, "/")
    if "/" not in rest:
        return _with_defaults(host, rest, model, tag)
    rest, namespace = _cut_last(rest, "/")
    host = rest.split("://", 1)[-1]
    return _with_defaults(host, namespace, model, tag)


def is_valid_model_name(text: str) -> bool:
    return parse_model_name(text).is_valid


def _with_defaults(host: str, namespace: str, model: str, tag: str) -> ModelName:
    return ModelName(
        host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, model, tag or DEFAULT_TAG
    )


def _cut_last(text: str, separator: str) -> tuple[str, str]:
    before, _, after = text.rpartition(separator)
    return before or _MISSING, after or _MISSING


def _valid_part(kind: int, part: str) -> bool:
    if not 1 <= len(part) <= _MAX_LENGTH[kind]:
        return False
    if not _word_char(part[0]):
        return False
    for char in part[1:]:
        if char in "_-":
            continue
        if char == ".":
            if kind == _NAMESPACE:
                return False
        elif char == ":":
            if kind != _HOST:
                return False
        elif not _word_char(char):
            return False
    return True


def _word_char(char: str) -> bool:
    return char == "_" or (char.isascii() and char.isalnum())
