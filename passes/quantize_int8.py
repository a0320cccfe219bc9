"""Annotate conv2d / depthwise conv2d / matmul with int8 quantize-dequantize (QDQ) pairs.

Matches: in ``main``, every ``nn.conv2d`` (NCHW/OIHW, float32, constant weight; depthwise when
``groups`` equals the input channels) and every ``matmul`` with a constant 2-D float32 weight as
its second operand — a *layer*, numbered in binding order (``conv2d_0``, ``matmul_3``, ...).
Produces, for a layer planned ``int8``::

    conv2d(dequantize(quantize(x, s_x, zp_x, out_dtype="int8"), s_x, zp_x),
           dequantize(W_q, s_w, 0, axis=0))             # matmul: axis=1, W is [K, N]

(``W_q`` an int8 constant, ``s_w`` per output channel or a scalar, ``s_x``/``zp_x`` scalar
constants; bias and activation stay as they were; layers reading one tensor with equal
parameters share one quantize/dequantize) — the contract ``lower_qdq_to_integer`` realizes as
int8×int8→int32 kernels. A ``weight_only`` layer keeps float activations and becomes
one fused kernel reading the int8 weight (``op(x, dequantize(W_q, s_w, 0))``, grouped by
FuseOpsByPattern so constant folding cannot turn the weight back into floats).
Keeps: the signature of ``main``; the module alone is a runnable float "fake-quant" model.
Runs: stage ``quantize``, at its start (after ``simplify`` folded BatchNorm and constants),
with option ``layer_plans`` (layer index -> :class:`LayerPlan`): a pure rewrite, the plans were
decided before (calibration and the accuracy guard in :mod:`relaycomp.quantize.quantizer`). With
``dtype="float16"`` (CUDA targets only) it applies TVM's ToMixedPrecision instead.
Reports: ``layers_int8``, ``layers_weight_only``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, is_tuple, wildcard

from relaycomp.errors import PassError
from relaycomp.ir import substitute_vars
from relaycomp.registry import register_pass

_CONV = "relax.nn.conv2d"
_MATMUL = "relax.matmul"


@dataclass(frozen=True)
class Layer:
    """A quantizable op of ``main``: its kind, constant weight and output-channel axis."""

    index: int
    kind: str  # conv2d, depthwise_conv2d or matmul
    weight: np.ndarray
    channel_axis: int

    @property
    def name(self) -> str:
        """``kind_index``, stable for one module."""
        return f"{self.kind}_{self.index}"


@dataclass(frozen=True)
class LayerPlan:
    """How one layer is quantized. ``mode``: ``int8``, ``weight_only`` or ``float``."""

    mode: str
    weight_q: np.ndarray | None = None  # int8
    weight_scale: np.ndarray | None = None  # per channel [C] or scalar
    input_scale: float = 1.0
    input_zero_point: int = 0
    input_dtype: str = "int8"
    weight_bits: int = 8  # 4: a weight-only matmul stores two weights a byte (pack_int4)


def pack_int4(weight_q: np.ndarray) -> np.ndarray:
    """``[K, N]`` int8 weights in [-8, 7] (``N`` even) as ``[K, N / 2]`` uint8: column ``j`` in
    the low nibble, column ``j + N / 2`` in the high one, each offset by 8."""
    half = weight_q.shape[1] // 2
    biased = (weight_q.astype(np.int16) + 8).astype(np.uint8)
    return biased[:, :half] | (biased[:, half:] << 4)


def unpacked_int4(packed: tvm.ir.expr.Constant):
    """The Relax expression of :func:`pack_int4` undone: ``[K, N]`` int8 (``concat`` of the low
    and high nibbles, minus 8)."""
    low = relax.op.bitwise_and(packed, relax.const(15, "uint8"))
    high = relax.op.right_shift(packed, relax.const(4, "uint8"))
    joined = relax.op.astype(relax.op.concat([low, high], axis=1), "int8")
    return relax.op.subtract(joined, relax.const(8, "int8"))


def _layer_kind(call) -> tuple[str, int] | None:
    """(kind, output-channel axis) when ``call`` is a quantizable layer, else None."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
        return None
    name = call.op.name
    if name not in (_CONV, _MATMUL) or not isinstance(call.args[1], tvm.ir.expr.Constant):
        return None
    weight_type, data_type = call.args[1].ty, call.args[0].ty
    if str(weight_type.dtype) != "float32" or str(getattr(data_type, "dtype", "")) != "float32":
        return None
    if name == _CONV:
        attrs = call.attrs
        if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
            return None
        channels = data_type.shape[1]
        groups = int(attrs.groups)
        if groups == 1:
            return "conv2d", 0
        if isinstance(channels, tvm.tirx.IntImm) and groups == int(channels):
            return "depthwise_conv2d", 0
        return None
    if len(weight_type.shape) != 2:
        return None
    return "matmul", 1


