"""The newest turns of the sessions this store writes, kept in memory for context assembly.

Assembly reads a session's document (ownership, archive, its last turn number `turn_seq`, the
tallies) and then the newest 64 turn numbers of the model: two database round trips per chat,
and the second one (25 turns of history, decoded and cleaned) is most of the store's and the
database's work. The turns consumer wrote those turns itself a moment ago, so this keeps them:
per (session, model), every turn numbered in (`low`, `high`], as assembly reads them.

When a cached window may be used, and why it is then exactly what the database holds:

- **Validated by the session document read anyway**: used only when the session's `turn_seq`
  is the window's `high` and its `created_at` (with `alive_since`, which a session made again
  after a deletion always has anew, even an import keeping the old `created_at`) the window's
  (a session deleted and made again elsewhere starts over). A number handed out since (by
  anyone) is a `turn_seq` above `high`: the window is then dropped and the turns read from
  the database as before.
- **Filled only from a quiet read**: a read of the database goes into the cache only if no
  write of the session was under way in this process when it began or completed while it ran
  (it could be half in the read), and if the session's newest number is one this process took
  itself (`taken`). Every older number was handed out before it, so its turn was inserted
  already, unless another process (a second writer during a consumer failover, an import on
  another replica) took it and stalled between taking it and inserting its turn for longer than
  this process took to write a whole turn after it. That is the one case the window can miss a
  turn (until the window is dropped), the case the tallies already accept.
- **Extended by this process's writes**: a turn written here numbered `high + 1` is added (to
  its model's window; every window of the session moves its `high`). Any other number (a gap:
  numbers taken elsewhere) drops the session's windows.
- Delete, purge, clear and import drop the session's windows here; elsewhere, `turn_seq` and
  `created_at` tell.

Bounded: at most `MAX_WINDOWS` windows and `MAX_CHARS` characters of messages (least recently
used go first), each trimmed to the newest `KEEP_SPAN` numbers (assembly's first range).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

Document = dict[str, Any]

MAX_WINDOWS = 1024
# What the windows hold at most, in characters of content and images (least recently used
# windows go first); one window larger than a quarter of it is not kept at all.
MAX_CHARS = 32 * 1024 * 1024
# Numbers below `high` a window keeps: assembly's first range (HISTORY_BATCH).
KEEP_SPAN = 64
# Sessions whose last number taken here is remembered.
MAX_TAKEN = 16_384

WINDOW_READS = Counter(
    "corral_session_window_reads_total",
    "Context assemblies' history reads, by where the turns came from (cache: this store's "
    "window of the session's newest turns; database)",
    ["source"],
)


@dataclass
class Window:
    """Every turn of one (session, model) numbered in (`low`, `high`]: number → (messages as
    sent to the backend, message count)."""

    low: int
    high: int
    # What the session document said of its incarnation (store.py: `created_at` and
    # `alive_since`), compared for equality only.
    created_at: object
    turns: dict[int, tuple[list[Document], int]] = field(default_factory=dict)
    chars: int = 0

    def add(self, seq: int, messages: list[Document], count: int) -> None:
        self.turns[seq] = (messages, count)
        self.chars += chars_of(messages)

    def covers(self, low: int, high: int) -> bool:
        return self.low <= low and high <= self.high

    def docs(self, low: int, high: int) -> list[Document]:
        """The turns numbered in (`low`, `high`], as the database's documents would be read."""
        return [
            {"seq": seq, "messages": messages, "message_count": count}
            for seq, (messages, count) in self.turns.items()
            if low < seq <= high
        ]

    def trim(self) -> None:
        if self.high - self.low > KEEP_SPAN:
            self.low = self.high - KEEP_SPAN
            self.turns = {seq: turn for seq, turn in self.turns.items() if seq > self.low}
            self.chars = sum(chars_of(messages) for messages, _ in self.turns.values())


def chars_of(messages: list[Document]) -> int:
    """A window's size, roughly: its texts and images, in characters."""
    total = 0
    for message in messages:
        total += len(str(message.get("content") or ""))
        for image in message.get("images") or ():
            total += len(str(image))
    return total


class Read:
    """One assembly's read of a session, between `WindowCache.begin` and `finish`."""

    def __init__(self, session_id: str, quiet: bool) -> None:
        self.session_id = session_id
        self.quiet = quiet


