"""The one place that touches version-sensitive TVM APIs (written against apache-tvm 0.27).

Everything else in relaycomp calls these helpers, so a TVM upgrade is a change to this file.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import shutil
import tempfile
from collections.abc import Sequence

import numpy as np
import onnx
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from relaycomp.errors import OnnxImportError, last_line


def supported_onnx_ops() -> frozenset[str]:
    """ONNX op types the Relax importer can translate (default domain)."""
    return frozenset(onnx_frontend._get_convert_map()) | {"If", "Constant"}


@functools.cache
def _importer_classes() -> dict[str, str]:
    """Class name -> source text of every class in TVM's ONNX importer module, from one parse
    (``inspect.getsource`` per class re-parses the 6000-line module every time)."""
    import ast
    import inspect

    try:
        lines = inspect.getsource(onnx_frontend).splitlines()
    except (OSError, TypeError):
        return {}
    tree = ast.parse("\n".join(lines))
    return {node.name: "\n".join(lines[node.lineno - 1:node.end_lineno])
            for node in tree.body if isinstance(node, ast.ClassDef)}


@functools.cache
def converter_source(op_type: str) -> str:
    """The source text of the stock importer's converter class for ``op_type`` and its base
    classes ("" if none or unreadable): which attribute names it reads is only written there."""
    converter = onnx_frontend._get_convert_map().get(op_type)
    if converter is None:
        return ""
    classes = _importer_classes()
    return "\n".join(classes.get(cls.__name__, "") for cls in converter.__mro__
                     if cls.__module__ == onnx_frontend.__name__)


class _OneNode:
    """A graph holding one node, for the stock ``_construct_nodes`` (it reads ``.node`` only)."""

    def __init__(self, node):
        self.node = [node]


class _NamingImporter(onnx_frontend.ONNXGraphImporter):
    """The stock importer, except that a failing node is named in the error, and every node's
    outputs are checked against ``expected`` (tensor name -> (static shape or None, dtype), from
    ONNX shape inference): a conversion that gives another shape or dtype, or drops an output
    something reads, is refused rather than compiled into a wrong answer."""

    def __init__(self, *args, expected=None, needed=frozenset(), **kwargs):
        super().__init__(*args, **kwargs)
        self.expected = expected or {}
        self.needed = needed
        self._label = "?"

    def _construct_nodes(self, graph):
        # Overrides the stock loop (private) to look at each node's outputs as it is converted.
        for node in graph.node:
            self._label = node.name or next((o for o in node.output if o), "?")
            try:
                super()._construct_nodes(_OneNode(node))
            except OnnxImportError:
                raise
            except Exception as err:
                raise self._error(node.op_type, err) from err
            self._check_outputs(node)

    def _check_outputs(self, node) -> None:
        where = f"node '{self._label}' (op {node.op_type}, opset {self.opset})"
        for name in node.output:
            if not name:
                continue
            if name not in self._nodes:
                if name in self.needed:
                    raise OnnxImportError(f"cannot import {where}: its output '{name}' is used, "
                                          "but the converter does not produce it")
                continue
            value_type = getattr(self._nodes[name], "ty", None)
            want = self.expected.get(name)
            if want is None or not isinstance(value_type, relax.TensorType):
                continue
            shape, dtype = want
            have_dtype = str(value_type.dtype)
            have = None
            if value_type.shape is not None and all(
                    isinstance(d, tvm.tirx.IntImm) for d in value_type.shape):
                have = tuple(int(d) for d in value_type.shape)
            if have_dtype != dtype or (shape is not None and have is not None and have != shape):
                raise OnnxImportError(
                    f"cannot import {where}: output '{name}' would be {have_dtype}"
                    f"{list(have) if have is not None else '[?]'}, but ONNX defines it as "
                    f"{dtype}{list(shape) if shape is not None else '[?]'}; refusing rather "
                    "than compiling a wrong answer")

    def _error(self, op_name, err) -> OnnxImportError:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        return OnnxImportError(
            f"cannot import node '{self._label}' (op {op_name}, opset {self.opset}): {reason}",
            hint="run `relaycomp inspect` on the model; pin dynamic inputs with --input")

    def _convert_operator(self, op_name, inputs, attrs, opset):
        try:
            return super()._convert_operator(op_name, inputs, attrs, opset)
        except Exception as err:
            raise self._error(op_name, err) from err


class LiftingImporter(_NamingImporter):
    """The relaycomp importer, with the initializers named in ``trainable`` as ``main``
    parameters (``lifted``: their names and values, in order), the rest as constants. Overrides
    the importer's private ``_parse_graph_initializers``: TVM has no public hook to choose
    which initializers become parameters (distillation trains exactly those)."""

    def __init__(self, shapes, trainable: set[str]):
        super().__init__(shapes, "float32", keep_params_in_input=True, sanitize=True)
        self.trainable = trainable
        self.lifted: list[tuple[str, np.ndarray]] = []

    def _parse_graph_initializers(self, graph):
        for init in graph.initializer:
            array = onnx.numpy_helper.to_array(init)
            if init.name in self.trainable:
                var = self._new_var(init.name, shape=array.shape, dtype=str(array.dtype))
                self._nodes[init.name] = var
                self._params[init.name] = (var, tvm.runtime.tensor(array))
                self.lifted.append((init.name, array))
            else:
                self._nodes[init.name] = relax.const(array)


def import_onnx_graph(model, shapes: dict[str, Sequence[int]], opset: int,
                      expected: dict | None = None) -> tvm.IRModule:
    """Translate an ONNX ModelProto into a Relax IRModule with ``main`` (weights as constants).

    ``expected`` maps tensor names to (static shape or None, dtype) as ONNX defines them; a
    node whose conversion disagrees is refused. The stock importer prints a wall of text on
    failure; it is captured and replaced with an :class:`OnnxImportError` naming the node.
    """
    needed = {name for node in model.graph.node for name in node.input if name}
    needed.update(o.name for o in model.graph.output)
    importer = _NamingImporter({k: list(v) for k, v in shapes.items()}, "float32",
                               keep_params_in_input=False, sanitize=True, expected=expected,
                               needed=frozenset(needed))
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return importer.from_onnx(model.graph, opset)
        except OnnxImportError:
            raise
        except Exception as err:
            raise OnnxImportError(f"cannot import the model: {err}") from err


def tensor_types(expr_type) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of each tensor in a Relax type (a tensor or a tuple of tensors); the
    shape is None when not even the rank is known."""
    if isinstance(expr_type, relax.TupleType):
        return [t for field in expr_type.fields for t in tensor_types(field)]
    if getattr(expr_type, "shape", None) is None:  # unknown rank (a data-dependent result)
        return [(None, str(getattr(expr_type, "dtype", "?")))]
    shape = tuple(int(d) if isinstance(d, tvm.tirx.IntImm) else str(d) for d in expr_type.shape)
    return [(shape, str(expr_type.dtype))]