def find_layers(mod: tvm.IRModule) -> list[Layer]:
    """The quantizable layers of ``main``, in binding order."""
    layers = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            kind = _layer_kind(getattr(binding, "value", None))
            if kind is not None:
                weight = binding.value.args[1].value.numpy()
                layers.append(Layer(len(layers), kind[0], weight, kind[1]))
    return layers


def _subst(expr, vmap):
    """``expr`` with variables replaced by their rebuilt counterparts (straight-line only)."""
    if isinstance(expr, (relax.If, relax.Function, relax.SeqExpr)):
        raise PassError("quantize_int8", "quantize",
                        f"'main' holds a {type(expr).__name__}; only straight-line graphs "
                        "are supported")
    return substitute_vars(expr, vmap)


OnLayer = Callable[[relax.BlockBuilder, int, relax.Call], relax.Expr]


def rebuild_main(mod: tvm.IRModule, on_layer: OnLayer, extra_params=(),
                 tap_inputs: bool = False) -> tvm.IRModule:
    """``mod`` with ``main`` re-emitted binding by binding; each layer call (its operands
    already rebuilt) is replaced by ``on_layer(builder, index, call)``. With ``tap_inputs``,
    ``main`` returns ``(original result, input of layer 0, input of layer 1, ...)``."""
    func = mod["main"]
    bb = relax.BlockBuilder()
    params = [relax.Var(p.name, p.ty) for p in func.params]
    vmap = dict(zip(func.params, params))
    taps, index = [], 0
    attrs = dict(func.attrs) if func.attrs else {}
    if "num_input" in attrs:
        attrs["num_input"] = len(params) + len(extra_params)
    with bb.function("main", params + list(extra_params), attrs=attrs):
        for block in func.body.blocks:
            dataflow = isinstance(block, relax.DataflowBlock)
            with bb.dataflow() if dataflow else nullcontext():
                for binding in block.bindings:
                    value = _subst(binding.value, vmap)
                    if isinstance(binding, relax.MatchCast):
                        new = bb.match_cast(value, binding.ty)
                    else:
                        if _layer_kind(value) is not None:
                            if tap_inputs:
                                taps.append(value.args[0])
                            value = on_layer(bb, index, value)
                            index += 1
                        escapes = dataflow and not isinstance(binding.var, relax.DataflowVar)
                        emit = bb.emit_output if escapes else bb.emit
                        new = emit(value, binding.var.name)
                    vmap[binding.var] = new
                if dataflow:
                    taps = [bb.emit_output(t) if isinstance(t, relax.DataflowVar) else t
                            for t in taps]
        result = _subst(func.body.body, vmap)
        bb.emit_func_output(relax.Tuple([result, *taps]) if tap_inputs else result)
    new_mod = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    new_mod["main"] = bb.get()["main"]
    return new_mod


def _const(value, dtype: str) -> tvm.ir.expr.Constant:
    return relax.const(np.asarray(value, dtype=dtype), dtype)


def quantized_call(bb: relax.BlockBuilder, call: relax.Call, plan: LayerPlan, axis: int,
                   shared: dict | None = None):
    """The QDQ form of one layer (``plan.mode`` int8 or weight_only). Layers reading the same
    tensor with the same parameters (a ResNet block's conv and its projection) share one
    quantize/dequantize pair through ``shared``."""
    stored = (unpacked_int4(_const(pack_int4(plan.weight_q), "uint8")) if plan.weight_bits == 4
              else _const(plan.weight_q, "int8"))
    weight = bb.emit(relax.op.dequantize(
        stored, _const(plan.weight_scale, "float32"), _const(0, "int8"), axis=axis))
    data = call.args[0]
    if plan.mode == "int8":
        key = (data, plan.input_scale, plan.input_zero_point, plan.input_dtype)
        if shared is None or key not in shared:
            scale = _const(plan.input_scale, "float32")
            zero = _const(plan.input_zero_point, plan.input_dtype)
            q = bb.emit(relax.op.quantize(data, scale, zero, axis=-1, out_dtype=plan.input_dtype))
            dequantized = bb.emit(relax.op.dequantize(q, scale, zero, axis=-1))
            if shared is None:
                return relax.Call(call.op, [dequantized, weight], call.attrs, call.ty_args)
            shared[key] = dequantized
        data = shared[key]
    return relax.Call(call.op, [data, weight], call.attrs, call.ty_args)


