"""LSTM, GRU, RNN (and com.microsoft.DynamicQuantizeLSTM) unrolled over the static sequence.

Semantics are onnxruntime's CPU kernels': every gate's pre-activation (peephole and biases
included) is clipped when ``clip`` is set; ``activation_alpha``/``activation_beta`` are consumed
in order by the activations that take them, defaults otherwise; with ``sequence_lens`` the state
of a batch entry freezes after its length and its outputs there are zero, and the reverse
direction reads each entry's valid steps backwards from its own last one.

Shape of the rewrite: the input projection of all time steps is one MatMul
(``X @ W^T + Wb + Rb``); each step is then a MatMul with ``R^T`` and the gate arithmetic,
unrolled over the sequence length (a static dim once inputs are pinned).
"""

from __future__ import annotations

import numpy as np
import onnx

from relaycomp.errors import OnnxImportError
from relaycomp.frontend.decompose import decomposition, describe
from relaycomp.frontend.decompose.builder import GraphBuilder, attributes
from relaycomp.frontend.decompose.recurrent_layer import (
    MAX_STEPS,
    activations_of,
    as_input,
    direction_bias,
    direction_weights,
    directions_of,
    finish,
    initial_state,
    make_layer,
    run_direction,
    split_gates,
)

__all__ = ["MAX_STEPS", "decompose_dynamic_quantize_lstm", "decompose_gru", "decompose_lstm",
           "decompose_rnn", "lstm"]


def lstm(node: onnx.NodeProto, b: GraphBuilder, weights=None) -> None:
    """LSTM (gates i, o, f, c); ``weights(direction) -> (W^T, R^T)`` overrides W and R."""
    layer = make_layer(node, b, "LSTM")
    attrs = attributes(node)
    acts = activations_of(node, "LSTM", layer.directions)
    inputs = list(node.input) + [""] * (8 - len(node.input))
    input_forget = bool(attrs.get("input_forget", 0))
    h = layer.hidden
    ys, finals = [], []
    for d, reverse in directions_of(node):
        if weights is not None:
            w, r = weights(d)
        else:
            w, r = direction_weights(b, inputs[1], d), direction_weights(b, inputs[2], d)
        w, r = as_input(b, w, "W_t"), as_input(b, r, "R_t")
        bias, _ = direction_bias(b, inputs[3], d, 4, h, layer.dtype)
        peep = None
        if inputs[7]:
            row = b.take(inputs[7], d, 0)
            peep = b.op("Split", [row, b.const([h] * 3, np.int64, "split")], 3, axis=0)
        f_act, g_act, h_act = acts[d]

        def cell(x_t, states, w_r=r, peep=peep, f_act=f_act, g_act=g_act, h_act=h_act):
            h_prev, c_prev = states
            pre = b.op("Add", [x_t, b.op("MatMul", [h_prev, w_r])])
            pi, po, pf, pc = split_gates(b, pre, 4, h)
            if peep is not None:
                pi = b.op("Add", [pi, b.op("Mul", [peep[0], c_prev])])
                pf = b.op("Add", [pf, b.op("Mul", [peep[2], c_prev])])
            i = layer.gate(pi, f_act)
            if input_forget:
                f = b.op("Sub", [b.const(np.ones((), layer.dtype), hint="one"), i])
            else:
                f = layer.gate(pf, f_act)
            c = b.op("Add", [b.op("Mul", [f, c_prev]), b.op("Mul", [i, layer.gate(pc, g_act)])])
            if peep is not None:
                po = b.op("Add", [po, b.op("Mul", [peep[1], c])])
            o = layer.gate(po, f_act)
            h_new = b.op("Mul", [o, h_act.apply(b, c, layer.dtype)])
            return h_new, [h_new, c]

        states = [initial_state(layer, inputs[5], d), initial_state(layer, inputs[6], d)]
        y, final = run_direction(layer, d, reverse, w, r, bias, states, cell)
        ys.append(y)
        finals.append(final)
    finish(layer, ys, finals)


