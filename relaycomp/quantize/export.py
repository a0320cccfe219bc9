"""The int8 plan as a QDQ ONNX model: the format onnxruntime's own quantizer writes.

Each int8 layer's ONNX node (Conv, Gemm, MatMul) gets ``QuantizeLinear`` →
``DequantizeLinear`` on its activation input, with the calibrated scale and zero point, and its
weight becomes an int8 initializer under a ``DequantizeLinear`` with the per-channel (or
per-tensor) scales: the same integers and scales the compiled artifact uses. A BatchNormalization
right after a Conv is folded into the Conv first, as the compiler's ``simplify`` stage does
before quantizing (so the exported int8 weights are those of the folded conv). A layer whose
ONNX weight does not match the compiler's (another rewrite changed it) stays float, named in
``skipped``.

::

    model, skipped = qdq_model(onnx_model, layers, names, plans)
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from relaycomp.quantize.quantizer import QuantizeError

QDQ_OPSET = 13  # DequantizeLinear's per-channel ``axis``


def qdq_model(model: onnx.ModelProto, layers: list, names: list, plans: dict,
              ) -> tuple[onnx.ModelProto, dict[str, str]]:
    """``model`` with every ``int8`` plan written as QDQ nodes; returns it and the layers left
    float with the reason."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < QDQ_OPSET:
        raise QuantizeError(f"the model's opset {opset} is older than {QDQ_OPSET}, which "
                            "per-channel DequantizeLinear needs",
                            hint="convert it first: onnx.version_converter.convert_version("
                                 "model, 13)")
    model = _fold_batchnorm(onnx.ModelProto.FromString(model.SerializeToString()))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    nodes = {node.name or node.output[0]: node for node in graph.node}
    before: dict[int, list] = {}   # id(node) -> QDQ nodes to insert before it
    skipped = {}
    for layer, name in zip(layers, names):
        plan = plans.get(layer.index)
        if plan is None or plan.mode != "int8" or name is None:
            continue
        node = nodes.get(name)
        if node is None or node.input[1] not in weights:
            skipped[name or layer.name] = "its weight is not an initializer"
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        layout = _layout(weight, layer.weight)
        if layout is None:
            skipped[name] = "its ONNX weight differs from the compiled layer's"
            continue
        before[id(node)] = _quantize_layer(graph, node, plan, layer.channel_axis, layout, name)
    ordered = []
    for node in graph.node:
        ordered.extend(before.get(id(node), []))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    _drop_unused_initializers(graph)
    onnx.checker.check_model(model)
    return model, skipped


def _drop_unused_initializers(graph) -> None:
    """Remove the initializers no node reads any more (float weights replaced by int8 ones)."""
    used = {name for node in graph.node for name in node.input}
    used |= {o.name for o in graph.output}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)


def _layout(onnx_weight: np.ndarray, weight: np.ndarray) -> str | None:
    """"same" or "transposed" (a Gemm's transB weight) when the ONNX weight is the compiled
    layer's, else None."""
    if onnx_weight.shape == weight.shape and np.allclose(onnx_weight, weight, rtol=1e-4,
                                                         atol=1e-6):
        return "same"
    if onnx_weight.ndim == 2 and onnx_weight.T.shape == weight.shape and \
            np.allclose(onnx_weight.T, weight, rtol=1e-4, atol=1e-6):
        return "transposed"
    return None


def _quantize_layer(graph, node, plan, axis: int, layout: str, name: str) -> list:
    """Add the layer's initializers, point ``node`` at the dequantized tensors; returns the
    Quantize/DequantizeLinear nodes that go before it."""
    weight_q, scale = plan.weight_q, np.asarray(plan.weight_scale, np.float32)
    if layout == "transposed":
        weight_q, axis = weight_q.T, 1 - axis
    prefix = name.strip("/").replace("/", "_")
    activation_dtype = np.uint8 if plan.input_dtype == "uint8" else np.int8
    graph.initializer.extend([
        numpy_helper.from_array(np.ascontiguousarray(weight_q), f"{prefix}_weight_quantized"),
        numpy_helper.from_array(scale, f"{prefix}_weight_scale"),
        numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{prefix}_weight_zero_point"),
        numpy_helper.from_array(np.float32(plan.input_scale), f"{prefix}_input_scale"),
        numpy_helper.from_array(activation_dtype(plan.input_zero_point),
                                f"{prefix}_input_zero_point"),
    ])
    activation, quantized = node.input[0], f"{prefix}_input_quantized"
    added = [
        helper.make_node("QuantizeLinear", [activation, f"{prefix}_input_scale",
                                            f"{prefix}_input_zero_point"], [quantized],
                         name=f"{prefix}_input_QuantizeLinear"),
        helper.make_node("DequantizeLinear", [quantized, f"{prefix}_input_scale",
                                              f"{prefix}_input_zero_point"],
                         [f"{prefix}_input_dequantized"], name=f"{prefix}_input_DequantizeLinear"),
        helper.make_node("DequantizeLinear", [f"{prefix}_weight_quantized",
                                              f"{prefix}_weight_scale",
                                              f"{prefix}_weight_zero_point"],
                         [f"{prefix}_weight_dequantized"],
                         name=f"{prefix}_weight_DequantizeLinear",
                         **({"axis": axis} if scale.ndim else {})),
    ]
    node.input[0] = f"{prefix}_input_dequantized"
    node.input[1] = f"{prefix}_weight_dequantized"
    return added


