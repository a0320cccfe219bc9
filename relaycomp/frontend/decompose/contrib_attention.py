"""onnxruntime's attention contrib ops in standard ops, as its CPU kernels compute them:
com.microsoft Attention, MultiHeadAttention and GroupQueryAttention.

- Attention / MultiHeadAttention: ``softmax(scale * Q K^T + mask + attention_bias) V`` per head,
  the mask *additive* with ``mask_filter_value`` (default -10000) as onnxruntime's
  ``PrepareMask`` builds it: a raw ``[B, T]`` or ``[B, S, T]`` key mask (0 = masked), ``[B]``
  end positions or ``[2B]`` end and start positions, and ``unidirectional`` (causal, offset by
  the past length). ``past`` (Attention: ``[2, B, N, P, H]``; MultiHeadAttention: ``past_key``/
  ``past_value``) is concatenated before the new keys and returned as ``present``.
- GroupQueryAttention: causal (and ``local_window_size``, ``softcap``) over the past followed
  by the new keys, each key/value head shared by ``num_heads / kv_num_heads`` query heads;
  masked keys get exactly zero weight. ``total_sequence_length`` and ``seqlens_k`` must be
  known at compile time and describe unpadded sequences (``seqlens_k = total - 1``), the past
  exactly filled (``total = P + S``).

Forms that need run-time shapes or onnxruntime-internal layouts (packed QKV, rotary inside the
op, shared past/present buffers, ``past_sequence_length``, extra QK outputs) are refused, naming
the node and the attribute or input.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from relaycomp.errors import OnnxImportError
from relaycomp.frontend.decompose import decomposition, describe
from relaycomp.frontend.decompose.builder import GraphBuilder, attributes

MS = "com.microsoft"
DEFAULT_MASK_FILTER_VALUE = -10000.0


def _inputs(node: onnx.NodeProto, count: int) -> list[str]:
    return list(node.input) + [""] * (count - len(node.input))


def _refuse(node: onnx.NodeProto, what: str) -> OnnxImportError:
    return OnnxImportError(f"node {describe(node)}: {node.op_type} with {what} is not supported",
                           hint="export the attention with standard ops (or without this "
                                "option)")


def _ints(b: GraphBuilder, values) -> str:
    return b.const(np.asarray(values, np.int64), hint="shape")


def _split_heads(b: GraphBuilder, x: str, batch: int, length: int, heads: int, size: int) -> str:
    """``[B, L, N*H]`` -> ``[B, N, L, H]``."""
    return b.op("Transpose", [b.op("Reshape", [x, _ints(b, [batch, length, heads, size])])],
                perm=[0, 2, 1, 3])


def _merge_heads(b: GraphBuilder, x: str, batch: int, length: int, width: int,
                 output: str) -> None:
    """``[B, N, L, H]`` -> ``[B, L, N*H]`` into ``output``."""
    b.op("Reshape", [b.op("Transpose", [x], perm=[0, 2, 1, 3]),
                     _ints(b, [batch, length, width])], [output])


def _attend(b: GraphBuilder, q: str, k: str, v: str, scale: float, bias: str, dtype,
            softcap: float = 0.0) -> str:
    """``softmax(softcap(scale * q @ k^T) + bias) @ v`` with q ``[B, N, S, H]``, k and v
    ``[B, N, T, H]`` and ``bias`` ("" for none) broadcasting to ``[B, N, S, T]``."""
    scores = b.op("Mul", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])]),
                          b.const(np.array(scale, dtype), hint="scale")])
    if softcap:
        cap = b.const(np.array(softcap, dtype), hint="softcap")
        scores = b.op("Mul", [b.op("Tanh", [b.op("Div", [scores, cap])]), cap])
    if bias:
        scores = b.op("Add", [scores, bias])
    return b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])


def _key_mask_bias(node, b: GraphBuilder, mask: str, batch: int, queries: int, total: int,
                   fill: float, dtype) -> str:
    """The additive bias of onnxruntime's mask forms, shaped to broadcast to [B, N, S, T]."""
    shape = b.shape(mask, node)
    zero, filled = (b.const(np.array(v, dtype), hint="mask") for v in (0.0, fill))
    if shape in ((batch, total), (batch, queries, total)):
        keep = b.op("Greater", [mask, b.const(np.array(0, b.np_dtype(mask)), hint="zero")])
        bias = b.op("Where", [keep, zero, filled])
        return b.op("Unsqueeze", [bias, _ints(b, [1] if len(shape) == 3 else [1, 2])])
    if shape in ((batch,), (2 * batch,)):
        positions = b.const(np.arange(total, dtype=np.int64).reshape(1, total), hint="positions")
        bounds = b.op("Cast", [mask], to=onnx.TensorProto.INT64)
        ends = b.op("Slice", [bounds, _ints(b, [0]), _ints(b, [batch])])
        keep = b.op("Less", [positions, b.op("Unsqueeze", [ends, _ints(b, [1])])])
        if shape == (2 * batch,):
            starts = b.op("Slice", [bounds, _ints(b, [batch]), _ints(b, [2 * batch])])
            keep = b.op("And", [keep, b.op("Not", [b.op("Less", [
                positions, b.op("Unsqueeze", [starts, _ints(b, [1])])])])])
        bias = b.op("Where", [keep, zero, filled])
        return b.op("Unsqueeze", [bias, _ints(b, [1, 2])])
    raise _refuse(node, f"a mask of shape {list(shape)}")


