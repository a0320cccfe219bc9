"""Structured pruning of ``main``: remove whole conv filters, input channels and dense neurons.

Matches: the channel dependency groups of ``main`` (:class:`relaycomp.channels.graph.
ChannelGraph` over a :class:`relaycomp.channels.relax_view.RelaxView` — the same analysis and op
handlers as ``relaycomp prune`` on ONNX): conv2d (NCHW/OIHW) → bias add → activation → next
conv's input channels, depthwise convs, residual adds, concat offsets, split/strided_slice
pieces, reshape → matmul channel × spatial blocks, pooling and reductions over other axes.
Produces: the same function with the constants (weights, biases, per-channel operands) cut to
the ``keep`` plan and the attributes that count channels (conv ``groups``, split indices, slice
bounds, reshape targets) moved to the kept channels; every shape re-inferred. With
``compensate``, the removed channels' mean contribution is folded into the next layer's bias.
Keeps: ``main``'s signature (graph outputs are never pruned); a group the analysis cannot follow
(an op it does not know, a non-constant weight, an NHWC conv…) is left exactly as it is and
listed in the report with its reason; an empty plan returns the module unchanged.
Runs: stage ``prune``, after ``simplify`` (BatchNorm already folded into conv + bias add),
before ``legalize``. A pure rewrite: the prune feature (a ``PruneConfig`` among
``CompileConfig.features``, or ``compile --prune RATIO``) ranks the channels on the same module
first (:func:`relaycomp.prune.pruner.plan_pruning`) and hands the pass the plan.
Reports: ``before``/``after`` totals (params, MACs, bytes), ``groups`` kept, ``skipped`` groups
with reasons, and ``kept_channels`` (group id -> kept indices)::

    report = {}
    mod = prune_channels(target, keep=plan_pruning(mod, PruneConfig(ratio=0.5)),
                         report=report)(mod)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tvm

from relaycomp.channels.graph import ChannelGraph
from relaycomp.channels.relax_view import RelaxView
from relaycomp.channels.rewrite import kept_groups, pruned_model
from relaycomp.registry import register_pass


@register_pass("prune_channels", stage="prune")
def prune_channels(target: tvm.target.Target | None = None,
                   keep: Mapping[int, Sequence[int]] | None = None, compensate: bool = False,
                   calib: Mapping[str, np.ndarray] | None = None,
                   layer_names: list[str] | None = None, protected: Sequence[str] = (),
                   report: dict | None = None) -> tvm.transform.Pass:
    """Cut the channel groups of ``main`` to the channels a pruning plan keeps.

    ``keep``: group id -> kept indices, as the prune feature's plan ranked them on this very
    module; groups it does not name stay whole.

    ``compensate``: fold the removed channels' mean contribution (on ``calib``, input name ->
    batch, when given) into the next layer's bias. ``layer_names``: the ONNX names of the
    conv/dense layers, in order (:func:`relaycomp.frontend.layer_names.onnx_layer_names`), to
    name groups in the report as on the ONNX graph; ``protected``: producers the plan kept
    whole on purpose (reported as such).
    """

    def run(mod: tvm.IRModule, ctx) -> tvm.IRModule:
        view = RelaxView(mod, layer_names=layer_names)
        graph = ChannelGraph.build(view)
        kept = {int(g): np.asarray(k, dtype=np.int64) for g, k in (keep or {}).items()}
        if view.unsupported:  # leave the whole function alone, and say why
            kept = {}
            for group in graph.groups:
                group.blocked.extend(r for r in view.unsupported if r not in group.blocked)
        pruned = pruned_model(view, graph, kept, compensate=compensate, calib=calib) \
            if kept else mod
        if report is not None:
            groups, skipped = kept_groups(graph, kept, protected)
            report.update(before=view.totals(mod), after=view.totals(pruned), groups=groups,
                          skipped=skipped,
                          kept_channels={g: [int(c) for c in k] for g, k in kept.items()})
        return pruned

    return tvm.transform.module_pass(run, opt_level=0, name="prune_channels")
