"""The student as a trainable Relax function, and the way back to the model the user gave.

An ONNX student is imported with its trainable initializers turned into function parameters
(named after the initializers), so the trained values are written back into a copy of the same
graph: same nodes, same names, new initializers. A Relax student (an ``IRModule`` or
:class:`~relaycomp.frontend.onnx_import.ImportedModel` with weights as constants) has its
weight constants lifted to parameters and bound back after training.

Trainable: float initializers consumed only as weights/biases of Conv, ConvTranspose, Gemm,
MatMul, the scale/bias of BatchNormalization / Instance- / LayerNormalization, PRelu slopes, and
non-scalar operands of Add/Sub/Mul/Div. Frozen: BatchNorm running statistics (students train in
inference form: normalization uses the stored statistics), scalars, and anything else
(Resize scales, Clip bounds, ...). In a Relax student every float constant of more than one
element is trained except ``batch_norm``'s running statistics.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx.numpy_helper
import tvm
from tvm import relax

from relaycomp import ir
from relaycomp.errors import OnnxImportError, RelaycompError
from relaycomp.frontend.fold import fold_shape_subgraphs
from relaycomp.frontend.onnx_import import (
    ImportedModel,
    TensorSpec,
    check_supported_ops,
    graph_inputs,
    load_onnx,
    opset_of,
    pin_input_shapes,
    set_input_shapes,
)


class DistillError(RelaycompError):
    """Distillation cannot run: mismatched models, bad data, ops without gradients, bad options."""


# (op type, input index) pairs whose initializer is a trainable weight; None = any index.
TRAINABLE_SLOTS = {
    "Conv": {1, 2}, "ConvTranspose": {1, 2}, "Gemm": {0, 1, 2}, "MatMul": None,
    "BatchNormalization": {1, 2}, "InstanceNormalization": {1, 2},
    "LayerNormalization": {1, 2}, "PRelu": {1},
    "Add": None, "Sub": None, "Mul": None, "Div": None,
}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div"}


@dataclass
class Student:
    """A student ready for training: ``backbone(inputs..., params...) -> outputs``.

    ``outputs``: the student's outputs (``output_names``, per-batch ``output_shapes``); the
    backbone returns the single output itself, or a tuple of them. ``source`` is the model
    the user gave (ONNX ModelProto or Relax IRModule); ``write_back`` returns it with new
    parameter values. With hinted tensors (``feature_shapes``, one per hint) the backbone
    returns ``(*outputs, *tensors)``.
    """

    backbone: relax.Function
    inputs: list[TensorSpec]
    param_names: list[str]
    param_values: list[np.ndarray]
    batch: int
    output_names: list[str]
    output_shapes: list[tuple[int, ...]]
    source: object
    kind: str
    frozen: list[str] = field(default_factory=list)
    _lifted: list = field(default_factory=list, repr=False)
    feature_shapes: list[tuple[int, ...]] = field(default_factory=list)

    def write_back(self, values: Sequence[np.ndarray]):
        """The user's model with ``values`` (in ``param_names`` order) as its trained weights."""
        if self.kind == "onnx":
            return _onnx_with_values(self.source, dict(zip(self.param_names, values)))
        return _relax_with_values(self.source, self.backbone, self._lifted, values)


def _trainable_initializers(model: onnx.ModelProto) -> tuple[set[str], list[str]]:
    """Names of the float initializers to train, and those left frozen."""
    floats = {init.name: init for init in model.graph.initializer
              if init.data_type in (onnx.TensorProto.FLOAT,)}
    ok = {name: True for name in floats}
    for node in model.graph.node:
        slots = TRAINABLE_SLOTS.get(node.op_type, set())
        for index, name in enumerate(node.input):
            if name not in floats:
                continue
            size = int(np.prod(floats[name].dims)) if floats[name].dims else 1
            allowed = slots is None or index in slots
            if not allowed or (node.op_type in ELEMENTWISE and size <= 1):
                ok[name] = False
    trainable = {name for name, good in ok.items() if good and floats[name].dims}
    return trainable, sorted(set(floats) - trainable)


