"""The reload thrash guard: num_ctx stays put for requests that fit (and never past what the
model holds), keep_alive is clamped."""

from __future__ import annotations

from typing import Any

import pytest

from corral_common.context_lengths import StaticContextLengths
from corral_common.messages import Job, JobKind
from corral_scheduler.load_guard import (
    GuardPolicy,
    LoadGuard,
    backend_context_lengths,
    keep_alive_seconds,
    unloads_now,
)
from services.scheduler.tests import fakes


def job(payload: dict[str, Any], kind: JobKind = "chat", model: str = "llama3.2") -> Job:
    messages = [{"role": "user", "content": "hi"}]
    return fakes.job(
        "r", kind=kind, model=model, payload={"model": model, "messages": messages, **payload}
    )


def num_ctx(payload: dict[str, Any]) -> int | None:
    options = payload.get("options") or {}
    value = options.get("num_ctx")
    return value if isinstance(value, int) else None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (300, 300.0),
        (2.5, 2.5),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("0", 0.0),
        ("-1s", -1.0),
        ("300ms", 0.3),
        ("300", None),
        ("soon", None),
        (True, None),
        ([], None),
    ],
)
def test_keep_alive_is_read_as_ollama_reads_it(value: Any, seconds: float | None) -> None:
    assert keep_alive_seconds(value) == seconds


def test_a_request_that_fits_uses_the_loaded_context() -> None:
    guard = LoadGuard(GuardPolicy())
    first = guard.payload(job({"options": {"num_ctx": 8192}}))
    assert num_ctx(first) == 8192
    # Smaller, or absent (the backend's default): served by the 8192 runner, no reload.
    assert num_ctx(guard.payload(job({"options": {"num_ctx": 2048, "seed": 1}}))) == 8192
    assert num_ctx(guard.payload(job({}))) == 8192


def test_growth_rounds_up_to_a_power_of_two_within_the_cap() -> None:
    guard = LoadGuard(GuardPolicy(num_ctx_max=16384))
    assert num_ctx(guard.payload(job({}))) is None  # the default, untouched
    assert num_ctx(guard.payload(job({"options": {"num_ctx": 5000}}))) == 8192
    assert num_ctx(guard.payload(job({"options": {"num_ctx": 6000}}))) == 8192
    assert num_ctx(guard.payload(job({"options": {"num_ctx": 9000}}))) == 16384
    # The cap never cuts below what a request needs.
    assert num_ctx(guard.payload(job({"options": {"num_ctx": 20000}}))) == 20000


def test_models_are_tracked_separately_and_forgotten_on_unload() -> None:
    guard = LoadGuard(GuardPolicy())
    guard.payload(job({"options": {"num_ctx": 8192}}, model="llama3.2"))
    assert num_ctx(guard.payload(job({}, model="tiny"))) is None
    unload = job({"messages": [], "keep_alive": 0}, model="llama3.2:latest")
    assert unloads_now(unload)
    assert guard.payload(unload) == unload.payload
    assert num_ctx(guard.payload(job({}, model="llama3.2"))) is None


def test_pass_policy_leaves_num_ctx_alone() -> None:
    guard = LoadGuard(GuardPolicy(num_ctx="pass"))
    guard.payload(job({"options": {"num_ctx": 8192}}))
    assert num_ctx(guard.payload(job({"options": {"num_ctx": 2048}}))) == 2048


@pytest.mark.parametrize(
    ("sent", "expected"),
    [(0, 60), ("10s", 60), ("5m", "5m"), (7200, 3600), (-1, 3600), ("2h", 3600)],
)
def test_keep_alive_is_clamped(sent: Any, expected: Any) -> None:
    guard = LoadGuard(GuardPolicy(keep_alive_min_s=60, keep_alive_max_s=3600))
    assert guard.payload(job({"keep_alive": sent}))["keep_alive"] == expected


def test_the_unload_idiom_is_never_clamped() -> None:
    guard = LoadGuard(GuardPolicy(keep_alive_min_s=60))
    unload = job({"prompt": "", "keep_alive": 0}, kind="generate")
    assert guard.payload(unload)["keep_alive"] == 0


# llama3.2's trained context (the emulator's is smaller; any will do).
LLAMA_CTX = 131072


