"""Context assembly: pure rules, no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from corral_common.errors import CorralError, ErrorType
from corral_session_store.context import Budget, Fallback, assemble, compute_budget, passthrough
from corral_session_store.tokens import TokenEstimator

EST = TokenEstimator()


def msg(role: str, content: str) -> dict[str, Any]:
    return {"role": role, "content": content}


def turn(i: int, size: int = 40) -> list[dict[str, Any]]:
    """A turn whose two messages cost 4 + size/4 tokens each."""
    return [msg("user", f"q{i}".ljust(size, ".")), msg("assistant", f"a{i}".ljust(size, "."))]


def budget(tokens: int) -> Budget:
    return Budget(context_length=tokens, answer_reserve=0, source="num_ctx")


def test_everything_fits_nothing_dropped() -> None:
    history = [turn(1), turn(2)]
    result = assemble(history, [msg("user", "next")], budget(1000), EST)
    assert result.messages == [*turn(1), *turn(2), msg("user", "next")]
    assert result.info.as_dict() == {
        "truncated": False,
        "messages_used": 5,
        "tokens_used": EST.prompt_overhead + EST.messages(result.messages),
        "turns_dropped": 0,
    }


def test_oldest_whole_turns_dropped_and_budget_respected() -> None:
    history = [turn(i) for i in range(10)]
    new = [msg("user", "now")]
    per_turn = EST.messages(turn(0))  # 28
    fixed = EST.prompt_overhead + EST.messages(new)
    limit = fixed + 3 * per_turn + per_turn // 2  # room for 3.5 turns
    result = assemble(history, new, budget(limit), EST)
    assert result.messages == [*turn(7), *turn(8), *turn(9), *new]
    assert result.info.truncated
    assert result.info.turns_dropped == 7
    assert result.info.tokens_used == fixed + 3 * per_turn <= limit
    assert result.info.messages_used == 7


def test_a_turn_is_never_split() -> None:
    history = [[msg("user", "x" * 400), msg("assistant", "y" * 4)]]
    new = [msg("user", "hi")]
    limit = EST.prompt_overhead + EST.messages(new) + 50
    result = assemble(history, new, budget(limit), EST)
    assert result.messages == new
    assert result.info.turns_dropped == 1


def test_older_turns_are_dropped_even_if_they_would_fit() -> None:
    # A short old turn behind a long one does not jump the queue: history stays contiguous.
    history = [turn(1, size=4), turn(2, size=800), turn(3, size=4)]
    new = [msg("user", "q")]
    limit = EST.prompt_overhead + EST.messages(new) + 2 * EST.messages(turn(1, 4)) + 5
    result = assemble(history, new, budget(limit), EST)
    assert result.messages == [*turn(3, 4), *new]
    assert result.info.turns_dropped == 2


def test_stored_system_prompt_is_kept_first_when_history_is_dropped() -> None:
    system = msg("system", "You are terse.")
    history = [[system, *turn(0)], *[turn(i) for i in range(1, 20)]]
    new = [msg("user", "and now?")]
    limit = EST.prompt_overhead + EST.messages([system, *new]) + 2 * EST.messages(turn(0))
    result = assemble(history, new, budget(limit), EST)
    assert result.messages[0] == system
    assert result.messages[1:] == [*turn(18), *turn(19), *new]
    assert result.info.turns_dropped == 18
    assert sum(1 for m in result.messages if m["role"] == "system") == 1


def test_new_system_prompt_replaces_the_stored_one() -> None:
    old = msg("system", "old rules")
    new_system = msg("system", "new rules")
    history = [[old, *turn(0)], turn(1)]
    result = assemble(history, [msg("user", "hi"), new_system], budget(1000), EST)
    assert result.messages[0] == new_system
    assert old not in result.messages
    assert result.messages[1:] == [*turn(0), *turn(1), msg("user", "hi")]


def test_a_resent_system_prompt_is_not_duplicated() -> None:
    system = msg("system", "rules")
    history = [[system, *turn(0)], [system, *turn(1)]]
    result = assemble(history, [system, msg("user", "hi")], budget(1000), EST)
    assert [m["role"] for m in result.messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]


def test_explicit_stored_system_with_a_partial_window() -> None:
    system = msg("system", "rules")
    result = assemble(
        [turn(8), turn(9)],
        [msg("user", "hi")],
        budget(1000),
        EST,
        stored_system=system,
        older_turns=8,
    )
    assert result.messages[0] == system
    assert result.info.turns_dropped == 8
    assert result.info.truncated


def test_new_message_alone_too_big_is_413() -> None:
    new = [msg("user", "x" * 4000)]
    with pytest.raises(CorralError) as info:
        assemble([turn(1)], new, Budget(256, 64, "model"), EST)
    assert info.value.error_type is ErrorType.CONTEXT_LIMIT_EXCEEDED
    assert info.value.status == 413
    assert info.value.details["prompt_budget"] == 192
    assert info.value.details["tokens_needed"] > 192


def test_system_prompt_counts_toward_the_minimum() -> None:
    new = [msg("system", "s" * 600), msg("user", "hi")]
    needed = EST.prompt_overhead + EST.messages(new)
    assemble([], new, budget(needed), EST)  # exactly fits
    with pytest.raises(CorralError):
        assemble([], new, budget(needed - 1), EST)


def test_calibration_factor_scales_estimates() -> None:
    history = [turn(i) for i in range(10)]
    new = [msg("user", "now")]
    plain = assemble(history, new, budget(200), TokenEstimator(1.0))
    doubled = assemble(history, new, budget(200), TokenEstimator(2.0))
    assert doubled.info.turns_dropped > plain.info.turns_dropped
    assert doubled.info.tokens_used <= 200


# compute_budget's settings in these tests.
BUDGET_TERMS: dict[str, Any] = {
    "default_num_ctx": 4096,
    "answer_reserve": 512,
    "answer_reserve_fraction": 0.25,
}


def test_budget_defaults_and_model_length() -> None:
    kw = BUDGET_TERMS
    assert compute_budget(None, None, **kw) == Budget(4096, 512, "default")
    # A model with a big window still runs with the default one unless the client asks.
    assert compute_budget({}, 131072, **kw) == Budget(4096, 512, "model")
    # A tiny model: its own window, and a reserve that leaves room for history.
    tiny = compute_budget({}, 256, **kw)
    assert tiny == Budget(256, 64, "model")
    assert tiny.prompt_tokens == 192


def test_num_ctx_and_num_predict_override() -> None:
    kw = BUDGET_TERMS
    assert compute_budget({"num_ctx": 8192}, 256, **kw) == Budget(8192, 512, "num_ctx")
    assert compute_budget({"num_ctx": 1024, "num_predict": 100}, None, **kw) == Budget(
        1024, 100, "num_ctx"
    )
    # num_predict -1 (unlimited) and nonsense values fall back to the reserve.
    assert compute_budget({"num_predict": -1, "num_ctx": "x"}, None, **kw).answer_reserve == 512
    # A num_predict larger than the window cannot take more than half of it.
    assert compute_budget({"num_ctx": 512, "num_predict": 5000}, None, **kw).answer_reserve == 256


def test_num_ctx_override_lets_more_history_in() -> None:
    kw = BUDGET_TERMS
    history = [turn(i) for i in range(20)]
    small = assemble(history, [msg("user", "q")], compute_budget({}, 256, **kw), EST)
    large = assemble(history, [msg("user", "q")], compute_budget({"num_ctx": 2048}, 256, **kw), EST)
    assert small.info.turns_dropped > 0
    assert large.info.turns_dropped == 0


def test_generate_passes_the_prompt_through() -> None:
    prompt = [msg("user", "Once upon a time")]
    result = passthrough(prompt, EST)
    assert result.messages == prompt
    assert result.info.as_dict() == {
        "truncated": False,
        "messages_used": 1,
        "tokens_used": EST.prompt_overhead + EST.messages(prompt),
        "turns_dropped": 0,
    }


# -- the new messages themselves too long; the message cap; fallback system prompts ---------


def test_new_messages_that_do_not_fit_lose_their_oldest_not_the_last_or_system() -> None:
    system = msg("system", "rules")
    new = [
        system,
        *[msg("user" if i % 2 else "assistant", f"m{i}".ljust(40, ".")) for i in range(9)],
    ]
    per_message = EST.message(new[1])
    room = EST.prompt_overhead + EST.messages([system]) + 3 * per_message
    result = assemble([turn(1)], new, budget(room), EST)
    assert result.messages == [system, *new[-3:]]
    assert result.info.truncated
    assert result.info.turns_dropped == 1
    assert result.info.messages_dropped == 2 + 6
    assert result.info.limited_by == "tokens"
    assert result.info.tokens_used <= room


def test_413_only_when_the_system_prompt_and_the_last_message_cannot_fit() -> None:
    new = [msg("user", "x" * 4000), msg("assistant", "ok"), msg("user", "short")]
    fits = assemble([], new, Budget(256, 64, "model"), EST)
    assert fits.messages == new[1:]
    with pytest.raises(CorralError) as info:
        assemble([], [*new, msg("user", "y" * 4000)], Budget(256, 64, "model"), EST)
    assert info.value.status == 413


def test_the_message_cap_drops_whole_turns_and_says_so() -> None:
    history = [turn(i) for i in range(5)]
    result = assemble(history, [msg("user", "now")], budget(10_000), EST, max_history_length=4)
    assert result.messages == [*turn(3), *turn(4), msg("user", "now")]
    assert result.info.as_dict() == {
        "truncated": True,
        "messages_used": 5,
        "tokens_used": result.info.tokens_used,
        "turns_dropped": 3,
        "messages_dropped": 6,
        "limited_by": "max_history_length",
        "max_history_length": 4,
    }
    # A cap that is not reached changes nothing, and says nothing.
    wide = assemble(history, [msg("user", "now")], budget(10_000), EST, max_history_length=10)
    assert set(wide.info.as_dict()) == {
        "truncated",
        "messages_used",
        "tokens_used",
        "turns_dropped",
    }
    # System prompts do not count against it.
    with_system = [[msg("system", "s"), *turn(0)], turn(1)]
    kept = assemble(with_system, [msg("user", "now")], budget(10_000), EST, max_history_length=4)
    assert kept.info.turns_dropped == 0


def test_the_fallback_system_prompt_only_when_there_is_none() -> None:
    fallback = Fallback(msg("system", "default"), "default")
    fresh = assemble([], [msg("user", "hi")], budget(1000), EST, fallback=fallback)
    assert fresh.messages[0] == msg("system", "default")
    assert fresh.info.as_dict()["system_prompt"] == "default"
    stored = assemble(
        [[msg("system", "mine"), *turn(1)]],
        [msg("user", "hi")],
        budget(1000),
        EST,
        fallback=fallback,
    )
    assert stored.messages[0] == msg("system", "mine")
    assert "system_prompt" not in stored.info.as_dict()
