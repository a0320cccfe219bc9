"""Compute float32 ``exp``, ``sigmoid``, ``tanh`` and ``erf`` in kernels with arithmetic that
vectorizes.

TVM hands ``exp`` to LLVM as ``llvm.exp``, which x86 and AArch64 code generators lower to one
``expf`` library call per lane: a vectorized loop of sigmoids (a detection head's, SiLU's,
softmax's exponentials) ran 6-14x slower than onnxruntime's (Zen 5: a 640x640 sigmoid 0.53 ms
against 0.094). ``sigmoid`` and ``tanh`` are lowered to ``exp`` the same way; ``erf`` (GELU's)
is an ``erff`` call per lane, 16x onnxruntime's time (now 1.6x: 0.108 ms against 0.066).
Matches: every float32 ``exp``/``sigmoid``/``tanh``/``erf`` call in the module's PrimFuncs.
Produces: ``exp`` as :func:`exp_polynomial` - Cephes' ``expf``: ``x = n ln 2 + r`` with ``n``
rounded, a degree-7 polynomial of ``r``, ``2^n`` made in the exponent bits (TVM's
``topi.fast_exp``); ``sigmoid(x) = 1 / (1 + exp(-x))``; ``tanh(x) = sign(x) (1 - e) / (1 + e)``
with ``e = exp(-2|x|)``; ``erf`` as Eigen's rational function of ``x`` clamped to [-4, 4] (TVM's
``topi.fast_erf``). Straight-line multiply-adds, a ``floor`` and a shift: one vector of
each per 16 lanes.
Keeps: results within 4e-7 relative of the exact functions where they are normal floats
(denormal ones within 2e-38); ``exp(+inf) = inf``,
``exp(-inf) = 0``, NaN stays NaN (the last ``max`` with the argument: NaN wins a TVM ``max``,
which lowers to ``a > b ? a : b``; ``erf`` tests for it); ``sigmoid``/``tanh``/``erf``
saturate. A small argument (a load, a sum: up to ``_NAMED_TWICE`` nodes) is named several times
as one shared expression, which the code generator and LLVM merge; a larger one is bound in a
``Let`` (repeated, nested expansions - an LSTM cell's tanh of sigmoids - grew the code
exponentially: 50 s to compile a small CRNN), except under a per-lane ``if_then_else`` or
``Select`` (a concat), where TVM's vectorizer mishandles a ``Let`` (garbage out): there the call
stays as it was.
Runs: stage ``numerics`` for CPU targets, after ``schedule``: tuning and the schedules see the
calls; the code generator sees arithmetic.
Reports: ``kernels`` rewritten and ``calls`` expanded.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx

from relaycomp.ir import rewrite_primfuncs
from relaycomp.registry import register_pass
from relaycomp.rewrite.float_bits import is_nan

# Cephes expf: exp(r) ~ 1 + r + r^2 (P0 r^5 + ... + P5), |r| <= ln(2)/2
_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
         1.6666665459e-1, 5.0000001201e-1)
_X_MAX = 88.8  # above ln(FLT_MAX) = 88.72: the result overflows to inf, as exp's does
_X_MIN = -104.0  # below ln of the smallest denormal: the result is 0
_LOG2E = 1.44269504088896341
_LN2 = 0.6931471805599453
_SERIES_BELOW = 0.1  # |x| under which tanh is its odd series: 1 - e loses digits there
# Eigen's erf: x P(x^2) / Q(x^2) on [-4, 4], P's coefficients from x^1 up, Q's from x^0 up
_ERF_P = (-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04,
          -5.69250639462346e-05, -2.10102402082508e-06, 2.77068142495902e-08,
          -2.72614225801306e-10)
_ERF_Q = (-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03,
          -2.13374055278905e-04, -1.45660718464996e-05)


def _f32(value: float) -> tirx.FloatImm:
    return tirx.FloatImm("float32", value)


def exp_polynomial(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """``exp(x)`` for a float32 ``x`` (named twice, as one shared expression)."""
    clamped = tirx.Max(tirx.Min(x, _f32(_X_MAX)), _f32(_X_MIN))
    n = tirx.floor(clamped * _f32(_LOG2E) + _f32(0.5))
    r = clamped - n * _f32(_LN2)
    poly = _f32(_POLY[0])
    for coefficient in _POLY[1:]:
        poly = poly * r + _f32(coefficient)
    mantissa = poly * r * r + r + _f32(1.0)
    # 2^n as 2^(n/2) 2^(n - n/2): each a normal float for n in [-150, 128], their product
    # overflowing to inf or going denormal exactly where exp's result does
    whole = tirx.Cast("int32", n)
    half = tirx.shift_right(whole, tirx.const(1, "int32"))
    scaled = mantissa * _power_of_two(half) * _power_of_two(whole - half)
    return tirx.Max(scaled, x)  # NaN in, NaN out


def _power_of_two(exponent: tirx.PrimExpr) -> tirx.PrimExpr:
    """``2^exponent`` for an int32 ``exponent`` in [-126, 127]: its float's exponent bits."""
    return tirx.reinterpret("float32", tirx.shift_left(exponent + tirx.const(127, "int32"),
                                                       tirx.const(23, "int32")))


