from __future__ import annotations

import pytest

from corral_emulator import (
    count_message_tokens,
    count_prompt_tokens,
    expected_done_reason,
    expected_reply,
    fit_messages,
    reply_tokens,
    tokenize,
)
from corral_emulator.durations import FOREVER_NS, DurationError, parse_go_duration, parse_keep_alive
from corral_emulator.models import canonical_model_name
from corral_emulator.timestamps import rfc3339_nano


@pytest.mark.parametrize("text", ["", "one", " lead", "two  words\n", "a\tb \n c  "])
def test_tokenize_round_trips_and_keeps_leading_space(text: str) -> None:
    tokens = tokenize(text)
    assert "".join(tokens) == text
    assert all(token for token in tokens)


def test_tokenize_splits_at_word_boundaries() -> None:
    assert tokenize("Echo: hi  there") == ["Echo:", " hi", "  there"]


def test_expected_reply_and_num_predict() -> None:
    assert expected_reply("hello world") == "Echo: hello world"
    assert expected_reply("hello world", num_predict=2) == "Echo: hello"
    assert expected_reply("hello world", num_predict=0) == "Echo: hello world"
    assert reply_tokens("a b", num_predict=-1) == ["Echo:", " a", " b"]


def test_done_reason_is_length_when_num_predict_is_reached() -> None:
    assert expected_done_reason("a b") == "stop"
    assert expected_done_reason("a b", num_predict=3) == "length"
    assert expected_done_reason("a b", num_predict=4) == "stop"


def test_prompt_token_estimates() -> None:
    assert count_prompt_tokens(["one two", "three"]) == 2 + 4 + 1 + 4
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert count_message_tokens(messages) == 2 + 4 + 1 + 4


def test_fit_messages_drops_oldest_but_keeps_system_and_last() -> None:
    system = {"role": "system", "content": "sys"}
    history = [{"role": "user", "content": "word " * 20} for _ in range(5)]
    last = {"role": "user", "content": "final question"}
    kept = fit_messages([system, *history, last], context_length=60)
    assert kept[0] is system
    assert kept[-1] is last
    assert count_message_tokens(kept) <= 60
    # system 5 + last 6 + one history message 25 = 36; a second (61) would not fit.
    assert kept == [system, history[-1], last]
    # A last message that alone overflows is still kept.
    assert fit_messages([*history, last], context_length=1) == [last]


@pytest.mark.parametrize(
    ("value", "nanos"),
    [
        (0, 0),
        ("0", 0),
        (300, 300 * 10**9),
        (1.5, 1_500_000_000),
        ("5m", 300 * 10**9),
        ("1h30m", 5400 * 10**9),
        ("250ms", 250_000_000),
        (-1, FOREVER_NS),
        ("-1m", FOREVER_NS),
    ],
)
def test_keep_alive_values(value: object, nanos: int) -> None:
    keep_alive = parse_keep_alive(value)
    assert keep_alive is not None
    assert keep_alive.nanos == nanos


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("300", 'time: missing unit in duration "300"'),
        ("-1", 'time: missing unit in duration "-1"'),
        ("5d", 'time: unknown unit "d" in duration "5d"'),
        ("abc", 'time: invalid duration "abc"'),
        (True, "Unsupported type: 'bool'"),
        ([], "Unsupported type: '[]interface {}'"),
    ],
)
def test_keep_alive_errors_use_go_wording(value: object, message: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_keep_alive(value)
    assert str(caught.value) == message


def test_keep_alive_absent() -> None:
    assert parse_keep_alive(None) is None
    assert parse_go_duration("1.5s") == 1_500_000_000


def test_model_names_ignore_case_and_default_tag() -> None:
    assert canonical_model_name("Llama3.2") == "llama3.2:latest"
    assert canonical_model_name("qwen2.5:0.5B") == "qwen2.5:0.5b"
    assert canonical_model_name("host:5000/ns/model") == "host:5000/ns/model:latest"


def test_rfc3339_nano_trims_fraction() -> None:
    assert rfc3339_nano(0) == "1970-01-01T00:00:00Z"
    assert rfc3339_nano(1_500_000_000) == "1970-01-01T00:00:01.5Z"
    assert rfc3339_nano(1_000_000_123) == "1970-01-01T00:00:01.000000123Z"
