"""Make floating-point ``max``/``min`` in kernels propagate NaN, as onnxruntime does.

TVM lowers ``max(a, b)`` to ``a > b ? a : b`` (``min`` to ``a < b ? a : b``), so a NaN in ``a``
is dropped: ReLU (``max(x, 0)``), Clip (``min(max(x, lo), hi)``, how the ONNX importer lowers it)
and ONNX ``Max``/``Min`` turn a NaN input into a finite number where onnxruntime gives NaN.

Matches: every floating-point ``max``/``min`` in the PrimFuncs of the module, except the
combiner of a reduction (in a block with an ``init`` or a reduction axis, a ``max``/``min`` of
the element being stored: max pooling, ``ReduceMax``, softmax's row maximum; what it reduces
is rewritten). ``acc > x ? acc : x`` behaves as onnxruntime's MLAS pooling (x86's ``maxps``): a
window with some NaN gives NaN or one of its values depending on the loop order, an all-NaN
window gives NaN. (``ReduceMax`` in onnxruntime propagates any NaN; here it does not.)
Produces, per code generator; each names an operand that is an expression (what fusion
inlined: a conv's sum, a chain of clips) once, so a fused chain of clips keeps one copy of its
input:

- LLVM (x86): ``max(c, x)`` for ``max(x, c)`` with a constant ``c`` (ReLU, Clip) - TVM's
  ``c > x ? c : x`` gives ``x`` when it is NaN: LLVM emits ``x < c ? c : x``, one packed
  ``vmaxps`` with the operands swapped (x86's max returns its second operand on NaN);
  ``isnan(b) ? b : max(b, a)`` for ``max(a, b)`` of two tensors with ``b`` a load (``min``
  alike), the results of ``a < b || isnan(b) ? b : a`` naming ``a`` once (swapped when only
  ``a`` is a load: a tie of ``-0`` and ``+0`` then gives the other zero);
  ``llvm.maximum``/``llvm.minimum`` when neither is a load (a tie gives ``+0`` for ``max``).
- AArch64, whose ``fmax``/``fmin`` propagate NaN: ``llvm.maximum``/``llvm.minimum`` (a ReLU6
  is two instructions, not compares, selects and mask shuffles).
- C source (CUDA, whose ``max`` is ``fmaxf``, dropping NaN): ``x < c ? c : x`` and
  ``a < b || isnan(b) ? b : a`` (``>`` for ``min``), an operand that is an expression bound
  once first (``let v = x + 1 in v < c ? c : v``; emitted as a declaration before the
  statement, so not inside an ``if_then_else``'s branch, whose loads may be out of bounds).

Keeps: every other result (a ReLU of ``-0`` keeps its sign, as onnxruntime's does), the kernels'
attributes and loop schedules, the signature.
Runs: stage ``numerics``, after ``schedule``. Not before: fusion (``FuseTIR``) and the
schedules' ``compute_inline`` put each producer's expression in place of every load of its
result, and a select naming its operand twice then doubled at each ``max``/``min`` of a chain
(ten Add+Clip links: 4^10 copies of the input; PP-OCR's int8 epilogues 11x, minutes of code
generation each). MetaSchedule tunes, and keys its database on, the kernels as the ``schedule``
stage sees them, before this rewrite; tuned and heuristic kernels get it alike when built.
TVM's LLVM code generator gets no ``Let`` from this pass: it simplifies each bound value with
the earlier ones substituted, exponential in a chain of selects.
Reports: kernels rewritten and ``max``/``min`` rewritten, into the runner's report.
"""

from __future__ import annotations

import math

import tvm
import tvm_ffi
from tvm import s_tir, tirx

from relaycomp.ir import loaded_buffer, rewrite_primfuncs
from relaycomp.registry import register_pass
from relaycomp.rewrite.float_bits import is_nan

FORMS = ("llvm", "native", "select")  # see the module docstring; form_for(target) picks one
_NATIVE = {"Max": "llvm.maximum", "Min": "llvm.minimum"}
_IF_THEN_ELSE = "prim.if_then_else"


def form_for(target: tvm.target.Target | None) -> str:
    """The form of :data:`FORMS` that ``target``'s code generator needs (``None``: LLVM)."""
    if target is None or target.kind.name == "llvm":
        native = target is not None and str(target.attrs.get("mtriple", "")).startswith("aarch64")
        return "native" if native else "llvm"
    return "select"


def _is_float(expr) -> bool:
    return str(expr.ty).startswith(("float", "bfloat"))


def _constant(expr) -> bool:
    return isinstance(expr, tirx.FloatImm) and not math.isnan(expr.value)


def _leaf(expr) -> bool:
    """A load, a variable or a constant: naming it more than once copies nothing that grows."""
    return (loaded_buffer(expr) is not None
            or isinstance(expr, (tirx.Var, tirx.FloatImm, tirx.IntImm)))


