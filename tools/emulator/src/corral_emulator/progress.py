"""Progress answers for pull and create: Ollama's `streamResponse` and `waitForStream`.

Streaming sends each `{"status", ...}` object as an NDJSON line. Without streaming only the
last object is sent, as bare `application/json`. An error before any line is a JSON error with
its status (500 unless the handler says otherwise); after a line it is a last `{"error"}` line
on the 200 stream.
"""

from __future__ import annotations

from aiohttp import web

from corral_emulator.wire import NdjsonWriter, plain_json_response


class ProgressFailed(Exception):
    """Ends a pull or create the way an `{"error", "status"}` on Ollama's channel does."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def progress(
    status: str, digest: str = "", total: int = 0, completed: int = 0
) -> dict[str, object]:
    """An `api.ProgressResponse`: digest, total and completed are omitempty."""
    line: dict[str, object] = {"status": status}
    if digest:
        line["digest"] = digest
    if total:
        line["total"] = total
    if completed:
        line["completed"] = completed
    return line


class ProgressStream:
    def __init__(self, request: web.Request, stream: bool) -> None:
        self._stream = stream
        self._writer = NdjsonWriter(request)
        self._latest: dict[str, object] = {"status": ""}

    @property
    def started(self) -> bool:
        """Whether a line has gone out (only ever true when streaming)."""
        return self._writer.started

    @property
    def response(self) -> web.StreamResponse:
        """What went out so far (for a client that has gone away)."""
        return self._writer.response or web.Response()

    async def send(self, line: dict[str, object]) -> None:
        if self._stream:
            await self._writer.send(line)
        else:
            self._latest = line

    async def finish(self) -> web.StreamResponse:
        if self._stream:
            return await self._writer.close()
        return plain_json_response(self._latest)

    async def fail(self, error: ProgressFailed) -> web.StreamResponse:
        if not self._writer.started:
            return plain_json_response({"error": error.message}, status=error.status)
        await self._writer.send({"error": error.message})
        return await self._writer.close()