def static_shape(var_or_type) -> tuple[int, ...] | None:
    """The static shape of a Relax tensor (an expression or its type), else ``None`` (not a
    tensor, unknown rank, or a symbolic dimension)."""
    ty = var_or_type.ty if isinstance(var_or_type, relax.Expr) else var_or_type
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    dims = getattr(ty.shape, "values", None)
    if dims is None or not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None
    return tuple(int(d) for d in dims)


def emit_rebound(builder: relax.BlockBuilder, var: relax.Var, value: relax.Expr) -> relax.Var:
    """Emit ``value`` in place of ``var``'s binding, under ``var``'s name: as an output of the
    dataflow block when ``var`` is one (it is read after the block), else as a plain binding."""
    output = not isinstance(var, relax.DataflowVar) and builder.current_block_is_dataflow()
    return (builder.emit_output if output else builder.emit)(value, var.name)


def main_output_types(mod: tvm.IRModule) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of every output of ``main``, flattened in order."""
    return tensor_types(mod["main"].ret_ty)


def well_formedness_problem(mod: tvm.IRModule) -> str | None:
    """Why ``mod`` is not well-formed (variables defined once, types consistent, ...), or None."""
    try:
        relax.analysis.well_formed(mod)
    except Exception as err:  # noqa: BLE001 - TVM raises its own error types here
        return last_line(err)
    return None


def build_executable(mod: tvm.IRModule, target: tvm.target.Target):
    """Lower an already-optimized module to a VM executable (relax passes were run by us)."""
    return tvm.compile(mod, target, relax_pipeline=None)


def load_vm(path: str, device_kind: str = "cpu"):
    """Load an exported library and wrap it in a Relax VM on device 0 of ``device_kind``.

    The library is loaded from a private copy: dlopen returns the already-loaded handle for a
    path it has seen, so a library rebuilt at the same path would otherwise run the old code.
    """
    with tempfile.TemporaryDirectory(prefix="relaycomp-load-") as folder:
        private = os.path.join(folder, os.path.basename(path))
        shutil.copyfile(path, private)
        lib = tvm.runtime.load_module(private)  # stays mapped after the copy is deleted
    device = tvm.device(device_kind, 0)
    return relax.VirtualMachine(lib, device), device


def to_device(array: np.ndarray, device):
    """Copy a numpy array to a TVM device tensor."""
    return tvm.runtime.tensor(array, device)


def to_numpy(value) -> list[np.ndarray]:
    """Flatten a VM result (tensor or nested tuple) into numpy arrays, in order."""
    if isinstance(value, (list, tuple)) or type(value).__name__ in ("Array", "ArrayObj"):
        return [a for item in value for a in to_numpy(item)]
    return [value.numpy()]


def signature_of(mod: tvm.IRModule) -> list[str]:
    """``main``'s parameter and return types as text, to detect a pass that changes them."""
    main = mod["main"]
    return [str(p.ty) for p in main.params] + [str(main.ret_ty)]


