from __future__ import annotations

from corral_session_store.tokens import (
    MAX_FACTOR,
    MESSAGE_OVERHEAD,
    Calibration,
    TokenEstimator,
    raw_prompt_tokens,
)


def test_estimate_is_chars_over_four_plus_overhead() -> None:
    est = TokenEstimator()
    assert est.message({"role": "user", "content": "x" * 40}) == MESSAGE_OVERHEAD + 10
    assert est.message({"role": "user", "content": ""}) == MESSAGE_OVERHEAD
    assert TokenEstimator(2.0).message({"role": "user", "content": "x" * 40}) == 28
    with_image = est.message({"role": "user", "content": "", "images": ["AAAA"]})
    assert with_image > 500


def test_calibration_converges_on_the_backends_counts() -> None:
    raw = raw_prompt_tokens([{"role": "user", "content": "x" * 400}])
    calibration = Calibration()
    for _ in range(30):
        assert calibration.observe(raw, round(raw * 1.5))
    assert abs(calibration.factor - 1.5) < 0.01
    assert calibration.samples == 30


def test_calibration_ignores_implausible_samples_and_is_clamped() -> None:
    calibration = Calibration()
    assert not calibration.observe(100, 0)  # a fully cached prompt reports nothing useful
    assert not calibration.observe(100, 5000)
    assert not calibration.observe(0, 10)
    assert calibration.samples == 0
    for _ in range(100):
        calibration.observe(100, 499)
    assert calibration.factor <= MAX_FACTOR
