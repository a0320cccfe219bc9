"""Structured pruning of ``main``: remove whole conv filters, input channels and dense neurons.

Matches: the channel dependency groups of ``main`` (:class:`relaycomp.prune_graph.ChannelGraph`
over a :class:`relaycomp.prune_relax.RelaxView` — the same analysis, op handlers and planner as
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
(``CompileConfig.prune``). Reports: a :class:`relaycomp.prune.PruneReport` appended to
``reports`` (params, MACs, bytes before/after, channels kept per group, groups skipped)::

    reports = []
    mod = prune_channels(target, config=PruneConfig(ratio=0.5), reports=reports)(mod)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tvm

from relaycomp.prune import PruneConfig, Pruner, PruneReport
from relaycomp.prune_relax import RelaxView
from relaycomp.registry import register_pass


@register_pass("prune_channels", stage="prune")
def prune_channels(target: tvm.target.Target | None = None, config: PruneConfig | None = None,
                   reports: list | None = None,
                   calib: Mapping[str, np.ndarray] | None = None,
                   layer_names: list[str] | None = None) -> tvm.transform.Pass:
    """Remove whole channels/filters from ``main`` under ``config`` (default ratio 0.3, L2).

    ``calib``: input name → batch, for the ``activation`` criterion and compensation.
    ``layer_names``: the ONNX names of the conv/dense layers, in order
    (:func:`relaycomp.prune_view.onnx_layer_names`), to name groups in reports and in
    ``config.protected``/``overrides`` as on the ONNX graph; otherwise they are Relax variables.
    """
    config = config or PruneConfig()

    def run(mod: tvm.IRModule, ctx) -> tvm.IRModule:
        view = RelaxView(mod, layer_names=layer_names)
        pruner = Pruner(view, config, calib)
        if view.unsupported:  # leave the whole function alone, and say why
            pruned, keep = mod, {}
            for group in pruner.graph.groups:
                group.blocked.extend(r for r in view.unsupported if r not in group.blocked)
        else:
            keep = pruner.plan()
            pruned = pruner.apply(keep)
        report: PruneReport = pruner.report(pruned, keep)
        if reports is not None:
            reports.append(report)
        return pruned

    return tvm.transform.module_pass(run, opt_level=0, name="prune_channels")