def batch_of(specs: Sequence[TensorSpec], wanted: int) -> int:
    """The training batch: ``wanted`` when the batch dim is symbolic, else the model's own."""
    fixed = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)
             and s.shape[0] > 0}
    if len(fixed) > 1:
        raise DistillError(f"the student's inputs disagree on the batch size: {sorted(fixed)}")
    return fixed.pop() if fixed else wanted


def with_outputs(model: onnx.ModelProto, names: Sequence[str], role: str) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the tensors ``names`` (after its own outputs)."""
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    inferred = onnx.shape_inference.infer_shapes(copy)
    known = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output,
                                 *inferred.graph.input)}
    produced = {out for node in copy.graph.node for out in node.output}
    outputs = {o.name for o in copy.graph.output}
    for name in names:
        if name not in produced:
            close = sorted(produced)[:8]
            raise DistillError(f"the {role} has no tensor named {name!r}",
                               hint=f"its node outputs include {close}")
        if name in outputs:
            continue
        if name in known:
            copy.graph.output.append(known[name])
        else:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, None))
        outputs.add(name)
    return copy


def student_from_onnx(model: onnx.ModelProto | str, sample_shapes: Mapping[str, tuple],
                      batch_size: int, features: Sequence[str] = ()) -> Student:
    """Import an ONNX student for training at ``batch_size`` (unless its batch dim is fixed).

    ``sample_shapes`` maps each input to the shape of one sample (the data's shape without its
    first axis); it pins the student's other dims. ``features``: intermediate tensors the
    backbone returns after the logits (for hints).
    """
    source = model if isinstance(model, onnx.ModelProto) else load_onnx(model)
    specs = graph_inputs(source)
    batch = batch_of(specs, batch_size)
    shapes = {s.name: (batch, *sample_shapes[s.name]) for s in specs}
    inputs, _ = pin_input_shapes(specs, shapes)
    pinned = with_outputs(source, features, "student") if features else (
        onnx.ModelProto.FromString(source.SerializeToString()))
    set_input_shapes(pinned, inputs)
    opset = opset_of(pinned)
    pinned, _ = fold_shape_subgraphs(pinned, opset)
    check_supported_ops(pinned)
    original = {init.name for init in source.graph.initializer}
    trainable, frozen = _trainable_initializers(pinned)
    importer = ir.LiftingImporter({s.name: list(s.shape) for s in inputs}, trainable & original)
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            mod = importer.from_onnx(pinned.graph, opset)
        except OnnxImportError:
            raise
        except Exception as err:
            raise OnnxImportError(f"cannot import the student: {ir.last_line(err)}") from err
    main = mod["main"].without_attr("params").without_attr("num_input")
    names = [name for name, _ in importer.lifted]
    values = [array for _, array in importer.lifted]
    return _finish(main, inputs, names, values, batch, source, "onnx", frozen,
                   [o.name for o in source.graph.output], features=len(features))


def _finish(main, inputs, names, values, batch, source, kind, frozen, output_names,
            lifted=(), features=0) -> Student:
    if not names:
        raise DistillError("the student has no trainable weights",
                           hint="its weights must be float32 initializers (or constants)")
    ret = main.ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    count = len(fields) - features
    if output_names is None:
        output_names = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
    if count != len(output_names):
        raise DistillError(f"the student returns {count} outputs; expected "
                           f"{len(output_names)} ({output_names})")
    shapes = []
    for name, out in zip(output_names + [f"hint {i}" for i in range(features)], fields):
        if not isinstance(out, relax.TensorType) or out.shape is None or not all(
                isinstance(d, tvm.tirx.IntImm) for d in out.shape) or out.ndim < 1:
            raise DistillError(f"student output {name!r} has no static shape ({out})",
                               hint="every output needs a static shape with the batch first")
        if str(out.dtype) != "float32":
            raise DistillError(f"student output {name!r} is {out.dtype}; distillation trains "
                               f"float32 outputs")
        shapes.append(tuple(int(d) for d in out.shape))
    for name, shape in zip(output_names, shapes):
        if shape[0] != batch:
            raise DistillError(f"the student's output {name!r} {list(shape)} does not follow "
                               f"its batch dim {batch}",
                               hint="export every output with the batch first")
    return Student(main, inputs, names, values, batch, list(output_names), shapes[:count],
                   source, kind, frozen, list(lifted), shapes[count:])


def _onnx_with_values(source: onnx.ModelProto, values: Mapping[str, np.ndarray]):
    model = onnx.ModelProto.FromString(source.SerializeToString())
    for init in model.graph.initializer:
        if init.name in values:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            init.CopyFrom(onnx.numpy_helper.from_array(
                np.asarray(values[init.name], dtype=dtype).reshape(tuple(init.dims)), init.name))
    return model


# --- Relax students -------------------------------------------------------------------------

Constant = tvm.ir.expr.GenericConst  # relax.Constant before TVM 0.27

@relax.expr_functor.mutator
class _ConstantLifter(relax.PyExprMutator):
    """Replaces weight constants with new parameters (the same constant → the same parameter)."""

    def __init__(self, frozen):
        super().__init__()
        self.frozen = frozen
        self.lifted: list[tuple[Constant, relax.Var]] = []

    def visit_generic_const_(self, const):  # TVM 0.27: Relax constants are ir.GenericConst
        array = const.value.numpy()
        if (array.dtype != np.float32 or array.ndim == 0 or array.size <= 1
                or any(const.same_as(f) for f in self.frozen)):
            return const
        for seen, var in self.lifted:
            if seen.same_as(const):
                return var
        var = relax.Var(f"weight_{len(self.lifted)}", relax.TensorType(array.shape, "float32"))
        self.lifted.append((const, var))
        return var


def _batch_norm_statistics(func: relax.Function) -> list:
    found = []
    batch_norm = tvm.ir.Op.get("relax.nn.batch_norm")

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(batch_norm):
            found.extend(a for a in expr.args[3:5] if isinstance(a, Constant))

    relax.analysis.post_order_visit(func, visit)
    return found


def student_from_relax(model) -> Student:
    """A Relax student (``IRModule`` or ``ImportedModel``; static shapes, weights as constants)."""
    mod = model.mod if isinstance(model, ImportedModel) else model
    if not isinstance(mod, tvm.IRModule) or "main" not in [g.name_hint for g in mod.functions]:
        raise DistillError("a Relax student must be an IRModule with a 'main' function")
    main = mod["main"]
    specs = []
    for param in main.params:
        shape = param.ty.shape
        if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
            raise DistillError(f"Relax student input '{param.name}' has no static shape "
                               f"({param.ty})", hint="import it with its input shapes pinned")
        specs.append(TensorSpec(param.name, tuple(int(d) for d in shape), str(param.ty.dtype)))
    lifter = _ConstantLifter(_batch_norm_statistics(main))
    body = lifter.visit_expr(main.body)
    params = list(main.params) + [var for _, var in lifter.lifted]
    backbone = relax.Function(params, body, main.ret_ty, main.is_pure, main.attrs)
    names = [var.name for _, var in lifter.lifted]
    values = [const.value.numpy() for const, _ in lifter.lifted]
    outputs = list(model.outputs) if isinstance(model, ImportedModel) else None
    return _finish(backbone, specs, names, values, batch_of(specs, 1), model, "relax", [],
                   [getattr(o, "name", o) for o in outputs] if outputs else None,
                   lifter.lifted)


def _relax_with_values(source, backbone: relax.Function, lifted, values):
    mod = source.mod if isinstance(source, ImportedModel) else source
    bound = {var: tvm.runtime.tensor(np.ascontiguousarray(value))
             for (_, var), value in zip(lifted, values)}
    func = relax.transform.BindParams("main", bound)(tvm.IRModule({"main": backbone}))["main"]
    new_mod = tvm.IRModule({gv: f for gv, f in mod.functions.items()
                            if gv.name_hint != "main"}, attrs=mod.attrs)
    new_mod["main"] = func
    if isinstance(source, ImportedModel):
        return ImportedModel(new_mod, source.inputs, source.outputs, source.onnx_model,
                             dict(source.report))
    return new_mod
