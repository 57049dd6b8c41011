"""Wait estimates from measured backend speeds."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from corral_scheduler.backends.base import Metrics
from corral_scheduler.eta import (
    Reply,
    ReplyLengths,
    SimServer,
    SpeedBook,
    estimate_prompt_tokens,
    grouped_order,
    per_char_fits,
    pool_waits,
)
from corral_scheduler.lane import ONE_BACKEND, Lane
from corral_scheduler.ordering import Ordering, OrderingPolicy
from services.scheduler.tests import fakes


def book() -> SpeedBook:
    return SpeedBook(prompt_tokens_per_s=100, eval_tokens_per_s=10, load_ms=2000, eval_count=50)


def test_priors_price_load_prompt_and_generation() -> None:
    # 400 chars ~ 100 tokens at 100 tok/s = 1 s; 50 tokens at 10 tok/s = 5 s; plus a 2 s load.
    assert book().estimate_ms("m", 400, None, loaded_model=None) == 8000
    assert book().estimate_ms("m", 400, None, loaded_model="m") == 6000


def test_num_predict_caps_the_expected_output() -> None:
    # Lengths as exponential with the mean (50): a cap of 10 is reached 82 % of the time,
    # 50 * (1 - e^-0.2) = 9.06 tokens expected.
    assert book().estimate_ms("m", 400, 10, loaded_model="m") == 1000 + 906


def test_observations_replace_priors_then_blend() -> None:
    speeds = book()
    final: Metrics = {
        "prompt_eval_count": 200,
        "prompt_eval_duration": 100_000_000,  # 2000 tok/s
        "eval_count": 100,
        "eval_duration": 2_000_000_000,  # 50 tok/s
        "load_duration": 500_000_000,
    }
    speeds.observe("M", final)
    speed = speeds.speed("m")
    assert speed.prompt_tokens_per_s == pytest.approx(2000)
    assert speed.eval_tokens_per_s == pytest.approx(50)
    assert speed.load_ms == pytest.approx(500)
    assert speed.eval_count == pytest.approx(100)
    speeds.observe("m", {**final, "eval_duration": 1_000_000_000})  # 100 tok/s now
    assert speeds.speed("m").eval_tokens_per_s == pytest.approx(50 + 0.3 * 50)


def test_a_warm_model_does_not_count_as_a_load() -> None:
    speeds = book()
    speeds.observe("m", {"load_duration": 1_000_000, "eval_count": 5, "eval_duration": 10**9})
    assert speeds.speed("m").load_ms == 2000


def test_a_model_not_measured_yet_borrows_from_the_measured_ones() -> None:
    speeds = book()
    assert speeds.speed("b").eval_tokens_per_s == 10  # nothing measured: the priors
    speeds.observe("a", {"eval_count": 100, "eval_duration": 10**9})
    speeds.observe("c", {"eval_count": 300, "eval_duration": 10**9})
    assert speeds.speed("b").eval_tokens_per_s == pytest.approx(200)
    assert speeds.speed("b").load_ms == 2000  # neither measured a load
    assert not speeds.measured("b") and speeds.measured("A")


def final(tokens: int, reason: str = "stop") -> Metrics:
    return {"eval_count": tokens, "eval_duration": tokens * 10**8, "done_reason": reason}


def test_replies_cut_at_their_cap_are_not_read_as_short_ones() -> None:
    """Five replies ran to 100 tokens, five were cut at 20 by their num_predict: an uncapped
    reply is expected at 100 (the mean of what was seen, 60, would price it short)."""
    replies = [Reply(100, cut=False)] * 5 + [Reply(20, cut=True)] * 5
    lengths = ReplyLengths(replies)
    assert lengths.expected(None) == pytest.approx(100)
    assert lengths.expected(50) == pytest.approx(50)
    speeds = book()
    for _ in range(5):
        speeds.observe("m", final(100))
        speeds.observe("m", final(20, "length"))
    assert speeds.reply_tokens("m", None) == pytest.approx(100)
    assert speeds.reply_tokens("m", 30) == pytest.approx(30)
    # 10 tok/s: a 100-token reply and a 1 s prompt (400 chars), the model loaded.
    assert speeds.estimate_ms("m", 400, None, loaded_model="m") == 10_000 + 1000


def test_a_reply_under_way_is_expected_to_run_longer() -> None:
    lengths = ReplyLengths([Reply(n, cut=False) for n in (10, 20, 30, 40)])
    assert lengths.expected(None) == pytest.approx(25)
    # Past 25 tokens only the 30 and 40 replies are left: 35 expected.
    assert lengths.expected(None, produced=25) == pytest.approx(35)
    assert lengths.expected(32, produced=25) == pytest.approx(25 + (2.5 + 2 * 0.25) / 0.5)
    assert lengths.expected(None, produced=40) is None
    assert ReplyLengths([]).expected(None) is None


def test_reply_lengths_fall_back_to_the_mean_and_outgrow_it() -> None:
    speeds = book()  # no reply seen: exponential with the prior mean, 50
    assert speeds.reply_tokens("m", None) == 50
    assert speeds.reply_tokens("m", 20) == pytest.approx(50 * (1 - math.exp(-20 / 50)))
    assert speeds.reply_tokens("m", 20, produced=20) == 20
    assert speeds.reply_tokens("m", None, produced=70) == 120
    speeds.observe("other", final(80))
    assert speeds.reply_tokens("m", None) == pytest.approx(80)  # pooled from other models
    # 20 produced of 80 expected, at 10 tok/s.
    speeds.observe("m", final(80))
    assert speeds.remaining_ms("m", None, 20) == 6000


def test_a_running_job_stands_in_for_the_priors_until_its_model_is_measured() -> None:
    speeds = book()
    version = speeds.version
    speeds.observe_live(
        "m", first_token_ms=1500, tokens=11, generating_ms=500, prompt_chars=400, loaded=False
    )
    assert speeds.version > version
    # 10 tokens after the first in 0.5 s; a 1.5 s first token less a 1 s prompt at the prior.
    assert speeds.speed("m").eval_tokens_per_s == pytest.approx(20)
    assert speeds.speed("m").load_ms == pytest.approx(500)
    assert speeds.speed("other").eval_tokens_per_s == pytest.approx(20)
    version = speeds.version
    speeds.observe_live(
        "m", first_token_ms=1500, tokens=12, generating_ms=560, prompt_chars=400, loaded=False
    )
    assert speeds.version == version  # moved too little to re-price the queue
    speeds.observe("m", {"eval_count": 100, "eval_duration": 2 * 10**9})
    assert speeds.speed("m").eval_tokens_per_s == pytest.approx(50)
    speeds.observe_live(
        "m", first_token_ms=10, tokens=50, generating_ms=100, prompt_chars=400, loaded=True
    )
    assert speeds.speed("m").eval_tokens_per_s == pytest.approx(50)  # measured: ignored


def test_prompt_characters_per_token_are_learned_when_given() -> None:
    speeds = book()
    speeds.observe("m", {"prompt_eval_count": 100, "prompt_eval_duration": 10**9}, 600)
    assert speeds.speed("m").chars_per_token == pytest.approx(6)
    assert speeds.prompt_ms("m", 600) == pytest.approx(1000)


def anywhere(_server: SimServer, _index: int) -> bool:
    return True


def test_one_server_waits_add_up_charging_a_load_once_per_swap() -> None:
    one = [SimServer("s", free_at_ms=300, loaded="a")]
    jobs = [(100, 1000, "a"), (200, 1000, "b"), (50, 1000, "b"), (10, 1000, "a")]
    # a runs without a load; b swaps (1000) once for both b jobs; a swaps back.
    assert pool_waits(one, jobs, anywhere) == [300, 400, 1600, 1650]
    assert pool_waits([SimServer("s", free_at_ms=-5, loaded=None)], [(10, 0, "a")], anywhere) == [0]
    assert estimate_prompt_tokens(0) == 1


def test_a_pool_lays_jobs_onto_whichever_server_is_free_first() -> None:
    servers = [SimServer("x", free_at_ms=500, loaded="a"), SimServer("y", 0, loaded="b")]
    jobs = [(100, 0, "b"), (100, 0, "a"), (100, 0, "b"), (100, 0, "a")]
    # y is free now: the first b; y again at 100 (before x at 500): the a, then b at 200 on y
    # and the last a on y at 300, still before x frees up.
    assert pool_waits(servers, jobs, anywhere) == [0, 100, 200, 300]


def test_a_job_only_some_servers_can_run_waits_for_them() -> None:
    servers = [SimServer("x", free_at_ms=1000, loaded=None), SimServer("y", 0, loaded=None)]
    only_x = {0}
    assert pool_waits(
        servers, [(100, 0, "m"), (100, 0, "m")], lambda s, i: i not in only_x or s.name == "x"
    ) == [1000, 0]


def test_a_lane_with_the_speed_book_reprices_its_waiting_jobs() -> None:
    speeds = book()
    lane = Lane(speeds=speeds)
    lane.servers[ONE_BACKEND].loaded = "m"
    for rid in ("1", "2", "3"):
        one = fakes.entry(fakes.job(rid, model="m", prompt_chars=400))
        one.estimate_ms = 10**6  # as admitted on other figures
        lane.push(one)
    lane.pause()
    # 1 s prompt + the prior's 50 tokens at 10 tok/s each.
    assert [p.wait_ms for p in lane.snapshot()] == [0, 6000, 12000]
    speeds.observe("m", {"eval_count": 20, "eval_duration": 10**9, "done_reason": "length"})
    assert [p.wait_ms for p in lane.snapshot()] == [0, 2000, 4000]


async def forever() -> None:
    await asyncio.Event().wait()


async def test_a_running_job_is_priced_by_the_tokens_it_has_streamed() -> None:
    speeds = book()
    speeds.observe("m", {"eval_count": 100, "eval_duration": 10 * 10**9})  # 10 tok/s
    lane = Lane(speeds=speeds)
    server = lane.servers[ONE_BACKEND]
    lane.push(fakes.entry(fakes.job("a", model="m", num_predict=60)))
    lane.push(fakes.entry(fakes.job("b", model="m")))
    running = await lane.take(server)
    task = asyncio.create_task(forever())
    try:
        lane.start(running, task, 10**6)
        running.tokens += 1
        running.tokens += 19
        assert running.first_token_at is not None and running.last_token_at is not None
        # 40 of its 60 tokens left at 10 tok/s, whatever its estimate said.
        assert lane.snapshot()[0].wait_ms == 4000
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    lane.finish(running)


def test_replies_that_follow_their_prompts_are_priced_per_prompt_character() -> None:
    echoes = [Reply(chars // 5, cut=False, prompt_chars=chars) for chars in range(100, 1000, 100)]
    assert per_char_fits(echoes)
    speeds = book()
    for reply in echoes:
        speeds.observe("m", final(reply.tokens), reply.prompt_chars)
    assert speeds.reply_tokens("m", None, prompt_chars=2000) == pytest.approx(400)
    assert speeds.reply_tokens("m", 100, prompt_chars=2000) == pytest.approx(100)
    assert speeds.reply_tokens("m", None, prompt_chars=250) == pytest.approx(50)
    # The same lengths to prompts of every length follow no prompt: read in tokens.
    unrelated = [Reply(20 + 10 * (i % 3), False, 100 * (i + 1)) for i in range(9)]
    assert not per_char_fits(unrelated)
    assert not per_char_fits(echoes[:3])  # too few to tell
    assert per_char_fits(echoes[:4])


def test_grouping_is_played_forward_within_its_bound() -> None:
    """One server holding a: the next a jobs go before the b due first, until b has been
    passed twice; unbounded (0) keeps the queue's order."""
    models = ["b", "a", "a", "a", "b"]
    assert grouped_order(models, [0] * 5, "a", bound=2) == [1, 2, 0, 4, 3]
    assert grouped_order(models, [2, 0, 0, 0, 0], "a", bound=2) == [0, 4, 1, 2, 3]
    assert grouped_order(models, [0] * 5, "a", bound=0) == [0, 1, 2, 3, 4]
    assert grouped_order(models, [0] * 5, None, bound=2) == [0, 4, 1, 2, 3]


def test_a_lane_estimates_the_wait_its_grouping_will_cause() -> None:
    lane = Lane(Ordering(OrderingPolicy(group_bound=2), time.monotonic))
    lane.servers[ONE_BACKEND].loaded = "a"
    for rid, model in (("1", "b"), ("2", "a")):
        one = fakes.entry(fakes.job(rid, model=model))
        one.estimate_ms, one.load_ms = 100, 1000
        lane.push(one)
    lane.pause()
    # "2" (for the loaded a) will run first; "1" then waits for it and swaps.
    assert [(p.entry.request_id, p.position, p.wait_ms) for p in lane.snapshot()] == [
        ("1", 1, 100),
        ("2", 2, 0),
    ]
