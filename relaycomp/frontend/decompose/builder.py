"""The toolbox decompositions write with: static shapes, compile-time constants, new nodes.

A :class:`GraphBuilder` is made once per rewrite round over a shape-inferred model. Each
decomposition receives it with the node to replace and emits standard ONNX nodes through
:meth:`GraphBuilder.op`; the driver splices what was emitted in place of the node.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from relaycomp.errors import OnnxImportError

# Constants folded at compile time (sequence positions, trip counts, conditions) are small;
# a larger result is a tensor the model computes, not a position.
MAX_FOLDED_ELEMENTS = 4096
# Ops whose constant inputs were attributes before an opset: op -> (opset, attribute names
# of inputs 1, 2, ...). Decompositions emit the new form; the builder writes the old one for
# older models (LSTMs from opset 9-12 exports are common).
LEGACY_ATTRIBUTE_INPUTS = {
    "Squeeze": (13, ("axes",)), "Unsqueeze": (13, ("axes",)), "Split": (13, ("split",)),
    "Slice": (10, ("starts", "ends", "axes")), "Clip": (11, ("min", "max")),
    "ReduceMean": (18, ("axes",)), "ReduceSum": (13, ("axes",)),
}
UNFOLDABLE = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform",
                        "RandomUniformLike", "Multinomial", "Bernoulli", "If", "Loop", "Scan",
                        # the quantizer needs QDQ pairs on weights kept as they are
                        "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                        # sequences are lists of names here, not values to evaluate
                        "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase",
                        "SequenceAt", "SequenceLength", "SplitToSequence", "ConcatFromSequence",
                        "SequenceMap", "Optional", "OptionalGetElement", "OptionalHasElement"})


class Deferred(Exception):  # a signal to the driver, not an error
    """Raised by a decomposition whose input is produced by a node emitted in this round and
    itself still to be rewritten (a sequence built in an unrolled loop body): the node is kept
    and rewritten in the next round."""


def node_label(node: onnx.NodeProto) -> str:
    """How errors name a node: its name, else its first output."""
    return node.name or (node.output[0] if node.output else "?")


def attributes(node: onnx.NodeProto) -> dict:
    """The node's attributes as Python values (strings decoded)."""
    values = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        values[attr.name] = value
    return values


class DecomposeState:
    """What outlives one rewrite round: used names and the compile-time sequences (a sequence
    value's name -> the tensor names it holds, in order)."""

    def __init__(self, model: onnx.ModelProto):
        self.names = set(_all_names(model.graph))
        self.counter = itertools.count()
        self.sequences: dict[str, list[str]] = {}
        self.sequence_aliases: dict[str, str] = {}

    def fresh(self, hint: str) -> str:
        """A value or node name not used anywhere in the model."""
        base = "".join(c if c.isalnum() or c in "_." else "_" for c in hint)[:60] or "v"
        while True:
            name = f"{base}__d{next(self.counter)}"
            if name not in self.names:
                self.names.add(name)
                return name


