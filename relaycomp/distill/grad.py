"""Rewrites that make a student differentiable: ops TVM 0.27 has no gradient for, expressed
exactly in ops it has.

Each rule is data: the Relax op it matches and a function building the equivalent expression
from the call (returning None leaves the call alone, e.g. a pad mode other than constant-zero).

    clip(x, lo, hi)            → minimum(maximum(x, lo), hi)        (ReLU6 in MobileNets)
    nn.leakyrelu(x, a)         → where(x > 0, x, a·x)
    squeeze / flatten          → reshape to the inferred shape
    nn.adaptive_avg_pool2d(1)  → mean over H, W (keepdims)
    rsqrt(x) / square(x)       → 1 / sqrt(x) / x·x

Applied to the student's backbone before ``Gradient``; the forward values are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import relax
from tvm.relax import op as R

from relaycomp.registry import Registry

REWRITES: Registry[Callable[[relax.Call], relax.Expr | None]] = Registry("gradient rewrite")


def _const_like(value: float, expr: relax.Expr) -> relax.Expr:
    return relax.const(value, str(expr.ty.dtype))


def _static_shape(expr: relax.Expr):
    shape = expr.ty.shape
    return None if shape is None else list(shape)


@REWRITES.register("relax.clip")
def _clip(call):
    x, low, high = call.args
    return R.minimum(R.maximum(x, _const_like(float(low.value), x)),
                     _const_like(float(high.value), x))


@REWRITES.register("relax.nn.leakyrelu")
def _leaky_relu(call):
    x = call.args[0]
    zero = _const_like(0.0, x)
    return R.where(R.greater(x, zero), x, R.multiply(x, _const_like(float(call.attrs.alpha), x)))


def _as_reshape(call):
    shape = _static_shape(call)
    return None if shape is None else R.reshape(call.args[0], shape)


REWRITES.add("relax.squeeze", _as_reshape)
REWRITES.add("relax.flatten", _as_reshape)


@REWRITES.register("relax.nn.adaptive_avg_pool2d")
def _global_average(call):
    size = call.attrs.output_size
    layout = str(call.attrs.layout)
    if size is None or [int(s) for s in size] != [1, 1] or layout != "NCHW":
        return None
    return R.mean(call.args[0], axis=[2, 3], keepdims=True)


@REWRITES.register("relax.rsqrt")
def _rsqrt(call):
    x = call.args[0]
    return R.divide(_const_like(1.0, x), R.sqrt(x))


@REWRITES.register("relax.square")
def _square(call):
    return R.multiply(call.args[0], call.args[0])


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name in REWRITES:
            replacement = REWRITES.get(call.op.name)(call)
            if replacement is not None:
                return self.builder_.normalize(replacement)
        return call


def make_differentiable(func: relax.Function) -> relax.Function:
    """``func`` with every matched op rewritten into ops that have gradients."""
    body = _Rewriter().visit_expr(func.body)
    return relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
