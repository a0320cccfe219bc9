"""Structured pruning of ``main``: remove whole conv filters, input channels and dense neurons.

Matches: the channel dependency groups of ``main`` (:class:`relaycomp.prune.graph.ChannelGraph`
over a :class:`relaycomp.prune.relax_view.RelaxView` — the same analysis, op handlers and planner as
``relaycomp prune`` on ONNX): conv2d (NCHW/OIHW) → bias add → activation → next conv's input
channels, depthwise convs, residual adds, concat offsets, split/strided_slice pieces,
reshape → matmul channel × spatial blocks, pooling and reductions over other axes.
Produces: the same function with the constants (weights, biases, per-channel operands) sliced
and the attributes that count channels (conv ``groups``, split indices, slice bounds, reshape
targets) moved to the kept channels; every shape re-inferred. With ``config.compensate``, the
removed channels' mean contribution is folded into the next layer's bias.
Keeps: ``main``'s signature (graph outputs are never pruned); a group the analysis cannot follow
(an op it does not know, a non-constant weight, an NHWC conv…) is left exactly as it is and
listed in the report with its reason; ``ratio=0`` returns the module unchanged.
Runs: stage ``prune``, after ``simplify`` (BatchNorm already folded into conv + bias add, so
``bn_scale`` falls back to L2 here), before ``legalize``. Added by ``compile --prune RATIO``
(a ``PruneConfig`` among ``CompileConfig.features``), which ranks channels first
(:func:`plan_pruning`) and hands the pass the result. Reports: the
:class:`relaycomp.prune.pruner.PruneReport` as JSON (params, MACs, bytes before/after, channels
kept per group, groups skipped)::

    report = {}
    mod = prune_channels(target, config=PruneConfig(ratio=0.5), report=report)(mod)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tvm

from relaycomp.prune.pruner import PruneConfig, Pruner
from relaycomp.prune.relax_view import RelaxView
from relaycomp.registry import register_pass


@register_pass("prune_channels", stage="prune")
def prune_channels(target: tvm.target.Target | None = None, config: PruneConfig | None = None,
                   keep: Mapping[int, np.ndarray] | None = None,
                   calib: Mapping[str, np.ndarray] | None = None,
                   layer_names: list[str] | None = None,
                   report: dict | None = None) -> tvm.transform.Pass:
    """Remove whole channels/filters from ``main``: the channels ``keep`` names (group id ->
    kept indices, as :func:`plan_pruning` decided on this module), else those ``config``
    ranks (default ratio 0.3, L2) when the pass runs alone.

    ``calib``: input name → batch, for the ``activation`` criterion and compensation.
    ``layer_names``: the ONNX names of the conv/dense layers, in order
    (:func:`relaycomp.frontend.layer_names.onnx_layer_names`), to name groups in reports and in
    ``config.protected``/``overrides`` as on the ONNX graph; otherwise they are Relax variables.
    """
    config = config or PruneConfig()

    def run(mod: tvm.IRModule, ctx) -> tvm.IRModule:
        pruner = _pruner(mod, config, calib, layer_names)
        if pruner.view.unsupported:  # leave the whole function alone, and say why
            pruned, kept = mod, {}
        else:
            kept = dict(keep) if keep is not None else pruner.plan()
            pruned = pruner.apply(kept)
        if report is not None:
            report.update(pruner.report(pruned, kept).to_json())
        return pruned

    return tvm.transform.module_pass(run, opt_level=0, name="prune_channels")


def plan_pruning(mod: tvm.IRModule, config: PruneConfig,
                 calib: Mapping[str, np.ndarray] | None = None,
                 layer_names: list[str] | None = None) -> dict[int, np.ndarray]:
    """The channels to keep per group of ``mod`` under ``config`` (empty when the analysis
    cannot follow the graph): the ``keep`` option of :func:`prune_channels`."""
    pruner = _pruner(mod, config, calib, layer_names)
    return {} if pruner.view.unsupported else pruner.plan()


def _pruner(mod, config, calib, layer_names) -> Pruner:
    view = RelaxView(mod, layer_names=layer_names)
    pruner = Pruner(view, config, calib)
    for group in pruner.graph.groups:  # an unsupported op blocks every group: say why
        group.blocked.extend(r for r in view.unsupported if r not in group.blocked)
    return pruner
