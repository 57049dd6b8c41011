"""Sessions and their turns in MongoDB, through PyMongo's native async API.

Schema (database `CORRAL_MONGO_DATABASE`, default `corral`):

`sessions`, one document per session::

    {_id: <session id>, title, owner, created_at, last_activity,
     turn_seq: <last sequence number handed out>, seq_taker: <an id of whoever took it>,
     models: [<model>, ...],
     systems: [{model, message: <the model's first stored system message>}, ...],
     system_prompt: <the session's own fallback system prompt, set when it was created>,
     touched_at: <when it was last used: a turn, its creation, an import, a resume>,
     archived_at: <when it was archived; absent while it is active>,
     tallies: [{model, turns, messages}, ...], tallied: <seq>, holes: [<seq>, ...],
     tally_rev: <bumped by each change of the three>,
     alive_since: <no deletion of this id since then (see "Deletions" below)>}

`tallies` says, per model, how many turns and messages the session has of it with a sequence
number up to `tallied` and not in `holes` (see "Tallies" below); absent on sessions written
before tallies existed, and whenever they could not be trusted (assembly then recounts once).

`turns`, one document per finished turn (one request/answer exchange)::

    {_id: <request id (or, for a second job reusing it, `reused_id`)>, session_id, model, seq,
     kind: "chat" | "generate",
     messages: [<the client's new messages>..., <the assistant's answer>],
     message_count, system: <the turn's first system message, if any>,
     owner, asked_at, answered_at, stored_at,
     job: <fingerprint of the job that asked it (`TurnRecord.job`); absent on imports>,
     stats: {prompt_eval_count, eval_count, total_duration, load_duration,
             prompt_eval_duration, eval_duration, done_reason, waited_ms},
     estimate: {raw_tokens} (when the store assembled the prompt itself),
     metadata: <the request's free-form metadata, when it sent some>}

`calibration`: `{_id: <model>, factor, samples, updated_at}`, the token estimator's per-model
factor, so it survives restarts and is shared by replicas.

`tombstones`: `{_id: <session id>, or "*" for every session (a clear), deleted_at, expires_at}`,
one per deleted session, gone after `expires_at` (a TTL index).

Why turns are documents of their own rather than arrays pushed into the session document:

- Atomic: a turn (the user's messages *and* the answer) is one `insert_one` of one document,
  which MongoDB writes entirely or not at all, with no transaction (so the same code works on
  a standalone MongoDB, a replica set, and SecantusDB).
- Idempotent: the turn's `_id` is its `request_id`, so a redelivered `done` event can only
  hit the unique `_id` and change nothing; there is no read-modify-write window. What is a
  redelivery is decided by the request, not by the id alone: a client can send the same
  `X-Request-Id` with another question. The turn keeps its job's fingerprint (`job`: session,
  owner, model, kind and the client's new messages, what every delivery and every run of one
  job share, and a client's retry of the same question too); a turn held under the id by
  another request is left alone, and this one is stored under `reused_id` (the id and the
  fingerprint), which its own redeliveries then find.
- Ordered: `seq` comes from an `$inc` on the session (`turn_seq`, read back exactly: see
  `_take_number`), and the consumer applies one session's events one after another in arrival
  order, so `seq` is arrival order; `(session_id, seq)` is unique. Models share the sequence,
  so "all models in time order" is a plain sort.
- Per-model histories are the `(session_id, model, seq)` index, and model names (which contain
  dots and colons) never become field names.
- No 16 MB ceiling on a conversation, no rewriting of a growing array per turn (`$push` is also
  SecantusDB's slowest write), and context assembly reads only the newest turns it can use.
- Counts are derived from the turns (a scalar `message_count` per turn, summed with `$group`),
  never `$inc`-ed on the session, so a retried write cannot double count; nothing aggregates
  through an array of sub-documents (a path SecantusDB silently gets wrong), and search is an
  escaped, case-insensitive `$regex` (SecantusDB has no `$text`).

Tallies: assembly, when it stops reading a long history, must say how many older turns and
messages it left out. Counting them per chat would scan the whole history, so the session keeps
per model `{turns, messages}`: its turns numbered up to the session's `tallied`, except the
numbers in `holes`, and their messages. They are still derived from the turns, never `$inc`-ed,
so a retried or duplicate write cannot double count: a write whose number is `FOLD_EVERY` or
more past `tallied` folds the turns stored since in (it reads the turns numbered from `tallied`,
excluded, to its own, and those in `holes`), and sets the tallies, `tallied` at its own number
and `holes` at the numbers it found no turn for, on the condition that `tally_rev` is still what
it read (compare-and-set). A number without a turn is unused (a write died between taking it
and storing its turn) or its turn is still on its way (another writer in the session): either
way it is a hole until a fold finds its turn. Other writes touch no tally, so a turn costs no
extra write but one in `FOLD_EVERY`; assembly counts the few turns above `tallied` from the
turns it reads anyway. Delete, purge and clear drop the tallies before they remove turns.
Sessions without tallies (older ones, dropped ones) are counted with `$group` once, at their
next assembly that needs it, which sets the tallies again.

The session document is upserted *before* its turn is inserted, with operators that are safe
to repeat (`$min`/`$max` on times, `$addToSet`, `$setOnInsert`): a crash between the two leaves
at most an unused sequence number, and the redelivered event then completes the turn.

Deletions: a turn is written when its generation ends, so a session deleted while one of its
turns was generating would be made again by that turn. A delete (and a purge, and a clear)
leaves a tombstone with the time of the deletion, and a job's turn asked before it (`asked_at`:
when the gateway enqueued the job) is not written (`WriteOutcome.DELETED`); one asked after it
makes the session anew. Reading the tombstones on every turn would cost a round trip, so the
session keeps `alive_since`, a time since which its id has not been deleted (its creation; for a
session a turn made, that turn's `asked_at`, checked against the tombstones first): a turn asked
at or after it cannot predate a deletion, and the update that takes its number is conditional on
it. Only a turn that finds no such session (the first of a session, a turn asked before the one
that made it, a session from before `alive_since`) reads the tombstones, then upserts with
`$min: alive_since`. Tombstones expire after `TOMBSTONE_TTL_S`, far beyond the longest a job
can wait and run. Imports are no jobs: they restore what a user asked for, deletions or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

import structlog
from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, ExecutionTimeout, PyMongoError

from corral_common.contracts.session_store import ImportParams
from corral_common.errors import CorralError, ErrorType
from corral_common.ids import new_id
from corral_session_store.tokens import Calibration, TokenEstimator
from corral_session_store.windows import WINDOW_READS, WindowCache

Document = dict[str, Any]

log = structlog.get_logger(__name__)

# What a stored message may hold; anything else a client sent is not kept.
MESSAGE_KEYS = ("role", "content", "thinking", "images", "tool_calls", "tool_name")
# What goes back to the backend from history: the answer's thinking is not replayed.
BACKEND_KEYS = ("role", "content", "images", "tool_calls", "tool_name")
STAT_KEYS = (
    "prompt_eval_count",
    "eval_count",
    "total_duration",
    "load_duration",
    "prompt_eval_duration",
    "eval_duration",
)
AUTO_TITLE_CHARS = 80
# Assembly reads a session's turns newest first, in ranges of this many sequence numbers (then
# twice as many, and so on), and stops once the turns read cannot fit anyway.
HISTORY_BATCH = 64
# Sessions deleted per retention sweep at most (the next sweep takes the rest).
PURGE_BATCH = 500
EXPORT_FORMAT = "corral.session.v1"
# A tombstone's `_id` meaning every session (a clear): session ids are client ids, never this.
ALL_SESSIONS = "*"
# How long a deletion is remembered: far beyond the longest a turn's job can live (the gateway's
# longest queue wait, `CORRAL_QUEUE_TIMEOUT_MAX_S`, an hour by default, plus the generation, plus
# the time its `done` may wait in the turns queue while no store runs).
TOMBSTONE_TTL_S = 7 * 86_400.0
# What a turn already stored must show to be this job's (see `same_job`).
TURN_IDENTITY: Document = {"session_id": 1, "asked_at": 1, "job": 1}


SEQ_ATTEMPTS = 5


class SequenceContention(PyMongoError):
    """Concurrent writers kept taking the same session's next turn number; retried later."""


class WriteOutcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    """The session belongs to another owner (or, for an owned turn, to none): the turn is not
    written."""
    DELETED = "deleted"
    """The session was deleted (or every session cleared) after the turn was asked: the turn is
    not written, so the session stays deleted."""


@dataclass(frozen=True)
class TurnRecord:
    """A finished turn, ready to store."""

    request_id: str
    session_id: str
    model: str
    kind: str
    messages: list[Document]
    asked_at: datetime
    answered_at: datetime
    owner: str | None = None
    stats: Document = field(default_factory=dict)
    estimate: Document | None = None
    metadata: Document | None = None
    # The fingerprint of the job that asked the turn (`sessions.job_fingerprint`): what tells a
    # redelivery of its `done` from another request reusing its request id. None: no job's
    # turn (an import), which is idempotent by id alone, and never dropped for a deletion.
    job: str | None = None


def reused_id(turn: TurnRecord) -> str:
    """The `_id` of a job's turn whose request id another request's turn holds: the id and
    the fingerprint, within a client id's alphabet and length (an export of it imports)."""
    assert turn.job is not None
    return f"{turn.request_id[:103]}-{turn.job[:24]}"


def same_job(held: Mapping[str, Any], turn: TurnRecord) -> bool:
    """Whether the turn stored as `held` is `turn`, a job's (a redelivery of its `done`, its
    job run again after a scheduler's failover, a client's retry of the same question): the
    same fingerprint, or, for a turn stored before fingerprints (or imported), the same session
    and question time."""
    if held.get("job") is not None and turn.job is not None:
        return bool(held["job"] == turn.job)
    asked_at = held.get("asked_at")
    return (
        held.get("session_id") == turn.session_id
        and isinstance(asked_at, datetime)
        and _utc(asked_at) == _utc(turn.asked_at)
    )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@dataclass(frozen=True)
class HistoryWindow:
    """What assembly needs of a (session, model) history: its newest turns (oldest first),
    how many older ones were not even read (and their messages, and which limit left them),
    and the conversation's stored system prompt."""

    turns: list[list[Document]]
    older_turns: int
    system: Document | None
    older_messages: int = 0
    older_limited_by: Literal["tokens", "max_history_length"] = "tokens"


@dataclass(frozen=True)
class Tally:
    """A model's turns in a session numbered up to `seq` (the session's `tallied`) and not in
    `holes`, and their messages."""

    turns: int = 0
    messages: int = 0
    seq: int = 0
    holes: frozenset[int] = frozenset()

    def counts(self, seq: int) -> bool:
        """Whether a turn numbered `seq` is one of those counted."""
        return seq <= self.seq and seq not in self.holes


def tally_of(session: Mapping[str, Any], model: str) -> Tally | None:
    """The session's tally of `model` (zero turns when the model has none yet); None when the
    session keeps no tallies (written before they existed, or dropped as untrustworthy)."""
    tallies = session.get("tallies")
    if not isinstance(tallies, list):
        return None
    tallied = _int(session.get("tallied"))
    holes = frozenset(_int(h) for h in session.get("holes") or [])
    for entry in tallies:
        if isinstance(entry, dict) and entry.get("model") == model:
            return Tally(_int(entry.get("turns")), _int(entry.get("messages")), tallied, holes)
    return Tally(seq=tallied, holes=holes)


def _added(session: Mapping[str, Any], turns: Iterable[tuple[str, int]]) -> list[Document]:
    """The session's tallies with `turns` (model, message count) counted in."""
    tallies: dict[str, list[int]] = {
        str(entry.get("model")): [_int(entry.get("turns")), _int(entry.get("messages"))]
        for entry in session.get("tallies") or []
        if isinstance(entry, dict)
    }
    for model, messages in turns:
        counts = tallies.setdefault(model, [0, 0])
        counts[0] += 1
        counts[1] += messages
    return [
        {"model": model, "turns": turns_n, "messages": messages_n}
        for model, (turns_n, messages_n) in tallies.items()
    ]


# A write folds the turns stored since into the session's tallies once its number is this many
# past `tallied` (one tally write in this many turns); assembly reads the newest HISTORY_BATCH
# numbers first, so it has the turns above `tallied` in hand.
FOLD_EVERY = 32
# Numbers without a turn a session's tallies may wait for; past that they are dropped (the next
# assembly that needs them recounts). Each is a write that died mid-way or a turn in flight.
MAX_HOLES = 64
# What a session write projects to fold its tallies.
TALLY_FIELDS: Document = {"tallies": 1, "tallied": 1, "holes": 1, "tally_rev": 1}
# What a turn's write reads of its session once it has taken its number.
SEQ_PROJECTION: Document = {"turn_seq": 1, "title": 1, "systems": 1, "seq_taker": 1, **TALLY_FIELDS}
# Dropping a session's tallies (assembly recounts them when it next needs them).
DROP_TALLIES: Document = {"$unset": {"tallies": "", "holes": ""}, "$inc": {"tally_rev": 1}}


def utcnow() -> datetime:
    # BSON dates hold milliseconds; trimming here keeps what we return equal to what we store.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clean_message(message: Mapping[str, Any], keys: Sequence[str] = MESSAGE_KEYS) -> Document:
    return {key: message[key] for key in keys if message.get(key) is not None}


def clean_stats(stats: Mapping[str, Any]) -> Document:
    """A turn's backend figures as stored: the counts and durations (whole numbers), the
    `done_reason` and the wait; anything else an import carries is not kept."""
    kept: Document = {
        key: stats[key]
        for key in (*STAT_KEYS, "waited_ms")
        if isinstance(stats.get(key), int) and not isinstance(stats.get(key), bool)
    }
    if isinstance(stats.get("done_reason"), str):
        kept["done_reason"] = stats["done_reason"][:64]
    return kept


def auto_title(messages: Iterable[Mapping[str, Any]]) -> str | None:
    for message in messages:
        if message.get("role") == "user":
            text = " ".join(str(message.get("content") or "").split())
            if text:
                if len(text) > AUTO_TITLE_CHARS:
                    text = text[: AUTO_TITLE_CHARS - 1].rstrip() + "…"
                return text
    return None


def not_found(session_id: str) -> CorralError:
    return CorralError(
        ErrorType.SESSION_NOT_FOUND,
        f"Session '{session_id}' does not exist.",
        details={"session_id": session_id},
    )


def _system_for(session: Document, model: str) -> Document | None:
    for entry in session.get("systems") or []:
        if isinstance(entry, dict) and entry.get("model") == model:
            message = entry.get("message")
            return message if isinstance(message, dict) else None
    return None