@decomposition("", "LSTM")
def decompose_lstm(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """LSTM → MatMuls and gate arithmetic, unrolled."""
    lstm(node, b)


@decomposition("", "GRU")
def decompose_gru(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """GRU (gates z, r, h) → MatMuls and gate arithmetic, unrolled."""
    layer = make_layer(node, b, "GRU")
    acts = activations_of(node, "GRU", layer.directions)
    inputs = list(node.input) + [""] * (6 - len(node.input))
    before_reset = bool(attributes(node).get("linear_before_reset", 0))
    h = layer.hidden
    ys, finals = [], []
    for d, reverse in directions_of(node):
        w = as_input(b, direction_weights(b, inputs[1], d), "W_t")
        r_all = direction_weights(b, inputs[2], d)  # [hidden, 3*hidden]
        if isinstance(r_all, np.ndarray):
            r_zr = b.const(r_all[:, :2 * h], hint="R_zr")
            r_h = b.const(r_all[:, 2 * h:], hint="R_h")
        else:
            r_zr, r_h = b.op("Split", [r_all, b.const([2 * h, h], np.int64, "split")], 2, axis=1)
        # The h gate's recurrent bias sits inside the reset product when linear_before_reset.
        bias, rb_h = direction_bias(b, inputs[3], d, 3, h, layer.dtype,
                           keep_recurrent=2 if before_reset else None)
        rb_h = None if rb_h is None else as_input(b, rb_h, "Rb_h")
        f_act, g_act = acts[d]

        def cell(x_t, states, r_zr=r_zr, r_h=r_h, rb_h=rb_h, f_act=f_act, g_act=g_act):
            (h_prev,) = states
            x_z, x_r, x_h = split_gates(b, x_t, 3, h)
            rec_z, rec_r = split_gates(b, b.op("MatMul", [h_prev, r_zr]), 2, h)
            z = layer.gate(b.op("Add", [x_z, rec_z]), f_act)
            r = layer.gate(b.op("Add", [x_r, rec_r]), f_act)
            if before_reset:
                rec_h = b.op("MatMul", [h_prev, r_h])
                if rb_h is not None:
                    rec_h = b.op("Add", [rec_h, rb_h])
                rec_h = b.op("Mul", [r, rec_h])
            else:
                rec_h = b.op("MatMul", [b.op("Mul", [r, h_prev]), r_h])
            candidate = layer.gate(b.op("Add", [x_h, rec_h]), g_act)
            # h = (1 - z) * candidate + z * h_prev = candidate + z * (h_prev - candidate)
            h_new = b.op("Add", [candidate,
                                 b.op("Mul", [z, b.op("Sub", [h_prev, candidate])])])
            return h_new, [h_new]

        states = [initial_state(layer, inputs[5], d)]
        y, final = run_direction(layer, d, reverse, w, None, bias, states, cell)
        ys.append(y)
        finals.append(final)
    finish(layer, ys, finals)


@decomposition("", "RNN")
def decompose_rnn(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """RNN → MatMuls and one activation per step, unrolled."""
    layer = make_layer(node, b, "RNN")
    acts = activations_of(node, "RNN", layer.directions)
    inputs = list(node.input) + [""] * (6 - len(node.input))
    ys, finals = [], []
    for d, reverse in directions_of(node):
        w = as_input(b, direction_weights(b, inputs[1], d), "W_t")
        r = as_input(b, direction_weights(b, inputs[2], d), "R_t")
        bias, _ = direction_bias(b, inputs[3], d, 1, layer.hidden, layer.dtype)
        (f_act,) = acts[d]

        def cell(x_t, states, r=r, f_act=f_act):
            h_new = layer.gate(b.op("Add", [x_t, b.op("MatMul", [states[0], r])]), f_act)
            return h_new, [h_new]

        states = [initial_state(layer, inputs[5], d)]
        y, final = run_direction(layer, d, reverse, w, r, bias, states, cell)
        ys.append(y)
        finals.append(final)
    finish(layer, ys, finals)


@decomposition("com.microsoft", "DynamicQuantizeLSTM")
def decompose_dynamic_quantize_lstm(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """onnxruntime's DynamicQuantizeLSTM: its int8/uint8 weights ([directions, in, 4*hidden],
    per-tensor or per-column scales and zero points) dequantized, then an LSTM."""
    inputs = list(node.input) + [""] * (12 - len(node.input))

    def dequantized(direction: int):
        result = []
        for weight, scale, zero in ((1, 8, 9), (2, 10, 11)):
            q, s, z = (b.constant(inputs[i]) for i in (weight, scale, zero))
            if q is None or s is None or z is None:
                raise OnnxImportError(
                    f"node {describe(node)}: its quantized weights, scales and zero points must "
                    "be constants (initializers)")
            s = s.reshape(s.shape[0], -1)[direction].astype(np.float32)
            z = z.reshape(z.shape[0], -1)[direction].astype(np.float32)
            result.append(((q[direction].astype(np.float32) - z) * s).astype(np.float32))
        return tuple(result)  # already [in, 4*hidden]: the transposed layout LSTM wants

    lstm_node = onnx.helper.make_node("LSTM", inputs[:8], list(node.output), name=node.name)
    lstm_node.attribute.extend(node.attribute)
    lstm(lstm_node, b, weights=dequantized)
