"""ONNX → Relax: load, validate, pin input shapes, fold shape sub-graphs, import.

Guarantees of :func:`import_onnx`: the returned ``main`` takes the ONNX graph inputs in graph order
with fully static shapes, returns the ONNX graph outputs in graph order (names kept in
``ImportedModel.outputs``), and holds the weights as constants. Every failure is an
:class:`OnnxImportError` or :class:`InputSpecError` naming the file, input, node or op.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from relaycomp import ir
from relaycomp.errors import InputSpecError, OnnxImportError
from relaycomp.frontend.attribute_guard import check_attributes
from relaycomp.frontend.checker import check_leniently
from relaycomp.frontend.decompose import NON_TENSOR_KINDS, decompose_graph
from relaycomp.frontend.fold import fold_shape_subgraphs, static_shapes
from relaycomp.frontend.patch_nodes import patch_nodes
from relaycomp.frontend.qoperator import convert_qoperator

ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.BOOL: "bool", onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.UINT16: "uint16", onnx.TensorProto.UINT32: "uint32",
    onnx.TensorProto.UINT64: "uint64",
}


# TVM indexes with int32 where it can and int64 at most; ONNX dims are int64. A dim beyond
# these bounds can only be a typo, and would surface as an overflow deep inside TVM.
MAX_DIM = 2**31 - 1
MAX_ELEMENTS = 2**63 - 1


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor: ``shape`` holds ints, or strings for dims still symbolic (``()`` for a
    scalar; ``None`` only for a model input declared without any shape, before pinning)."""

    name: str
    shape: tuple
    dtype: str

    def to_json(self) -> dict:
        """JSON form used by manifests and reports."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: Mapping) -> TensorSpec:
        """Inverse of :meth:`to_json`."""
        return cls(data["name"], tuple(data["shape"]), data["dtype"])


@dataclass
class ImportedModel:
    """The result of an import: the Relax module and the signature it keeps."""

    mod: object
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    onnx_model: onnx.ModelProto
    report: dict = field(default_factory=dict)


def parse_input_specs(texts: list[str]) -> dict[str, tuple[int, ...]]:
    """``--input`` options (``NAME:DIMS``, repeatable) as name -> shape; a name given twice is
    an error."""
    shapes: dict[str, tuple[int, ...]] = {}
    for text in texts:
        name, shape = parse_input_spec(text)
        if name in shapes:
            raise InputSpecError(f"--input '{name}' given twice")
        shapes[name] = shape
    return shapes


def parse_input_spec(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``NAME:D0,D1,...`` (``x:1,3,224,224``); the name may itself contain ':'.

    ``NAME:`` (no dims) is a scalar (0-d) input; a dim may be 0 (a zero-size tensor is legal
    ONNX)."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise InputSpecError(f"bad --input '{text}'", hint="expected NAME:DIMS, e.g. x:1,3,224,224"
                             " (NAME: for a scalar)")
    try:
        shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
    except ValueError:
        raise InputSpecError(
            f"bad --input '{text}': dims must be comma-separated integers",
            hint="expected NAME:DIMS, e.g. x:1,3,224,224 (NAME: for a scalar)") from None
    if any(d < 0 for d in shape):
        raise InputSpecError(f"bad --input '{text}': dims cannot be negative")
    if any(d > MAX_DIM for d in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise InputSpecError(
            f"bad --input '{text}': too large (each dim at most {MAX_DIM}, "
            f"{MAX_ELEMENTS} elements in all)", hint="expected NAME:DIMS, e.g. x:1,3,224,224")
    return name, shape


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and validate an ONNX file (external data is read from beside it)."""
    path = Path(path)
    if not path.is_file():
        raise OnnxImportError(f"no such ONNX file: {path}")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except onnx.checker.ValidationError as err:  # external data outside the folder, or missing
        raise OnnxImportError(
            f"{path}: its external data cannot be used: {_first_line(err)}",
            hint=f"external data files must be regular files inside {path.parent}, named "
                 "relative to the model, as onnx.save(..., save_as_external_data=True) writes "
                 "them") from None
    except (DecodeError, RuntimeError, ValueError, OSError) as err:
        raise OnnxImportError(
            f"{path} is not a readable ONNX model (corrupt or truncated?): {_first_line(err)}"
        ) from None
    if not model.graph.node and not model.graph.output:
        raise OnnxImportError(f"{path} is not a readable ONNX model: the graph is empty")
    check_leniently(str(path) if path.stat().st_size > 2**30 else model, str(path))
    return model


