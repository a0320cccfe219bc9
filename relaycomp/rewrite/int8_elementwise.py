"""The elementwise rewrites around :func:`int8_layout.plan_int8_layout`'s ``ConvertLayout``:
ops it cannot carry a layout through become ops it can (same values), and layout changes move
to the 1-byte side of a dequantize."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from relaycomp.channels.relax_ops import elementwise_tir

# the ops of a requantizing epilogue and a residual add, quantize/dequantize decomposed
ELEMENTWISE = {f"relax.{name}" for name in (
    "astype", "add", "subtract", "multiply", "divide", "round", "minimum", "maximum")}


def scalar(expr) -> float | None:
    """The value of a one-element constant, else ``None``."""
    if not isinstance(expr, tvm.ir.expr.Constant):
        return None
    value = expr.value.numpy()
    return float(value.reshape(-1)[0]) if value.size == 1 else None


@relax.expr_functor.mutator
class ClipTirToOps(relax.PyExprMutator):
    """``call_tir`` of a TE ``max``/``min`` with a scalar (how TVM's ONNX importer lowers
    ``Clip``: the ReLU6 of a model relaycomp quantized itself) -> ``relax.maximum`` /
    ``relax.minimum`` (the same values), which ``ConvertLayout`` carries through."""

    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.mod = mod

    def visit_call_(self, call):
        call = super().visit_call_(call)
        found = elementwise_tir(self.mod, call)
        if found is None:
            return call
        tensor, bound = call.args[1].fields
        return found[1](tensor, bound)


@relax.expr_functor.mutator
class QdqToElementwise(relax.PyExprMutator):
    """Per-tensor ``quantize``/``dequantize`` -> the elementwise ops of their legalization:
    ``astype(max(min(round(x / s) + zp, hi), lo))`` and ``astype(astype(q, int32) - zp, float32) *
    s`` (the same float operations, in the same order)."""

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name not in (
                "relax.quantize", "relax.dequantize"):
            return call
        data, scale, zero_point = call.args
        s, zp = scalar(scale), scalar(zero_point)
        dtype = str(call.attrs.out_dtype)
        if s is None or zp is None:
            return call
        if call.op.name == "relax.quantize":
            if dtype not in ("uint8", "int8") or str(data.ty.dtype) != "float32":
                return call
            info = np.iinfo(dtype)
            value = relax.op.round(relax.op.divide(data, relax.const(s, "float32")))
            value = relax.op.add(value, relax.const(zp, "float32"))
            # clip as minimum then maximum (what TVM's clip computes), which ConvertLayout
            # carries and clip it does not
            value = relax.op.minimum(value, relax.const(float(info.max), "float32"))
            value = relax.op.maximum(value, relax.const(float(info.min), "float32"))
            return relax.op.astype(value, dtype)
        if dtype != "float32" or str(data.ty.dtype) not in ("uint8", "int8"):
            return call
        shifted = relax.op.subtract(relax.op.astype(data, "int32"),
                                    relax.const(int(zp), "int32"))
        return relax.op.multiply(relax.op.astype(shifted, "float32"), relax.const(s, "float32"))


@relax.expr_functor.mutator
class TransformBeforeDequantize(relax.PyExprMutator):
    """``layout_transform(f(x))``, ``f`` a decomposed ``dequantize`` (elementwise ops with
    scalar constants) of a uint8/int8 ``x`` -> ``f(layout_transform(x))``: the layout of a
    residual's 1-byte input changes, not of its 4-byte float dequantization (ResNet-18's first
    residual), and usually the same ``layout_transform(x)`` the next conv reads."""

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.layout_transform"):
            return call
        chain, value = [], call.args[0]
        while isinstance(value, relax.Var):
            bound = self.lookup_binding(value)
            if not (isinstance(bound, relax.Call) and isinstance(bound.op, tvm.ir.Op)
                    and bound.op.name in ELEMENTWISE and len(chain) < 8
                    and all(scalar(arg) is not None for arg in bound.args[1:])):
                break
            chain.append(bound)
            value = bound.args[0]
        if not chain or str(value.ty.dtype) not in ("uint8", "int8"):
            return call
        result = relax.Call(call.op, [value], call.attrs)
        for bound in reversed(chain):
            result = relax.Call(bound.op, [result, *bound.args[1:]], bound.attrs)
        return result
