"""Post-training int8 quantization of conv2d / depthwise conv2d / matmul layers.

    mod, report = relaycomp.quantize(mod, QuantConfig(calibration="entropy"), calib="data.npz")
    print(report.summary())   # per-layer scheme and scales, sizes, accuracy, layers kept float

    relaycomp.compile("m.onnx", "m.so", quantize=QuantConfig(), calibration="data.npz")

Steps: find the layers (:mod:`relaycomp.passes.quantize_int8`); run an instrumented copy of the
float module on the calibration batches, compiled for this machine, and let a calibrator
(:mod:`relaycomp.quantize.calib`) pick each layer input's range; quantize weights symmetrically
to int8 (per output channel or per tensor); rewrite the module into QDQ form; then compare with
float on held-out samples and, with ``max_accuracy_drop``, return the most sensitive layers to
float until the budget holds (:mod:`relaycomp.quantize.guard`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
import tvm

from relaycomp import ir
from relaycomp.errors import CalibrationError, RelaycompError
from relaycomp.frontend.inputs import load_batches
from relaycomp.frontend.layer_names import onnx_layer_names
from relaycomp.frontend.onnx_import import TensorSpec
from relaycomp.passes.quantize_int8 import (
    Layer,
    LayerPlan,
    annotate,
    find_layers,
    instrumented,
    mixed_precision,
    switchable,
)
from relaycomp.quantize.calib import CALIBRATORS, make_calibrator
from relaycomp.quantize.guard import Agreement, Evaluator, HostModule, guard
from relaycomp.quantize.progress import calibration_bar
from relaycomp.quantize.report import QuantReport, constant_bytes, layer_entry, stored_bytes
from relaycomp.schedules.cpu.int8 import prefers_pair_safe_weights

LAYER_KINDS = ("conv2d", "depthwise_conv2d", "matmul")
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")  # the ONNX ops whose Relax form find_layers matches
ACTIVATION_SCHEMES = ("asymmetric", "symmetric")
DTYPES = ("int8", "float16")


class QuantizeError(RelaycompError):
    """Bad quantization options (dtype, method, layer names)."""


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize.

    ``dtype``: ``int8``, or ``float16`` (mixed precision for CUDA targets: conv/matmul run in
    fp16 with fp32 accumulation, no calibration; the other options do not apply).
    ``calibration``: a registered calibrator (``minmax``, ``percentile``, ``entropy``, ``mse``);
    ``percentile`` its percentile. ``per_channel``: one weight scale per output channel (else
    per tensor). ``activations``: ``asymmetric`` (uint8 with a zero point) or ``symmetric`` (int8,
    zero point 0).
    ``keep_float``: layer kinds (``conv2d``, ``depthwise_conv2d``, ``matmul``) or layer names
    (the ONNX node name; ``conv2d_0``-style for modules without one) left in float.
    ``max_accuracy_drop``: allowed loss
    (label accuracy if the evaluation data has labels, else 1 - top-1 agreement with float);
    layers fall back to float until it holds. ``weight_only``: int8 weights, float activations.
    ``weight_bits``: 4 stores the weights of weight-only matmul layers as int4, two a byte
    (per output channel, ``[-7, 7]``; convs and layers with an odd output count keep int8).
    ``reduce_range``: 7-bit weights ([-63, 63]), so that ``vpmaddubsw``'s int16 pair sums never
    saturate - the int8 kernel with twice the throughput on x86 CPUs with AVX2 but no AVX-512
    VNNI (onnxruntime's ``reduce_range``); ``None``: on exactly for such targets. Weight-only
    layers keep 8 bits (their kernels are float).
    """

    dtype: str = "int8"
    calibration: str = "minmax"
    percentile: float = 99.99
    per_channel: bool = True
    activations: str = "asymmetric"
    keep_float: tuple[str, ...] = ()
    max_accuracy_drop: float | None = None
    weight_only: bool = False
    min_samples: int = 8
    reduce_range: bool | None = None
    weight_bits: int = 8

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise QuantizeError(f"unsupported quantization dtype '{self.dtype}'",
                                hint=f"supported: {', '.join(DTYPES)}")
        if self.calibration not in CALIBRATORS:
            CALIBRATORS.get(self.calibration)  # raises, listing the methods
        if self.activations not in ACTIVATION_SCHEMES:
            raise QuantizeError(f"unknown activation scheme '{self.activations}'",
                                hint=f"known: {', '.join(ACTIVATION_SCHEMES)}")
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop < 1.0:
            raise QuantizeError(f"max_accuracy_drop must be in [0, 1), got "
                                f"{self.max_accuracy_drop}")
        if self.weight_bits not in (8, 4) or self.weight_bits == 4 and not self.weight_only:
            raise QuantizeError(f"weight_bits {self.weight_bits} is not supported",
                                hint="8, or 4 with weight_only (int4 weight-only matmuls)")
        if self.min_samples < 1:
            raise QuantizeError(f"min_samples must be at least 1, got {self.min_samples}")
        object.__setattr__(self, "keep_float", tuple(self.keep_float))

    def to_json(self) -> dict:
        """JSON form for reports and manifests."""
        return {"dtype": self.dtype, "calibration": self.calibration, "per_channel":
                self.per_channel, "activations": self.activations,
                "keep_float": list(self.keep_float), "max_accuracy_drop": self.max_accuracy_drop,
                "weight_only": self.weight_only, "reduce_range": self.reduce_range,
                "weight_bits": self.weight_bits}