def nan_propagating(expr, form: str = "llvm", bind: bool = True):
    """``expr`` (a float ``max``/``min``) in the NaN-propagating ``form`` (see the module
    docstring); ``bind=False`` names an expression operand of the select form twice rather than
    bind it (in an ``if_then_else``'s branch)."""
    if not _is_float(expr):
        return expr
    a, b = expr.a, expr.b
    if form == "native" or (form == "llvm" and not (_leaf(a) or _leaf(b))):
        return tirx.call_llvm_pure_intrin(str(expr.ty), _NATIVE[type(expr).__name__], a, b)
    if _constant(a):  # constants go right
        a, b = b, a
    if form == "llvm":  # TVM's max(p, q) is p > q ? p : q: q when either is NaN
        if _constant(b):
            return type(expr)(b, a)
        if not _leaf(b):
            a, b = b, a
        return tirx.Select(is_nan(b), b, type(expr)(b, a))
    keeps_right = tirx.LT if isinstance(expr, tirx.Max) else tirx.GT  # when b is the result
    bindings = []

    def named(operand):
        if _leaf(operand) or not bind:
            return operand
        var = tirx.Var("nan_operand", str(operand.ty))
        bindings.append((var, operand))
        return var

    a, b = named(a), named(b)
    if _constant(b):
        result = tirx.Select(keeps_right(a, b), b, a)
    else:
        result = tirx.Select(tirx.Or(keeps_right(a, b), is_nan(b)), b, a)
    for var, value in reversed(bindings):
        result = tirx.Let(var, value, result)
    return result


def _reduces(block: s_tir.SBlock) -> bool:
    return block.init is not None or any(
        v.iter_type == tirx.IterVar.CommReduce for v in block.iter_vars)


def _combiner(store: tirx.BufferStore) -> bool:
    """``acc = max(acc, x)`` (or ``min``, either operand order): a reduction's update."""
    value = store.value
    return isinstance(value, (tirx.Max, tirx.Min)) and any(
        store.buffer.same_as(loaded_buffer(operand)) for operand in (value.a, value.b))


def rewrite_primfunc(func: tirx.PrimFunc, form: str = "llvm") -> tuple[tirx.PrimFunc, int]:
    """``func`` with its float ``max``/``min`` NaN-propagating in ``form`` (one of
    :data:`FORMS`), reductions' combiners excepted; and how many."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    count = [0]
    in_reduction = [False]
    guarded = [0]  # inside how many if_then_else calls

    def block(node, mutator):
        outer, in_reduction[0] = in_reduction[0], _reduces(node)
        try:
            return mutator.default_mutate(node)
        finally:
            in_reduction[0] = outer

    def store(node, mutator):
        if not (in_reduction[0] and _combiner(node)):
            return mutator.default_mutate(node)
        value = node.value  # the combiner stays; what it reduces is rewritten
        combined = type(value)(mutator.mutate(value.a), mutator.mutate(value.b))
        if combined.a.same_as(value.a) and combined.b.same_as(value.b):
            return node
        return tirx.BufferStore(node.buffer, combined,
                                [mutator.mutate(index) for index in node.indices])

    def call(node, mutator):
        if node.op.name != _IF_THEN_ELSE:
            return mutator.default_mutate(node)
        guarded[0] += 1
        try:
            return mutator.default_mutate(node)
        finally:
            guarded[0] -= 1

    def max_min(node, mutator):
        node = mutator.default_mutate(node)
        result = nan_propagating(node, form, bind=not guarded[0])
        count[0] += result is not node
        return result

    mutated = tvm_ffi.structural_mutate(func, [(s_tir.SBlock, block),
                                               (tirx.BufferStore, store),
                                               (tvm.ir.expr.Call, call),
                                               ((tirx.Max, tirx.Min), max_min)])
    return (mutated, count[0]) if count[0] else (func, 0)


@register_pass("propagate_nan_in_max_min", stage="numerics",
               description="floating-point max/min in kernels propagate NaN (as onnxruntime)")
def propagate_nan_in_max_min(target: tvm.target.Target | None = None, *,
                             report: dict | None = None) -> tvm.transform.Pass:
    """The module pass described in this module's docstring."""

    @tvm.transform.module_pass(opt_level=0, name="propagate_nan_in_max_min")
    def run(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        current = target or tvm.target.Target.current(allow_none=True)

        def rewrite(func):  # a kernel may carry its own target
            own = func.attrs.get("target", None) if func.attrs is not None else None
            return rewrite_primfunc(func, form_for(own or current))

        mod, kernels, rewritten = rewrite_primfuncs(mod, rewrite)
        if report is not None:
            report.update(kernels=kernels, max_min_rewritten=rewritten)
        return mod

    return run
