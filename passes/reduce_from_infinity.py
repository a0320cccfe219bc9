"""Start floating-point max/min reductions from -inf/+inf, as ONNX does.

TVM's legalization starts a max reduction (``ReduceMax``, ``ArgMax``'s value, max pooling) from
the lowest finite value of the type, and a min reduction from the highest: a row of ``-inf``
reduces to ``-3.4e38`` instead of ``-inf``, a silent wrong answer (onnxruntime gives ``-inf``),
which a later ``exp`` or comparison turns into wrong finite numbers.

Matches: the ``init`` of every reduction block whose value is the lowest (highest) finite value
of a floating-point type. Produces: the same block starting from ``-inf`` (``+inf``).
Keeps: every result on finite inputs (``max(-inf, x) = max(lowest, x)`` for any finite ``x``),
the combiner (schedules still recognise it), the signature. Runs: stage ``legalize``, last, on
CPU targets (CUDA's reduction schedules match reducers by TVM's identity values). Reports:
``reductions`` changed.
"""

from __future__ import annotations

import math

import tvm
import tvm_ffi
from tvm import s_tir, tirx

from relaycomp.ir import rewrite_primfuncs
from relaycomp.registry import register_pass


def _infinite(value):
    """``-inf``/``+inf`` of ``value``'s type if ``value`` is its lowest/highest finite float."""
    if not isinstance(value, tirx.FloatImm) or math.isinf(value.value):
        return None
    dtype = str(value.ty)
    if not dtype.startswith(("float", "bfloat")):
        return None
    if value.value == float(tvm.tirx.min_value(dtype).value):
        return tirx.FloatImm(dtype, -math.inf)
    if value.value == float(tvm.tirx.max_value(dtype).value):
        return tirx.FloatImm(dtype, math.inf)
    return None


def rewrite_primfunc(func: tirx.PrimFunc) -> tuple[tirx.PrimFunc, int]:
    """``func`` with its max/min reductions starting from infinity; and how many."""
    count = [0]

    def block(node, mutator):
        node = mutator.default_mutate(node)
        init = node.init
        if not isinstance(init, tirx.BufferStore):
            return node
        infinity = _infinite(init.value)
        if infinity is None:
            return node
        count[0] += 1
        return s_tir.SBlock(node.iter_vars, node.reads, node.writes, node.name_hint, node.body,
                            tirx.BufferStore(init.buffer, infinity, init.indices),
                            node.alloc_buffers, node.match_buffers, node.annotations)

    mutated = tvm_ffi.structural_mutate(func, [(s_tir.SBlock, block)])
    return (mutated, count[0]) if count[0] else (func, 0)


@register_pass("reduce_from_infinity", stage="legalize", kinds=("llvm",),
               description="float max/min reductions start from -inf/+inf (a -inf row stays -inf)")
def reduce_from_infinity(target: tvm.target.Target | None = None, *,
                         report: dict | None = None) -> tvm.transform.Pass:
    """The module pass described in this module's docstring."""

    @tvm.transform.module_pass(opt_level=0, name="reduce_from_infinity")
    def run(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod, _, changed = rewrite_primfuncs(mod, rewrite_primfunc)
        if report is not None:
            report.update(reductions=changed)
        return mod

    return run