def quantize(mod, config: QuantConfig | None = None, *, calib=None,
             eval_data=None, inputs: list[TensorSpec] | None = None,
             onnx_names: list[str] | None = None,
             target: tvm.target.Target | None = None) -> tuple[tvm.IRModule, QuantReport]:
    """Quantize a Relax module's layers to int8 QDQ form; returns it and a :class:`QuantReport`.

    ``mod``: a Relax module that has been through the ``simplify`` stage (BatchNorm folded), or
    an ONNX model (path, ``example:NAME`` or ModelProto), imported and simplified here. ``calib``:
    calibration data (see :mod:`relaycomp.frontend.inputs`; not needed with ``weight_only``);
    ``eval_data``: held-out data (optionally with ``labels``) for the accuracy guard, else the
    calibration data is used. ``inputs``: names of ``main``'s parameters as the data keys them
    (default: the parameter names); ``onnx_names``: the ONNX node of each layer, for reports;
    ``target``: what the int8 kernels will run on (decides ``reduce_range`` when it is ``None``).
    """
    quantized, report, _ = plan_and_annotate(mod, config, calib=calib, eval_data=eval_data,
                                             inputs=inputs, onnx_names=onnx_names, target=target)
    return quantized, report


def plan_and_annotate(mod, config: QuantConfig | None = None, *, calib=None, eval_data=None,
                      inputs: list[TensorSpec] | None = None,
                      onnx_names: list[str] | None = None,
                      target: tvm.target.Target | None = None,
                      ) -> tuple[tvm.IRModule, QuantReport, dict[int, LayerPlan]]:
    """:func:`quantize`, also returning each layer's plan (index -> LayerPlan): what the
    ``quantize_int8`` pass applies to the same module in a compile."""
    config = config or QuantConfig()
    if config.reduce_range is None:
        config = replace(config, reduce_range=prefers_pair_safe_weights(target))
    if not isinstance(mod, tvm.IRModule):
        mod, inputs, onnx_names = simplified_module(mod)
    inputs = inputs or _param_specs(mod)
    layers = find_layers(mod)
    names = _layer_names(layers, onnx_names)
    if config.dtype == "float16":
        return (*_mixed_precision(mod, config, layers, names), {})
    kept = _kept_float(config, layers, names)
    report = QuantReport(config=config.to_json())
    batches, labels = [], None
    if calib is not None or not config.weight_only:
        if calib is None:
            raise CalibrationError("int8 quantization needs calibration data",
                                   hint="pass calib= (CLI: --calib samples.npz), or use "
                                        "weight_only")
        batches, _ = load_batches(calib, inputs, config.min_samples)
        first = inputs[0].shape  # () for a scalar input: one sample per batch
        report.samples["calibration"] = len(batches) * int(first[0] if first else 1)
    chosen = [la for la in layers if la.index not in kept]
    held_out = None
    if batches or eval_data is not None:
        held_out, labels = (load_batches(eval_data, inputs, 1, "evaluation", allow_labels=True,
                                         classes=_class_count(mod))
                            if eval_data is not None else (batches, None))
    calibrating = bool(chosen) and not config.weight_only
    # the bar's steps: each compile and each batch run (the guard runs its batches twice)
    steps = (1 + len(batches) if calibrating else 0) + (1 + 2 * len(held_out) if held_out else 0)
    with calibration_bar(steps) as bar:
        ranges = _calibrate(mod, chosen, batches, inputs, config, bar) if calibrating else {}
        plans = {la.index: _plan(la, config, ranges.get(la.index)) for la in chosen}
        fallback, sensitivity = [], {}
        if held_out is not None:
            report.evaluated_on = (f"{len(held_out)} held-out batch(es)" if eval_data is not None
                                   else f"the {len(held_out)} calibration batch(es)")
            bar.set_description_str("int8 accuracy check")
            evaluator = Evaluator(switchable(mod, layers, plans), held_out,
                                  [s.name for s in inputs], len(layers), labels, progress=bar)
            remaining, sensitivity, fallback, agreement = guard(
                evaluator, set(plans), config.max_accuracy_drop, progress=bar)
            report.accuracy = agreement.to_json()
            plans = {i: p for i, p in plans.items() if i in remaining}
    report.layers = [layer_entry(la, names[la.index], plans.get(la.index), kept, fallback,
                                  sensitivity) for la in layers]
    report.weight_bytes_float = sum(la.weight.nbytes for la in layers)
    report.weight_bytes_quantized = sum(stored_bytes(la, plans.get(la.index)) for la in layers)
    quantized = annotate(mod, layers, plans)
    report.model_bytes_float = constant_bytes(mod)
    report.model_bytes_quantized = constant_bytes(quantized)
    return quantized, report, plans


