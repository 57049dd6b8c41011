"""The gateway as corralctl calls it: JSON requests with the operator's key, the server's own
error text on a refusal, and NDJSON streams (a pull's progress) read line by line.

The standard library's HTTP client: corralctl starts in a tenth of a second and needs nothing
installed beside it. Proxy variables are ignored (the gateway is called directly, as the
suite's clients do); `--url` says where it is."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlencode

# The longest error text repeated from a body that is not JSON (an HTML proxy page, say).
MAX_SHOWN_TEXT = 300


def segment(value: str) -> str:
    """An id as one path segment (quoted: it cannot reach another route)."""
    return quote(value, safe="")


class ApiError(Exception):
    """The gateway answered with an error status; `message` is its own text."""

    def __init__(
        self, status: int, message: str, error_type: str | None = None, body: Any = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.body = body

    def __str__(self) -> str:
        kind = f" {self.error_type}" if self.error_type else ""
        if self.status < 400:
            # A stream that failed after its 200: only its error line says what happened.
            return self.message
        return f"{self.status}{kind}: {self.message}{_hint(self.status)}"


class Unreachable(Exception):
    """No answer from the gateway at all (refused, unknown host, timed out)."""


def _hint(status: int) -> str:
    if status == 401:
        return " (give an API key: --key or CORRAL_API_KEY)"
    if status == 403:
        return " (this needs an admin key)"
    return ""


def error_of(status: int, raw: bytes) -> ApiError:
    """An error answer in any of the gateway's shapes: Corral's `{"error": {"type",
    "message"}}`, Ollama's and the stream's `{"error": "text"}`, or plain text."""
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        text = raw.decode(errors="replace").strip()
        return ApiError(status, text[:MAX_SHOWN_TEXT] or "(no message)")
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return ApiError(status, str(error.get("message")), error.get("type") or None, body)
    if isinstance(error, str):
        return ApiError(status, error, None, body)
    return ApiError(status, json.dumps(body)[:MAX_SHOWN_TEXT], None, body)


class Gateway:
    """One gateway, called with the operator's key (`Authorization: Bearer`, what every
    surface accepts). `timeout_s` bounds each wait for the server: for its answer, and in a
    stream for its next line."""

    def __init__(self, url: str, key: str | None, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self._key = key
        self._timeout_s = timeout_s
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        accept: tuple[int, ...] = (),
    ) -> Any:
        """The answer's JSON (None when empty). An error status raises ApiError, unless it is
        one of `accept` (a 503 /health still describes the cluster)."""
        with self._open(method, path, params, body, accept) as (status, response):
            return _json(response.read(), status)

    def lines(self, method: str, path: str, body: Any) -> Iterator[dict[str, Any]]:
        """The objects of an NDJSON answer as they arrive. An `{"error"}` line ends it with
        ApiError (a stream's failures come after its 200)."""
        with self._open(method, path, None, body, ()) as (status, response):
            for raw in response:
                if not raw.strip():
                    continue
                line = _json(raw, status)
                if not isinstance(line, dict):
                    raise ApiError(status, f"unexpected line {raw[:80]!r}")
                if "error" in line:
                    raise error_of(status, raw)
                yield line

    @contextmanager
    def _open(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: Any,
        accept: tuple[int, ...],
    ) -> Iterator[tuple[int, Any]]:
        """The open response as `(status, response)`: an error status raises ApiError unless
        accepted; a failure to reach or hear the gateway, also while reading, Unreachable."""
        url = self.url + path + (f"?{urlencode(params)}" if params else "")
        headers = {"Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            try:
                response = self._opener.open(request, timeout=self._timeout_s)
            except urllib.error.HTTPError as exc:
                if exc.code not in accept:
                    raise error_of(exc.code, exc.read()) from None
                response = exc  # An HTTPError is the response too, body and all.
            with response:
                yield response.status, response
        except (OSError, http.client.HTTPException) as exc:
            # URLError (refused, unknown host) and TimeoutError are OSErrors.
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: BaseException) -> Unreachable:
        if isinstance(exc, TimeoutError):
            return Unreachable(f"no answer from {self.url} within {self._timeout_s:g} s")
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return Unreachable(f"cannot reach {self.url}: {reason}")


def _json(raw: bytes, status: int) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(status, f"the answer is not JSON: {raw[:80]!r}") from None
