"""Calibrators: turn observed activations into the float range each tensor is quantized over.

A calibrator is a two-method protocol (ONNX Runtime's shape): ``observe(name, array)`` is called
for every batch of every calibrated tensor, ``ranges()`` returns ``{name: (low, high)}``. Ranges
always contain 0, so zero (padding, ReLU) is exactly representable. Register your own::

    @CALIBRATORS.register("absmax_half")
    class HalfAbsMax(MinMax):
        def ranges(self):
            return {n: (lo / 2, hi / 2) for n, (lo, hi) in super().ranges().items()}

Built in: ``minmax`` (exact extremes), ``percentile`` (the given percentile of ``|x|``),
``entropy`` (the clipping threshold minimizing the KL divergence between the 2048-bin histogram
of ``|x|`` and its 128-level quantization, TensorRT's method) and ``mse`` (the threshold
minimizing the expected squared quantization error, clipping plus rounding, over 255 levels).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from relaycomp.errors import CalibrationError
from relaycomp.registry import Registry


class Calibrator(Protocol):
    """Collects statistics of named tensors and turns them into quantization ranges."""

    def observe(self, name: str, array: np.ndarray) -> None:
        """Take one batch of tensor ``name``."""

    def ranges(self) -> dict[str, tuple[float, float]]:
        """``{name: (low, high)}`` with ``low <= 0 <= high``."""


CALIBRATORS: Registry[type] = Registry("calibration method")


def make_calibrator(method: str, **options) -> Calibrator:
    """A fresh calibrator of a registered ``method`` (``percentile=`` for ``percentile``)."""
    return CALIBRATORS.get(method)(**options)


def _with_zero(low: float, high: float) -> tuple[float, float]:
    return float(min(low, 0.0)), float(max(high, 0.0))


def _finite(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32).reshape(-1)
    if array.size and not np.all(np.isfinite(array)):
        raise CalibrationError(f"tensor '{name}' holds NaN/Inf values during calibration",
                               hint="the float model overflows on the calibration data; "
                                    "check its preprocessing")
    return array


@CALIBRATORS.register("minmax")
class MinMax:
    """The smallest and largest value seen."""

    def __init__(self, **options):
        self._low: dict[str, float] = {}
        self._high: dict[str, float] = {}

    def observe(self, name: str, array: np.ndarray) -> None:
        """Update the running extremes of ``name``."""
        array = _finite(name, array)
        if not array.size:
            return
        self._low[name] = min(self._low.get(name, np.inf), float(array.min()))
        self._high[name] = max(self._high.get(name, -np.inf), float(array.max()))

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Extremes, widened to contain 0."""
        return {n: _with_zero(self._low[n], self._high[n]) for n in self._low}


class Histogram:
    """A histogram of ``|x|`` over ``[0, edge]`` that widens (re-binning) as larger values come."""

    def __init__(self, bins: int = 2048):
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.float64)
        self.edge = 0.0

    def add(self, magnitudes: np.ndarray) -> None:
        """Add ``|x|`` values; the range doubles until it covers the largest."""
        top = float(magnitudes.max()) if magnitudes.size else 0.0
        if top > self.edge:
            new_edge = max(top, 2.0 * self.edge)
            if self.edge > 0:  # move old counts to the new bins by their bin centres
                centres = (np.arange(self.bins) + 0.5) * (self.edge / self.bins)
                self.counts, _ = np.histogram(centres, self.bins, (0.0, new_edge),
                                              weights=self.counts)
            self.edge = new_edge
        if self.edge > 0:
            counts, _ = np.histogram(magnitudes, self.bins, (0.0, self.edge))
            self.counts += counts

    @property
    def width(self) -> float:
        """Width of one bin."""
        return self.edge / self.bins