def graph_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """Real graph inputs (initializers listed as inputs by old exporters are left out)."""
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            raise OnnxImportError(f"input '{value.name}' is {NON_TENSOR_KINDS[kind]}; "
                                  "relaycomp compiles tensor inputs only",
                                  hint="feed the tensors one by one and build the sequence or "
                                       "optional inside the model")
        tensor_type = value.type.tensor_type
        dtype = ONNX_DTYPES.get(tensor_type.elem_type)
        if dtype is None:
            raise OnnxImportError(
                f"input '{value.name}' has an unsupported element type "
                f"{onnx.TensorProto.DataType.Name(tensor_type.elem_type)}")
        if not tensor_type.HasField("shape"):  # unknown rank: only --input can tell
            specs.append(TensorSpec(value.name, None, dtype))
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                     for d in tensor_type.shape.dim)
        specs.append(TensorSpec(value.name, dims, dtype))
    return specs


def pin_input_shapes(inputs: Sequence[TensorSpec], requested: Mapping[str, Sequence[int]],
                     default_dim: int = 1) -> tuple[list[TensorSpec], list[str]]:
    """Resolve every input to a static shape; returns the specs and notes on defaulted dims.

    ``requested`` overrides the model's dims; a symbolic dim not requested becomes ``default_dim``.
    """
    by_name = {spec.name: spec for spec in inputs}
    unknown = [name for name in requested if name not in by_name]
    if unknown:
        raise InputSpecError(f"the model has no input named '{unknown[0]}'",
                             hint=f"its inputs are: {_describe(inputs)}")
    pinned, notes = [], []
    for spec in inputs:
        shape = requested.get(spec.name)
        if shape is None and spec.shape is None:
            raise InputSpecError(f"input '{spec.name}' has no shape in the model (not even a "
                                 "rank)", hint=f"give it with --input {spec.name}:DIMS")
        if shape is None:
            shape = tuple(d if isinstance(d, int) else default_dim for d in spec.shape)
            if shape != spec.shape:
                notes.append(f"input '{spec.name}' {list(spec.shape)} pinned to {list(shape)}; "
                             f"choose with --input {spec.name}:DIMS")
        else:
            _check_compatible(spec, tuple(shape))
        pinned.append(TensorSpec(spec.name, tuple(shape), spec.dtype))
    return pinned, notes


def _check_compatible(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    if any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        raise InputSpecError(f"input '{spec.name}': dims must be integers of at least 0, got "
                             f"{list(shape)}")
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape):
        raise InputSpecError(
            f"input '{spec.name}' has rank {len(spec.shape)} {list(spec.shape)}, "
            f"but {len(shape)} dims were given {list(shape)}")
    for axis, (have, want) in enumerate(zip(spec.shape, shape)):
        if isinstance(have, int) and have != want:
            raise InputSpecError(
                f"input '{spec.name}' dim {axis} is fixed to {have} in the model, "
                f"but {want} was given", hint=f"the model's inputs are: {_describe([spec])}")


def set_input_shapes(model: onnx.ModelProto, specs: Sequence[TensorSpec]) -> None:
    """Pin ``model``'s graph inputs to the static shapes of ``specs`` (in place; the inferred
    value_info, now stale, is dropped)."""
    by_name = {spec.name: spec for spec in specs}
    for value in model.graph.input:
        spec = by_name.get(value.name)
        if spec is None:
            continue
        value.type.tensor_type.shape.SetInParent()  # a 0-d input still has a (empty) shape
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for size in spec.shape:
            dims.add().dim_value = size
    del model.graph.value_info[:]


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain opset the model was exported with."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    return 1


