"""Merge sibling conv2d ops that read the same tensor (Inception branches) into one wider conv.

Matches: two or more ``conv2d(x, W_i)`` in one dataflow block with the same input ``x``, constant
weights of the same kernel size, ``groups == 1``, NCHW/OIHW layouts and identical strides,
padding, dilation and output dtype. Produces: one ``conv2d(x, concat(W_i))`` whose output is
``split`` along channels back into the original values, so one kernel reads ``x`` once instead of
once per branch. Keeps: numerics (each output channel's sum is unchanged) and the signature.
Runs: stage ``simplify``, after ``fold_batchnorm`` (so BN-folded weights are merged). Opt-in
(``--pass merge_parallel_convs``), not in the default pipeline: on CPU the ``split`` becomes a
kernel of its own and the branches' different epilogues stop fusing into the conv, so it only
pays off when the branches are too small to keep the cores busy one by one.
Reports: convs merged and groups formed, via :data:`LAST_REPORT`.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from relaycomp.registry import register_pass

LAST_REPORT: dict[str, int] = {}
_CONV2D = tvm.ir.Op.get("relax.nn.conv2d")


def _merge_key(binding):
    """Bindings with equal keys can share one conv; None for anything not mergeable."""
    call = binding.value
    if not (isinstance(call, relax.Call) and call.op.same_as(_CONV2D)):
        return None
    data, weight = call.args
    attrs = call.attrs
    if not isinstance(weight, tvm.ir.expr.GenericConst) or not isinstance(data, relax.Var):
        return None
    if int(attrs.groups) != 1 or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
        return None
    kernel = tuple(int(d) for d in weight.ty.shape)[2:]
    return (data, kernel, str(weight.ty.dtype), str(attrs.strides), str(attrs.padding),
            str(attrs.dilation), str(attrs.out_dtype))


def _group(bindings) -> dict:
    groups: dict = {}
    for binding in bindings:
        key = _merge_key(binding)
        if key is not None:
            groups.setdefault(key, []).append(binding)
    return {key: members for key, members in groups.items() if len(members) > 1}


def _merged_bindings(members, builder: relax.BlockBuilder) -> tuple[list, dict]:
    """The merged conv + split bindings, and each member var's replacement binding."""
    first = members[0].value
    weights = [m.value.args[1].value.numpy() for m in members]
    merged = builder.normalize(relax.Call(
        first.op, [first.args[0], relax.const(np.concatenate(weights, axis=0))], first.attrs))
    merged_var = relax.DataflowVar("merged_conv", merged.ty)
    bounds = np.cumsum([w.shape[0] for w in weights])[:-1].tolist()
    split = builder.normalize(relax.op.split(merged_var, bounds, axis=1))
    split_var = relax.DataflowVar("merged_conv_split", split.ty)
    head = [relax.VarBinding(merged_var, merged), relax.VarBinding(split_var, split)]
    replacements = {
        m.var: relax.VarBinding(m.var, builder.normalize(relax.TupleGetItem(split_var, i)))
        for i, m in enumerate(members)}
    return head, replacements


def _rewrite_block(block, builder, report) -> relax.BindingBlock:
    if not isinstance(block, relax.DataflowBlock):
        return block
    groups = _group(block.bindings)
    if not groups:
        return block
    heads, replacements = {}, {}
    for members in groups.values():
        head, replaced = _merged_bindings(members, builder)
        heads[members[0].var] = head
        replacements.update(replaced)
        report["convs_merged"] += len(members)
        report["groups"] += 1
    bindings = []
    for binding in block.bindings:
        bindings.extend(heads.get(binding.var, []))
        bindings.append(replacements.get(binding.var, binding))
    return relax.DataflowBlock(bindings)


def _rewrite_function(func: relax.Function, report) -> relax.Function:
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return func
    builder = relax.BlockBuilder()
    blocks = [_rewrite_block(block, builder, report) for block in body.blocks]
    seq = builder.normalize(relax.SeqExpr(blocks, body.body))
    return relax.Function(func.params, seq, func.ret_ty,
                          func.is_pure, func.attrs)


@register_pass("merge_parallel_convs", stage="simplify")
def merge_parallel_convs(target: tvm.target.Target | None = None) -> tvm.transform.Pass:
    """Merge sibling convs reading one tensor (see the module docstring)."""

    @tvm.transform.module_pass(opt_level=0, name="merge_parallel_convs")
    def run(mod: tvm.IRModule, ctx) -> tvm.IRModule:
        LAST_REPORT.clear()
        LAST_REPORT.update(convs_merged=0, groups=0)
        updated = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                updated[gvar] = _rewrite_function(func, LAST_REPORT)
        return updated

    return run
