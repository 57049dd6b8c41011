"""Session turns this gateway has answered whose `stored` has not come yet: read-your-writes
without holding the answer.

A session chat's final chunk goes out as soon as the job is done; the session store writes the
turn a few milliseconds later and says so with a `stored` event. A client that sends its next
message on receipt must still find this turn in its history, so the wait moved from the end of
the answer (every turn paid it) to the start of the next request on the same session (only a
request that comes before the write pays it, and only what is left of it):

- the relay records the turn here when its job is done (`record`), before the final chunk;
- the hub hands every event to `observe` (an observer, so a `stored` that comes after the
  request's ticket is closed still settles its turn); one that came before the record is still
  in the ticket's queue, and the relay passes it on (`settle`);
- a request that reads the session (its assembly, its history) first waits for the session's
  turns in flight here (`settled`). Each turn waits at most `stored_timeout_s` from its record:
  a turn the store never confirms (the store down, the turn dropped) lapses then, as the final
  chunk's wait lapsed before.

No task is kept per turn: a turn is a future and a timer (`call_later`) that lapses it, both
gone once it is settled. What this does not cover (another gateway, a store that received the
`done` later than this gateway) is in docs/session-store.md, "Read your writes".
"""

from __future__ import annotations

import asyncio

from prometheus_client import Counter

from corral_common.messages import Event

TURNS_LAPSED = Counter(
    "corral_gateway_turns_unconfirmed_total",
    "Session turns answered here whose `stored` did not come within CORRAL_STORED_TIMEOUT_S "
    "(a request on the session after that no longer waits for them)",
)
WAITED = Counter(
    "corral_gateway_turn_waits_total",
    "Requests on a session that waited for one of its turns answered here to be stored",
)


class _Turn:
    __slots__ = ("future", "session_id", "timer")

    def __init__(self, session_id: str, future: asyncio.Future[None]) -> None:
        self.session_id = session_id
        self.future = future
        self.timer: asyncio.TimerHandle | None = None


class TurnsInFlight:
    def __init__(self) -> None:
        self._turns: dict[str, _Turn] = {}
        # session id -> request ids of its turns in flight
        self._sessions: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._turns)

    def record(self, session_id: str, request_id: str, timeout_s: float) -> None:
        """`request_id`'s turn of `session_id` is done here and not yet stored; it lapses after
        `timeout_s` (nothing is recorded when that is 0: nobody waits)."""
        if timeout_s <= 0 or request_id in self._turns:
            return
        loop = asyncio.get_running_loop()
        turn = _Turn(session_id, loop.create_future())
        turn.timer = loop.call_later(timeout_s, self._lapse, request_id)
        self._turns[request_id] = turn
        self._sessions.setdefault(session_id, set()).add(request_id)

    def observe(self, event: Event) -> None:
        """A hub observer: a `stored` settles its turn."""
        if event.kind == "stored":
            self.settle(event.request_id)

    def settle(self, request_id: str) -> None:
        turn = self._turns.pop(request_id, None)
        if turn is None:
            return
        if turn.timer is not None:
            turn.timer.cancel()
        waiting = self._sessions.get(turn.session_id)
        if waiting is not None:
            waiting.discard(request_id)
            if not waiting:
                del self._sessions[turn.session_id]
        if not turn.future.done():
            turn.future.set_result(None)

    def _lapse(self, request_id: str) -> None:
        if request_id in self._turns:
            TURNS_LAPSED.inc()
            self.settle(request_id)

    def pending(self, session_id: str | None = None) -> list[asyncio.Future[None]]:
        """The futures of `session_id`'s turns in flight (every session's with None)."""
        if session_id is None:
            return [turn.future for turn in self._turns.values()]
        ids = self._sessions.get(session_id)
        if not ids:
            return []
        return [self._turns[request_id].future for request_id in ids]

    async def settled(self, session_id: str | None = None) -> None:
        """Once every turn of `session_id` (of every session with None) answered here is
        stored or has lapsed. Returns at once, without a loop round, when there is none."""
        futures = self.pending(session_id)
        if not futures:
            return
        WAITED.inc()
        # Not cancelled with the waiter: the futures are the turns', shared by every waiter.
        await asyncio.wait(futures)

    def close(self) -> None:
        for request_id in list(self._turns):
            self.settle(request_id)