def _causal_bias(b: GraphBuilder, queries: int, total: int, value: float, dtype,
                 window: int = -1) -> str:
    """``[S, T]``: ``value`` where key t is after query s (offset by the past, T - S), or
    (``window`` >= 0) outside the last ``window`` keys up to it; 0 elsewhere."""
    past = total - queries
    s = np.arange(queries).reshape(-1, 1)
    t = np.arange(total).reshape(1, -1)
    masked = t > past + s
    if window >= 0:
        masked |= t <= past + s - window
    return b.const(np.where(masked, value, 0.0).astype(dtype), hint="causal")


def _add_bias(b: GraphBuilder, bias: str, extra: str) -> str:
    if not extra:
        return bias
    return b.op("Add", [bias, extra]) if bias else extra


def _masks(node, b: GraphBuilder, attrs: dict, mask: str, attention_bias: str, batch: int,
           queries: int, total: int, dtype) -> str:
    """Key mask + causal mask (additive, mask_filter_value) + attention_bias, or ""."""
    fill = float(attrs.get("mask_filter_value", DEFAULT_MASK_FILTER_VALUE))
    bias = _key_mask_bias(node, b, mask, batch, queries, total, fill, dtype) if mask else ""
    if attrs.get("unidirectional", 0):
        bias = _add_bias(b, bias, _causal_bias(b, queries, total, fill, dtype))
    return _add_bias(b, bias, attention_bias)


def _with_past(b: GraphBuilder, past: str, new: str) -> str:
    return b.op("Concat", [past, new], axis=2) if past else new


