"""The model servers the model manager talks to, as one: `ModelServers` holds one client per
server of `CorralSettings.backend_servers()` (a pool from `CORRAL_BACKENDS`, or the one server)
and is the only place that knows there may be several.

With one server every call goes straight to it and its answers and errors pass through as
they are. With a pool (docs/models.md, "Pools"):
- `/api/tags` is the union (one entry per model name, the first server's, with `servers`
  listing where it is); `/api/ps` every server's running models, each with its `server`;
  `/api/show` and model metadata come from a server that has the model;
- pulls, pushes and creates stream from every Ollama server, one after another, each line
  naming its `server`, and end with `success` only when every one succeeded; deletes, copies
  and blob uploads go to every Ollama server at once. OpenAI-compatible servers cannot manage
  models and are left out; a pool of none but them answers 501 naming the kind;
- a failure names the server it came from (in the message and `details.server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import structlog

from corral_common.backend_servers import BackendServer
from corral_common.errors import CorralError, ErrorType
from corral_common.model_names import canonical_model_name
from corral_common.openai_models import auth_headers, not_supported, server_root
from corral_model_manager.backend import Backend
from corral_model_manager.catalogue import ModelCatalogue

log = structlog.get_logger(__name__)

T = TypeVar("T")

# A pool server's own end of a pull, push or create: every server's stream ends in `success`,
# but only the last line of all may say so (clients stop at the first `success`).
FINISHED_ON = "finished on {server}"
FAILED_ON = "failed on {server}: {message}"


def is_loopback(url: str) -> bool:
    """Whether a server runs on this host (its URL's host is `localhost` or a loopback
    address), so that the host's memory is the server's."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(eq=False)
class ModelServer:
    """One server: its read-only catalogue (with its metadata cache) and its model store."""

    server: BackendServer
    catalogue: ModelCatalogue
    backend: Backend

    @property
    def name(self) -> str:
        return self.server.name

    @property
    def kind(self) -> str:
        return self.server.kind

    @property
    def local(self) -> bool:
        return is_loopback(self.server.url)


@dataclass(frozen=True, slots=True)
class ServerModels:
    """What one server holds loaded (its `/api/ps` entries), or why that is unknown."""

    server: str
    # What an unload job aimed at it carries as `Job.server`: None with one server.
    target: str | None
    local: bool
    models: list[dict[str, Any]] = field(default_factory=list)
    error: CorralError | None = None


def open_servers(
    session: aiohttp.ClientSession,
    servers: Sequence[BackendServer],
    *,
    ttl_s: float,
    timeout_s: float,
    stall_timeout_s: float,
) -> ModelServers:
    """A client per server over one HTTP session."""
    members = []
    for server in servers:
        openai = server.kind == "openai"
        members.append(
            ModelServer(
                server,
                ModelCatalogue(
                    session,
                    server_root(server.url) if openai else server.url,
                    ttl_s=ttl_s,
                    timeout_s=timeout_s,
                    kind=server.kind,
                    headers=auth_headers(server.api_key) if openai else None,
                ),
                Backend(session, server.url, timeout_s=timeout_s, stall_timeout_s=stall_timeout_s),
            )
        )
    return ModelServers(members)


