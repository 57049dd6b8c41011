"""Wait estimates from measured backend speeds."""

from __future__ import annotations

import pytest

from corral_scheduler.eta import SpeedBook, cumulative_waits, estimate_prompt_tokens


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


def test_cumulative_waits() -> None:
    assert cumulative_waits(300, [100, 200, 50]) == [300, 400, 600]
    assert cumulative_waits(-5, [10]) == [0]
    assert estimate_prompt_tokens(0) == 1