class GraphBuilder:
    """Shapes, constants and node emission for one round over ``model`` (shape-inferred)."""

    def __init__(self, model: onnx.ModelProto, opset: int, state: DecomposeState):
        self.model = model
        self.opset = opset
        self.state = state
        self.types: dict[str, onnx.TypeProto] = {}
        for info in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
            if info.type.WhichOneof("value") is not None:
                self.types[info.name] = info.type
        self.constants: dict[str, np.ndarray] = {}
        for init in model.graph.initializer:
            self.constants[init.name] = numpy_helper.to_array(init)
            self.types[init.name] = helper.make_tensor_type_proto(init.data_type, init.dims)
        self.producers: dict[str, onnx.NodeProto] = {}
        for node in model.graph.node:
            self._note_producer(node)
        self.emitted: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._not_constant: set[str] = set()
        self.pending: set[str] = set()  # values emitted this round (no inferred types yet)

    # -- reading ---------------------------------------------------------------------------

    def shape(self, name: str, node: onnx.NodeProto | None = None) -> tuple[int, ...]:
        """The static shape of tensor ``name``; an error naming ``node`` if it is not static."""
        if name in self.constants:
            return tuple(self.constants[name].shape)
        tensor_type = self.types.get(name, onnx.TypeProto()).tensor_type
        dims = tensor_type.shape.dim if tensor_type.HasField("shape") else None
        if dims is None or not all(d.HasField("dim_value") for d in dims):
            if name in self.pending:  # made by a rewrite this round: inferred in the next
                raise Deferred(f"the shape of '{name}' is not known at compile time")
            where = f" (input of node '{node_label(node)}', op {node.op_type})" if node else ""
            raise OnnxImportError(
                f"the shape of '{name}'{where} is not known at compile time",
                hint="pin the model's dynamic inputs with --input NAME:DIMS")
        return tuple(d.dim_value for d in dims)

    def has_shape(self, name: str) -> bool:
        """Whether ``name`` has a fully static shape."""
        try:
            self.shape(name)
        except OnnxImportError:
            return False
        return True

    def elem_type(self, name: str) -> int:
        """ONNX element type of tensor ``name`` (``TensorProto.UNDEFINED`` when unknown)."""
        if name in self.constants:
            return helper.np_dtype_to_tensor_dtype(self.constants[name].dtype)
        elem_type = self.types.get(name, onnx.TypeProto()).tensor_type.elem_type
        if not elem_type and name in self.pending:  # made by a rewrite this round
            raise Deferred(f"the element type of '{name}' is not known")
        return elem_type

    def np_dtype(self, name: str) -> np.dtype:
        """NumPy dtype of tensor ``name``."""
        return helper.tensor_dtype_to_np_dtype(self.elem_type(name))

    def constant(self, name: str, depth: int = 0) -> np.ndarray | None:
        """The value of ``name`` if it is known at compile time (initializer, Constant, or a
        small computation of those, including Shape/Size of static shapes), else None."""
        if not name or name in self._not_constant:
            return None
        if name in self.constants:
            return self.constants[name]
        value = self._constant(name, depth)
        if value is None:
            self._not_constant.add(name)
        return value

    def _constant(self, name: str, depth: int) -> np.ndarray | None:
        node = self.producers.get(name)
        if node is None or depth > 64 or node.op_type in UNFOLDABLE \
                or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type in ("Shape", "Size") and self.has_shape(node.input[0]):
            shape = self.shape(node.input[0])
            if node.op_type == "Size":
                results = [np.array(int(np.prod(shape)), dtype=np.int64)]
            else:
                attrs = attributes(node)
                results = [np.array(shape[attrs.get("start", 0):attrs.get("end")], np.int64)]
        else:
            feeds = {}
            for input_name in node.input:
                if input_name:
                    value = self.constant(input_name, depth + 1)
                    if value is None:
                        return None
                    feeds[input_name] = value
            try:
                results = _evaluate(node, feeds, self.opset)
            except Exception:  # noqa: BLE001 - what the evaluator rejects is not a constant
                return None
        for output, value in zip(node.output, results):
            value = np.asarray(value)
            if value.size > MAX_FOLDED_ELEMENTS:
                return None
            self.constants[output] = value
        return self.constants.get(name)

    def int_constant(self, name: str, node: onnx.NodeProto, what: str) -> int:
        """A scalar integer known at compile time, or an error naming ``node``."""
        value = self.constant(name)
        if value is None or value.size != 1:
            raise OnnxImportError(
                f"node '{node_label(node)}' (op {node.op_type}): its {what} ('{name}') must be "
                "known at compile time", hint="make it a constant (an initializer) in the model")
        return int(value.reshape(()))

    # -- writing ---------------------------------------------------------------------------

    def fresh(self, hint: str) -> str:
        """A new unique value name."""
        return self.state.fresh(hint)

    def op(self, op_type: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1,
           domain: str = "", **attrs) -> str | list[str]:
        """Emit one node; returns its output name (or the list of names when ``outputs`` is a
        count above 1 or a list)."""
        names = ([self.fresh(op_type.lower()) for _ in range(outputs)]
                 if isinstance(outputs, int) else list(outputs))
        inputs = list(inputs)
        if not domain and op_type in LEGACY_ATTRIBUTE_INPUTS:
            inputs, attrs = self._legacy_form(op_type, inputs, attrs)
        node = helper.make_node(op_type, inputs, names, name=self.fresh(op_type),
                                domain=domain, **attrs)
        self.add_node(node)
        return names[0] if isinstance(outputs, int) and outputs == 1 else names

    def _legacy_form(self, op_type: str, inputs: list[str], attrs: dict):
        """Below the opset where constant inputs replaced attributes, move them back."""
        since, names = LEGACY_ATTRIBUTE_INPUTS[op_type]
        if self.opset >= since:
            return inputs, attrs
        attrs = dict(attrs)
        for position, attr in enumerate(names, start=1):
            if len(inputs) > position and inputs[position]:
                value = self.constants[inputs[position]]  # always one of ours: a constant
                attrs[attr] = value.reshape(-1).tolist() if attr not in ("min", "max") \
                    else float(value)
        if op_type == "Slice" and len(inputs) > 4:
            assert all(step == 1 for step in self.constants[inputs[4]].reshape(-1))
        return inputs[:1], attrs

    def add_node(self, node: onnx.NodeProto) -> None:
        """Emit a ready-made node (its output names must be unique)."""
        self.emitted.append(node)
        self._note_producer(node)
        self.pending.update(name for name in node.output if name and name not in self.types)

    def const(self, value, dtype=None, hint: str = "const") -> str:
        """An initializer holding ``value``; returns its name."""
        array = np.asarray(value, dtype=dtype)
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        self.constants[name] = array
        return name

    def set_type(self, name: str, elem_type: int, shape: Sequence[int]) -> None:
        """Record the type of a value this builder emitted (shape inference runs per round)."""
        self.types[name] = helper.make_tensor_type_proto(elem_type, list(shape))

    def take(self, tensor: str, index: int, axis: int) -> str:
        """``tensor[..., index, ...]`` along ``axis`` (a Slice and a Squeeze: TVM's Gather warns
        about out-of-bounds indices even when they are constants)."""
        part = self.op("Slice", [tensor, self.const([index], np.int64, "start"),
                                 self.const([index + 1], np.int64, "end"),
                                 self.const([axis], np.int64, "axis")])
        return self.op("Squeeze", [part, self.const([axis], np.int64, "axis")])

    def unstack(self, tensor: str, count: int, axis: int) -> list[str]:
        """The ``count`` slices of ``tensor`` along ``axis``, that axis removed."""
        if count == 1:
            return [self.op("Squeeze", [tensor, self.const([axis], np.int64, "axis")])]
        parts = self.op("Split", [tensor, self.const([1] * count, np.int64, "split")], count,
                        axis=axis)
        return [self.op("Squeeze", [p, self.const([axis], np.int64, "axis")]) for p in parts]

    def identity(self, source: str, output: str) -> None:
        """Make ``output`` a copy of ``source``."""
        self.op("Identity", [source], [output])

    def is_sequence(self, name: str, declared: onnx.TypeProto | None = None) -> bool:
        """Whether ``name`` is a sequence (by its inferred or ``declared`` type)."""
        if name in self.state.sequences or name in self.state.sequence_aliases:
            return True
        types = [self.types.get(name), declared]
        return any(t is not None and t.WhichOneof("value") == "sequence_type" for t in types)

    def alias(self, source: str, output: str, declared: onnx.TypeProto | None = None) -> None:
        """Make ``output`` name the value of ``source``: an Identity for a tensor, an alias
        resolved by the sequence decompositions for a sequence."""
        if self.is_sequence(source, declared):
            self.state.sequence_aliases[output] = source
        else:
            self.identity(source, output)

    def _note_producer(self, node: onnx.NodeProto) -> None:
        for output in node.output:
            if output:
                self.producers[output] = node


def _evaluate(node: onnx.NodeProto, feeds: Mapping[str, np.ndarray], opset: int) -> list:
    graph = helper.make_graph(
        [node], "fold",
        [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in feeds],
        [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return ReferenceEvaluator(model).run(None, dict(feeds))


def _all_names(graph: onnx.GraphProto):
    for value in [*graph.input, *graph.output, *graph.value_info]:
        yield value.name
    for init in graph.initializer:
        yield init.name
    for node in graph.node:
        yield node.name
        yield from node.input
        yield from node.output
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.type in (
                    onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) else []:
                yield from _all_names(sub)