def _mixed_precision(mod, config, layers, names) -> tuple[tvm.IRModule, QuantReport]:
    """fp16 compute with fp32 accumulation (TVM's ToMixedPrecision); inputs/outputs stay fp32."""

    report = QuantReport(config=config.to_json(), evaluated_on="not evaluated (needs a GPU)")
    report.layers = [{"name": name or la.name, "layer": la.name, "onnx_name": name,
                      "kind": la.kind, "weight_shape": list(la.weight.shape), "mode": "float16"}
                     for la, name in zip(layers, names)]
    report.weight_bytes_float = sum(la.weight.nbytes for la in layers)
    report.weight_bytes_quantized = report.weight_bytes_float // 2
    mixed = mixed_precision(mod)
    report.model_bytes_float = constant_bytes(mod)
    report.model_bytes_quantized = constant_bytes(mixed)
    return mixed, report


def simplified_module(model, input_shapes=None) -> tuple[tvm.IRModule, list, list[str]]:
    """An ONNX model imported and through the ``simplify`` stage, its inputs, and the ONNX
    names of its quantizable nodes (Conv, Gemm, MatMul with a constant weight), in order."""
    from relaycomp.compiler.pipeline import default_stages, run_stages
    from relaycomp.frontend.examples import resolve_model_path
    from relaycomp.frontend.onnx_import import import_onnx, load_onnx
    from relaycomp.targets import resolve

    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(resolve_model_path(model))
    imported = import_onnx(model, dict(input_shapes or {}))
    stages = [s for s in default_stages("llvm") if s.name == "simplify"]
    mod, _ = run_stages(imported.mod, stages, resolve("host").tvm_target())
    return mod, imported.inputs, onnx_layer_names(model, QUANTIZED_OPS)


def _param_specs(mod: tvm.IRModule) -> list[TensorSpec]:
    specs = []
    for param in mod["main"].params:
        shape = tuple(int(d) for d in param.ty.shape)
        specs.append(TensorSpec(param.name, shape, str(param.ty.dtype)))
    return specs


def _class_count(mod: tvm.IRModule) -> int | None:
    """Classes on the last axis of the first output (what the accuracy guard's labels index),
    or None when it has no class axis."""
    shape, _ = ir.main_output_types(mod)[0]
    return int(shape[-1]) if len(shape) > 1 and isinstance(shape[-1], int) else None


