"""The model servers Corral drives: one (`CORRAL_BACKEND_KIND` / `CORRAL_BACKEND_URL`, or
`CORRAL_OLLAMA_URL`), or a pool (`CORRAL_BACKENDS`), each kept strictly serial by the
scheduler (docs/backends.md).

`CORRAL_BACKENDS` is either a JSON list of objects (`name`, `kind`, `url`, `api_key`) or the
short form, comma-separated entries `[name=][kind+]url`:

    CORRAL_BACKENDS=gpu1=http://10.0.0.5:11434,gpu2=openai+http://10.0.0.6:8080

A server without a name is named after its host and port; without a kind it is Ollama.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, TypeAdapter, field_validator

from corral_common.openai_models import BackendKind

# A server's name is a label in metrics and a key in status bodies: short and plain.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$"
KINDS: tuple[BackendKind, ...] = ("ollama", "openai")


class BackendServer(BaseModel):
    """One model server: what it speaks and where it is."""

    name: str = Field(pattern=NAME_PATTERN)
    kind: BackendKind = "ollama"
    url: str
    api_key: str | None = Field(default=None, repr=False)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"a backend URL must be http(s)://host[:port], not {value!r}")
        return value.rstrip("/")


_SERVERS = TypeAdapter(list[BackendServer])
_ENTRY = re.compile(r"^(?:(?P<name>[^=+]+)=)?(?:(?P<kind>[a-z]+)\+)?(?P<url>https?://.+)$")


def default_name(url: str) -> str:
    """A server's name when none is given: its host and port (`10.0.0.5:11434`)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def parse_backends(value: Any) -> list[BackendServer]:
    """`CORRAL_BACKENDS` as written (JSON, or the short form) into servers; raises ValueError
    naming the bad entry. Names must be unique: they key each server's lane and metrics."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        value = json.loads(text) if text.startswith("[") else _short_form(text)
    servers = _SERVERS.validate_python(
        [
            {**item, "name": item.get("name") or default_name(str(item.get("url", "")))}
            if isinstance(item, dict)
            else item
            for item in value
        ]
    )
    names = [server.name for server in servers]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"backend names must be unique; repeated: {', '.join(duplicated)}")
    return servers


def _short_form(text: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for raw in text.split(","):
        entry = raw.strip()
        match = _ENTRY.match(entry)
        if match is None:
            raise ValueError(f"backend entry {entry!r} is not [name=][kind+]http(s)://host:port")
        kind = match["kind"] or "ollama"
        if kind not in KINDS:
            raise ValueError(f"backend entry {entry!r}: kind must be one of {', '.join(KINDS)}")
        item: dict[str, Any] = {"kind": kind, "url": match["url"]}
        if match["name"]:
            item["name"] = match["name"].strip()
        entries.append(item)
    return entries
