"""Make floating-point ``max``/``min`` in kernels propagate NaN, as onnxruntime does.

TVM lowers ``max(a, b)`` to ``a > b ? a : b`` (``min`` to ``a < b ? a : b``), so a NaN in ``a``
is dropped: ReLU (``max(x, 0)``), Clip (``min(max(x, lo), hi)``, how the ONNX importer lowers it)
and ONNX ``Max``/``Min`` turn a NaN input into a finite number where onnxruntime gives NaN.

Matches: every floating-point ``max``/``min`` in the PrimFuncs of the module, except in the
update of a reduction block (a block with an ``init``: max pooling, ``ReduceMax``): schedules
must recognise its combiner. ``acc > x ? acc : x`` behaves as onnxruntime's MLAS pooling (x86's
``maxps``): a window with some NaN gives NaN or one of its values depending on the loop order, an
all-NaN window gives NaN. (``ReduceMax`` in onnxruntime propagates any NaN; here it does not.)
Produces: ``x < c ? c : x`` for ``max(x, c)`` with a constant ``c`` (ReLU, Clip: LLVM emits the
same one packed ``vmaxps`` as before, its operands swapped - x86's max returns its second
operand on NaN), and
``a < b || isnan(b) ? b : a`` for ``max(a, b)`` of two tensors (``>`` for ``min``). On AArch64,
whose ``fmax``/``fmin`` propagate NaN, ``llvm.maximum``/``llvm.minimum`` instead (a ReLU6 is then
two instructions, not compares, selects and mask shuffles).
Keeps: every other result (a ReLU of ``-0`` now keeps its sign, as onnxruntime's does), the
kernels' attributes (their ``op_pattern``), the signature. Runs: stage ``legalize``, last
(after ``legalize_ops`` made the kernels, before ``fuse`` inlines them into conv/matmul
epilogues). Reports: kernels rewritten and ``max``/``min`` rewritten, into the runner's report.
"""

from __future__ import annotations

import math

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.target import codegen

from relaycomp.ir import rewrite_primfuncs
from relaycomp.registry import register_pass


def _is_float(expr) -> bool:
    return str(expr.ty).startswith(("float", "bfloat"))


def _constant(expr) -> bool:
    return isinstance(expr, tirx.FloatImm) and not math.isnan(expr.value)


_NATIVE = {"Max": "llvm.maximum", "Min": "llvm.minimum"}


def _activation_operand(expr) -> bool:
    """A loaded value, a constant or another (NaN-propagating) max/min: what ReLU, Clip and
    Max/Min kernels take. Arithmetic operands (a requantizing epilogue's clip of a rescaled
    value) are left alone: the select names its operand twice, and once a chain of such kernels
    is inlined into one epilogue the expression doubles at every link."""
    if isinstance(expr, tvm.ir.expr.Call):  # a native max/min (AArch64)
        return (isinstance(expr.op, tvm.ir.Op) and expr.op.name == "tirx.call_llvm_pure_intrin"
                and int(expr.args[0].value) in {codegen.llvm_lookup_intrinsic_id(name)
                                                for name in _NATIVE.values()})
    return type(expr).__name__ in ("TensorLoad", "BufferLoad", "Var", "FloatImm", "Select", "Max",
                                   "Min")


def nan_propagating(expr, native: bool = False):
    """``expr`` (a ``max``/``min``) as a select that returns NaN when either operand is NaN;
    with ``native`` (AArch64) as the NaN-propagating LLVM intrinsic."""
    if not _is_float(expr):
        return expr
    keeps_right = tirx.LT if isinstance(expr, tirx.Max) else tirx.GT  # when b is the result
    a, b = expr.a, expr.b
    if not all(_activation_operand(operand) for operand in (a, b)):
        return expr
    if native:
        return tirx.call_llvm_pure_intrin(str(expr.ty), _NATIVE[type(expr).__name__], a, b)
    if _constant(a):  # constants go right: the one-compare form below
        a, b = b, a
    if _constant(b):
        return tirx.Select(keeps_right(a, b), b, a)
    return tirx.Select(tirx.Or(keeps_right(a, b), tirx.isnan(b)), b, a)


def rewrite_primfunc(func: tirx.PrimFunc, native: bool = False) -> tuple[tirx.PrimFunc, int]:
    """``func`` with its non-reduction float ``max``/``min`` NaN-propagating; and how many
    (``native``: see :func:`nan_propagating`)."""
    count = [0]

    def block(node, mutator):
        return node if node.init is not None else mutator.default_mutate(node)

    def max_min(node, mutator):
        node = mutator.default_mutate(node)
        result = nan_propagating(node, native)
        count[0] += result is not node
        return result

    mutated = tvm_ffi.structural_mutate(func, [(s_tir.SBlock, block),
                                               ((tirx.Max, tirx.Min), max_min)])
    return (mutated, count[0]) if count[0] else (func, 0)


@register_pass("propagate_nan_in_max_min", stage="legalize",
               description="floating-point max/min in kernels propagate NaN (as onnxruntime)")
def propagate_nan_in_max_min(target: tvm.target.Target | None = None, *,
                             report: dict | None = None) -> tvm.transform.Pass:
    """The module pass described in this module's docstring."""

    @tvm.transform.module_pass(opt_level=0, name="propagate_nan_in_max_min")
    def run(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        current = target or tvm.target.Target.current(allow_none=True)
        native = current is not None and current.kind.name == "llvm" and str(
            current.attrs.get("mtriple", "")).startswith("aarch64")
        mod, kernels, rewritten = rewrite_primfuncs(
            mod, lambda func: rewrite_primfunc(func, native))
        if report is not None:
            report.update(kernels=kernels, max_min_rewritten=rewritten)
        return mod

    return run
