"""Reading Relax calls as ONNX-vocabulary op nodes, and rebuilding the calls a plan edits.

:data:`RELAX_READERS` maps a Relax op name to a reader ``(view, name, call, arg) -> OpNode``
(``arg(i)`` names argument ``i``: a variable, or an inline constant recorded in the view's
constants); a reader returning None leaves the call opaque (e.g. a conv2d in NHWC).
:func:`rewrite_call` rebuilds the calls whose attributes count channels.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

from relaycomp.channels.view import OpNode
from relaycomp.registry import Registry

RELAX_READERS: Registry = Registry("relax op reader")

UNARY = {"nn.relu": "Relu", "nn.silu": "Silu", "nn.gelu": "Gelu", "sigmoid": "Sigmoid",
         "tanh": "Tanh", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "abs": "Abs",
         "negative": "Neg", "astype": "Cast", "floor": "Floor", "ceil": "Ceil", "erf": "Erf"}
BINARY = {"add": "Add", "subtract": "Sub", "multiply": "Mul", "divide": "Div",
          "maximum": "Max", "minimum": "Min", "power": "Pow"}
REDUCTIONS = {"mean": "ReduceMean", "sum": "ReduceSum", "max": "ReduceMax", "min": "ReduceMin"}


def call_to_node(view, name: str, call: relax.Call, constants: dict) -> OpNode | None:
    """The op node of ``call`` bound to ``name``, or None (the caller makes it opaque)."""
    def arg(index: int, field: int | None = None) -> str | None:
        value = call.args[index] if field is None else call.args[index].fields[field]
        if isinstance(value, relax.Var):
            return view.names.get(value)
        if isinstance(value, Constant):
            key = view.constant_name(name, index, field)
            constants[key] = value.value.numpy()
            return key
        return None

    if not isinstance(call.op, tvm.ir.Op):
        return None
    op = call.op.name.removeprefix("relax.")
    if op == "call_tir":
        kind = elementwise_tir(view.mod, call)
        if kind is None:
            return None
        inputs = [arg(1, 0), arg(1, 1)]
        return OpNode(kind[0], name, inputs, [name]) if all(inputs) else None
    if op in UNARY or op in BINARY:
        inputs = [arg(i) for i in range(1 if op in UNARY else 2)]
        return OpNode(UNARY.get(op) or BINARY[op], name, inputs, [name]) if all(inputs) else None
    if op in RELAX_READERS:
        return RELAX_READERS.get(op)(view, name, call, arg, constants)
    return None


def _scalar(value) -> float:
    while not isinstance(value, (int, float)):
        value = value.value  # PrimValue -> IntImm/FloatImm -> number
    return float(value)


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def _node(op_type, name, inputs, attrs=None, outputs=None) -> OpNode | None:
    if not all(inputs):
        return None
    return OpNode(op_type, name, list(inputs), outputs or [name], dict(attrs or {}))


@RELAX_READERS.register("nn.conv2d")
def _conv2d(view, name, call, arg, constants):
    a = call.attrs
    if (a.data_layout, a.kernel_layout, a.out_layout or "NCHW") != ("NCHW", "OIHW", "NCHW"):
        return None
    return _node("Conv", name, [arg(0), arg(1)], {"group": int(a.groups)})


@RELAX_READERS.register("matmul")
def _matmul(view, name, call, arg, constants):
    return _node("MatMul", name, [arg(0), arg(1)])


@RELAX_READERS.register("clip")
def _clip(view, name, call, arg, constants):
    bounds = [_scalar(call.args[i]) for i in (1, 2)]
    return _node("Clip", name, [arg(0)], {"min": bounds[0], "max": bounds[1]})


@RELAX_READERS.register("nn.leakyrelu")
def _leaky_relu(view, name, call, arg, constants):
    return _node("LeakyRelu", name, [arg(0)], {"alpha": float(call.attrs.alpha)})


def _reduction(op_type):
    def read(view, name, call, arg, constants):
        if call.attrs.axis is None:
            return None  # over every axis, channels included
        return _node(op_type, name, [arg(0)], {"axes": _ints(call.attrs.axis),
                                               "keepdims": int(call.attrs.keepdims)})
    return read


for _op, _onnx in REDUCTIONS.items():
    RELAX_READERS.add(_op, _reduction(_onnx))


def _pool(op_type):
    def read(view, name, call, arg, constants):
        layout = call.attrs.layout, call.attrs.out_layout or call.attrs.layout
        return _node(op_type, name, [arg(0)]) if layout == ("NCHW", "NCHW") else None
    return read


@RELAX_READERS.register("nn.conv2d_transpose")
def _conv2d_transpose(view, name, call, arg, constants):
    a = call.attrs
    layouts = (a.data_layout, a.kernel_layout, a.out_layout or "NCHW")
    if layouts != ("NCHW", "IOHW", "NCHW") or int(a.groups) != 1:
        return None
    return _node("ConvTranspose", name, [arg(0), arg(1)])


@RELAX_READERS.register("image.resize2d")
def _resize2d(view, name, call, arg, constants):
    # Resizes H and W only: each channel on its own, as an Identity does.
    return _node("Identity", name, [arg(0)]) if call.attrs.layout == "NCHW" else None


for _op, _onnx in [("nn.max_pool2d", "MaxPool"), ("nn.avg_pool2d", "AveragePool"),
                   ("nn.adaptive_avg_pool2d", "AveragePool")]:
    RELAX_READERS.add(_op, _pool(_onnx))


@RELAX_READERS.register("reshape")
def _reshape(view, name, call, arg, constants):
    target = call.args[1]
    if not isinstance(target, relax.ShapeExpr) or not all(
            isinstance(v, tvm.tirx.IntImm) for v in target.values):
        return None
    constants[f"{name}:shape"] = np.array(_ints(target.values), np.int64)
    return _node("Reshape", name, [arg(0), f"{name}:shape"])


@RELAX_READERS.register("concat")
def _concat(view, name, call, arg, constants):
    if not isinstance(call.args[0], relax.Tuple):
        return None
    inputs = [arg(0, j) for j in range(len(call.args[0].fields))]
    axis = 0 if call.attrs.axis is None else int(call.attrs.axis)
    return _node("Concat", name, inputs, {"axis": axis})


@RELAX_READERS.register("split")
def _split(view, name, call, arg, constants):
    shape = view.shapes.get(arg(0)) if arg(0) else None
    if shape is None:
        return None
    axis = int(call.attrs.axis) % len(shape)
    sections = call.attrs.indices_or_sections
    if isinstance(sections, tvm.tirx.IntImm):
        sizes = [shape[axis] // int(sections)] * int(sections)
    else:
        bounds = [0, *_ints(sections), shape[axis]]
        sizes = [int(d) for d in np.diff(bounds)]
    outputs = [f"{name}.{i}" for i in range(len(sizes))]
    return _node("Split", name, [arg(0)], {"axis": axis, "split": sizes}, outputs)


def slice_bounds(call: relax.Call) -> list[list[int]] | None:
    """``[axes, begin, end, strides]`` of a ``strided_slice`` with literal bounds."""
    parts = []
    for value in list(call.args[1:4]) + ([call.args[4]] if len(call.args) > 4 else []):
        if isinstance(value, relax.ShapeExpr):
            items = list(value.values)
        elif isinstance(value, relax.Tuple):
            items = list(value.fields)
        else:
            return None
        numbers = [_literal_int(v) for v in items]
        if any(n is None for n in numbers):
            return None
        parts.append(numbers)
    if len(parts) == 3:
        parts.append([1] * len(parts[0]))
    return parts


def _literal_int(value) -> int | None:
    while not isinstance(value, int):
        if isinstance(value, tvm.tirx.IntImm) or hasattr(value, "value"):
            value = value.value  # IntImm / PrimValue
        else:
            return None
    return value


@RELAX_READERS.register("strided_slice")
def _strided_slice(view, name, call, arg, constants):
    bounds = slice_bounds(call)
    if bounds is None:
        return None
    inputs = [arg(0)]
    for label, values in zip(("starts", "ends", "axes", "steps"),
                             (bounds[1], bounds[2], bounds[0], bounds[3])):
        constants[f"{name}:{label}"] = np.array(values, np.int64)
        inputs.append(f"{name}:{label}")
    return _node("Slice", name, inputs)


@RELAX_READERS.register("permute_dims")
def _permute_dims(view, name, call, arg, constants):
    axes = call.attrs.axes
    return _node("Transpose", name, [arg(0)], {} if axes is None else {"perm": _ints(axes)})


@RELAX_READERS.register("squeeze")
def _squeeze(view, name, call, arg, constants):
    if call.attrs.axis is None:
        return None
    return _node("Squeeze", name, [arg(0)], {"axes": _ints(call.attrs.axis)})


@RELAX_READERS.register("expand_dims")
def _expand_dims(view, name, call, arg, constants):
    return _node("Unsqueeze", name, [arg(0)], {"axes": _ints(call.attrs.axis)})


for _op, _onnx in [("nn.softmax", "Softmax"), ("nn.log_softmax", "LogSoftmax")]:
    RELAX_READERS.add(_op, lambda view, name, call, arg, constants, onnx_op=_onnx: _node(
        onnx_op, name, [arg(0)], {"axis": int(call.attrs.axis)}))


# -- call_tir of a TE elementwise max/min (how the ONNX importer lowers Clip) -----------------
_TIR_BINARY = {"Max": relax.op.maximum, "Min": relax.op.minimum}


def elementwise_tir(mod: tvm.IRModule, call: relax.Call):
    """``(op_type, relax op)`` when ``call`` is ``call_tir`` of a kernel computing
    ``out[i...] = max|min(a[i...], b[()])`` over ``(a, b)``; else None."""
    if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir"):
        return None
    callee, args = call.args[0], call.args[1]
    if not isinstance(callee, relax.GlobalVar) or not isinstance(args, relax.Tuple) \
            or len(args.fields) != 2 or callee not in mod.get_global_vars():
        return None
    func = mod[callee]
    if not isinstance(func, tvm.tirx.PrimFunc) or len(func.params) != 3:
        return None
    stores = _stores(func.body)
    if len(stores) != 1:
        return None
    store, value = stores[0], stores[0].value
    kind = type(value).__name__
    if kind not in _TIR_BINARY:
        return None
    buffers = list(func.params)  # 0.27: the parameters are the buffers
    a, b = value.a, value.b
    if not all(hasattr(load, "indices") for load in (a, b)):
        return None
    same = (_loaded(a).same_as(buffers[0]) and len(a.indices) == len(store.indices)
            and all(x.same_as(y) for x, y in zip(a.indices, store.indices)))
    scalar = _loaded(b).same_as(buffers[1]) and len(b.indices) == 0
    if same and scalar and store.buffer.same_as(buffers[2]):
        return kind, _TIR_BINARY[kind]
    return None


def _loaded(load):
    source = getattr(load, "source", None)  # 0.27: TensorLoad.source
    return source if source is not None else getattr(load, "buffer", None)


def _stores(stmt) -> list:
    if type(stmt).__name__ == "BufferStore":
        return [stmt]
    found = []
    for attr in ("block", "body", "seq", "then_case", "else_case"):
        child = getattr(stmt, attr, None)
        if child is None:
            continue
        for item in child if attr == "seq" else [child]:
            found.extend(_stores(item))
    return found


# -- rebuilding edited calls ----------------------------------------------------------------------
def rewrite_call(call: relax.Call, args: list, kind: str, payload, spaces, kept_width):
    """``call`` with new ``args`` and the channel-counting attribute ``kind`` moved to the plan."""
    a = call.attrs
    if kind == "group":
        out_dtype = None if str(a.out_dtype) in ("", "void") else a.out_dtype
        return relax.op.nn.conv2d(args[0], args[1], a.strides, a.padding, a.dilation,
                                  kept_width(payload, spaces), a.data_layout, a.kernel_layout,
                                  a.out_layout, out_dtype)
    if kind == "split":
        sizes = [kept_width(piece, spaces) for piece in payload]
        return relax.op.split(args[0], [int(s) for s in np.cumsum(sizes)[:-1]], int(a.axis))
    if kind == "slice":
        before, piece, position, _starts, _ends = payload
        axes, begin, end, strides = slice_bounds(call)
        begin, end = list(begin), list(end)
        begin[position] = kept_width(before, spaces)
        end[position] = begin[position] + kept_width(piece, spaces)
        return relax.op.strided_slice(args[0], axes, begin, end, strides,
                                      bool(a.assume_inbound))
    if kind == "reshape":
        shape = [int(d) for d in args[0].ty.shape.values]
        first = int(call.args[1].values[0])
        return relax.op.reshape(args[0], (first, int(np.prod(shape)) // first))
    raise AssertionError(f"unknown edit {kind}")