def _layer_names(layers: list[Layer], onnx_names: list[str] | None) -> list[str | None]:
    """The ONNX node of each layer, when the ONNX graph's layers line up one to one."""
    if onnx_names is None or len(onnx_names) != len(layers):
        return [None] * len(layers)
    return list(onnx_names)


def _kept_float(config: QuantConfig, layers: list[Layer], onnx: list) -> dict[int, str]:
    """Layer index → why it stays float, for the config's ``keep_float`` entries (layer kinds,
    or layer names: the ONNX node's when known, else ``conv2d_0``-style)."""
    aliases = {"dense": "matmul", "gemm": "matmul", "conv": "conv2d"}
    names = [name or la.name for la, name in zip(layers, onnx)]
    unknown = [n for n in config.keep_float
               if aliases.get(n, n) not in {*names, *LAYER_KINDS}]
    if unknown:
        listed = ", ".join([*LAYER_KINDS, *names[:8]])
        raise QuantizeError(f"keep_float names no layer or kind: {unknown}",
                            hint=f"use a kind or a layer name: {listed}, ...")
    wanted = {aliases.get(n, n) for n in config.keep_float}
    return {la.index: "kept float by request" for la, name in zip(layers, names)
            if la.kind in wanted or name in wanted}


def _calibrate(mod, layers: list[Layer], batches, inputs, config, bar) -> dict[int, tuple]:
    """Run the float module on every batch; calibrated input range of each layer. ``bar``
    (:mod:`relaycomp.quantize.progress`) counts the compile and each batch."""
    bar.set_description_str("int8 calibration")
    module = HostModule(instrumented(mod))
    bar.update(1)
    options = {"percentile": config.percentile} if config.calibration == "percentile" else {}
    calibrator = make_calibrator(config.calibration, **options)
    wanted = {la.index for la in layers}
    for batch in batches:
        taps = module.run([batch[s.name] for s in inputs])[-len(find_layers(mod)):]
        for index, array in enumerate(taps):
            if index in wanted:
                calibrator.observe(str(index), array)
        bar.update(1)
    return {int(name): span for name, span in calibrator.ranges().items()}


def activation_params(low: float, high: float, scheme: str) -> tuple[float, int]:
    """(scale, zero point) mapping ``[low, high]`` (containing 0) onto uint8 (``asymmetric``)
    or, with zero point 0, onto int8 (``symmetric``)."""
    if scheme == "symmetric":
        scale = max(abs(low), abs(high)) / 127.0
        return (scale if scale > 0 else 1.0), 0
    scale = (high - low) / 255.0
    if scale <= 0:
        return 1.0, 0
    zero_point = int(np.clip(np.round(-low / scale), 0, 255))
    return scale, zero_point


def weight_params(weight: np.ndarray, axis: int, per_channel: bool, qmax: int = 127
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights in [-qmax, qmax] and their scale (per ``axis`` channel or
    scalar)."""
    if per_channel:
        other = tuple(a for a in range(weight.ndim) if a != axis)
        scale = np.abs(weight).max(axis=other) / qmax
        shape = [1] * weight.ndim
        shape[axis] = -1
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        divisor = scale.reshape(shape)
    else:
        scale = np.float32(np.abs(weight).max() / qmax or 1.0)
        divisor = scale
    quantized = np.clip(np.round(weight / divisor), -qmax, qmax).astype(np.int8)
    return quantized, np.asarray(scale, dtype=np.float32)


def _plan(layer: Layer, config: QuantConfig, span: tuple | None) -> LayerPlan:
    int4 = (config.weight_only and config.weight_bits == 4 and layer.kind == "matmul"
            and layer.weight.shape[1] % 2 == 0)
    qmax = 7 if int4 else 63 if config.reduce_range and not config.weight_only else 127
    weight_q, weight_scale = weight_params(layer.weight, layer.channel_axis, config.per_channel,
                                           qmax)
    if config.weight_only:
        return LayerPlan("weight_only", weight_q, weight_scale, weight_bits=4 if int4 else 8)
    scale, zero_point = activation_params(*span, config.activations)
    dtype = "uint8" if config.activations == "asymmetric" else "int8"
    return LayerPlan("int8", weight_q, weight_scale, scale, zero_point, dtype)


__all__ = ["Agreement", "QuantConfig", "QuantReport", "QuantizeError", "quantize"]