def check_supported_ops(model: onnx.ModelProto) -> None:
    """Raise one error naming every node whose op the importer cannot translate."""
    supported = ir.supported_onnx_ops()
    opset = opset_of(model)
    missing = [node for node in model.graph.node
               if node.op_type not in supported or node.domain not in ("", "ai.onnx")]
    if missing:
        listed = "; ".join(f"{n.op_type} (node '{n.name or n.output[0]}', "
                           f"domain '{n.domain or 'ai.onnx'}', opset {opset})" for n in missing)
        raise OnnxImportError(f"{len(missing)} unsupported op(s): {listed}",
                              hint="relaycomp inspect MODEL lists every op and its status")


def import_onnx(model: onnx.ModelProto | str | os.PathLike,
                input_shapes: Mapping[str, Sequence[int]] | None = None) -> ImportedModel:
    """Import an ONNX model (or path) into Relax with the given input shapes pinned."""
    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(model)
    # Checked again (cheap) for its notes; one over 2 GiB was checked from its file by load_onnx.
    check_notes = check_leniently(model, "the model") if model.ByteSize() < 2**31 else []
    original_inputs = graph_inputs(model)
    inputs, notes = pin_input_shapes(original_inputs, dict(input_shapes or {}))
    model = onnx.ModelProto.FromString(model.SerializeToString())  # the caller's copy stays
    set_input_shapes(model, inputs)
    opset = opset_of(model)
    # LSTM, Loop, sequences, ... -> std ops; first, as convert_qoperator refuses the quantized
    # com.microsoft.DynamicQuantizeLSTM this turns into an LSTM
    model, decomposed = decompose_graph(model, opset)
    qoperator = convert_qoperator(model)  # QLinearConv, QGemm, MatMulInteger, ... -> QDQ
    model, fold = fold_shape_subgraphs(model, opset)
    patched = patch_nodes(model, opset, static_shapes(model))  # converter gaps, legacy opsets
    check_supported_ops(model)
    check_attributes(model, opset)
    mod = ir.import_onnx_graph(model, {s.name: s.shape for s in inputs}, opset,
                               expected=defined_types(model))
    output_types = ir.main_output_types(mod)
    names = [o.name for o in model.graph.output]
    unknown = [name for name, (shape, _) in zip(names, output_types) if shape is None]
    if unknown:
        raise OnnxImportError(
            f"output(s) {unknown} have a rank that depends on the input values; relaycomp "
            "compiles tensors of known rank only",
            hint="such outputs come from data-dependent ops (Unique, NonZero, Expand or "
                 "Reshape of run-time shapes); make their shape inputs constant")
    outputs = [TensorSpec(name, shape, dtype) for name, (shape, dtype) in zip(names, output_types)]
    report = {"onnx_nodes": len(model.graph.node), "shape_nodes_folded": fold.folded,
              "dead_nodes_removed": fold.removed, "pads_folded_into_conv": fold.pads_folded,
              "qoperator_nodes_converted": dict(qoperator), "nodes_decomposed": decomposed,
              "nodes_patched": patched,
              "notes": check_notes + notes}
    return ImportedModel(mod, inputs, outputs, model, report)


def defined_types(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...] | None, str]]:
    """Tensor name -> (static shape, or None when not fully known; dtype) for every tensor ONNX
    shape inference typed (``model`` is shape-inferred)."""
    types = {}
    for info in list(model.graph.value_info) + list(model.graph.output):
        tensor_type = info.type.tensor_type
        dtype = ONNX_DTYPES.get(tensor_type.elem_type) if info.type.HasField("tensor_type") \
            else None
        if dtype is None:
            continue
        dims = tensor_type.shape.dim
        static = tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims)
        types[info.name] = (tuple(d.dim_value for d in dims) if static else None, dtype)
    return types


def _describe(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{s.name}:{s.dtype}{'[?]' if s.shape is None else list(s.shape)}"
                     for s in specs)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
