"""Calibrators: each method's range on data whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from relaycomp.errors import CalibrationError
from relaycomp.quantize.calib import (
    CALIBRATORS,
    Histogram,
    MinMax,
    _kl_after_quantization,
    make_calibrator,
)

RNG = np.random.default_rng(0)
GAUSSIAN = RNG.standard_normal(400_000).astype(np.float32)


def calibrated(method: str, data: np.ndarray, batches: int = 4, **options) -> tuple:
    calibrator = make_calibrator(method, **options)
    for part in np.array_split(data, batches):
        calibrator.observe("t", part)
    return calibrator.ranges()["t"]


def fake_quant_mse(data: np.ndarray, low: float, high: float) -> float:
    """Mean squared error of asymmetric int8 fake quantization over [low, high]."""
    scale = (high - low) / 255
    zero = np.round(-128 - low / scale)
    quantized = np.clip(np.round(data / scale) + zero, -128, 127)
    return float(np.mean(((quantized - zero) * scale - data) ** 2))


def test_minmax_is_the_exact_extremes_over_all_batches():
    assert calibrated("minmax", np.array([0.5, -2.0, 3.25, 1.0], np.float32)) == (-2.0, 3.25)


def test_ranges_always_contain_zero():
    assert calibrated("minmax", np.array([2.0, 5.0], np.float32), batches=2) == (0.0, 5.0)
    low, high = calibrated("entropy", RNG.uniform(1.0, 2.0, 10_000).astype(np.float32))
    assert low == 0.0 and high > 1.5


def test_percentile_of_uniform_data_is_that_fraction_of_the_range():
    data = RNG.uniform(0.0, 1.0, 200_000).astype(np.float32)
    low, high = calibrated("percentile", data, percentile=99.0)
    assert low == 0.0
    assert high == pytest.approx(0.99, abs=2e-3)


def test_entropy_clips_rare_outliers_but_keeps_the_bulk_of_a_gaussian():
    data = GAUSSIAN.copy()
    data[:20] = 50.0  # 0.005% outliers at 50 sigma
    low, high = calibrated("entropy", data)
    assert 3.0 < high < 8.0  # TensorRT's KL threshold: clips the outliers, not the bell
    assert low == pytest.approx(-high)  # one threshold on |x| clips both tails


def test_mse_threshold_matches_a_brute_force_search_of_the_real_error():
    data = GAUSSIAN.copy()
    data[:20] = 20.0
    low, high = calibrated("mse", data)
    candidates = np.linspace(3.0, 20.0, 171)
    errors = [fake_quant_mse(data, float(data.min()), t) for t in candidates]
    best = candidates[int(np.argmin(errors))]
    assert high == pytest.approx(best, abs=0.5)
    assert fake_quant_mse(data, low, high) <= 1.02 * min(errors)
    assert fake_quant_mse(data, low, high) < fake_quant_mse(data, *calibrated("minmax", data))


def test_kl_is_zero_when_nothing_is_clipped_or_merged_and_grows_with_clipped_mass():
    counts = np.array([4.0, 0.0, 2.0, 2.0])
    assert _kl_after_quantization(counts, 4, 4) == pytest.approx(0.0)
    outliers = np.array([4.0, 0.0, 2.0, 2.0, 3.0, 5.0])
    assert _kl_after_quantization(outliers, 4, 4) > _kl_after_quantization(outliers, 6, 4)
    # P = [1, 1, 2, 0] merged pairwise: Q spreads 2 over both bins, then 2 over the one non-empty
    p, q = np.array([0.25, 0.25, 0.5]), np.array([0.25, 0.25, 0.5])
    assert _kl_after_quantization(np.array([1.0, 1.0, 2.0, 0.0]), 4, 2) == pytest.approx(
        float(np.sum(p * np.log(p / q))))


def test_histogram_widens_without_losing_counts():
    hist = Histogram(bins=64)
    hist.add(np.abs(RNG.standard_normal(1000)))
    hist.add(np.array([40.0]))
    assert hist.counts.sum() == 1001 and hist.edge >= 40.0


def test_nan_in_an_activation_is_a_calibration_error():
    with pytest.raises(CalibrationError, match="NaN/Inf"):
        MinMax().observe("conv2d_0", np.array([1.0, np.nan], np.float32))


def test_methods_are_a_registry_and_users_can_add_one():
    assert {"minmax", "percentile", "entropy", "mse"} <= set(CALIBRATORS.names())
    with pytest.raises(Exception, match="unknown calibration method") as error:
        make_calibrator("kl-divergence")
    assert error.value.hint == "known: entropy, minmax, mse, percentile"
    with CALIBRATORS.scoped():
        @CALIBRATORS.register("half")
        class Half(MinMax):
            def ranges(self):
                return {n: (lo / 2, hi / 2) for n, (lo, hi) in super().ranges().items()}

        assert calibrated("half", np.array([-4.0, 8.0], np.float32), batches=1) == (-2.0, 4.0)
    assert "half" not in CALIBRATORS