class ModelServers:
    def __init__(self, servers: Sequence[ModelServer]) -> None:
        if not servers:
            raise ValueError("at least one model server is needed")
        self.servers = list(servers)
        # A pool: answers say which server, failures name theirs.
        self.pooled = len(self.servers) > 1
        # Where each model was listed by the last `/api/tags` (canonical name -> servers), so
        # metadata is asked first of a server that has it.
        self._where: dict[str, list[str]] = {}
        # Each server's last `/api/tags` answer.
        self._last_tags: dict[str, Any] = {}

    def target(self, server: ModelServer) -> str | None:
        """`Job.server` for a job that must run on `server` (None: the one server)."""
        return server.name if self.pooled else None

    # -- read-only ---------------------------------------------------------------------------

    async def tags(self) -> Any:
        """`/api/tags`: the one server's answer, or the pool's union. A pool server that does
        not answer counts with its last list, so a server briefly away does not turn its
        models into 404s (the lane answers for them: 503 while no server can run them)."""
        if not self.pooled:
            return await self.servers[0].catalogue.tags()

        async def listed(server: ModelServer) -> Any:
            answer = await server.catalogue.tags()
            self._last_tags[server.name] = answer
            return answer

        fresh = {server.name: answer for server, answer in await self._each(listed)}
        answers = [
            (server, fresh.get(server.name, self._last_tags.get(server.name)))
            for server in self.servers
        ]
        merged: dict[str, dict[str, Any]] = {}
        where: dict[str, list[str]] = {}
        for server, answer in answers:
            for entry in _entries(answer):
                name = entry.get("name") or entry.get("model")
                if not isinstance(name, str) or not name:
                    continue
                key = canonical_model_name(name)
                where.setdefault(key, []).append(server.name)
                merged.setdefault(key, entry)
        self._where = where
        return {"models": [{**entry, "servers": where[key]} for key, entry in merged.items()]}

    async def running(self) -> Any:
        """`/api/ps`: the one server's answer, or every pool server's, each entry with its
        `server`."""
        if not self.pooled:
            return await self.servers[0].catalogue.running()
        answers = await self._each(lambda server: server.catalogue.running())
        return {
            "models": [
                {**entry, "server": server.name}
                for server, answer in answers
                for entry in _entries(answer)
            ]
        }

    async def loaded(self) -> list[ServerModels]:
        """What each server holds loaded, for the unloader; a server that does not answer is
        reported with its error (the others still count)."""
        results = await asyncio.gather(
            *(server.catalogue.running() for server in self.servers), return_exceptions=True
        )
        loaded = []
        for server, result in zip(self.servers, results, strict=True):
            if isinstance(result, CorralError):
                loaded.append(
                    ServerModels(server.name, self.target(server), server.local, error=result)
                )
            elif isinstance(result, BaseException):
                raise result
            else:
                loaded.append(
                    ServerModels(server.name, self.target(server), server.local, _entries(result))
                )
        return loaded

    async def show(self, request: dict[str, Any]) -> Any:
        """`/api/show` from a server that has the model."""
        model = str(request.get("model") or request.get("name") or "")
        return await self._first_having(model, lambda server: server.catalogue.show(request))

    async def model_info(self, model: str) -> dict[str, Any]:
        """The model's metadata (cached per server) from a server that has it."""
        return await self._first_having(model, lambda server: server.catalogue.model_info(model))

    def forget(self, model: str | None = None) -> None:
        for server in self.servers:
            server.catalogue.forget(model)

    # -- model management (Ollama servers only) ----------------------------------------------

    def managed(self, operation: str) -> list[ModelServer]:
        """The servers that can do `operation` (pull, delete, ...): the Ollama ones; 501
        naming the kind when there are none."""
        ollama = [server for server in self.servers if server.kind == "ollama"]
        if not ollama:
            raise not_supported(self.servers[0].server.kind, operation)
        return ollama

    async def call(self, operation: str, method: str, path: str, body: Any = None) -> Any:
        """A delete or copy on every Ollama server at once. Done where the model is: a 404
        from some servers is no failure, from all it is the answer (Ollama's own text); any
        other failure is raised naming its server."""
        targets = self.managed(operation)
        if not self.pooled:
            return await targets[0].backend.call(method, path, body)
        results = await asyncio.gather(
            *(server.backend.call(method, path, body) for server in targets),
            return_exceptions=True,
        )
        answers, missing = [], []
        for server, result in zip(targets, results, strict=True):
            if isinstance(result, CorralError):
                if result.status != 404:
                    raise named(result, server.name)
                missing.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                answers.append(result)
        if answers:
            return answers[0]
        raise missing[0]

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """A pull, push or create (`operations.LineSource`): on the one server, its lines as
        they are; on a pool's Ollama servers, one after another, every line with its `server`,
        each server's end as `finished on <server>` (or `failed on <server>: ...`, and the
        next server goes on), then `success` if all succeeded, else the failure raised."""
        targets = self.managed(path.rsplit("/", 1)[-1])
        if not self.pooled:
            async for line in targets[0].backend.stream(path, body):
                yield line
            return
        failures: list[tuple[str, CorralError]] = []
        for server in targets:
            try:
                async with contextlib.aclosing(_one_stream(server, path, body)) as lines:
                    async for line in lines:
                        yield {**line, "server": server.name}
            except CorralError as exc:
                failures.append((server.name, exc))
                message = FAILED_ON.format(server=server.name, message=exc.message)
                yield {"status": message, "server": server.name}
                continue
            yield {"status": FINISHED_ON.format(server=server.name), "server": server.name}
        if failures:
            raise _combined(failures)
        yield {"status": "success"}

    async def head(self, path: str) -> int:
        """A blob's `HEAD`: 200 only when every Ollama server has it."""
        statuses = await self._heads(self.managed("blob upload"), path)
        return next((status for status in statuses if status != 200), 200)

    async def upload(self, path: str, body: AsyncIterable[bytes]) -> int:
        """A blob upload to every Ollama server that lacks it, all fed from one body at the
        pace of the slowest; 201 if any created it, else 200; a refusal names its server."""
        targets = self.managed("blob upload")
        if not self.pooled:
            return await targets[0].backend.upload(path, body)
        statuses = await self._heads(targets, path)
        lacking = [s for s, status in zip(targets, statuses, strict=True) if status != 200]
        if not lacking:
            return 200
        tee = _Tee(len(lacking))

        async def upload_to(index: int, server: ModelServer) -> int:
            try:
                status = await server.backend.upload(path, tee.reader(index))
            except CorralError as exc:
                raise named(exc, server.name) from None
            # Answered before the body ended: keep taking chunks so the others are not held.
            await tee.discard(index)
            return status

        results = await _all_or_first_failure(
            [tee.feed(body), *(upload_to(i, server) for i, server in enumerate(lacking))]
        )
        return 201 if 201 in results[1:] else 200

    # -- internals ---------------------------------------------------------------------------

    async def _heads(self, targets: list[ModelServer], path: str) -> list[int]:
        async def head(server: ModelServer) -> int:
            try:
                return await server.backend.head(path)
            except CorralError as exc:
                raise named(exc, server.name) if self.pooled else exc from None

        return list(await asyncio.gather(*(head(server) for server in targets)))

    async def _each(
        self, call: Callable[[ModelServer], Awaitable[T]]
    ) -> list[tuple[ModelServer, T]]:
        """Every server's answer, leaving out those that fail; all failing: the first
        failure, naming its server."""
        results = await asyncio.gather(
            *(call(server) for server in self.servers), return_exceptions=True
        )
        answers: list[tuple[ModelServer, T]] = []
        failures: list[tuple[ModelServer, CorralError]] = []
        for server, result in zip(self.servers, results, strict=True):
            if isinstance(result, CorralError):
                failures.append((server, result))
                log.info("model server did not answer", server=server.name, error=result.message)
            elif isinstance(result, BaseException):
                raise result
            else:
                answers.append((server, result))
        if not answers:
            server, error = failures[0]
            raise named(error, server.name)
        return answers

    async def _first_having(self, model: str, call: Callable[[ModelServer], Awaitable[T]]) -> T:
        """`call` on the servers in turn (those the last list placed the model on first) until
        one answers; none: the first failure other than a 404 (the model may be on a server
        that did not answer), else the 404."""
        listed = self._where.get(canonical_model_name(model), [])
        ordered = sorted(
            self.servers, key=lambda s: listed.index(s.name) if s.name in listed else len(listed)
        )
        first_failure: tuple[ModelServer, CorralError] | None = None
        not_found: CorralError | None = None
        for server in ordered:
            try:
                return await call(server)
            except CorralError as exc:
                if exc.status == 404:
                    not_found = not_found or exc
                elif first_failure is None:
                    first_failure = (server, exc)
        if first_failure is not None:
            server, error = first_failure
            raise named(error, server.name) if self.pooled else error
        assert not_found is not None
        raise not_found