class WindowCache:
    def __init__(self) -> None:
        self._windows: OrderedDict[tuple[str, str], Window] = OrderedDict()
        # session → the models it has windows of
        self._models: dict[str, set[str]] = {}
        # session → the last number this process took in it
        self._taken: OrderedDict[str, int] = OrderedDict()
        # session → writes under way here; reads under way (each marked when a write touched it)
        self._writing: dict[str, int] = {}
        self._reads: dict[str, list[Read]] = {}
        self._chars = 0

    def __len__(self) -> int:
        return len(self._windows)

    # -- what the writes say -------------------------------------------------------------

    def write_begins(self, session_id: str) -> None:
        self._writing[session_id] = self._writing.get(session_id, 0) + 1
        self._disturb(session_id)

    def write_ends(self, session_id: str) -> None:
        left = self._writing.get(session_id, 0) - 1
        if left > 0:
            self._writing[session_id] = left
        else:
            self._writing.pop(session_id, None)
        self._disturb(session_id)

    def taken(self, session_id: str, seq: int) -> None:
        """This process took number `seq` in the session."""
        self._taken[session_id] = seq
        self._taken.move_to_end(session_id)
        while len(self._taken) > MAX_TAKEN:
            self._taken.popitem(last=False)

    def written(self, session_id: str, model: str, seq: int, messages: list[Document]) -> None:
        """This process stored turn `seq` of `model` (`messages` as sent to the backend)."""
        for other in list(self._models.get(session_id, ())):
            window = self._windows.get((session_id, other))
            if window is None:
                continue
            if seq != window.high + 1:
                self.drop(session_id)
                return
            window.high = seq
            self._chars -= window.chars
            if other == model:
                window.add(seq, messages, len(messages))
            window.trim()
            self._chars += window.chars
        self._evict()

    def drop(self, session_id: str) -> None:
        for model in self._models.pop(session_id, ()):
            window = self._windows.pop((session_id, model), None)
            if window is not None:
                self._chars -= window.chars
        self._disturb(session_id)

    @property
    def chars(self) -> int:
        return self._chars

    def _evict(self) -> None:
        while self._windows and (len(self._windows) > MAX_WINDOWS or self._chars > MAX_CHARS):
            (session_id, model), window = self._windows.popitem(last=False)
            self._chars -= window.chars
            models = self._models.get(session_id)
            if models is not None:
                models.discard(model)
                if not models:
                    del self._models[session_id]

    def clear(self) -> None:
        for session_id in list(self._models):
            self.drop(session_id)
        for session_id in list(self._reads):
            self._disturb(session_id)

    def _disturb(self, session_id: str) -> None:
        for read in self._reads.get(session_id, ()):
            read.quiet = False

    # -- what assembly reads -------------------------------------------------------------

    def window(
        self, session_id: str, model: str, turn_seq: int, created_at: object
    ) -> Window | None:
        """The cached window of (session, model), if it is the session as just read."""
        key = (session_id, model)
        window = self._windows.get(key)
        if window is None:
            return None
        if window.high != turn_seq or window.created_at != created_at:
            self.drop(session_id)
            return None
        self._windows.move_to_end(key)
        return window

    def begin(self, session_id: str) -> Read:
        read = Read(session_id, quiet=session_id not in self._writing)
        self._reads.setdefault(session_id, []).append(read)
        return read

    def finish(
        self,
        read: Read,
        model: str,
        turn_seq: int,
        created_at: object,
        low: int,
        docs: list[Document],
    ) -> None:
        """Keep what `read` found of (session, model) numbered in (`low`, `turn_seq`], if it was
        a quiet read of a session whose newest number this process took (see the module doc)."""
        session_id = read.session_id
        reads = self._reads.get(session_id, [])
        if read in reads:
            reads.remove(read)
        if not reads:
            self._reads.pop(session_id, None)
        if not read.quiet or self._taken.get(session_id) != turn_seq:
            return
        key = (session_id, model)
        window = Window(low, turn_seq, created_at)
        for doc in docs:
            window.add(int(doc["seq"]), doc["messages"], int(doc.get("message_count") or 0))
        window.trim()
        if window.chars > MAX_CHARS // 4:
            return
        old = self._windows.pop(key, None)
        if old is not None:
            self._chars -= old.chars
        self._windows[key] = window
        self._chars += window.chars
        self._models.setdefault(session_id, set()).add(model)
        self._evict()

    def abandon(self, read: Read) -> None:
        reads = self._reads.get(read.session_id, [])
        if read in reads:
            reads.remove(read)
        if not reads:
            self._reads.pop(read.session_id, None)
