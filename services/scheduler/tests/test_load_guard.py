"""The reload thrash guard: num_ctx stays put for requests that fit, keep_alive is clamped."""

from __future__ import annotations

from typing import Any

import pytest

from corral_common.messages import Job, JobKind
from corral_scheduler.load_guard import GuardPolicy, LoadGuard, keep_alive_seconds, unloads_now
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