def _sigmoid(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return _f32(1.0) / (_f32(1.0) + exp_polynomial(-x))


def _tanh(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """``sign(x) (1 - e) / (1 + e)``, ``e = exp(-2|x|)``; ``x - x^3/3 + 2x^5/15`` near 0."""
    magnitude = tirx.Max(x, -x)
    e = exp_polynomial(_f32(-2.0) * magnitude)  # in (0, 1]
    ratio = (_f32(1.0) - e) / (_f32(1.0) + e)
    square = x * x
    series = x * (_f32(1.0) + square * (_f32(-1.0 / 3.0) + square * _f32(2.0 / 15.0)))
    return tirx.Select(magnitude < _f32(_SERIES_BELOW), series,
                       tirx.Select(x < _f32(0.0), -ratio, ratio))


def _erf(x: tirx.PrimExpr) -> tirx.PrimExpr:
    clamped = tirx.Max(tirx.Min(x, _f32(4.0)), _f32(-4.0))
    square = clamped * clamped
    p = _horner(square, _ERF_P)
    q = _horner(square, _ERF_Q)
    return tirx.Select(is_nan(x), x, clamped * p / q)  # the clamp would drop a NaN


def _horner(x: tirx.PrimExpr, coefficients) -> tirx.PrimExpr:
    """``sum(c_i x^i)`` for ``coefficients`` from ``x^0`` up."""
    value = _f32(coefficients[-1])
    for coefficient in reversed(coefficients[:-1]):
        value = value * x + _f32(coefficient)
    return value


# An argument this small (nodes) is repeated where the expansion names it; a larger one is bound
# in a ``Let`` - repeated, nested expansions (an LSTM's tanh of sigmoids) grew the code
# exponentially, 50 s to compile a small CRNN.
_NAMED_TWICE = 32
_IF_THEN_ELSE = "prim.if_then_else"  # the op of tirx.if_then_else
_EXPANSIONS = {"tirx.exp": exp_polynomial, "tirx.sigmoid": _sigmoid, "tirx.tanh": _tanh,
               "tirx.erf": _erf}


def rewrite_primfunc(func: tirx.PrimFunc) -> tuple[tirx.PrimFunc, int]:
    """``func`` with its float32 ``exp``/``sigmoid``/``tanh``/``erf`` expanded; and how many."""
    count, conditionals = [0], [0]

    def call(node, mutator):
        if getattr(node.op, "name", None) == _IF_THEN_ELSE:
            return select(node, mutator)
        node = mutator.default_mutate(node)
        expand = _EXPANSIONS.get(getattr(node.op, "name", None))
        if expand is None or str(node.ty) != "float32":
            return node
        (argument,) = node.args
        if _size(argument) <= _NAMED_TWICE:  # a load, a sum: cheap to repeat
            count[0] += 1
            return expand(argument)
        if conditionals[0]:  # a larger argument under a per-lane condition: left as it was
            return node
        count[0] += 1
        var = tirx.Var("x", "float32")
        return tirx.Let(var, argument, expand(var))

    def select(node, mutator):
        conditionals[0] += 1
        try:
            return mutator.default_mutate(node)
        finally:
            conditionals[0] -= 1

    mutated = tvm_ffi.structural_mutate(
        func, [(tvm.ir.expr.Call, call), (tirx.Select, select)])
    return (mutated, count[0]) if count[0] else (func, 0)


def _size(expr: tirx.PrimExpr) -> int:
    """Nodes of ``expr`` as a tree (every occurrence counted), up to ``_NAMED_TWICE + 1``."""
    seen = [0]

    def visit(_node):
        seen[0] += 1
        return tvm_ffi.WalkResult.SKIP if seen[0] > _NAMED_TWICE else None

    tvm_ffi.structural_walk(expr, visit, order="pre")
    return seen[0]


@register_pass("vectorize_math", stage="numerics", kinds=("llvm",),
               description="float32 exp/sigmoid/tanh/erf as vectorizable polynomials")
def vectorize_math(target: tvm.target.Target | None = None, *,
                  report: dict | None = None) -> tvm.transform.Pass:
    """The module pass described in this module's docstring."""

    @tvm.transform.module_pass(opt_level=0, name="vectorize_math")
    def run(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod, kernels, calls = rewrite_primfuncs(mod, rewrite_primfunc)
        if report is not None:
            report.update(kernels=kernels, calls=calls)
        return mod

    return run