class _HistogramCalibrator(MinMax):
    """Keeps exact extremes and a histogram of ``|x|``; subclasses choose a threshold on it."""

    skip_zeros = False  # leave exact zeros out of the histogram

    def __init__(self, bins: int = 2048, **options):
        super().__init__()
        self.bins = bins
        self._hist: dict[str, Histogram] = {}

    def observe(self, name: str, array: np.ndarray) -> None:
        """Update extremes and the histogram of ``name``."""
        super().observe(name, array)
        magnitudes = np.abs(_finite(name, array))
        if self.skip_zeros:
            magnitudes = magnitudes[magnitudes != 0]
        self._hist.setdefault(name, Histogram(self.bins)).add(magnitudes)

    def threshold(self, hist: Histogram, low: float, high: float) -> float:
        """The clipping threshold on ``|x|``."""
        raise NotImplementedError

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Extremes clipped to ``[-threshold, threshold]``."""
        result = {}
        for name, (low, high) in super().ranges().items():
            hist = self._hist[name]
            if not hist.counts.sum():
                result[name] = (low, high)
                continue
            t = self.threshold(hist, low, high) if hist.edge > 0 else 0.0
            result[name] = _with_zero(max(low, -t), min(high, t))
        return result


@CALIBRATORS.register("percentile")
class Percentile(_HistogramCalibrator):
    """The ``percentile`` (default 99.99) of ``|x|``."""

    def __init__(self, percentile: float = 99.99, **options):
        super().__init__(**options)
        if not 50.0 < percentile <= 100.0:
            raise CalibrationError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def threshold(self, hist: Histogram, low: float, high: float) -> float:
        """Upper edge of the bin where the cumulative count reaches the percentile."""
        cdf = np.cumsum(hist.counts) / hist.counts.sum()
        index = int(np.searchsorted(cdf, self.percentile / 100.0))
        return (min(index, hist.bins - 1) + 1) * hist.width


@CALIBRATORS.register("entropy")
class Entropy(_HistogramCalibrator):
    """TensorRT's KL-divergence threshold over the histogram of ``|x|`` (128 levels).

    Exact zeros (half of every ReLU output) are left out: any range holding 0 represents them
    exactly, and their spike would otherwise make KL prefer tiny thresholds that clip the rest.
    """

    levels = 128
    skip_zeros = True

    def threshold(self, hist: Histogram, low: float, high: float) -> float:
        """The bin count ``i`` whose clipped distribution P loses least information as Q."""
        counts = hist.counts
        best, best_i = np.inf, hist.bins
        for i in range(self.levels, hist.bins + 1, 8):
            divergence = _kl_after_quantization(counts, i, self.levels)
            if divergence < best:
                best, best_i = divergence, i
        return best_i * hist.width


def _kl_after_quantization(counts: np.ndarray, i: int, levels: int) -> float:
    """KL(P || Q): P = the first ``i`` bins with the outliers added to the last; Q = the same
    bins *without* the outliers, merged into ``levels`` groups and spread back evenly over each
    group's non-empty bins (so the clipped mass counts against small thresholds)."""
    sliced = counts[:i]
    p = sliced.copy()
    p[-1] += counts[i:].sum()
    groups = np.arange(i) * levels // i
    nonzero = sliced > 0
    group_sum = np.bincount(groups, weights=sliced, minlength=levels)
    group_nonzero = np.bincount(groups, weights=nonzero, minlength=levels)
    q = np.where(nonzero, group_sum[groups] / np.maximum(group_nonzero[groups], 1), 0.0)
    p_total, q_total = p.sum(), q.sum()
    if p_total == 0 or q_total == 0:
        return np.inf
    p, q = p / p_total, q / q_total
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-9))))


@CALIBRATORS.register("mse")
class MeanSquaredError(_HistogramCalibrator):
    """The threshold minimizing clipping error plus uniform rounding error (step² / 12)."""

    levels = 255

    def threshold(self, hist: Histogram, low: float, high: float) -> float:
        """Search every bin edge as a candidate threshold."""
        centres = (np.arange(hist.bins) + 0.5) * hist.width
        candidates = (np.arange(1, hist.bins + 1)) * hist.width
        counts = hist.counts
        errors = np.empty(len(candidates))
        for k, t in enumerate(candidates):
            span = min(high, t) - max(low, -t)  # asymmetric data only spends levels it needs
            step = span / self.levels
            clipped = np.maximum(centres - t, 0.0)
            errors[k] = np.sum(counts * np.where(clipped > 0, clipped ** 2, step * step / 12))
        return float(candidates[int(np.argmin(errors))])
