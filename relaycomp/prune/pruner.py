"""Structured pruning: remove whole channels, filters and dense neurons from an ONNX model.

The upper level of the two-level API (the dependency analysis is :mod:`relaycomp.channels.graph`)::

    pruned, report = relaycomp.prune(model, PruneConfig(ratio=0.3, importance="l2"))
    print(report.summary())          # params, MACs, size before/after; channels kept per layer

    pruner = Pruner(model, PruneConfig(ratio=0.5, scope="global"))   # step by step
    pruner.graph.groups; pruner.scores(); pruner.plan(); pruned, report = pruner.run()

Guarantees: graph inputs and outputs keep their names and shapes; every dependency group is
pruned as a unit (filters, BatchNorm statistics, per-channel constants, the consumers' input
channels, Flatten blocks of the following dense layer, depthwise ``group`` attributes, Split
sizes), so the result passes ``onnx.checker`` and runs; a group the analysis cannot follow is
left untouched and listed in the report with its reason. ``ratio=0`` returns an equal model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from relaycomp.channels.graph import ChannelGraph, Group
from relaycomp.channels.rewrite import kept_groups, pruned_model
from relaycomp.channels.view import GraphView, OnnxView
from relaycomp.errors import RelaycompError
from relaycomp.prune.importance import IMPORTANCE, make_importance

SCOPES = ("uniform", "global")


class PruneError(RelaycompError):
    """Bad pruning options (ratio, names of protected/overridden layers, criterion)."""


@dataclass(frozen=True)
class PruneConfig:
    """How much to prune and how to choose.

    ``ratio``: fraction of channels removed from each prunable group (``uniform``) or from all of
    them ranked together after normalizing each group's scores by their mean (``global``; no
    group loses more than ``max_group_ratio``). ``importance``: a registered criterion name
    (``l1``, ``l2``, ``bn_scale``, ``activation``, ``random``) or an object with
    ``__call__(group, graph)``. ``round_to``: kept counts are rounded *up* to a multiple (so
    kernels stay vectorizable); a group never drops below one channel. ``protected``: node names
    whose output channels stay. ``overrides``: node name → ratio for that node's group.
    The last layer is always intact: graph outputs never change shape. ``compensate``: fold
    the removed channels' mean contribution into the next conv/dense layer's bias (their mean
    activation on the calibration data when given, else their activation as a constant channel
    equal to its bias); see :mod:`relaycomp.channels.compensate`.
    """

    ratio: float = 0.3
    importance: object = "l2"
    scope: str = "uniform"
    round_to: int = 8
    protected: tuple[str, ...] = ()
    overrides: Mapping[str, float] = field(default_factory=dict)
    max_group_ratio: float = 0.9
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    compensate: bool = False

    def __post_init__(self):
        labels = [("ratio", self.ratio)]
        labels += [(f"override for '{name}'", value) for name, value in self.overrides.items()]
        for label, value in labels:
            if not 0.0 <= value < 1.0:
                raise PruneError(f"pruning {label} must be in [0, 1), got {value}")
        if self.scope not in SCOPES:
            raise PruneError(f"unknown pruning scope '{self.scope}'", hint=f"known: {SCOPES}")
        if self.round_to < 1:
            raise PruneError(f"round_to must be at least 1, got {self.round_to}")
        if not 0.0 < self.max_group_ratio < 1.0:
            raise PruneError(f"max_group_ratio must be in (0, 1), got {self.max_group_ratio}")
        if isinstance(self.importance, str) and self.importance not in IMPORTANCE:
            IMPORTANCE.get(self.importance)  # raises, listing the known criteria
        object.__setattr__(self, "protected", tuple(self.protected))

    def to_json(self) -> dict:
        """JSON form for reports and manifests."""
        importance = self.importance if isinstance(self.importance, str) \
            else type(self.importance).__name__
        return {"ratio": self.ratio, "importance": importance, "scope": self.scope,
                "round_to": self.round_to, "protected": list(self.protected),
                "overrides": dict(self.overrides), "max_group_ratio": self.max_group_ratio,
                "compensate": self.compensate}


@dataclass
class PruneReport:
    """What pruning did: model totals before/after, kept channels per group, groups skipped."""

    config: dict
    before: dict
    after: dict
    pruned: list[dict]
    skipped: list[dict]
    plan: dict[int, np.ndarray] = field(default_factory=dict)  # group id -> kept channel indices

    def to_json(self) -> dict:
        """JSON form (stored in the compile manifest under ``report.prune``)."""
        return {"config": self.config, "before": self.before, "after": self.after,
                "groups": self.pruned, "skipped": self.skipped}

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        lines = []
        for key, label in [("params", "params"), ("macs", "MACs"), ("param_bytes", "bytes")]:
            old, new = self.before[key], self.after[key]
            lines.append(f"{label:7} {old:>14,} -> {new:>14,}  ({_percent(new, old)})")
        for group in self.pruned:
            lines.append(f"  {group['name']}: {group['channels']} -> {group['kept']} channels")
        for group in self.skipped:
            lines.append(f"  skipped {group['name']} ({group['channels']} channels): "
                         + "; ".join(group["reasons"]))
        return "\n".join(lines)


def _percent(new: int, old: int) -> str:
    return f"{100.0 * new / old:.1f}%" if old else "n/a"


class Pruner:
    """Plans and applies structured pruning of one model under one :class:`PruneConfig`.

    ``model`` is an ONNX model or a :class:`GraphView` of any front end (the ``prune_channels``
    Relax pass passes a :class:`relaycomp.channels.relax_view.RelaxView`).
    """

    def __init__(self, model, config: PruneConfig | None = None,
                 calib: Mapping[str, np.ndarray] | None = None):
        self.config = config or PruneConfig()
        self.view = model if isinstance(model, GraphView) \
            else OnnxView(model, dict(self.config.input_shapes))
        self.model = self.view.source
        self.calib = calib
        self.graph = ChannelGraph.build(self.view)
        known = self.view.node_names()
        unknown = [n for n in [*self.config.protected, *self.config.overrides] if n not in known]
        if unknown:
            raise PruneError(f"no node named {unknown} in the model",
                             hint="name the producing Conv/Gemm/MatMul nodes, e.g. "
                                  + ", ".join(sorted(g.producers[0]
                                                     for g in self.graph.groups)[:5]))
        self.importance = make_importance(self.config.importance, calib)

    def _ratio_of(self, group: Group) -> float | None:
        """The group's own ratio (an override), or None to follow the config's scope."""
        for producer in group.producers:
            if producer in self.config.overrides:
                return self.config.overrides[producer]
        return None

    def candidates(self) -> list[Group]:
        """Groups that may lose channels: analyzable and not protected."""
        protected = set(self.config.protected)
        return [g for g in self.graph.groups if g.prunable and not protected & set(g.producers)]

    def scores(self) -> dict[int, np.ndarray]:
        """Group id → importance of each channel (higher = keep)."""
        scores = {}
        for group in self.candidates():
            value = np.asarray(self.importance(group, self.graph), dtype=np.float64)
            if value.shape != (group.size,):
                raise PruneError(f"importance returned shape {value.shape} for a group of "
                                 f"{group.size} channels ({group.name})")
            scores[group.id] = value
        return scores

    def plan(self) -> dict[int, np.ndarray]:
        """Group id → sorted indices of the channels it keeps (only groups that shrink)."""
        if self.config.ratio == 0 and not any(self.config.overrides.values()):
            return {}
        scores = self.scores()
        removals = {}
        global_ids = []
        for group in self.candidates():
            ratio = self._ratio_of(group)
            if ratio is None and self.config.scope == "global":
                global_ids.append(group.id)
            else:
                ratio = self.config.ratio if ratio is None else ratio
                removals[group.id] = math.floor(ratio * group.size)
        removals.update(self._global_removals(global_ids, scores))
        keep = {}
        for group_id, remove in removals.items():
            size = self.graph.groups[group_id].size
            kept = self._rounded(size - remove, size)
            if kept < size:
                order = np.argsort(scores[group_id], kind="stable")
                keep[group_id] = np.sort(order[size - kept:])
        return keep

    def _global_removals(self, ids: list[int], scores: dict[int, np.ndarray]) -> dict[int, int]:
        if not ids:
            return {}
        normalized = [scores[i] / (np.mean(scores[i]) or 1.0) for i in ids]
        owner = np.concatenate([np.full(len(s), i) for i, s in zip(ids, normalized)])
        order = np.argsort(np.concatenate(normalized), kind="stable")
        total = math.floor(self.config.ratio * len(owner))
        counts = {i: 0 for i in ids}
        for index in order[:total]:
            counts[int(owner[index])] += 1
        cap = self.config.max_group_ratio
        return {i: min(n, int(cap * self.graph.groups[i].size)) for i, n in counts.items()}

    def _rounded(self, kept: int, size: int) -> int:
        step = self.config.round_to
        return min(size, max(1, math.ceil(max(kept, 1) / step) * step))

    def run(self):
        """Prune: returns the new model (the input is not modified) and the report."""
        keep = self.plan()
        pruned = self.apply(keep)
        return pruned, self.report(pruned, keep)

    def apply(self, keep: dict[int, np.ndarray]):
        """The model rewritten to the plan ``keep`` (with bias compensation if configured)."""
        return pruned_model(self.view, self.graph, keep, compensate=self.config.compensate,
                            calib=self.calib)

    def report(self, pruned, keep: dict[int, np.ndarray]) -> PruneReport:
        """Totals of the model before and ``pruned`` after, the groups kept and skipped."""
        groups, skipped = kept_groups(self.graph, keep, self.config.protected)
        return PruneReport(self.config.to_json(), self.view.totals(self.model),
                           self.view.totals(pruned), groups, skipped,
                           {g: np.asarray(k) for g, k in keep.items()})


def prune(model: onnx.ModelProto, config: PruneConfig | None = None,
          calib: Mapping[str, np.ndarray] | None = None) -> tuple[onnx.ModelProto, PruneReport]:
    """Structured pruning of ``model`` under ``config``; ``calib`` feeds the activation
    criterion."""
    return Pruner(model, config, calib).run()


def plan_pruning(mod, config: PruneConfig, calib: Mapping[str, np.ndarray] | None = None,
                 layer_names: list[str] | None = None) -> dict[int, np.ndarray]:
    """The channels to keep per group of a Relax module ``mod`` under ``config`` (empty when
    the analysis cannot follow the graph): the ``keep`` option of the ``prune_channels`` pass."""
    from relaycomp.channels.relax_view import RelaxView

    pruner = Pruner(RelaxView(mod, layer_names=layer_names), config, calib)
    return {} if pruner.view.unsupported else pruner.plan()
