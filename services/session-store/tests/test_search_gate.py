"""The search bounds: overall and per caller, refused at once with Retry-After."""

from __future__ import annotations

import pytest

from corral_common.errors import CorralError, ErrorType
from corral_session_store.search_gate import SearchGate


def test_bounds_per_caller_then_overall_and_slots_come_back() -> None:
    gate = SearchGate(overall=2, per_caller=1, retry_after_s=3)
    with gate.admit("alice"):
        with pytest.raises(CorralError) as mine, gate.admit("alice"):
            pass
        assert (mine.value.status, mine.value.error_type) == (429, ErrorType.RATE_LIMIT_EXCEEDED)
        assert mine.value.headers == {"Retry-After": "3"}
        with gate.admit("bob"):
            with pytest.raises(CorralError) as full, gate.admit("carol"):
                pass
            assert full.value.status == 503
            assert full.value.details["scope"] == "overall"
            assert gate.running == 2
    assert gate.running == 0
    with gate.admit("alice"), gate.admit("carol"):
        assert gate.running == 2


def test_a_failed_search_gives_its_slot_back() -> None:
    gate = SearchGate(overall=1, per_caller=1, retry_after_s=1)
    with pytest.raises(RuntimeError), gate.admit("alice"):
        raise RuntimeError("database gone")
    with gate.admit("alice"):
        assert gate.running == 1