def function_counts(mod: tvm.IRModule) -> dict[str, int]:
    """How many Relax functions and TIR PrimFuncs (kernels) the module holds."""
    prim = sum(isinstance(f, tvm.tirx.PrimFunc) for f in mod.functions.values())
    return {"relax": len(mod.functions) - prim, "tir": prim}


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def request_threads(count: int) -> None:
    """Ask TVM's CPU thread pool for ``count`` threads, at most :func:`usable_cpus`.

    TVM sizes its pool from TVM_NUM_THREADS when the first parallel kernel runs (its default on
    x86 is half the logical CPUs: 1 thread on a 2-vCPU machine), and the target's ``num-cores``
    does not change that. A value the user exported is respected; once the pool has started in
    this process, the request has no effect.

    A pool larger than the machine's CPUs cannot pin one thread per CPU: TVM then leaves its
    threads unpinned and says so on stderr from C++, a line no caller can catch. With such a
    count this sets TVM_BIND_THREADS=0 (unless the user set it), which asks TVM for the same
    unpinned pool without the line, so that the CLI's stderr holds only its own messages.
    """
    os.environ.setdefault("TVM_NUM_THREADS", str(max(1, min(count, usable_cpus()))))
    try:
        pool = int(os.environ["TVM_NUM_THREADS"])
    except ValueError:
        return  # TVM reads it with atoi; whatever it makes of it is the user's request
    if pool > (os.cpu_count() or 1):
        os.environ.setdefault("TVM_BIND_THREADS", "0")


def op_counts(mod: tvm.IRModule) -> dict[str, int]:
    """Relax op name (``nn.conv2d``, ``call_tir`` …) → number of calls, over all Relax functions."""
    counts: dict[str, int] = {}

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            name = expr.op.name.removeprefix("relax.")
            counts[name] = counts.get(name, 0) + 1

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return counts


def substitute_vars(expr: relax.Expr, varmap) -> relax.Expr:
    """``expr`` with the variables in ``varmap`` replaced, rebuilding tuples and calls around
    them (a leaf-level rebuild for straight-line bindings; other nodes are returned as they are).
    """
    if isinstance(expr, relax.Var):
        return varmap.get(expr, expr)
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([substitute_vars(f, varmap) for f in expr.fields])
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(substitute_vars(expr.tuple_value, varmap), expr.index)
    if isinstance(expr, relax.Call):
        return relax.Call(expr.op, [substitute_vars(a, varmap) for a in expr.args], expr.attrs,
                          expr.ty_args)
    return expr


def as_script(mod: tvm.IRModule) -> str:
    """TVMScript text of a module (for --dump-ir)."""
    return mod.script(show_meta=False)


def structural_key(mod: tvm.IRModule) -> str:
    """A structural hash of ``mod`` as text: equal for structurally equal modules, in any process.

    Used to key tuning workloads (TVM 0.27 keeps ``structural_hash`` in ``tvm_ffi``).
    """
    import tvm_ffi

    return str(tvm_ffi.structural_hash(mod))