def named(error: CorralError, server: str) -> CorralError:
    """`error` as one pool server's: its name before the message and in `details.server`."""
    return CorralError(
        error.error_type,
        f"{server}: {error.message}",
        status=error.status,
        details={**(error.details or {}), "server": server},
        headers=error.headers,
    )


def _combined(failures: list[tuple[str, CorralError]]) -> CorralError:
    if len(failures) == 1:
        return named(failures[0][1], failures[0][0])
    first = failures[0][1]
    return CorralError(
        first.error_type,
        "; ".join(f"{server}: {error.message}" for server, error in failures),
        status=first.status,
        details={"servers": {server: error.message for server, error in failures}},
    )


async def _one_stream(
    server: ModelServer, path: str, body: dict[str, Any]
) -> AsyncGenerator[dict[str, Any]]:
    """One server's lines up to (not including) its `success`; its `error` line, or an end
    without success, raised."""
    async with contextlib.aclosing(server.backend.stream(path, body)) as lines:
        async for line in lines:
            error = line.get("error")
            if error is not None:
                raise CorralError(ErrorType.BACKEND_ERROR, str(error), status=500)
            if line.get("status") == "success":
                return
            yield line
    raise CorralError(ErrorType.BACKEND_ERROR, "the stream ended without success")


def _entries(answer: Any) -> list[dict[str, Any]]:
    models = answer.get("models") if isinstance(answer, dict) else None
    return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []


class _Tee:
    """One body read once and handed to several readers, each at most one chunk behind."""

    def __init__(self, readers: int) -> None:
        self._queues: list[asyncio.Queue[bytes | None]] = [
            asyncio.Queue(maxsize=1) for _ in range(readers)
        ]
        self._ended = [False] * readers

    async def feed(self, body: AsyncIterable[bytes]) -> int:
        async for chunk in body:
            for queue in self._queues:
                await queue.put(chunk)
        for queue in self._queues:
            await queue.put(None)
        return 0

    async def reader(self, index: int) -> AsyncIterator[bytes]:
        queue = self._queues[index]
        while (chunk := await queue.get()) is not None:
            yield chunk
        self._ended[index] = True

    async def discard(self, index: int) -> None:
        queue = self._queues[index]
        while not self._ended[index]:
            self._ended[index] = await queue.get() is None


async def _all_or_first_failure(coroutines: list[Awaitable[int]]) -> list[int]:
    """Run all; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            error = task.exception() if task.done() and not task.cancelled() else None
            if error is not None:
                raise error
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
