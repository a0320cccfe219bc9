"""Shared machinery of the horizontal-merge passes: sibling ops with one input, one wider op.

A :class:`Sibling` describes one op kind: which calls may merge (``key``), along which weight
axis their constant weights are concatenated and along which output axis the result is split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax


@dataclass(frozen=True)
class Sibling:
    """How to merge one op kind: calls with equal ``key(call)`` (None: never) merge."""

    op: str
    key: Callable
    weight_axis: int
    output_axis: int


def constant_weight(call: relax.Call):
    """The call's second argument when it is a constant and the first a variable, else None."""
    data, weight = call.args[0], call.args[1]
    if isinstance(weight, tvm.ir.expr.GenericConst) and isinstance(data, relax.Var):
        return weight
    return None


def _groups(bindings, sibling: Sibling) -> list[list]:
    op = tvm.ir.Op.get(sibling.op)
    groups: dict = {}
    for binding in bindings:
        call = binding.value
        if isinstance(call, relax.Call) and call.op.same_as(op):
            key = sibling.key(call)
            if key is not None:
                groups.setdefault(key, []).append(binding)
    return [members for members in groups.values() if len(members) > 1]


def _merge(members, sibling: Sibling, builder: relax.BlockBuilder) -> tuple[list, dict]:
    first = members[0].value
    weights = [m.value.args[1].value.numpy() for m in members]
    merged = builder.normalize(relax.Call(
        first.op, [first.args[0], relax.const(np.concatenate(weights, sibling.weight_axis))],
        first.attrs))
    merged_var = relax.DataflowVar("merged", merged.ty)
    bounds = np.cumsum([w.shape[sibling.weight_axis] for w in weights])[:-1].tolist()
    split = builder.normalize(relax.op.split(merged_var, bounds, axis=sibling.output_axis))
    split_var = relax.DataflowVar("merged_split", split.ty)
    head = [relax.VarBinding(merged_var, merged), relax.VarBinding(split_var, split)]
    replacements = {
        m.var: relax.VarBinding(m.var, builder.normalize(relax.TupleGetItem(split_var, i)))
        for i, m in enumerate(members)}
    return head, replacements


def _rewrite_block(block, sibling, builder, report):
    if not isinstance(block, relax.DataflowBlock):
        return block
    heads, replacements = {}, {}
    for members in _groups(block.bindings, sibling):
        head, replaced = _merge(members, sibling, builder)
        heads[members[0].var] = head
        replacements.update(replaced)
        report["merged"] += len(members)
        report["groups"] += 1
    if not heads:
        return block
    bindings = []
    for binding in block.bindings:
        bindings.extend(heads.get(binding.var, []))
        bindings.append(replacements.get(binding.var, binding))
    return relax.DataflowBlock(bindings)


def _rewrite_function(func: relax.Function, sibling, report) -> relax.Function:
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return func
    builder = relax.BlockBuilder()
    blocks = [_rewrite_block(block, sibling, builder, report) for block in body.blocks]
    seq = builder.normalize(relax.SeqExpr(blocks, body.body))
    return relax.Function(func.params, seq, func.ret_ty, func.is_pure, func.attrs)


def merge_pass(name: str, sibling: Sibling, report: dict | None = None) -> tvm.transform.Pass:
    """A module pass merging ``sibling`` ops in every Relax function; counts (``merged``,
    ``groups``) go to ``report`` (the dict the pass runner hands the pass)."""

    @tvm.transform.module_pass(opt_level=0, name=name)
    def run(mod: tvm.IRModule, ctx) -> tvm.IRModule:
        nonlocal report
        report = report if report is not None else {}
        report.clear()
        report.update(merged=0, groups=0)
        updated = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                updated[gvar] = _rewrite_function(func, sibling, report)
        return updated

    return run
