"""Importance criteria for structured pruning: one-method protocols in a registry.

An importance scores every channel of a dependency group (higher = keep); channels with the
lowest scores are removed. Write your own in a few lines::

    class MaxAbs:
        \"\"\"Largest |weight| of each output filter.\"\"\"
        def __call__(self, group, graph):
            scores = np.zeros(group.size)
            for cut, values in group_slices(group, graph, roles=("out",)):
                scores = np.maximum(scores, np.abs(values).max(axis=1))
            return scores

    IMPORTANCE.add("max_abs", MaxAbs)   # then PruneConfig(importance="max_abs")
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

import numpy as np

from relaycomp.channels.graph import ChannelGraph, Group, TensorCut
from relaycomp.errors import CalibrationError
from relaycomp.registry import Registry


class Importance(Protocol):
    """Scores the channels of a group: ``__call__(group, graph) -> float array [group.size]``."""

    def __call__(self, group: Group, graph: ChannelGraph) -> np.ndarray: ...


IMPORTANCE: Registry[type] = Registry("importance criterion")

WEIGHT_ROLES = ("out", "in")


def group_slices(group: Group, graph: ChannelGraph, roles=WEIGHT_ROLES,
                 ) -> Iterator[tuple[TensorCut, np.ndarray]]:
    """Each cut of ``group`` with one of ``roles``, as ``[group.size, everything else]`` arrays.

    A concat or flatten makes one constant hold several segments; each of the group's segments
    is yielded on its own, a Flatten block of ``H*W`` columns folded into the channel's row.
    """
    roots = {graph.find(s) for s in group.spaces}
    for cut in group.cuts:
        if cut.role not in roles:
            continue
        value = graph.constant(cut.tensor)
        for i, seg in enumerate(cut.segments):
            if seg.space is None or graph.find(seg.space) not in roots:
                continue
            taken = np.take(value, cut.positions(i), axis=cut.axis)  # [..., size, repeat, ...]
            moved = np.moveaxis(taken, (cut.axis, cut.axis + 1), (0, 1))
            yield cut, moved.reshape(seg.size, -1).astype(np.float64)


@IMPORTANCE.register("l1")
class L1:
    """Sum of |w| over the group's filters and the consumers' input slices (Li et al. 2017)."""

    def __call__(self, group: Group, graph: ChannelGraph) -> np.ndarray:
        scores = np.zeros(group.size)
        for _cut, values in group_slices(group, graph):
            scores += np.abs(values).sum(axis=1)
        return scores


@IMPORTANCE.register("l2")
class L2:
    """Euclidean norm of the group's weights per channel (filters + consumers' inputs)."""

    def __call__(self, group: Group, graph: ChannelGraph) -> np.ndarray:
        squares = np.zeros(group.size)
        for _cut, values in group_slices(group, graph):
            squares += np.square(values).sum(axis=1)
        return np.sqrt(squares)


@IMPORTANCE.register("bn_scale")
class BNScale:
    """|gamma| of the group's BatchNorms, summed (network slimming, Liu et al. 2017).

    A group without a BatchNorm falls back to :class:`L2`.
    """

    def __call__(self, group: Group, graph: ChannelGraph) -> np.ndarray:
        slices = list(group_slices(group, graph, roles=("bn_scale",)))
        if not slices:
            return L2()(group, graph)
        return sum(np.abs(values).sum(axis=1) for _cut, values in slices)


@IMPORTANCE.register("random")
class Random:
    """Uniform random scores: the baseline every criterion must beat."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, group: Group, graph: ChannelGraph) -> np.ndarray:
        return np.random.default_rng([self.seed, group.id]).random(group.size)


@IMPORTANCE.register("activation")
class Activation:
    """Mean |activation| of each channel where the group's consumers read it, on ``calib``.

    ``calib`` maps input names to arrays (a batch). Runs the model once (onnxruntime for ONNX,
    the Relax VM for Relax), exposing every tensor a consumer reads; a group without a consumer
    falls back to L2.
    """

    def __init__(self, calib: Mapping[str, np.ndarray] | None = None):
        if not calib:
            raise CalibrationError("the activation criterion needs calibration inputs",
                                   hint="pass calib={input name: array} (a batch of samples)")
        self.calib = dict(calib)
        self._graph: ChannelGraph | None = None  # the graph the cached activations are of
        self._values: dict[str, np.ndarray] = {}

    def __call__(self, group: Group, graph: ChannelGraph) -> np.ndarray:
        activations = self._activations(graph)
        roots = {graph.find(s) for s in group.spaces}
        scores, found = np.zeros(group.size), False
        for cut in group.cuts:
            if cut.role != "in" or cut.activation not in activations:
                continue
            value = np.abs(activations[cut.activation]).astype(np.float64)
            for i, seg in enumerate(cut.segments):
                if seg.space is not None and graph.find(seg.space) in roots:
                    layout_axis = graph.layouts[cut.activation].axis
                    taken = np.take(value, cut.positions(i), axis=layout_axis)
                    moved = np.moveaxis(taken, (layout_axis, layout_axis + 1), (0, 1))
                    scores += moved.reshape(seg.size, -1).mean(axis=1)
                    found = True
        return scores if found else L2()(group, graph)

    def _activations(self, graph: ChannelGraph) -> dict[str, np.ndarray]:
        if self._graph is not graph:
            names = sorted({c.activation for c in graph.cuts if c.activation})
            self._values = graph.view.activations(self.calib, names)
            self._graph = graph
        return self._values


def make_importance(spec, calib: Mapping[str, np.ndarray] | None = None) -> Importance:
    """An importance from a registered name (``"l2"``) or an object with ``__call__``."""
    if not isinstance(spec, str):
        return spec
    cls = IMPORTANCE.get(spec)
    return cls(calib) if cls is Activation else cls()
