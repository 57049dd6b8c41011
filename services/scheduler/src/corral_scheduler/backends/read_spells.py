"""Reading a fast backend's stream many chunks at a time.

Ollama writes every token as an HTTP chunk of its own. A reader that keeps up with a fast
backend wakes once per token, and each wake-up (the event loop's poll, the socket read,
aiohttp's parser callbacks, a task step) costs more CPU than everything the scheduler then does
with the token: reading a 5,000-token stream from the emulator at full speed took 33 ms of the
scheduler's CPU, and 9 ms when the socket was left unread for 0.2 ms after each read, in the
same wall time. On two shared cores that CPU is taken from the backend and the gateway.

So once a stream has shown itself fast (`FAST_AFTER_CHUNKS` chunks, and a read that found
more than one chunk waiting or followed the one before within a spell), each read that brings
only non-final chunks leaves the socket unread for `SPELL_S`: what arrives meanwhile waits in
the socket's buffer and the next read takes it at once. No chunk waits longer than a spell,
and the token batcher holds every batch for its window anyway. A backend at real token rates
(milliseconds a token) is read a chunk at a time, never twice within a spell, so it is not
held (and a spell after a rare read of two ends long before its next chunk); a short reply
never reaches `FAST_AFTER_CHUNKS`, so its end is read the moment it comes (what the idle gap
between jobs depends on).
"""

from __future__ import annotations

import asyncio

import aiohttp

# How long the socket is left unread after a fast read: far below anything a client can see,
# long enough for dozens of a fast backend's chunks to gather.
SPELL_S = 0.00025
# Chunks read before a stream can be held at all.
FAST_AFTER_CHUNKS = 64


class ReadSpells:
    """Short pauses in reading one response's socket (see the module's docstring)."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        spell_s: float = SPELL_S,
        fast_after_chunks: int = FAST_AFTER_CHUNKS,
    ) -> None:
        connection = response.connection
        self._transport = connection.transport if connection is not None else None
        self._loop = asyncio.get_running_loop()
        self._spell_s = spell_s
        self._chunks_left = fast_after_chunks
        self._last_read = -1.0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def holding(self) -> bool:
        """Whether the socket is being left unread now."""
        return self._timer is not None

    def read(self, chunks: int) -> None:
        """A read brought `chunks` chunks, none of them final: hold the socket for a spell if
        the stream is fast."""
        now = self._loop.time()
        # Fast: more than one chunk was waiting, or this read came within a spell of the last.
        fast = chunks > 1 or now - self._last_read < self._spell_s
        self._last_read = now
        if self._chunks_left > 0:
            self._chunks_left -= chunks
            return
        transport = self._transport
        if not fast or self._timer is not None or transport is None or transport.is_closing():
            return
        # aiohttp pauses the same transport when its buffer passes the response's read buffer
        # size (1 MiB here): far more than a spell gathers, and every read empties it.
        transport.pause_reading()
        self._timer = self._loop.call_later(self._spell_s, self._resume)

    def end(self) -> None:
        """The stream is over (or given up): reading goes on as usual at once, since the
        connection may go back to the pool for another request."""
        if self._timer is not None:
            self._timer.cancel()
            self._resume()

    def _resume(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()
