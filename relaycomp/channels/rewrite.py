"""Slicing a pruning plan into a model, and what it kept: shared by ``relaycomp prune`` (ONNX)
and the ``prune_channels`` pass (Relax)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from relaycomp.channels.apply import sliced_constants
from relaycomp.channels.graph import ChannelGraph


def pruned_model(view, graph: ChannelGraph, keep: Mapping[int, np.ndarray], *,
                 compensate: bool = False, calib: Mapping[str, np.ndarray] | None = None):
    """``view``'s model with each group cut to the channels ``keep`` names (group id -> kept
    indices); with ``compensate``, the removed channels' mean contribution (on ``calib`` when
    given) is folded into the next layer's bias. The input is not modified."""
    constants = sliced_constants(graph, keep)
    if compensate and keep:
        from relaycomp.channels.compensate import compensated_constants

        constants = compensated_constants(graph, keep, constants, calib)
    return view.apply(graph, keep, constants)


def kept_groups(graph: ChannelGraph, keep: Mapping[int, np.ndarray],
                protected: Iterable[str] = ()) -> tuple[list[dict], list[dict]]:
    """The groups pruned (name, producers, channels, kept) and those skipped (with reasons:
    what blocked the analysis, or ``protected`` producers)."""
    protected = set(protected)
    groups, skipped = [], []
    for group in graph.groups:
        entry = {"name": group.name, "producers": group.producers, "channels": group.size}
        reasons = list(group.blocked)
        if protected & set(group.producers):
            reasons.append("protected")
        if reasons:
            skipped.append({**entry, "reasons": reasons})
        else:
            groups.append({**entry, "kept": len(keep.get(group.id, range(group.size)))})
    return groups, skipped