def _fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold each BatchNormalization whose input is a Conv's only use into that Conv."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    producers = {node.output[0]: node for node in graph.node if node.output}
    graph_outputs = {o.name for o in graph.output}
    removed = set()
    for bn in graph.node:
        conv = producers.get(bn.input[0]) if bn.op_type == "BatchNormalization" else None
        if conv is None or conv.op_type != "Conv" or uses.get(bn.input[0]) != 1 or \
                bn.input[0] in graph_outputs or len(bn.output) != 1 or \
                not all(name in weights for name in (conv.input[1], *bn.input[1:5])) or \
                (len(conv.input) > 2 and conv.input[2] not in weights):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(weights[n]) for n in bn.input[1:5])
        epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        factor = gamma / np.sqrt(var + epsilon)
        weight = numpy_helper.to_array(weights[conv.input[1]])
        bias = (numpy_helper.to_array(weights[conv.input[2]]) if len(conv.input) > 2
                else np.zeros(weight.shape[0], weight.dtype))
        folded_name = f"{conv.input[1]}_bn_folded"
        graph.initializer.extend([
            numpy_helper.from_array((weight * factor.reshape(-1, *[1] * (weight.ndim - 1)))
                                    .astype(weight.dtype), folded_name),
            numpy_helper.from_array(((bias - mean) * factor + beta).astype(weight.dtype),
                                    f"{folded_name}_bias")])
        del conv.input[1:]
        conv.input.extend([folded_name, f"{folded_name}_bias"])
        conv.output[0] = bn.output[0]
        removed.add(id(bn))
    kept = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unused_initializers(graph)
    return model


def quantize_to_qdq(model, config=None, *, calib=None, eval_data=None, input_shapes=None,
                    ) -> tuple[onnx.ModelProto, object, dict[str, str]]:
    """Plan int8 for ``model`` (path, ``example:NAME`` or ModelProto) exactly as a compile
    does and return the QDQ ONNX model, the :class:`QuantReport` and the layers left float.

    ::

        qdq, report, skipped = quantize_to_qdq("model.onnx", QuantConfig(), calib="d.npz")
        onnx.save(qdq, "model.int8.onnx")   # onnxruntime runs it
    """
    from relaycomp.frontend.examples import resolve_model_path
    from relaycomp.frontend.onnx_import import load_onnx
    from relaycomp.passes.quantize_int8 import find_layers
    from relaycomp.quantize.quantizer import (
        QuantConfig,
        _layer_names,
        plan_and_annotate,
        simplified_module,
    )

    config = config or QuantConfig()
    if config.weight_only or config.dtype != "int8":
        raise QuantizeError("a QDQ ONNX model is written for int8 layers (weights and "
                            "activations), not for weight-only or float16",
                            hint="drop --weight-only")
    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(resolve_model_path(model))
    mod, inputs, onnx_names = simplified_module(model, input_shapes)
    layers = find_layers(mod)
    names = _layer_names(layers, onnx_names)
    if layers and all(name is None for name in names):
        raise QuantizeError(f"the model's {len(layers)} compiled layers do not line up one to "
                            f"one with its {len(onnx_names)} Conv/Gemm/MatMul nodes, so the "
                            "plan cannot be written back into the ONNX graph",
                            hint="compile it with --quantize int8 instead")
    _, report, plans = plan_and_annotate(mod, config, calib=calib, eval_data=eval_data,
                                         inputs=inputs, onnx_names=onnx_names)
    qdq, skipped = qdq_model(model, layers, names, plans)
    return qdq, report, skipped