def _owner_filter(owner: str | None) -> Document:
    """Sessions a caller may touch: only its own. A session of another owner, or of nobody
    (written while auth was off), is to it exactly like one that does not exist. `owner=None`
    is the unscoped view (auth off, admins)."""
    return {} if owner is None else {"owner": owner}


def is_archived(session: Document) -> bool:
    return session.get("archived_at") is not None


def _lifecycle(session: Document) -> Document:
    """What a summary says of an archived session (nothing of an active one, so the shapes
    clients already read do not change)."""
    if not is_archived(session):
        return {}
    return {"archived": True, "archived_at": iso(session.get("archived_at"))}


ACTIVE: Document = {"archived_at": None}
ARCHIVED: Document = {"archived_at": {"$ne": None}}


def empty_session(
    session_id: str,
    owner: str | None,
    title: str | None,
    now: datetime,
    *,
    created_at: datetime | None = None,
    last_activity: datetime | None = None,
    system_prompt: str | None = None,
) -> Document:
    """A session document with no turns yet (POST /sessions, an import, a new conversation),
    ready for `insert_one`: used `now` (so its idle time starts now), its turn sequence at 0.
    `created_at` and `last_activity` are an import's own; otherwise `now`."""
    created_at = created_at or now
    doc: Document = {
        "_id": session_id,
        "title": title,
        "owner": owner,
        "created_at": created_at,
        "last_activity": last_activity or created_at,
        "touched_at": now,
        "turn_seq": 0,
        "models": [],
        "systems": [],
        "tallies": [],
        "tallied": 0,
        "tally_rev": 0,
        # Made now: any deletion of its id came before.
        "alive_since": now,
    }
    if system_prompt:
        doc["system_prompt"] = system_prompt
    return doc


def owned_by(session: Document, owner: str | None) -> bool:
    """Whether a caller asking as `owner` may touch `session` (see `_owner_filter`)."""
    return owner is None or session.get("owner") == owner