@decomposition(MS, "Attention")
def decompose_attention(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """BERT/GPT-2-style self-attention with its QKV projection (weights ``[D, Dq+Dk+Dv]``)."""
    attrs = attributes(node)
    x, weight, bias, mask, past, attention_bias, past_length = _inputs(node, 7)[:7]
    for name in ("do_rotary", "past_present_share_buffer"):
        if attrs.get(name, 0):
            raise _refuse(node, f"{name}=1")
    if past_length:
        raise _refuse(node, "a past_sequence_length input")
    heads = int(attrs["num_heads"])
    batch, length, _ = b.shape(x, node)
    width = b.shape(weight, node)[1]
    sizes = list(attrs.get("qkv_hidden_sizes", [width // 3] * 3))
    if sum(sizes) != width or sizes[0] != sizes[1] or any(s % heads for s in sizes):
        raise _refuse(node, f"qkv_hidden_sizes {sizes} for weights of width {width}")
    dtype = b.np_dtype(x)
    projected = b.op("MatMul", [x, weight])
    if bias:
        projected = b.op("Add", [projected, bias])
    parts = b.op("Split", [projected, _ints(b, sizes)], 3, axis=2)
    head_sizes = [s // heads for s in sizes]
    q, k, v = (_split_heads(b, part, batch, length, heads, size)
               for part, size in zip(parts, head_sizes))
    past_length_value = 0
    if past:
        past_length_value = b.shape(past, node)[3]
        past_k, past_v = (b.op("Squeeze", [b.op("Slice", [past, _ints(b, [i]), _ints(b, [i + 1]),
                                                          _ints(b, [0])]), _ints(b, [0])])
                          for i in (0, 1))
        k, v = _with_past(b, past_k, k), _with_past(b, past_v, v)
    total = past_length_value + length
    scale = float(attrs.get("scale", 0.0)) or 1.0 / math.sqrt(head_sizes[0])
    biases = _masks(node, b, attrs, mask, attention_bias, batch, length, total, dtype)
    _merge_heads(b, _attend(b, q, k, v, scale, biases, dtype), batch, length, sizes[2],
                 node.output[0])
    if len(node.output) > 1 and node.output[1]:
        stacked = [b.op("Unsqueeze", [value, _ints(b, [0])]) for value in (k, v)]
        b.op("Concat", stacked, [node.output[1]], axis=0)


@decomposition(MS, "MultiHeadAttention")
def decompose_multi_head_attention(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """Attention of separate Q, K, V (``[B, L, N*H]``; K and V may be ``[B, N, L, H]``)."""
    attrs = attributes(node)
    (query, key, value, bias, mask, attention_bias, past_key, past_value,
     past_length) = _inputs(node, 9)[:9]
    if past_length:
        raise _refuse(node, "a past_sequence_length input")
    if not key or len(b.shape(query, node)) != 3:
        raise _refuse(node, "packed QKV or KV")
    if len(node.output) > 3 and node.output[3]:
        raise _refuse(node, "the qk output")
    heads = int(attrs["num_heads"])
    batch, length, width = b.shape(query, node)
    head_size = width // heads
    dtype = b.np_dtype(query)
    key_shape, value_shape = b.shape(key, node), b.shape(value, node)
    if len(key_shape) == 4 and bias:
        raise _refuse(node, "a bias and keys of shape [B, N, L, H]")
    # [B, N, L, Hv] keys and values are already split into heads
    value_width = value_shape[3] * heads if len(value_shape) == 4 else value_shape[2]
    if bias:
        q_bias, k_bias, v_bias = b.op("Split", [bias, _ints(b, [width, width, value_width])], 3,
                                      axis=0)
        query = b.op("Add", [query, q_bias])
        key, value = b.op("Add", [key, k_bias]), b.op("Add", [value, v_bias])
    q = _split_heads(b, query, batch, length, heads, head_size)
    if len(key_shape) == 4:
        k, v = key, value
    else:
        k = _split_heads(b, key, batch, key_shape[1], heads, head_size)
        v = _split_heads(b, value, batch, key_shape[1], heads, value_width // heads)
    past = b.shape(past_key, node)[2] if past_key else 0
    k, v = _with_past(b, past_key, k), _with_past(b, past_value, v)
    total = past + key_shape[-2]
    scale = float(attrs.get("scale", 0.0)) or 1.0 / math.sqrt(head_size)
    biases = _masks(node, b, attrs, mask, attention_bias, batch, length, total, dtype)
    _merge_heads(b, _attend(b, q, k, v, scale, biases, dtype), batch, length, value_width,
                 node.output[0])
    for output, state in zip(list(node.output[1:3]), (k, v)):
        if output:
            b.identity(state, output)


@decomposition(MS, "GroupQueryAttention")
def decompose_group_query_attention(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """Causal attention whose key/value heads are shared by groups of query heads."""
    attrs = attributes(node)
    inputs = _inputs(node, 14)
    query, key, value, past_key, past_value, seqlens, total_length = inputs[:7]
    for name in ("do_rotary", "smooth_softmax", "qk_output"):
        if attrs.get(name, 0):
            raise _refuse(node, f"{name}={attrs[name]}")
    if not key:
        raise _refuse(node, "packed QKV")
    extra = [i for i, name in enumerate(inputs[7:], start=7) if name and i != 10]
    if extra:
        raise _refuse(node, f"inputs {extra} (rotary caches, position ids, head sinks)")
    heads, kv_heads = int(attrs["num_heads"]), int(attrs["kv_num_heads"])
    batch, length, width = b.shape(query, node)
    head_size = width // heads
    past = b.shape(past_key, node)[2] if past_key else 0
    total = b.int_constant(total_length, node, "total_sequence_length")
    lengths = b.constant(seqlens)
    if (total != past + length or lengths is None
            or not np.all(np.asarray(lengths).reshape(-1) == total - 1)):
        raise OnnxImportError(
            f"node {describe(node)}: GroupQueryAttention is supported for unpadded sequences "
            f"known at compile time only (seqlens_k = total_sequence_length - 1 = "
            f"{total - 1}, total = past {past} + new {length})",
            hint="make seqlens_k and total_sequence_length constants of the shapes you compile")
    dtype = b.np_dtype(query)
    q = _split_heads(b, query, batch, length, heads, head_size)
    k = _with_past(b, past_key, _split_heads(b, key, batch, length, kv_heads, head_size))
    v = _with_past(b, past_value, _split_heads(b, value, batch, length, kv_heads, head_size))
    for output, state in zip(list(node.output[1:3]), (k, v)):
        if output:
            b.identity(state, output)
    groups = heads // kv_heads
    if groups > 1:  # query head i reads key/value head i // groups
        k, v = (b.op("Reshape", [b.op("Expand", [
            b.op("Unsqueeze", [state, _ints(b, [2])]),
            _ints(b, [batch, kv_heads, groups, total, head_size])]),
            _ints(b, [batch, heads, total, head_size])]) for state in (k, v))
    bias = _causal_bias(b, length, total, -np.inf, dtype,
                        int(attrs.get("local_window_size", -1)))
    bias = _add_bias(b, bias, inputs[10])
    scale = float(attrs.get("scale", 0.0)) or 1.0 / math.sqrt(head_size)
    out = _attend(b, q, k, v, scale, bias, dtype, float(attrs.get("softcap", 0.0)))
    _merge_heads(b, out, batch, length, width, node.output[0])