def annotate(mod: tvm.IRModule, layers: list[Layer],
             plans: Mapping[int, LayerPlan]) -> tvm.IRModule:
    """``mod`` with every planned layer in QDQ form; weight-only layers fused with their
    weight's dequantize. Layers without a plan (or planned ``float``) are left as they are."""
    shared: dict = {}

    def on_layer(bb, index, call):
        plan = plans.get(index)
        if plan is None or plan.mode == "float":
            return call
        return quantized_call(bb, call, plan, layers[index].channel_axis, shared)

    mod = rebuild_main(mod, on_layer)
    if any(p.mode == "weight_only" for p in plans.values()):
        mod = _fuse_weight_only(mod)
    return mod


def _fuse_weight_only(mod: tvm.IRModule) -> tvm.IRModule:
    dequantized = is_op("relax.dequantize")(is_const(), is_const(), is_const())
    packed = is_const()
    nibbles = is_tuple([is_op("relax.bitwise_and")(packed, is_const()),
                        is_op("relax.right_shift")(packed, is_const())])
    int4 = is_op("relax.subtract")(is_op("relax.astype")(is_op("relax.concat")(nibbles)),
                                   is_const())
    patterns = [relax.transform.FusionPattern(f"int8_weight_only_{op.split('.')[-1]}",
                                              is_op(op)(wildcard(), dequantized), {}, None)
                for op in (_CONV, _MATMUL)]
    patterns.append(relax.transform.FusionPattern(
        "int4_weight_only_matmul",
        is_op(_MATMUL)(wildcard(), is_op("relax.dequantize")(int4, is_const(), is_const())),
        {}, None))
    return relax.transform.FuseOpsByPattern(patterns, bind_constants=False,
                                            annotate_codegen=False)(mod)


def switchable(mod: tvm.IRModule, layers: list[Layer],
               plans: Mapping[int, LayerPlan]) -> tvm.IRModule:
    """An evaluation copy of ``mod``: ``main`` takes a trailing bool ``layer_mask`` [n layers];
    layer i runs quantized where the mask is set and in float elsewhere — so one compiled
    module measures any mix of quantized and float layers."""
    mask = relax.Var("layer_mask", relax.TensorType((max(len(layers), 1),), "bool"))

    def on_layer(bb, index, call):
        plan = plans.get(index)
        if plan is None or plan.mode == "float":
            return call
        quantized = bb.emit(quantized_call(bb, call, plan, layers[index].channel_axis))
        exact = bb.emit(call)
        chosen = bb.emit(relax.op.strided_slice(mask, axes=[0], begin=[index], end=[index + 1]))
        return relax.op.where(chosen, quantized, exact)

    return rebuild_main(mod, on_layer, extra_params=[mask])


def instrumented(mod: tvm.IRModule) -> tvm.IRModule:
    """A copy of ``mod`` whose ``main`` also returns every layer's input, for calibration."""
    return rebuild_main(mod, lambda bb, index, call: call, tap_inputs=True)


def mixed_precision(mod: tvm.IRModule) -> tvm.IRModule:
    """fp16 compute with fp32 accumulation (TVM's ToMixedPrecision); inputs/outputs stay fp32."""
    mixed = relax.transform.ToMixedPrecision(out_dtype="float32")(mod)
    return relax.transform.FoldConstant()(mixed)


@register_pass("quantize_int8", stage="quantize", position="start")
def quantize_int8(target: tvm.target.Target | None = None,
                  layer_plans: Mapping[int, LayerPlan] | None = None, dtype: str = "int8",
                  report: dict | None = None) -> tvm.transform.Pass:
    """Annotate the planned conv/matmul layers with int8 QDQ, or apply fp16 mixed precision.

    ``layer_plans``: layer index -> LayerPlan, as
    :func:`relaycomp.quantize.quantizer.plan_and_annotate` decided them; ``dtype="float16"``
    applies mixed precision instead (CUDA targets)."""
    if dtype == "float16" and target is not None and target.kind.name != "cuda":
        raise PassError("quantize_int8", "quantize", "float16 mixed precision is for CUDA "
                        f"targets, not {target.kind.name}", hint="use int8 on CPUs")

    @tvm.transform.module_pass(opt_level=0, name="quantize_int8")
    def run(mod: tvm.IRModule, ctx) -> tvm.IRModule:
        if dtype == "float16":
            return mixed_precision(mod)
        plans = dict(layer_plans or {})
        if report is not None:
            modes = [plan.mode for plan in plans.values()]
            report.update(layers_int8=modes.count("int8"),
                          layers_weight_only=modes.count("weight_only"))
        return annotate(mod, find_layers(mod), plans)

    return run
