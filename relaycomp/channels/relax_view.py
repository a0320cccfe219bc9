"""The Relax adapter of channel analysis: ``main`` of a module after ``simplify`` as a graph view.

Each binding becomes an :class:`~relaycomp.channels.view.OpNode` in ONNX vocabulary
(``nn.conv2d`` → ``Conv`` with ``group``, ``add`` → ``Add``, ``matmul`` → ``MatMul``, ``mean`` →
``ReduceMean``, ``reshape`` → ``Reshape``, ``split`` + ``TupleGetItem`` → ``Split`` outputs …),
tensors named by their variables, inline constants named ``<var>:arg<i>[.<j>]``. The stock ONNX
importer lowers ``Clip`` with tensor bounds to ``call_tir`` of a TE ``maximum``/``minimum``;
such kernels are recognised (one elementwise store, a scalar operand) and read as ``Max``/``Min``.
Anything else is opaque, so the channels reaching it are never touched.

:meth:`RelaxView.apply` re-emits ``main`` binding by binding with the sliced constants and the
edited attributes (depthwise ``groups``, ``split`` indices, ``strided_slice`` bounds, ``reshape``
targets); the block builder re-infers every shape, and ``main``'s signature stays as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

from relaycomp.channels.apply import by_space, kept_width
from relaycomp.channels.relax_ops import call_to_node, elementwise_tir, rewrite_call
from relaycomp.channels.view import GraphView, OpNode
from relaycomp.ir import static_shape, substitute_vars


class RelaxView(GraphView):
    """``mod[func_name]`` as the channel analysis sees it.

    ``layer_names``: the source model's names of its conv/dense layers in order (e.g.
    :func:`relaycomp.frontend.layer_names.onnx_layer_names`); when they line up one to one with the
    function's conv2d/matmul calls with constant weights, those nodes take these names, so
    reports, ``protected`` and ``overrides`` read as they do on the ONNX graph.
    """

    kind = "relax"

    def __init__(self, mod: tvm.IRModule, func_name: str = "main",
                 layer_names: list[str] | None = None):
        self.mod, self.func_name = mod, func_name
        self.func = mod[func_name]
        self.names: dict[relax.Var, str] = {}
        self.unsupported: list[str] = []
        nodes, constants, shapes = [], {}, {}
        self.shapes = shapes  # readers look up shapes of earlier bindings
        for param in self.func.params:
            _set_shape(shapes, self._name(param), param.ty)
        bindings = list(self._bindings())
        for binding in bindings:
            name = self._name(binding.var)
            _set_shape(shapes, name, binding.var.ty)
            if isinstance(binding.var.ty, relax.TupleType):
                for i, field in enumerate(binding.var.ty.fields):
                    _set_shape(shapes, f"{name}.{i}", field)
            nodes.append(self._node(name, binding, constants))
        self.by_binding = {self.names[b.var]: node for b, node in zip(bindings, nodes)}
        _rename_layers(nodes, constants, layer_names)
        super().__init__(mod, nodes, [self.names[p] for p in self.func.params],
                         [self.names[v] for v in _vars_in(self.func.body.body)], constants,
                         shapes)

    def _bindings(self):
        for block in self.func.body.blocks:
            for binding in block.bindings:
                if not isinstance(binding, relax.VarBinding):
                    self.unsupported.append(f"binding of {binding.var.name} is a match_cast")
                yield binding

    def _name(self, var: relax.Var) -> str:
        if var not in self.names:
            base, name, count = var.name, var.name, 1
            taken = set(self.names.values())
            while name in taken:
                count += 1
                name = f"{base}#{count}"
            self.names[var] = name
        return self.names[var]

    def _node(self, name: str, binding, constants: dict) -> OpNode:
        value = binding.value if isinstance(binding, relax.VarBinding) else None
        if isinstance(value, Constant):
            constants[name] = value.value.numpy()
            return OpNode("Constant", name, [], [name])
        if isinstance(value, relax.Var):
            return OpNode("Identity", name, [self.names[value]], [name])
        if isinstance(value, relax.TupleGetItem) and isinstance(value.tuple_value, relax.Var):
            return OpNode("Identity", name, [f"{self.names[value.tuple_value]}.{value.index}"],
                          [name])
        if isinstance(value, relax.Call):
            node = call_to_node(self, name, value, constants)
            if node is not None:
                return node
        reads = [self.names[v] for v in _vars_in(value) if v in self.names] \
            if value is not None else []
        label = value.op.name if isinstance(value, relax.Call) and isinstance(
            value.op, tvm.ir.Op) else type(value).__name__
        return OpNode(label, name, reads, [name], opaque=True)

    def constant_name(self, node_name: str, index: int, field: int | None = None) -> str:
        """The name of an inline constant argument of a binding."""
        return f"{node_name}:arg{index}" + ("" if field is None else f".{field}")

    # -- the mechanical half ------------------------------------------------------------------
    def apply(self, graph, keep: Mapping[int, np.ndarray], constants: dict[str, np.ndarray]):
        if not keep:
            return self.mod
        edits = {node.name: (kind, payload) for kind, node, payload in graph.edits}
        spaces = by_space(graph, keep)
        bb = relax.BlockBuilder()
        varmap: dict[relax.Var, relax.Expr] = {}
        attrs = {k: v for k, v in (self.func.attrs or {}).items() if k != "global_symbol"}
        with bb.function(self.func_name, list(self.func.params), attrs=attrs or None,
                         pure=self.func.is_pure):
            for block in self.func.body.blocks:
                dataflow = isinstance(block, relax.DataflowBlock)
                with bb.dataflow() if dataflow else contextlib.nullcontext():
                    for binding in block.bindings:
                        name = self.names[binding.var]
                        node_name = self.by_binding[name].name
                        value = self._rewrite(name, binding.value, varmap, constants,
                                              edits.get(node_name), spaces)
                        output = dataflow and not isinstance(binding.var, relax.DataflowVar)
                        emit = bb.emit_output if output else bb.emit
                        varmap[binding.var] = emit(value, name_hint=binding.var.name)
                        bias = constants.get(f"{node_name}:bias")
                        if bias is not None:  # a compensation bias for a conv/matmul without one
                            varmap[binding.var] = emit(relax.op.add(varmap[binding.var],
                                                                    relax.const(bias)))
            bb.emit_func_output(substitute_vars(self.func.body.body, varmap))
        new_func = bb.get()[self.func_name]
        if self.func.attrs is not None and "global_symbol" in self.func.attrs:
            new_func = new_func.with_attr("global_symbol", self.func.attrs["global_symbol"])
        mod = tvm.IRModule(dict(self.mod.functions), attrs=self.mod.attrs)
        mod[self.func_name] = new_func
        return relax.transform.DeadCodeElimination([self.func_name])(mod)

    def _rewrite(self, name, value, varmap, constants, edit, spaces) -> relax.Expr:
        if isinstance(value, Constant):
            return relax.const(constants[name]) if name in constants else value
        if isinstance(value, relax.Call):
            args = [self._argument(name, i, arg, varmap, constants)
                    for i, arg in enumerate(value.args)]
            if edit is not None:
                kind, payload = edit
                return rewrite_call(value, args, kind, payload, spaces, kept_width)
            kind = elementwise_tir(self.mod, value)
            if kind is not None and not _same_type(args[1].fields[0], value.args[1].fields[0]):
                return kind[1](*[field for field in args[1].fields])
            return relax.Call(value.op, args, value.attrs, value.ty_args)
        return substitute_vars(value, varmap)

    def _argument(self, name, index, arg, varmap, constants) -> relax.Expr:
        if isinstance(arg, Constant):
            key = self.constant_name(name, index)
            return relax.const(constants[key]) if key in constants else arg
        if isinstance(arg, relax.Tuple):
            fields = []
            for j, field in enumerate(arg.fields):
                key = self.constant_name(name, index, j)
                if isinstance(field, Constant) and key in constants:
                    fields.append(relax.const(constants[key]))
                else:
                    fields.append(substitute_vars(field, varmap))
            return relax.Tuple(fields)
        return substitute_vars(arg, varmap)

    def totals(self, source) -> dict:
        return relax_totals(source[self.func_name])

    def activations(self, inputs, names):
        return run_with_intermediates(self, inputs, names)

    def new_bias_shape(self, node, size):
        shapes = {"Conv": (1, size, 1, 1), "MatMul": (size,)}
        return shapes.get(node.op_type)


def _rename_layers(nodes: list[OpNode], constants: dict, names: list[str] | None) -> None:
    layers = [n for n in nodes if n.op_type in ("Conv", "ConvTranspose", "MatMul")
              and len(n.input) > 1 and n.input[1] in constants]
    taken = {n.name for n in nodes}
    if names and len(names) == len(layers) and not taken & set(names):
        for node, name in zip(layers, names):
            node.name = name


def _same_type(new: relax.Expr, old: relax.Expr) -> bool:
    return str(new.ty) == str(old.ty)




def _vars_in(expr) -> list[relax.Var]:
    if isinstance(expr, relax.Var):
        return [expr]
    if isinstance(expr, relax.Tuple):
        return [v for f in expr.fields for v in _vars_in(f)]
    if isinstance(expr, relax.TupleGetItem):
        return _vars_in(expr.tuple_value)
    if isinstance(expr, relax.Call):
        return [v for a in expr.args for v in _vars_in(a)]
    return []


def _set_shape(shapes: dict, name: str, ty) -> None:
    shape = static_shape(ty)
    if shape is not None:
        shapes[name] = shape


def relax_totals(func: relax.Function) -> dict:
    """Params (elements of the constants), their bytes and the MACs of conv2d/matmul calls."""
    totals = {"params": 0, "param_bytes": 0, "macs": 0}

    def visit(expr):
        if isinstance(expr, Constant) and hasattr(expr.value, "numpy"):
            array = expr.value.numpy()
            totals["params"] += int(array.size)
            totals["param_bytes"] += int(array.nbytes)
        elif isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            totals["macs"] += _macs(expr)

    relax.analysis.post_order_visit(func, visit)
    return totals


def _macs(call: relax.Call) -> int:
    out = static_shape(call.ty) if isinstance(call.ty, relax.TensorType) else None
    if out is None:
        return 0
    if call.op.name == "relax.nn.conv2d":
        kernel = static_shape(call.args[1].ty)
        return int(np.prod(out)) * int(np.prod(kernel[1:])) if kernel else 0
    if call.op.name == "relax.matmul":
        left = static_shape(call.args[0].ty)
        return int(np.prod(out)) * left[-1] if left else 0
    return 0


def run_with_intermediates(view: RelaxView, inputs: Mapping[str, np.ndarray],
                           names: list[str]) -> dict[str, np.ndarray]:
    """Compile ``main`` returning the tensors ``names`` too, run it on ``inputs`` (a batch, cut
    into ``main``'s own batch size) and return them."""
    from relaycomp.errors import CalibrationError

    by_name = {v: k for k, v in view.names.items()}
    wanted = [n for n in names if n in by_name and n not in view.inputs]
    bb = relax.BlockBuilder()
    varmap: dict[relax.Var, relax.Expr] = {}
    params = list(view.func.params)
    with bb.function("main", params):
        with bb.dataflow():
            for binding in view.func.body.blocks[0].bindings if len(
                    view.func.body.blocks) == 1 else []:
                varmap[binding.var] = bb.emit(substitute_vars(binding.value, varmap))
            extra = [bb.emit_output(varmap[by_name[n]]) for n in wanted]
        bb.emit_func_output(relax.Tuple(extra))
    if len(view.func.body.blocks) != 1:
        raise CalibrationError("activations of a Relax function with several blocks")
    mod = tvm.IRModule({**{gv: f for gv, f in view.mod.functions.items()
                           if gv.name_hint != view.func_name}})
    mod["main"] = bb.get()["main"]
    executable = tvm.compile(mod, tvm.target.Target("llvm"))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    feeds = [np.asarray(inputs[n]) for n in view.inputs]
    total = feeds[0].shape[0]
    batch = view.shapes[view.inputs[0]][0] or total  # main's fixed batch size
    runs = []
    for start in range(0, total, batch):
        # The last chunk is padded to main's batch with samples repeated; the padding is cut off.
        chunk = [np.resize(f[start:start + batch], (batch, *f.shape[1:])) for f in feeds]
        result = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(c)) for c in chunk])
        runs.append([r.numpy()[:min(batch, total - start)] for r in result])
    values = {n: np.concatenate([run[i] for run in runs]) for i, n in enumerate(wanted)}
    values.update({n: np.asarray(inputs[n]) for n in names if n in view.inputs})
    return values
