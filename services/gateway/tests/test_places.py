"""Provisional places (places.py): a job beyond the scheduler's admission window is told a place
at once, never lower than the one the scheduler reports when it admits the job, and falling as
the lane moves; a job on an idle lane is told nothing; nothing stays behind once jobs are over."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from corral_common.messages import (
    Accepted,
    BackendStatus,
    Done,
    LaneEntry,
    Position,
    QueueStatus,
    SchedulerStatus,
    ServerStatus,
    Started,
)
from corral_common.status_board import StatusBoard
from corral_gateway.memory import Releaser, release
from corral_gateway.places import ADMISSION_WAIT_S, Places


def status(*, waiting: int = 0, lane: list[LaneEntry] | None = None, servers: int = 1) -> bytes:
    import time

    return (
        SchedulerStatus(
            scheduler_id="s1",
            sent_at=time.time(),
            backend=BackendStatus(url="http://b", connected=True),
            servers=[
                ServerStatus(name=f"b{i}", url="http://b", connected=True) for i in range(servers)
            ],
            queue=QueueStatus(waiting=waiting, running=1, average_wait_ms=0, processing_rate=2.0),
            lane=lane or [],
        )
        .model_dump_json()
        .encode()
    )


def entry(request_id: str, position: int) -> LaneEntry:
    return LaneEntry(
        request_id=request_id,
        kind="chat",
        model="m",
        position=position,
        estimated_wait_ms=position * 500,
        waited_ms=0,
    )


@dataclass
class Told:
    """What one request's queue received, as the relay would read it."""

    events: list[object] = field(default_factory=list)

    def __call__(self, event: Position) -> None:
        self.events.append(event)

    @property
    def positions(self) -> list[int]:
        return [e.position for e in self.events if isinstance(e, Position)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def board_and_places(clock: Clock | None = None) -> tuple[StatusBoard, Places]:
    board = StatusBoard(10.0)
    return board, Places(board, clock or Clock())


def test_a_job_on_an_idle_lane_is_told_nothing() -> None:
    _, places = board_and_places()
    told = Told()
    assert places.place("r1", told) is None
    assert told.events == []


def test_within_the_window_the_scheduler_places_a_job_itself() -> None:
    clock = Clock()
    _, places = board_and_places(clock)
    places.place("r1", Told())
    places.heard(Accepted(request_id="r1", scheduler_id="s1"))
    places.heard(Started(request_id="r1", waited_ms=0))
    told = Told()
    # It must wait, but nothing of this gateway's is left unadmitted: the scheduler's place
    # comes first, as it always did.
    assert places.place("r2", told) is None
    places.heard(Accepted(request_id="r2", scheduler_id="s1"))
    places.heard(Position(request_id="r2", position=1, estimated_wait_ms=0))
    clock.now += 1
    places.recompute()
    assert told.positions == []


def test_a_job_not_admitted_in_time_is_placed_here() -> None:
    clock = Clock()
    _, places = board_and_places(clock)
    first, second, third = Told(), Told(), Told()
    places.place("r1", first)  # runs: told nothing
    places.place("r2", second)  # must wait: left to the scheduler for a moment
    clock.now += 1
    # r2 was not admitted within that moment: the window is full. The next is told at once
    # (behind r2), and r2 at the next recompute.
    assert places.place("r3", third) == Position(request_id="r3", position=2, estimated_wait_ms=0)
    places.recompute()
    assert (first.positions, second.positions, third.positions) == ([], [1], [2])


def test_others_waiting_in_the_last_status_count() -> None:
    board, places = board_and_places()
    board.take(status(waiting=3, lane=[entry("x1", 1), entry("x2", 2), entry("x3", 3)]))
    places.status_arrived()
    told = Told()
    # No job of this gateway's in the lane, but the status listed three others waiting.
    places.place("r1", told)
    places._clock.now += 1  # type: ignore[attr-defined]
    places.recompute()
    assert told.positions == [4]


def test_the_backlog_beyond_the_listed_lane_counts_too() -> None:
    board, places = board_and_places()
    board.take(status(waiting=502, lane=[entry("x1", 1), entry("x2", 2)]))
    places.status_arrived()
    told = Told()
    places.place("r1", told)
    places._clock.now += 1  # type: ignore[attr-defined]
    places.recompute()
    assert told.positions == [503]


def test_a_pool_with_a_free_server_is_not_waited_for() -> None:
    board, places = board_and_places()
    board.take(status(servers=2))
    places.status_arrived()
    places.place("r1", Told())
    places.place("r2", Told())
    third = Told()
    places.place("r3", third)
    places._clock.now += 1  # type: ignore[attr-defined]
    places.recompute()
    # One job of ours runs on each of the two servers: only the third waits.
    assert third.positions == [1]


@dataclass
class FifoLane:
    """A serial lane as the scheduler runs it, with an admission window: jobs beyond it wait
    in the broker in arrival order; admitted ones are told `accepted` and their position, and
    every waiting job its new position each time the lane moves."""

    places: Places
    window: int
    clock: Clock
    broker: deque[str] = field(default_factory=deque)
    lane: list[str] = field(default_factory=list)
    running: str | None = None
    queues: dict[str, Told] = field(default_factory=dict)
    # The first position the scheduler reported for each job, and the provisional before it.
    first_real: dict[str, int] = field(default_factory=dict)

    def deliver(self, event: Accepted | Position | Started | Done) -> None:
        self.queues[event.request_id](event)  # type: ignore[arg-type]
        self.places.heard(event)

    def submit(self, request_id: str) -> None:
        self.clock.now += 0.1
        self.queues[request_id] = Told()
        self.places.place(request_id, self.queues[request_id])
        self.broker.append(request_id)
        self.admit()

    def admit(self) -> None:
        while self.broker and len(self.lane) + (self.running is not None) < self.window:
            job = self.broker.popleft()
            self.lane.append(job)
            self.deliver(Accepted(request_id=job, scheduler_id="s1"))
            if self.running is None:
                self.start()
            else:
                self.first_real[job] = len(self.lane)
                self.deliver(Position(request_id=job, position=len(self.lane), estimated_wait_ms=0))

    def start(self) -> None:
        self.running = self.lane.pop(0)
        self.deliver(Started(request_id=self.running, waited_ms=0))

    def finish(self) -> None:
        assert self.running is not None
        done = self.running
        self.deliver(
            Done(request_id=done, waited_ms=0, final={}, token_batches=0, text="", model="m")
        )
        self.places.forget(done)
        self.running = None
        if self.lane:
            self.start()
        self.admit()
        for place, job in enumerate(self.lane, start=1):
            self.deliver(Position(request_id=job, position=place, estimated_wait_ms=0))


async def test_positions_beyond_the_window_only_fall_and_never_undercut_the_lane() -> None:
    clock = Clock()
    board, places = board_and_places(clock)
    lane = FifoLane(places, window=4, clock=clock)
    for number in range(20):
        lane.submit(f"r{number}")
    assert places.pending == 20 - 4
    for _ in range(20):
        # A status as the scheduler would send it: its lane and the broker's backlog.
        listed = [entry(job, place) for place, job in enumerate(lane.lane, start=1)]
        board.take(status(waiting=len(lane.lane) + len(lane.broker), lane=listed))
        places.status_arrived()
        places.recompute()
        lane.finish()
    for request_id, told in lane.queues.items():
        positions = told.positions
        assert positions == sorted(positions, reverse=True), (request_id, positions)
        number = int(request_id[1:])
        if number >= 4:
            # Told a place at once, before the scheduler had admitted it, and no lower than
            # the place the scheduler first reported.
            assert isinstance(told.events[0], Position)
            before = told.events[: told.events.index(_accepted(told))]
            provisional = [e.position for e in before if isinstance(e, Position)]
            assert provisional and min(provisional) >= lane.first_real[request_id]
    # Every job is over: nothing of them is kept.
    assert len(places) == 0 and places.pending == 0


def _accepted(told: Told) -> Accepted:
    return next(e for e in told.events if isinstance(e, Accepted))


async def test_a_job_in_the_broker_is_told_its_place_as_it_falls() -> None:
    clock = Clock()
    _, places = board_and_places(clock)
    lane = FifoLane(places, window=2, clock=clock)
    for number in range(200):
        lane.submit(f"r{number}")
    last = lane.queues["r199"]
    assert last.positions == [199]
    for _ in range(100):
        lane.finish()
    places.recompute()
    # A hundred jobs ran: it was told it moved up (by a tenth of its place at least).
    assert last.positions[-1] < 199
    assert last.positions == sorted(last.positions, reverse=True)


def test_a_refused_publish_leaves_nothing() -> None:
    _, places = board_and_places()
    places.place("r1", Told())
    places.place("r2", Told())
    places.refused("r2")
    places.forget("r1")
    assert len(places) == 0 and places.pending == 0


def test_a_job_admitted_before_its_place_is_heard_is_counted_ahead() -> None:
    clock = Clock()
    _, places = board_and_places(clock)
    places.place("r1", Told())  # runs
    places.place("r2", Told())  # must wait; left to the scheduler
    places.heard(Accepted(request_id="r2", scheduler_id="s1"))  # its position is on the way
    clock.now += 1
    # r1 not heard of for a second: the scheduler is not admitting as jobs come, so the next
    # ones are told at once.
    places.place("r3", Told())
    places.place("r4", Told())
    clock.now += 1
    told = Told()
    # Behind r2 (admitted, 1st), r3 and r4 (in the broker): 4th.
    assert places.place("r5", told) == Position(request_id="r5", position=4, estimated_wait_ms=0)


def test_while_admission_is_behind_a_job_is_told_its_place_at_once() -> None:
    """The scheduler took longer than ADMISSION_WAIT_S to admit this gateway's last waiting
    job (its window has room, but a crowd arrives faster than it admits): the next job is not
    left to it, but told its place here at once; once it admits promptly again, it is."""
    clock = Clock()
    _, places = board_and_places(clock)
    places.place("r1", Told())  # runs
    places.heard(Accepted(request_id="r1", scheduler_id="s1"))
    places.heard(Started(request_id="r1", waited_ms=0))
    assert places.place("r2", Told()) is None  # left to the scheduler
    clock.now += 2 * ADMISSION_WAIT_S
    places.heard(Accepted(request_id="r2", scheduler_id="s1"))
    places.heard(Position(request_id="r2", position=1, estimated_wait_ms=0))
    assert places.admission_lag_s >= ADMISSION_WAIT_S
    told = Told()
    assert places.place("r3", told) == Position(request_id="r3", position=2, estimated_wait_ms=0)
    assert told.positions == [2]
    # Admitted at once: admission has caught up, and the next one is left to it again.
    places.heard(Accepted(request_id="r3", scheduler_id="s1"))
    places.heard(Position(request_id="r3", position=2, estimated_wait_ms=0))
    assert places.admission_lag_s == 0
    assert places.place("r4", Told()) is None


async def test_a_job_left_to_the_scheduler_is_told_here_when_it_does_not_place_it() -> None:
    """On the loop's own clock: a job left to the scheduler that hears nothing of it within
    ADMISSION_WAIT_S is told its provisional place by the recompute due then."""
    places = Places(StatusBoard(10.0))  # the real clock, which the loop's timers keep
    told = asyncio.Event()
    places.place("r1", Told())  # runs
    assert places.place("r2", lambda _position: told.set()) is None
    await told.wait()
    assert places.pending == 2


async def test_memory_is_handed_back_once_a_crowd_is_over() -> None:
    """A crowd's last job here is over: the gateway hands its memory back (gc, malloc_trim),
    once; a quiet gateway's last request does not make it do so."""
    places = Places(StatusBoard(10.0))
    released = asyncio.Event()
    places.memory = Releaser(idle_s=0.0, crowd=3)
    places.memory._release = lambda: released.set()  # type: ignore[method-assign]
    places.place("quiet", Told())
    places.forget("quiet")
    assert places.memory._timer is None
    for number in range(3):
        places.place(f"r{number}", Told())
    for number in range(3):
        places.forget(f"r{number}")
    await released.wait()
    assert release() in (True, False)  # the real one runs, whatever the C library


def test_a_job_that_must_wait_is_known_before_any_news_of_it() -> None:
    """The ticket may start its relay before the broker's confirm for a job that must wait
    (its client hears a place first, whoever tells it), never for one that runs at once."""
    clock = Clock()
    _, places = board_and_places(clock)
    places.place("runs", Told())
    places.place("left", Told())  # left to the scheduler for a moment
    clock.now += 1
    places.place("told", Told())  # told here at once
    assert [places.must_wait(r) for r in ("runs", "left", "told")] == [False, True, True]
    places.heard(Accepted(request_id="left", scheduler_id="s1"))
    assert not places.must_wait("left")  # heard of: the scheduler has it
