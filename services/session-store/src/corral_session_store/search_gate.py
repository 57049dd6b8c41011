"""How many searches may run at once: overall and per caller.

A search scans (no `$text` on SecantusDB), and the database it scans is the one context
assembly and turn writes need: a burst of searches slowed every chat until the gateway's RPC
timeout failed them. So searches are admitted up to a bound, and one over the bound is refused
at once (429 for a caller over its own share, 503 when the store as a whole is busy, both with
`Retry-After`) instead of queueing: a queue of searches would only move the wait to the
client, and a refusal tells it what to do.

`BoundedSearches` runs a search under every bound at once (the gate, the result cap and the
time limit); the session and conversation searches share one, so the store's bound is one bound
whichever API the searches come through.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Awaitable, Iterator
from typing import Protocol

from corral_common.contracts.session_store import SearchParams
from corral_common.errors import CorralError, ErrorType
from corral_session_store.settings import SessionStoreSettings
from corral_session_store.store import Document


class SearchGate:
    def __init__(self, overall: int, per_caller: int, retry_after_s: int) -> None:
        self.overall = overall
        self.per_caller = per_caller
        self.retry_after_s = retry_after_s
        self._running: Counter[str] = Counter()

    @property
    def running(self) -> int:
        return self._running.total()

    @contextlib.contextmanager
    def admit(self, caller: str) -> Iterator[None]:
        """Hold a search slot for `caller` for the duration of the block, or raise at once."""
        if self._running[caller] >= self.per_caller:
            raise self._refusal(
                ErrorType.RATE_LIMIT_EXCEEDED,
                f"too many searches at once from this caller (at most {self.per_caller}); "
                "retry when one has finished",
                429,
                {"limit": self.per_caller, "scope": "caller"},
            )
        if self.running >= self.overall:
            raise self._refusal(
                ErrorType.RATE_LIMIT_EXCEEDED,
                f"the session store is running its limit of {self.overall} searches; retry shortly",
                503,
                {"limit": self.overall, "scope": "overall"},
            )
        self._running[caller] += 1
        try:
            yield
        finally:
            self._running[caller] -= 1
            if self._running[caller] <= 0:
                del self._running[caller]

    def _refusal(
        self, error_type: ErrorType, message: str, status: int, details: dict[str, object]
    ) -> CorralError:
        return CorralError(
            error_type,
            message,
            status=status,
            details=details,
            headers={"Retry-After": str(self.retry_after_s)},
        )


class Search(Protocol):
    """`SessionStore.search` or `ConversationStore.search`: a scan of the turns."""

    def __call__(
        self, query: str, limit: int, owner: str | None, *, time_limit_ms: int | None
    ) -> Awaitable[Document]: ...


class BoundedSearches:
    """Runs searches within `CORRAL_SEARCH_*`: admitted by the gate, `limit` capped at
    `search_max_results`, the scan stopped after `search_timeout_ms`."""

    def __init__(self, settings: SessionStoreSettings) -> None:
        self.gate = SearchGate(
            settings.search_concurrency,
            settings.search_concurrency_per_caller,
            settings.search_retry_after_s,
        )
        self.max_results = settings.search_max_results
        self.timeout_ms = settings.search_timeout_ms

    async def run(self, params: SearchParams, search: Search) -> Document:
        with self.gate.admit(params.caller or params.owner or "anonymous"):
            return await search(
                params.q,
                min(params.limit, self.max_results),
                params.owner,
                time_limit_ms=self.timeout_ms,
            )
