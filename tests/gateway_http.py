"""Calling a cluster's gateway over HTTP in cross-process tests: one request (its status, headers
and body), a key as the header it is sent in, admin calls made before the event loop exists
(module fixtures), and the whole cluster with keys on, started with an operator's key."""

from __future__ import annotations

import secrets
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from corral_devstack.cluster import Cluster
from tests.fixtures import ClusterFactory

_urlopen = urllib.request.build_opener(urllib.request.ProxyHandler({})).open


def bearer(key: str | None) -> dict[str, str]:
    """The header a key is sent in; nothing without a key."""
    return {"Authorization": f"Bearer {key}"} if key else {}


async def call(
    method: str,
    url: str,
    *,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> tuple[int, dict[str, str], Any]:
    """Status, headers and body (JSON when it is JSON, else text; None when empty) of one
    request; `headers` are sent after the key's, so they can replace it."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            url,
            headers={**bearer(key), **(headers or {})},
            data=None if body is None else orjson.dumps(body),
        ) as response,
    ):
        raw = await response.read()
        try:
            parsed: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = raw.decode(errors="replace")
        return response.status, dict(response.headers), parsed


def admin_request(url: str, admin: str, method: str, path: str, body: Any = None) -> Any:
    """One call to an admin route before the event loop exists (module setup)."""
    request = urllib.request.Request(
        f"{url}{path}",
        method=method,
        data=None if body is None else orjson.dumps(body),
        headers={**bearer(admin), "Content-Type": "application/json"},
    )
    with _urlopen(request, timeout=10) as response:
        return orjson.loads(response.read())


def create_user_key(url: str, admin: str, label: str, owner: str | None = None) -> dict[str, Any]:
    """A user key made through `POST /admin/keys`, as it answered (`key`, `id`, ...)."""
    body: dict[str, Any] = {"scope": "user", "label": label}
    if owner is not None:
        body["owner"] = owner
    made: dict[str, Any] = admin_request(url, admin, "POST", "/admin/keys", body)
    return made


@contextmanager
def keyed_cluster(
    new_cluster: ClusterFactory, name: str, **env: str
) -> Iterator[tuple[Cluster, str]]:
    """The whole cluster with keys on (`CORRAL_AUTH=on`) and the operator's key it was started
    with (`CORRAL_ADMIN_KEY`, new for each cluster); `env` sets the rest."""
    admin = "operator-" + secrets.token_urlsafe(32)
    with new_cluster(name, whole=True, CORRAL_AUTH="on", CORRAL_ADMIN_KEY=admin, **env) as cluster:
        yield cluster, admin


@dataclass(frozen=True)
class TwoUsers:
    """A keyed cluster, its operator's key and two users' keys."""

    cluster: Cluster
    admin: str
    first: str
    second: str

    @property
    def url(self) -> str:
        return self.cluster.gateway_url


@contextmanager
def two_users(
    new_cluster: ClusterFactory, name: str, users: tuple[str, str], **env: str
) -> Iterator[TwoUsers]:
    """`keyed_cluster` with a user key for each of `users` (label and owner)."""
    with keyed_cluster(new_cluster, name, **env) as (cluster, admin):
        first, second = (create_user_key(cluster.gateway_url, admin, u, u)["key"] for u in users)
        yield TwoUsers(cluster, admin, first, second)