async def test_a_huge_num_ctx_is_the_models_context_length_and_does_not_stick() -> None:
    """The audit: after one `num_ctx: 1e12`, every llama3.2 request went out with 2^40. Ollama
    loads at most the model's trained context (llm/server.go NewLlamaServer), so the guard
    keeps and sends no more than that."""
    guard = LoadGuard(GuardPolicy(), StaticContextLengths({"llama3.2": LLAMA_CTX}))
    assert num_ctx(await guard.payload_for(job({}))) is None
    for huge in (10**12, 1e12):
        assert num_ctx(await guard.payload_for(job({"options": {"num_ctx": huge}}))) == LLAMA_CTX
    # Later requests fit in what is loaded: served with it, never with 2^40.
    assert num_ctx(await guard.payload_for(job({"options": {"num_ctx": 8192}}))) == LLAMA_CTX
    assert num_ctx(await guard.payload_for(job({}))) == LLAMA_CTX
    # Unloaded, the next load is the default again.
    guard.payload(job({"messages": [], "keep_alive": 0}))
    assert num_ctx(await guard.payload_for(job({}))) is None


async def test_growth_never_rounds_past_the_models_context_length() -> None:
    guard = LoadGuard(GuardPolicy(), StaticContextLengths({"qwen3": 40960}))
    guard.payload(job({}, model="qwen3"))
    # 33000 would grow to 65536; the model holds 40960.
    assert num_ctx(
        await guard.payload_for(job({"options": {"num_ctx": 33000}}, model="qwen3"))
    ) == (40960)


def test_a_length_learned_late_shrinks_what_the_guard_keeps() -> None:
    guard = LoadGuard(GuardPolicy())
    guard.payload(job({}))
    assert num_ctx(guard.payload(job({"options": {"num_ctx": 10**12}}))) == 2**40  # unknown
    guard.learn_context_length("llama3.2:latest", LLAMA_CTX)
    assert num_ctx(guard.payload(job({}))) == LLAMA_CTX


async def test_no_lookup_for_requests_without_num_ctx() -> None:
    asked: list[str] = []

    class Lengths:
        async def context_length(self, model: str) -> int | None:
            asked.append(model)
            raise RuntimeError("model manager gone")

    guard = LoadGuard(GuardPolicy(), Lengths())
    assert num_ctx(await guard.payload_for(job({}))) is None
    assert asked == []
    # A failed lookup is no failure of the job: the guard works as without lengths.
    assert num_ctx(await guard.payload_for(job({"options": {"num_ctx": 8192}}))) == 8192
    assert asked == ["llama3.2"]


@pytest.mark.parametrize("wrong", ["8192", True, False, [8192], {"n": 1}])
def test_a_num_ctx_ollama_refuses_is_neither_replaced_nor_kept(wrong: Any) -> None:
    """Ollama answers 500 `option "num_ctx" must be of type integer` (api/types.go FromMap);
    replacing the value would turn the client's error into a success."""
    guard = LoadGuard(GuardPolicy())
    guard.payload(job({"options": {"num_ctx": 16384}}))
    sent = guard.payload(job({"options": {"num_ctx": wrong, "seed": 1}}))
    assert sent["options"] == {"num_ctx": wrong, "seed": 1}
    # And it did not change what is loaded.
    assert num_ctx(guard.payload(job({}))) == 16384


def test_a_fractional_num_ctx_is_read_as_ollama_truncates_it() -> None:
    guard = LoadGuard(GuardPolicy())
    guard.payload(job({"options": {"num_ctx": 8192}}))
    # 8192.9 is 8192 to Ollama (int64(t)): fits, served unchanged by the 8192 runner.
    assert guard.payload(job({"options": {"num_ctx": 8192.9}}))["options"]["num_ctx"] == 8192.9
    assert num_ctx(guard.payload(job({"options": {"num_ctx": 8193.5}}))) == 16384


class ShowingBackend:
    def __init__(self, answers: dict[str, dict[str, Any]]) -> None:
        self.answers = answers

    async def show(self, model: str) -> dict[str, Any]:
        if model not in self.answers:
            raise LookupError(model)
        return self.answers[model]


async def test_backend_context_lengths_come_from_show() -> None:
    info = {"general.architecture": "llama", "llama.context_length": LLAMA_CTX}
    backends = {
        "a": ShowingBackend({}),
        "b": ShowingBackend({"llama3.2": {"model_info": info}, "bare": {"model_info": None}}),
    }
    lengths = backend_context_lengths(backends)
    assert await lengths.context_length("llama3.2") == LLAMA_CTX
    assert await lengths.context_length("bare") is None
    assert await lengths.context_length("missing") is None
