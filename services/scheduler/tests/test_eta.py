"""Wait estimates from measured backend speeds."""

from __future__ import annotations

import pytest

from corral_scheduler.eta import SimServer, SpeedBook, estimate_prompt_tokens, pool_waits


def book() -> SpeedBook:
    return SpeedBook(prompt_tokens_per_s=100, eval_tokens_per_s=10, load_ms=2000, eval_count=50)


def test_priors_price_load_prompt_and_generation() -> None:
    # 400 chars ~ 100 tokens at 100 tok/s = 1 s; 50 tokens at 10 tok/s = 5 s; plus a 2 s load.
    assert book().estimate_ms("m", 400, None, loaded_model=None) == 8000
    assert book().estimate_ms("m", 400, None, loaded_model="m") == 6000


def test_num_predict_caps_the_expected_output() -> None:
    assert book().estimate_ms("m", 400, 10, loaded_model="m") == 2000


def test_observations_replace_priors_then_blend() -> None:
    speeds = book()
    final = {
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


def test_other_models_keep_the_priors() -> None:
    speeds = book()
    speeds.observe("a", {"eval_count": 100, "eval_duration": 10**9})
    assert speeds.speed("b").eval_tokens_per_s == 10


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