def tensor_bytes(value_type) -> int:
    """Bytes of a tensor (or tuple of tensors) type with a static shape; 0 when it has none."""
    if isinstance(value_type, relax.TupleType):
        return sum(tensor_bytes(field) for field in value_type.fields)
    if not isinstance(value_type, relax.TensorType) or value_type.shape is None:
        return 0
    dims = [d for d in value_type.shape]
    if not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return 0
    return int(np.prod([int(d) for d in dims])) * np.dtype(str(value_type.dtype)).itemsize


def kernel_calls(mod: tvm.IRModule) -> list[relax.Call]:
    """Every ``call_tir`` (a kernel launch) in the module's Relax functions, in post order."""
    call_tir = tvm.ir.Op.get("relax.call_tir")
    calls: list[relax.Call] = []

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            calls.append(expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return calls


def kernel_traffic(mod: tvm.IRModule) -> dict[str, int]:
    """Kernels launched by ``main`` (``call_tir`` calls) and bytes of the intermediate tensors
    they hand to each other (every kernel output except what ``main`` returns)."""
    call_tir = tvm.ir.Op.get("relax.call_tir")
    main = mod["main"]
    kernels, produced = 0, 0
    for block in main.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and value.op.same_as(call_tir):
                kernels += 1
                produced += tensor_bytes(binding.var.ty)
    returned = tensor_bytes(main.ret_ty)
    return {"kernels": kernels, "intermediate_bytes": max(produced - returned, 0)}


def import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin``, as MetaSchedule's ``TuneContext`` does on first use,
    in seconds instead of half a minute.

    The package parses about 500 TVMScript intrinsics at import. Each ``T.prim_func`` calls
    ``inspect.stack()``, whose frames inside the import machinery (``<frozen importlib...>``,
    no file on disk) make ``inspect.getmodule`` rescan every loaded module: with relaycomp's
    ~1300 modules loaded that took 37 s here (4.6 s with this). During the import, a pseudo file
    name (``<...>``) that matched no module is remembered as such: no module imported later can
    have it as its file, so the answer cannot change.
    """
    import inspect
    import sys

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    original, unmatched = inspect.getmodule, set()

    def getmodule(obj, _filename=None):
        if _filename is not None and _filename in unmatched:
            return None
        found = original(obj, _filename)
        if found is None and _filename is not None and _filename.startswith("<"):
            unmatched.add(_filename)
        return found

    inspect.getmodule = getmodule
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401 - registers the intrinsics
    finally:
        inspect.getmodule = original


def local_builder_worker():
    """MetaSchedule's LocalBuilder worker and its parameter serializer, ``(worker, serialize)``.
    Private in TVM, used by the tuner's pooled builder to build candidates exactly as the stock
    builder does, in a pool it keeps alive across batches (the stock one restarts per batch)."""
    from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func

    return _worker_func, _serialize_params


def mutate_relax_functions(mod: tvm.IRModule, mutator) -> tvm.IRModule:
    """The module ``mutator`` (a ``relax.PyExprMutator`` made on ``mod``) builds from visiting
    every Relax function of ``mod`` (its dead bindings kept: ``DeadCodeElimination`` removes
    them)."""
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()


def rewrite_primfuncs(mod: tvm.IRModule, rewrite) -> tuple[tvm.IRModule, int, int]:
    """``mod`` with every PrimFunc replaced by ``rewrite(func) -> (func, count)`` where the count
    is non-zero; and the number of kernels changed and the sum of the counts. ``mod`` itself is
    returned when nothing changed."""
    updates, total = {}, 0
    for gvar, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            new, count = rewrite(func)
            if count:
                updates[gvar], total = new, total + count
    if not updates:
        return mod, 0, 0
    mod = mod.clone()
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod, len(updates), total


def loaded_buffer(expr):
    """The buffer a TIR load ``expr`` reads, or ``None`` if ``expr`` is no load. TVM 0.27 builds
    a buffer load as the generic ``tvm.ir.expr.TensorLoad`` (``tirx.BufferLoad`` is a function,
    not a class to test against), holding its buffer in ``source``."""
    return expr.source if isinstance(expr, tvm.ir.expr.TensorLoad) else None