class SessionStore:
    def __init__(
        self, db: AsyncDatabase[Document], *, tombstone_ttl_s: float = TOMBSTONE_TTL_S
    ) -> None:
        self.db = db
        self.sessions: AsyncCollection[Document] = db["sessions"]
        self.turns: AsyncCollection[Document] = db["turns"]
        self.calibration: AsyncCollection[Document] = db["calibration"]
        self.tombstones: AsyncCollection[Document] = db["tombstones"]
        self.tombstone_ttl_s = tombstone_ttl_s
        # The newest turns of the sessions written here, for assembly (windows.py).
        self.windows = WindowCache()

    async def ensure_indexes(self) -> None:
        """Idempotent; run at start-up by every replica."""
        await self.turns.create_indexes(
            [
                IndexModel([("session_id", ASCENDING), ("seq", ASCENDING)], unique=True),
                IndexModel([("session_id", ASCENDING), ("model", ASCENDING), ("seq", ASCENDING)]),
                IndexModel([("answered_at", DESCENDING)]),
            ]
        )
        await self.sessions.create_indexes(
            [
                IndexModel([("last_activity", DESCENDING)]),
                IndexModel([("owner", ASCENDING), ("last_activity", DESCENDING)]),
                IndexModel([("touched_at", ASCENDING)]),
                IndexModel([("archived_at", ASCENDING)]),
            ]
        )
        # MongoDB and SecantusDB both honour it (a minute's sweep), so tombstones do not pile up.
        await self.tombstones.create_indexes(
            [IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0)]
        )

    # -- writing ---------------------------------------------------------------------------

    async def write_turn(self, turn: TurnRecord, *, look_first: bool = True) -> WriteOutcome:
        """Store one turn once (see `_write_turn`); the windows of assembly hear of it."""
        self.windows.write_begins(turn.session_id)
        try:
            return await self._write_turn(turn, look_first=look_first)
        finally:
            self.windows.write_ends(turn.session_id)

    async def _write_turn(self, turn: TurnRecord, *, look_first: bool = True) -> WriteOutcome:
        """Store one turn once. Safe to call again with the same turn (a redelivery).

        `look_first=False` skips the read for a turn already stored, for a turn that cannot
        have been seen before but by a rare accident (a `done` delivered for the first time):
        the insert's unique `_id` still refuses a duplicate, which then costs only a sequence
        number nobody uses (a hole the tallies live with), not a round trip on every turn."""
        messages = [clean_message(m) for m in turn.messages]
        doc: Document = {
            "_id": turn.request_id,
            "session_id": turn.session_id,
            "model": turn.model,
            "kind": turn.kind,
            "messages": messages,
            "message_count": len(messages),
            "owner": turn.owner,
            "asked_at": turn.asked_at,
            "answered_at": turn.answered_at,
            "stats": turn.stats,
        }
        if turn.job is not None:
            doc["job"] = turn.job
        if look_first and await self._stored_already(doc, turn):
            return WriteOutcome.DUPLICATE
        system = next((m for m in messages if m.get("role") == "system"), None)
        if system is not None:
            doc["system"] = system = clean_message(system, BACKEND_KEYS)
        if turn.estimate is not None:
            doc["estimate"] = turn.estimate
        if turn.metadata:
            doc["metadata"] = turn.metadata
        for _ in range(SEQ_ATTEMPTS):
            taken = await self._next_seq(turn)
            if isinstance(taken, WriteOutcome):
                if taken is WriteOutcome.DELETED:
                    self.windows.drop(turn.session_id)
                return taken
            seq, session = taken
            self.windows.taken(turn.session_id, seq)
            if system is not None and _system_for(session, turn.model) is None:
                # The model's first system prompt, pinned on the session (once: the filter
                # makes a repeat a no-op), before the turn exists, so a crash in between is
                # repaired by the redelivery rather than lost.
                await self.sessions.update_one(
                    {"_id": turn.session_id, "systems.model": {"$ne": turn.model}},
                    {"$push": {"systems": {"model": turn.model, "message": doc["system"]}}},
                )
            inserted = await self._insert(doc, turn, seq)
            if inserted is None:
                # The sequence number was taken (a server whose $inc raced): take another.
                continue
            if inserted is WriteOutcome.DUPLICATE:
                return inserted
            self.windows.written(
                turn.session_id,
                turn.model,
                seq,
                [clean_message(m, BACKEND_KEYS) for m in messages],
            )
            tally = tally_of(session, turn.model)
            if tally is not None and seq - tally.seq >= FOLD_EVERY:
                await self.fold_tallies(turn.session_id, seq, session)
            return WriteOutcome.STORED
        raise SequenceContention(f"no free turn number in session {turn.session_id!r}")

    async def _stored_already(self, doc: Document, turn: TurnRecord) -> bool:
        """Whether this turn is stored (under its request id, or under `reused_id` when another
        job's turn holds the request id: then `doc` takes that id)."""
        held = await self.turns.find_one({"_id": doc["_id"]}, TURN_IDENTITY)
        if held is None:
            return False
        if same_job(held, turn) or turn.job is None:
            return True
        doc["_id"] = reused_id(turn)
        return await self.turns.find_one({"_id": doc["_id"]}, {"_id": 1}) is not None

    async def _insert(self, doc: Document, turn: TurnRecord, seq: int) -> WriteOutcome | None:
        """Insert the turn numbered `seq`: STORED; DUPLICATE when this turn is stored already;
        None when the number is another turn's. A request id another job's turn holds (a client
        reusing its `X-Request-Id`) is no duplicate: the turn goes in under `reused_id`, with
        the same number."""
        while True:
            try:
                await self.turns.insert_one({**doc, "seq": seq, "stored_at": utcnow()})
                return WriteOutcome.STORED
            except DuplicateKeyError:
                # A number without a turn, or a turn under another id: the windows cannot
                # follow it.
                self.windows.drop(turn.session_id)
                held = await self.turns.find_one({"_id": doc["_id"]}, TURN_IDENTITY)
                if held is None:
                    return None
                if same_job(held, turn) or turn.job is None:
                    return WriteOutcome.DUPLICATE
                if doc["_id"] != turn.request_id:
                    # Another job's turn under this job's own id too: a fingerprint collision
                    # (or a client choosing that id on purpose); nothing is overwritten.
                    log.warning("turn id and its reused id both taken; dropped", id=doc["_id"])
                    return WriteOutcome.DUPLICATE
                doc["_id"] = reused_id(turn)

    async def fold_tallies(
        self, session_id: str, seq: int, session: Document | None = None
    ) -> None:
        """Fold the turns numbered up to `seq` into the session's tallies (see "Tallies"
        above): those above `tallied` and those in `holes`, read from the turns, counted in if
        nobody changed the tallies meanwhile (else read again and retried; giving up leaves
        them behind, which is safe: they stay exact for what they cover)."""
        for _ in range(SEQ_ATTEMPTS):
            if session is None:
                session = await self.sessions.find_one({"_id": session_id}, TALLY_FIELDS)
            if session is None or not isinstance(session.get("tallies"), list):
                return  # no tallies kept: assembly recounts when it needs them
            tallied = _int(session.get("tallied"))
            holes = {_int(h) for h in session.get("holes") or []}
            if tallied >= seq and not holes:
                return
            seq = max(seq, tallied)
            projection = {"model": 1, "message_count": 1, "seq": 1}
            found = []
            if seq > tallied:
                found = await self.turns.find(
                    {"session_id": session_id, "seq": {"$gt": tallied, "$lte": seq}}, projection
                ).to_list()
            if holes:
                found += await self.turns.find(
                    {"session_id": session_id, "seq": {"$in": sorted(holes)}}, projection
                ).to_list()
            stored = {_int(doc.get("seq")) for doc in found}
            missing = sorted((holes | set(range(tallied + 1, seq + 1))) - stored)
            condition = {"_id": session_id, "tally_rev": session.get("tally_rev")}
            if len(missing) > MAX_HOLES:
                changed = await self.sessions.update_one(condition, DROP_TALLIES)
            else:
                counted = [(str(d.get("model")), _int(d.get("message_count"))) for d in found]
                changed = await self.sessions.update_one(
                    condition,
                    {
                        "$set": {
                            "tallies": _added(session, counted),
                            "tallied": seq,
                            "holes": missing,
                        },
                        "$inc": {"tally_rev": 1},
                    },
                )
            if changed.matched_count:
                return
            session = None

    async def _next_seq(self, turn: TurnRecord) -> tuple[int, Document] | WriteOutcome:
        """Upsert the session and take the next sequence number (with the session's tallies as
        they were then); REJECTED if the session is not the turn's owner's: an owned turn goes
        only into its owner's session, an unowned one only into an unowned session; DELETED if
        the session was deleted after a job's turn was asked (see "Deletions" above). A turn is
        a use of its session: an archived one is active again (resumed), and its idle time
        starts over."""
        title = auto_title(turn.messages)
        selector = {"_id": turn.session_id, "owner": turn.owner}
        checked = turn.job is not None
        for attempt in range(SEQ_ATTEMPTS):
            taker = new_id()
            earliest: Document = {"created_at": turn.asked_at}
            if checked:
                # Checked against the tombstones (or implied by the session's own): no deletion
                # of this id since the turn was asked.
                earliest["alive_since"] = turn.asked_at
            change = {
                "$inc": {"turn_seq": 1},
                "$set": {"seq_taker": taker},
                "$min": earliest,
                "$max": {"last_activity": turn.answered_at, "touched_at": utcnow()},
                "$addToSet": {"models": turn.model},
                "$unset": {"archived_at": ""},
                "$setOnInsert": {"owner": turn.owner, "tallies": [], "tallied": 0, "tally_rev": 0},
            }
            try:
                if checked and attempt == 0:
                    session = await self._take_number_alive(turn, selector, change)
                    if session is False:
                        return WriteOutcome.DELETED
                else:
                    session = await self._take_number(selector, change, atomic=attempt > 0)
            except DuplicateKeyError:
                # Either two first turns raced to create the session (MongoDB retries that
                # itself; not every server does), or the owner filter missed an existing
                # session, whose _id the upsert then hit.
                session = None
            if session is not None and session.get("seq_taker") != taker:
                # Another writer took a number between this one's update and its read: which
                # number was this one's is unknown (a hole, as for a writer that crashed), so
                # another is taken, atomically this time.
                continue
            if session is not None:
                if session.get("title") is None and title is not None:
                    # A new session (or one created empty by POST /sessions) is named after
                    # its first question; a title set meanwhile is kept.
                    await self.sessions.update_one(
                        {"_id": turn.session_id, "title": None}, {"$set": {"title": title}}
                    )
                return int(session["turn_seq"]), session
            existing = await self.sessions.find_one({"_id": turn.session_id}, {"owner": 1})
            if existing is not None and existing.get("owner") != turn.owner:
                return WriteOutcome.REJECTED
        raise SequenceContention(f"could not take a turn number in session {turn.session_id!r}")

    async def _take_number_alive(
        self, turn: TurnRecord, selector: Document, change: Document
    ) -> Document | Literal[False] | None:
        """`_take_number` for a job's turn, which must not make a session deleted after it was
        asked again: the session as it is after `change`, or False (the turn predates a
        deletion; nothing changed). The update applies at once to a session alive since the
        turn was asked (as costly as the plain one); anything else (no session, one made after
        the turn was asked) is looked up in the tombstones before it is upserted."""
        alive = await self.sessions.update_one(
            {**selector, "alive_since": {"$lte": turn.asked_at}}, change
        )
        if alive.matched_count:
            return await self.sessions.find_one(selector, SEQ_PROJECTION)
        if await self.deleted_after(turn.session_id, turn.asked_at):
            return False
        return await self._take_number(selector, change, atomic=False)

    async def deleted_after(self, session_id: str, asked_at: datetime) -> bool:
        """Whether the session was deleted (or every session cleared) after `asked_at`."""
        async for tombstone in self.tombstones.find(
            {"_id": {"$in": [session_id, ALL_SESSIONS]}}, {"deleted_at": 1}
        ):
            deleted_at = tombstone.get("deleted_at")
            if isinstance(deleted_at, datetime) and _utc(deleted_at) > _utc(asked_at):
                return True
        return False

    async def _bury(self, session_id: str, deleted_at: datetime) -> None:
        """Remember that the session (or, for ALL_SESSIONS, every session) was deleted at
        `deleted_at`, so a turn asked before then is not written (see "Deletions" above)."""
        await self.tombstones.update_one(
            {"_id": session_id},
            {
                "$max": {
                    "deleted_at": deleted_at,
                    "expires_at": deleted_at + timedelta(seconds=self.tombstone_ttl_s),
                }
            },
            upsert=True,
        )

    async def _take_number(
        self, selector: Document, change: Document, *, atomic: bool
    ) -> Document | None:
        """The session as it is after `change` (an upsert): atomically, by `findAndModify`, or
        as an update and then a read, which is what a turn's write does first.

        Why not always atomically: SecantusDB's `findAndModify` scans the whole collection
        (it writes through a filter of `_id` and `$and`, which its planner serves without an
        index), so a turn's write took time in proportion to the sessions stored: 8.8 ms at
        1,000, 72 ms at 10,000, against 2.7 ms at any size this way (bench/session_store.py
        --scale). The read can see another writer's change made after this one's update;
        every taker sets `seq_taker` to an id of its own, so a read that finds its own
        `seq_taker` holds exactly its own number."""
        if atomic:
            return await self.sessions.find_one_and_update(
                selector,
                change,
                upsert=True,
                return_document=ReturnDocument.AFTER,
                projection=SEQ_PROJECTION,
            )
        await self.sessions.update_one(selector, change, upsert=True)
        return await self.sessions.find_one(selector, SEQ_PROJECTION)

    # -- reading ---------------------------------------------------------------------------

    async def find_session(self, session_id: str, owner: str | None = None) -> Document | None:
        return await self.sessions.find_one({"_id": session_id, **_owner_filter(owner)})

    async def require_session(self, session_id: str, owner: str | None = None) -> Document:
        session = await self.find_session(session_id, owner)
        if session is None:
            raise not_found(session_id)
        return session

    async def history_window(
        self,
        session_id: str,
        model: str,
        prompt_budget: int,
        estimator: TokenEstimator,
        session: Document | None = None,
        max_messages: int | None = None,
    ) -> HistoryWindow:
        """The newest turns of (session, model) that could fit in `prompt_budget` and in
        `max_messages` messages (system prompts not counted), and one more (so assembly sees
        where it had to stop); never the whole history when only its tail can be used.

        Turns are read backwards in `seq` ranges of growing width (64, 128, ... sequence
        numbers below the session's last one): a bounded index range is cheap on every
        server, whereas an equality match sorted and limited makes SecantusDB fetch the whole
        history first. How many older turns (and messages) were left out comes from the
        model's tally minus the turns read (see "Tallies" above), so a turn on a long session
        reads only its window; a session without a usable tally is counted with `$group`."""
        if session is None:
            session = await self.find_session(session_id)
        if session is None:
            return HistoryWindow([], 0, None)
        selector = {"session_id": session_id, "model": model}
        newest: list[list[Document]] = []
        cost = 0
        count = 0
        stopped_at: int | None = None
        stopped_by: Literal["tokens", "max_history_length"] = "tokens"
        # Every turn of the model numbered in (lowest, top]: its message count by number.
        fetched: dict[int, int] = {}
        top = high = lowest = int(session.get("turn_seq") or 0)
        # What tells this session's document from an earlier one of its id (deleted, then made
        # again, possibly by an import keeping the old `created_at`): `alive_since` is always
        # after the deletion.
        created_at = (session.get("created_at"), session.get("alive_since"))
        # The newest turns from this store's window when it is the session just read, else
        # from the database (and kept when the read allows it): windows.py.
        cached = self.windows.window(session_id, model, top, created_at)
        read = self.windows.begin(session_id) if cached is None else None
        first_read: list[Document] = []
        span = HISTORY_BATCH
        while high > 0 and stopped_at is None:
            low = max(high - span, 0)
            if cached is not None and cached.covers(low, high):
                docs = cached.docs(low, high)
                WINDOW_READS.labels("cache").inc()
            else:
                try:
                    docs = await self.turns.find(
                        {**selector, "seq": {"$gt": low, "$lte": high}},
                        {"messages": 1, "seq": 1, "message_count": 1},
                    ).to_list()
                except BaseException:
                    if read is not None:
                        self.windows.abandon(read)
                    raise
                WINDOW_READS.labels("database").inc()
                for doc in docs:
                    doc["messages"] = [
                        clean_message(m, BACKEND_KEYS) for m in doc.get("messages") or []
                    ]
                if high == top:
                    first_read = docs
                    if read is not None:
                        self.windows.finish(read, model, top, created_at, low, first_read)
                        read = None
            fetched.update((int(doc["seq"]), _int(doc.get("message_count"))) for doc in docs)
            lowest = low
            docs.sort(key=lambda doc: int(doc["seq"]), reverse=True)
            for doc in docs:
                messages = list(doc["messages"])
                newest.append(messages)
                cost += estimator.messages(messages)
                count += sum(1 for m in messages if m.get("role") != "system")
                if cost > prompt_budget or (max_messages is not None and count > max_messages):
                    stopped_at = int(doc["seq"])
                    stopped_by = "tokens" if cost > prompt_budget else "max_history_length"
                    break
            high, span = low, span * 2
        if read is not None:
            self.windows.abandon(read)
        older = older_messages = 0
        if stopped_at is not None:
            tally = tally_of(session, model)
            if tally is None:
                tally = await self._recount(session, model)
            older, older_messages = await self._older(
                selector, stopped_at, tally, fetched, lowest, top
            )
        newest.reverse()
        return HistoryWindow(newest, older, _system_for(session, model), older_messages, stopped_by)

    async def _older(
        self,
        selector: Document,
        stopped_at: int,
        tally: Tally | None,
        fetched: Mapping[int, int],
        lowest: int,
        top: int,
    ) -> tuple[int, int]:
        """The model's turns (and their messages) numbered below `stopped_at`: its tally,
        less the counted turns at or above `stopped_at`, plus the uncounted ones below it.
        `fetched` holds every turn of the model numbered in (`lowest`, `top`]; the turns the
        tally counts were all stored before it was set, so before the session was read, and
        none is numbered above `top` (unless a recount saw newer ones: then the server counts).
        Uncounted turns not in hand (a tally far behind, or holes far down) are counted by
        the server in those bounded ranges only."""
        if tally is None or tally.seq > top:
            return await self._count_older(selector, stopped_at)
        older, older_messages = tally.turns, tally.messages
        for seq, messages in fetched.items():
            if seq >= stopped_at and tally.counts(seq):
                older, older_messages = older - 1, older_messages - messages
            elif seq < stopped_at and not tally.counts(seq):
                older, older_messages = older + 1, older_messages + messages
        if tally.seq < lowest and tally.seq + 1 < stopped_at:
            turns_n, messages_n = await self._count_older(
                selector, min(lowest + 1, stopped_at), above=tally.seq
            )
            older, older_messages = older + turns_n, older_messages + messages_n
        holes = sorted(h for h in tally.holes if h <= lowest and h < stopped_at)
        if holes:
            async for doc in self.turns.find(
                {**selector, "seq": {"$in": holes}}, {"message_count": 1}
            ):
                older, older_messages = older + 1, older_messages + _int(doc.get("message_count"))
        if older < 0 or older_messages < 0:
            # Turns went that the tally still counts (an interrupted delete): count them all.
            return await self._count_older(selector, stopped_at)
        return older, older_messages

    async def _count_older(
        self, selector: Document, stopped_at: int, *, above: int = 0
    ) -> tuple[int, int]:
        """The turns (and their messages) of `selector` numbered between `above` and
        `stopped_at` (both excluded), counted by the server: from 0, a scan of the history,
        for when no tally can say."""
        cursor = await self.turns.aggregate(
            [
                {"$match": {**selector, "seq": {"$gt": above, "$lt": stopped_at}}},
                {
                    "$group": {
                        "_id": None,
                        "turns": {"$sum": 1},
                        "messages": {"$sum": "$message_count"},
                    }
                },
            ]
        )
        older = older_messages = 0
        async for row in cursor:
            older, older_messages = int(row["turns"]), int(row["messages"])
        return older, older_messages

    async def _recount(self, session: Document, model: str) -> Tally | None:
        """Count a session that keeps no tallies, every model at once, up to its last number
        when read (`turn_seq`), and set its tallies (unless someone changed them meanwhile);
        `model`'s tally. The newest HISTORY_BATCH numbers are read turn by turn, and those
        without a turn become holes (a turn another writer is storing right now is counted by
        a later fold); the older ones are counted by the server."""
        session_id = session["_id"]
        top = _int(session.get("turn_seq"))
        below = max(top - HISTORY_BATCH, 0)
        cursor = await self.turns.aggregate(
            [
                {"$match": {"session_id": session_id, "seq": {"$lte": below}}},
                {
                    "$group": {
                        "_id": "$model",
                        "turns": {"$sum": 1},
                        "messages": {"$sum": "$message_count"},
                    }
                },
            ]
        )
        older = {
            "tallies": [
                {
                    "model": str(row["_id"]),
                    "turns": _int(row.get("turns")),
                    "messages": _int(row.get("messages")),
                }
                async for row in cursor
            ]
        }
        recent = await self.turns.find(
            {"session_id": session_id, "seq": {"$gt": below, "$lte": top}},
            {"model": 1, "message_count": 1, "seq": 1},
        ).to_list()
        stored = {_int(doc.get("seq")) for doc in recent}
        counted: Document = {
            "tallies": _added(
                older, ((str(d.get("model")), _int(d.get("message_count"))) for d in recent)
            ),
            "tallied": top,
            "holes": sorted(set(range(below + 1, top + 1)) - stored),
        }
        await self.sessions.update_one(
            {
                "_id": session_id,
                "tallies": {"$exists": False},
                "tally_rev": session.get("tally_rev"),
            },
            {"$set": counted, "$inc": {"tally_rev": 1}},
        )
        return tally_of(counted, model)

    async def history(
        self, session_id: str, model: str | None = None, owner: str | None = None
    ) -> Document:
        session = await self.require_session(session_id, owner)
        selector: Document = {"session_id": session_id}
        if model is not None:
            selector["model"] = model
        messages: list[Document] = []
        async for turn in self.turns.find(selector, sort=[("seq", ASCENDING)]):
            stored = turn.get("messages") or []
            for index, message in enumerate(stored):
                is_answer = index == len(stored) - 1 and message.get("role") == "assistant"
                when = turn.get("answered_at") if is_answer else turn.get("asked_at")
                item: Document = {
                    "role": message.get("role"),
                    "content": message.get("content", ""),
                    "timestamp": iso(when),
                }
                for extra in ("thinking", "images", "tool_calls", "tool_name"):
                    if message.get(extra) is not None:
                        item[extra] = message[extra]
                if model is None:
                    item["model"] = turn.get("model")
                if turn.get("metadata"):
                    # The request's metadata, on each message it sent and on its answer.
                    item["metadata"] = turn["metadata"]
                messages.append(item)
        return {
            "session_id": session_id,
            "created_at": iso(session.get("created_at")),
            "last_activity": iso(session.get("last_activity")),
            "message_count": len(messages),
            "messages": messages,
            **_lifecycle(session),
        }

    async def _message_counts(self, sessions: Sequence[Document]) -> dict[str, int]:
        """Each session's messages: its tallies' and those of the few turns they do not
        cover yet (numbered above `tallied`, or in `holes`), else (a session without tallies)
        summed over its turns by the server."""
        counts: dict[str, int] = {}
        uncounted: list[str] = []
        for session in sessions:
            tallies = session.get("tallies")
            if not isinstance(tallies, list):
                uncounted.append(session["_id"])
                continue
            total = sum(_int(e.get("messages")) for e in tallies if isinstance(e, dict))
            tallied, top = _int(session.get("tallied")), _int(session.get("turn_seq"))
            holes = sorted(_int(h) for h in session.get("holes") or [])
            if top > tallied:
                async for doc in self.turns.find(
                    {"session_id": session["_id"], "seq": {"$gt": tallied, "$lte": top}},
                    {"message_count": 1},
                ):
                    total += _int(doc.get("message_count"))
            if holes:
                async for doc in self.turns.find(
                    {"session_id": session["_id"], "seq": {"$in": holes}}, {"message_count": 1}
                ):
                    total += _int(doc.get("message_count"))
            counts[session["_id"]] = total
        if not uncounted:
            return counts
        cursor = await self.turns.aggregate(
            [
                {"$match": {"session_id": {"$in": uncounted}}},
                {"$group": {"_id": "$session_id", "count": {"$sum": "$message_count"}}},
            ]
        )
        counts.update({str(row["_id"]): int(row["count"]) async for row in cursor})
        return counts

    def _summary(self, session: Document, message_count: int) -> Document:
        return {
            "session_id": session["_id"],
            "title": session.get("title"),
            "created_at": iso(session.get("created_at")),
            "last_activity": iso(session.get("last_activity")),
            "message_count": message_count,
            "models": list(session.get("models") or []),
            **_lifecycle(session),
        }

    async def list_sessions(
        self, limit: int, offset: int, owner: str | None = None, *, archived: bool = False
    ) -> Document:
        """Active sessions, or (`archived`) the archived ones, newest first."""
        selector = {**_owner_filter(owner), **(ARCHIVED if archived else ACTIVE)}
        total = await self.sessions.count_documents(selector)
        page = await self.sessions.find(
            selector,
            {"systems": 0},
            sort=[("last_activity", DESCENDING), ("_id", ASCENDING)],
            skip=offset,
            limit=limit,
        ).to_list()
        counts = await self._message_counts(page)
        return {
            "sessions": [self._summary(s, counts.get(s["_id"], 0)) for s in page],
            "total": total,
            "limit": limit,
            "offset": offset,
        }

    # -- changing --------------------------------------------------------------------------

    async def rename(self, session_id: str, title: str, owner: str | None = None) -> Document:
        session = await self.sessions.find_one_and_update(
            {"_id": session_id, **_owner_filter(owner)},
            {"$set": {"title": title}},
            return_document=ReturnDocument.AFTER,
        )
        if session is None:
            raise not_found(session_id)
        counts = await self._message_counts([session])
        return self._summary(session, counts.get(session_id, 0))

    async def delete(self, session_id: str, owner: str | None = None) -> Document:
        await self.require_session(session_id, owner)
        # The tombstone before anything goes: a turn still generating (asked before now) must
        # not make the session again when it is done, whichever replica writes it.
        await self._bury(session_id, utcnow())
        # Turns first: an interrupted delete leaves a session that can be deleted again, never
        # turns nobody can reach. Its tallies before them: a session left with some turns
        # gone is recounted if it is used again.
        self.windows.write_begins(session_id)
        try:
            self.windows.drop(session_id)
            await self.sessions.update_one({"_id": session_id}, DROP_TALLIES)
            turns = await self.turns.delete_many({"session_id": session_id})
            await self.sessions.delete_one({"_id": session_id})
        finally:
            self.windows.drop(session_id)
            self.windows.write_ends(session_id)
        return {"session_id": session_id, "deleted": True, "turns_deleted": turns.deleted_count}

    # -- lifecycle -------------------------------------------------------------------------

    async def create_session(
        self,
        owner: str | None,
        *,
        title: str | None = None,
        system_prompt: str | None = None,
    ) -> Document:
        """A new, empty session with a new id (POST /sessions), owned by `owner`."""
        doc = empty_session(new_id(), owner, title, utcnow(), system_prompt=system_prompt)
        await self.sessions.insert_one(doc)
        return self._described(doc, 0)

    def _described(self, session: Document, message_count: int) -> Document:
        """A summary with the session's own system prompt, when it has one."""
        summary = self._summary(session, message_count)
        if session.get("system_prompt"):
            summary["system_prompt"] = session["system_prompt"]
        return summary

    async def resume(self, session_id: str) -> bool:
        """Make an archived session active again (a chat naming it does); whether it was
        archived."""
        result = await self.sessions.update_one(
            {"_id": session_id, **ARCHIVED},
            {"$unset": {"archived_at": ""}, "$max": {"touched_at": utcnow()}},
        )
        return result.modified_count > 0

    async def archive_idle(self, now: datetime, idle_s: float) -> int:
        """Archive the active sessions nobody has used for `idle_s` seconds; how many."""
        cutoff = now - timedelta(seconds=idle_s)
        result = await self.sessions.update_many(
            {
                **ACTIVE,
                "$or": [
                    {"touched_at": {"$lt": cutoff}},
                    # Sessions written before `touched_at` existed.
                    {"touched_at": None, "last_activity": {"$lt": cutoff}},
                ],
            },
            {"$set": {"archived_at": now}},
        )
        return result.modified_count

    async def purge_archived(
        self, now: datetime, retention_s: float, *, batch: int = PURGE_BATCH
    ) -> tuple[int, int]:
        """Delete (with their turns) the sessions archived `retention_s` seconds ago or
        longer, at most `batch` of them; how many sessions and turns went.

        Turns first, as `delete` does: an interrupted purge leaves a session the next sweep
        deletes, never turns nobody can reach. The session itself goes only if it is still
        expired, so one resumed meanwhile stays (the race is a chat arriving in the instant
        its session is purged). A session that went gets a tombstone dated from before its
        turns went, as a deleted one does, so a turn asked before (a `generate`, which does not
        resume its session) does not make it again; one resumed gets none, so its chat's turn
        is written."""
        expired = {"archived_at": {"$ne": None, "$lte": now - timedelta(seconds=retention_s)}}
        found = await self.sessions.find(expired, {"_id": 1}, limit=batch).to_list()
        sessions = turns = 0
        for doc in found:
            self.windows.drop(doc["_id"])
            purged_at = utcnow()
            # Tallies first, as `delete` does (a session resumed meanwhile is recounted).
            await self.sessions.update_one({"_id": doc["_id"]}, DROP_TALLIES)
            gone = await self.turns.delete_many({"session_id": doc["_id"]})
            turns += gone.deleted_count
            deleted = await self.sessions.delete_one({"_id": doc["_id"], **expired})
            if deleted.deleted_count:
                await self._bury(doc["_id"], purged_at)
            sessions += deleted.deleted_count
        return sessions, turns

    async def session_counts(self, now: datetime) -> tuple[int, int, int]:
        """(active, total, archived today): sessions not archived, all sessions, and those
        archived since midnight UTC of `now`. Counted on the `archived_at` index."""
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        active = await self.sessions.count_documents(ACTIVE)
        archived = await self.sessions.count_documents(ARCHIVED)
        today = await self.sessions.count_documents({"archived_at": {"$gte": midnight}})
        return active, active + archived, today

    async def clear_all(self) -> Document:
        """Every session and turn gone (the operators' DELETE /admin/sessions). One tombstone
        for every session first (a turn still generating must not bring its session back),
        then tallies, as `delete` does."""
        await self._bury(ALL_SESSIONS, utcnow())
        self.windows.clear()
        await self.sessions.update_many({}, DROP_TALLIES)
        turns = await self.turns.delete_many({})
        sessions = await self.sessions.delete_many({})
        self.windows.clear()
        return {
            "deleted": True,
            "sessions_deleted": sessions.deleted_count,
            "turns_deleted": turns.deleted_count,
        }

    # -- export and import -----------------------------------------------------------------

    async def export(self, session_id: str, owner: str | None = None) -> Document:
        """The session and every turn, with its metadata, in the form `import_session`
        restores (`EXPORT_FORMAT`)."""
        session = await self.require_session(session_id, owner)
        turns: list[Document] = []
        async for turn in self.turns.find({"session_id": session_id}, sort=[("seq", ASCENDING)]):
            item: Document = {
                "id": turn["_id"],
                "seq": turn.get("seq"),
                "model": turn.get("model"),
                "kind": turn.get("kind", "chat"),
                "messages": list(turn.get("messages") or []),
                "asked_at": iso(turn.get("asked_at")),
                "answered_at": iso(turn.get("answered_at")),
                "stats": dict(turn.get("stats") or {}),
            }
            if turn.get("metadata"):
                item["metadata"] = turn["metadata"]
            turns.append(item)
        described: Document = {
            "session_id": session_id,
            "title": session.get("title"),
            "created_at": iso(session.get("created_at")),
            "last_activity": iso(session.get("last_activity")),
            "models": list(session.get("models") or []),
            "systems": [entry for entry in session.get("systems") or [] if isinstance(entry, dict)],
        }
        if session.get("system_prompt"):
            described["system_prompt"] = session["system_prompt"]
        if is_archived(session):
            described["archived_at"] = iso(session.get("archived_at"))
        return {
            "format": EXPORT_FORMAT,
            "exported_at": iso(utcnow()),
            "session": described,
            "turn_count": len(turns),
            "message_count": sum(len(turn["messages"]) for turn in turns),
            "turns": turns,
        }

    async def import_session(self, imported: ImportParams, owner: str | None) -> Document:
        """Restore an export under its session id, owned by `owner`. Idempotent by turn id:
        turns already stored are skipped, the others written in their exported order (after
        any the session already has). A session of another owner is a missing one (404), as
        for a chat into it. Importing is a use: the session is active afterwards."""
        about = imported.session
        session_id = about.session_id
        now = utcnow()
        existing = await self.sessions.find_one({"_id": session_id})
        created = False
        if existing is None:
            doc = empty_session(
                session_id,
                owner,
                about.title,
                now,
                created_at=about.created_at,
                last_activity=about.last_activity,
                system_prompt=about.system_prompt,
            )
            try:
                await self.sessions.insert_one(doc)
                created = True
            except DuplicateKeyError:
                existing = await self.sessions.find_one({"_id": session_id})
        if existing is not None:
            if existing.get("owner") != owner:
                raise not_found(session_id)
            fill = {
                key: value
                for key, value in (
                    ("title", about.title),
                    ("system_prompt", about.system_prompt),
                )
                if value and not existing.get(key)
            }
            change: Document = {"$max": {"touched_at": now}, "$unset": {"archived_at": ""}}
            if fill:
                change["$set"] = fill
            await self.sessions.update_one({"_id": session_id}, change)
        written = skipped = 0
        for turn in imported.turns:
            outcome = await self.write_turn(
                TurnRecord(
                    request_id=turn.id,
                    session_id=session_id,
                    model=turn.model,
                    kind=turn.kind,
                    messages=[m.model_dump(exclude_none=True) for m in turn.messages],
                    asked_at=turn.asked_at,
                    answered_at=turn.answered_at,
                    owner=owner,
                    stats=clean_stats(turn.stats),
                    metadata=turn.metadata,
                )
            )
            if outcome is WriteOutcome.REJECTED:
                raise not_found(session_id)
            if outcome is WriteOutcome.STORED:
                written += 1
            else:
                skipped += 1
        session = await self.require_session(session_id)
        counts = await self._message_counts([session])
        return {
            **self._described(session, counts.get(session_id, 0)),
            "created": created,
            "turns_imported": written,
            "turns_skipped": skipped,
        }

    # -- search and stats ------------------------------------------------------------------

    async def search(
        self,
        query: str,
        limit: int,
        owner: str | None = None,
        *,
        time_limit_ms: int | None = None,
    ) -> Document:
        """Messages whose content contains `query`, case-insensitively, newest first. An
        escaped `$regex`, never `$text` (which SecantusDB lacks), so it scans: fine for one
        user's store; a production MongoDB can add a text index behind this same method.

        With `time_limit_ms` the scan stops after that long and what it found so far is
        answered with `partial: true`: the server stops it (`maxTimeMS`, which MongoDB and
        SecantusDB both honour), and a deadline here stops it on a server that would not."""
        selector: Document = {"messages.content": {"$regex": re.escape(query), "$options": "i"}}
        if owner is not None:
            owned = await self.sessions.distinct("_id", {"owner": owner})
            selector["session_id"] = {"$in": owned}
        needle = re.compile(re.escape(query), re.IGNORECASE)
        hits: list[tuple[Document, Document, bool]] = []
        cursor = self.turns.find(
            selector,
            sort=[("answered_at", DESCENDING), ("_id", ASCENDING)],
            batch_size=50,
            max_time_ms=time_limit_ms,
        )
        # The deadline here leaves the server's own limit room to act first (its error is the
        # clean ending; a cancelled await leaves a cursor to kill).
        deadline_s = None if time_limit_ms is None else time_limit_ms / 1000 * 1.5 + 0.5
        partial = False
        try:
            async with asyncio.timeout(deadline_s):
                async for turn in cursor:
                    stored = turn.get("messages") or []
                    for index, message in enumerate(stored):
                        if needle.search(str(message.get("content") or "")):
                            is_answer = (
                                index == len(stored) - 1 and message.get("role") == "assistant"
                            )
                            hits.append((turn, message, is_answer))
                    if len(hits) >= limit:
                        break
        except (ExecutionTimeout, TimeoutError):
            partial = True
        finally:
            with contextlib.suppress(PyMongoError):
                await cursor.close()
        hits = hits[:limit]
        ids = sorted({turn["session_id"] for turn, _, _ in hits})
        found = self.sessions.find({"_id": {"$in": ids}}, {"title": 1, "last_activity": 1})
        sessions = {s["_id"]: s async for s in found}
        results = []
        for turn, message, is_answer in hits:
            session = sessions.get(turn["session_id"], {})
            stats = turn.get("stats") or {}
            result: Document = {
                "session_id": turn["session_id"],
                "title": session.get("title"),
                "last_activity": iso(session.get("last_activity")),
                "model": turn.get("model"),
                "request_id": turn["_id"],
                "role": message.get("role"),
                "content": message.get("content", ""),
                "timestamp": iso(turn.get("answered_at" if is_answer else "asked_at")),
            }
            if is_answer and isinstance(stats.get("total_duration"), int):
                result["response_time_ms"] = round(stats["total_duration"] / 1e6, 1)
            results.append(result)
        return {"query": query, "results": results, "count": len(results), "partial": partial}

    async def stats(self, session_id: str, owner: str | None = None) -> Document:
        session = await self.require_session(session_id, owner)
        roles: dict[str, list[int]] = {}
        models: dict[str, Document] = {}
        totals = {"prompt": 0, "completion": 0, "turns": 0}
        response_ms: list[float] = []
        wait_ms: list[float] = []
        async for turn in self.turns.find({"session_id": session_id}, sort=[("seq", ASCENDING)]):
            stats = turn.get("stats") or {}
            messages = turn.get("messages") or []
            per_model = models.setdefault(
                str(turn.get("model")),
                {"turns": 0, "messages": 0, "prompt": 0, "completion": 0, "response_ms": []},
            )
            prompt = _int(stats.get("prompt_eval_count"))
            completion = _int(stats.get("eval_count"))
            totals["turns"] += 1
            totals["prompt"] += prompt
            totals["completion"] += completion
            per_model["turns"] += 1
            per_model["messages"] += len(messages)
            per_model["prompt"] += prompt
            per_model["completion"] += completion
            if isinstance(stats.get("total_duration"), int):
                response_ms.append(stats["total_duration"] / 1e6)
                per_model["response_ms"].append(stats["total_duration"] / 1e6)
            if isinstance(stats.get("waited_ms"), int):
                wait_ms.append(float(stats["waited_ms"]))
            for message in messages:
                roles.setdefault(str(message.get("role")), []).append(
                    len(str(message.get("content") or ""))
                )
        total_messages = sum(len(lengths) for lengths in roles.values())
        return {
            "session_id": session_id,
            "title": session.get("title"),
            "created_at": iso(session.get("created_at")),
            "last_activity": iso(session.get("last_activity")),
            "summary": {
                "total_messages": total_messages,
                "turns": totals["turns"],
                "user_messages": len(roles.get("user", [])),
                "assistant_messages": len(roles.get("assistant", [])),
                "prompt_tokens": totals["prompt"],
                "completion_tokens": totals["completion"],
                "total_tokens": totals["prompt"] + totals["completion"],
                "avg_response_time_ms": average(response_ms),
                "avg_wait_ms": average(wait_ms),
            },
            "by_role": [
                {"role": role, "count": len(lengths), "avg_length": average(lengths)}
                for role, lengths in sorted(roles.items())
            ],
            "by_model": [
                {
                    "model": model,
                    "turns": data["turns"],
                    "messages": data["messages"],
                    "prompt_tokens": data["prompt"],
                    "completion_tokens": data["completion"],
                    "avg_response_time_ms": average(data["response_ms"]),
                }
                for model, data in sorted(models.items())
            ],
        }

    # -- calibration -----------------------------------------------------------------------

    async def load_calibrations(self) -> dict[str, Calibration]:
        found: dict[str, Calibration] = {}
        async for doc in self.calibration.find({}):
            found[str(doc["_id"])] = Calibration(
                factor=float(doc.get("factor", 1.0)), samples=int(doc.get("samples", 0))
            )
        return found

    async def save_calibration(self, model: str, calibration: Calibration) -> None:
        await self.calibration.update_one(
            {"_id": model},
            {
                "$set": {
                    "factor": calibration.factor,
                    "samples": calibration.samples,
                    "updated_at": utcnow(),
                }
            },
            upsert=True,
        )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def average(values: Sequence[float] | Sequence[int]) -> float | None:
    """A mean as the stats answers give it: to one decimal; None when there is nothing."""
    return round(sum(values) / len(values), 1) if values else None
