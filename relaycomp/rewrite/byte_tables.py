"""Elementwise functions of one 8-bit tensor, found in a Relax function and tabulated.

A QDQ model's activation between two quantized convs is a chain of elementwise ops on one
uint8/int8 tensor: PP-OCRv4 det's hardswish is seven quantize/dequantize round trips per
element, each a division and a rounding. Whatever the chain, its 8-bit output takes one of 256
values per position of the constants it reads (per channel, for per-channel constants): a table,
computed once at compile time by running the chain itself on every input value.

:func:`find_chains` finds such chains; :func:`tabulate` runs them on all 256 values (compiled
for this machine by TVM, as the model would have run them) and :func:`lookup` reads the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, te, tirx

from relaycomp.ir import static_shape

BYTE_DTYPES = ("uint8", "int8")
# Ops that compute each output element from the elements at its own position only.
ELEMENTWISE = {f"relax.{name}" for name in (
    "quantize", "dequantize", "astype", "add", "subtract", "multiply", "divide", "maximum",
    "minimum", "clip", "round", "floor", "ceil", "abs", "negative", "sqrt", "exp", "sigmoid",
    "tanh", "erf", "power", "nn.relu", "nn.gelu", "nn.silu", "nn.leakyrelu")}
# Fewer quantize ops than this: the arithmetic is as cheap as a table lookup.
MIN_QUANTIZE_OPS = 2
MAX_TABLE_ENTRIES = 1 << 20
VALUES = 256


@dataclass(frozen=True)
class Chain:
    """``output`` (a binding's var) computed from ``source`` by ``bindings`` (in order, the last
    one ``output``'s), whose constants vary along the axes where ``varying`` is not 1."""

    source: relax.Var
    output: relax.Var
    bindings: tuple
    varying: tuple[int, ...]

    @property
    def table_shape(self) -> tuple[int, ...]:
        """The table's shape: ``varying`` with the 256 input values along the last axis that
        has no constant varying along it (:func:`lookup_axis`)."""
        shape = list(self.varying)
        shape[lookup_axis(self.varying)] = VALUES
        return tuple(shape)


def lookup_axis(varying) -> int:
    return max(axis for axis, size in enumerate(varying) if size == 1)


def _constant_shape(call: relax.Call, position: int, value: np.ndarray, rank: int):
    """Where constant argument ``position`` of ``call`` varies, as a shape of ``rank`` axes
    (1 where it does not), or ``None`` if it does not broadcast into the data."""
    if value.size == 1:
        return (1,) * rank
    if call.op.name in ("relax.quantize", "relax.dequantize"):
        if value.ndim != 1:
            return None
        axis = int(call.attrs.axis) % rank
        return tuple(value.size if a == axis else 1 for a in range(rank))
    if value.ndim > rank:
        return None
    return (1,) * (rank - value.ndim) + value.shape


def find_chains(func: relax.Function) -> list[Chain]:
    """The tabulable chains of ``func``: each ends in an 8-bit tensor computed from one other
    8-bit tensor by :data:`ELEMENTWISE` ops and constants alone, with at least
    :data:`MIN_QUANTIZE_OPS` quantize ops, whose intermediate values nothing else reads, and
    which nothing else computed from the same source reads (the longest such chains)."""
    bindings = [b for block in func.body.blocks for b in block.bindings]
    uses: dict[relax.Var, list] = {}
    for binding in bindings:
        for var in relax.analysis.free_vars(binding.value):
            uses.setdefault(var, []).append(binding.var)
    for var in relax.analysis.free_vars(func.body.body):
        uses.setdefault(var, []).append(None)  # read by the function's result
    # var -> (source, varying, bindings of its chain) for the vars computed from one source
    derived: dict[relax.Var, tuple] = {}
    for binding in bindings:
        found = _derive(binding, derived)
        if found is not None:
            derived[binding.var] = found
    chains = []
    for var, (source, varying, chain) in derived.items():
        if (str(var.ty.dtype) not in BYTE_DTYPES
                or sum(b.value.op.name == "relax.quantize" for b in chain) < MIN_QUANTIZE_OPS
                or all(user in derived and derived[user][0].same_as(source)
                       for user in uses.get(var, []))
                or int(np.prod(varying)) * VALUES > MAX_TABLE_ENTRIES):
            continue
        members = {b.var for b in chain}
        if all(all(user in members for user in uses.get(b.var, [])) for b in chain[:-1]):
            chains.append(Chain(source, var, tuple(chain), varying))
    return chains


def _derive(binding, derived) -> tuple | None:
    """``(source, varying, chain)`` if ``binding`` computes an elementwise function of one 8-bit
    source (its own chain appended), else ``None``."""
    call = binding.value
    if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
            and call.op.name in ELEMENTWISE):
        return None
    shape = static_shape(binding.var)
    if shape is None:
        return None
    sources, varying, chain = [], [1] * len(shape), []
    for position, arg in enumerate(call.args):
        if isinstance(arg, relax.Var):
            if arg in derived:
                source, arg_varying, arg_chain = derived[arg]
                varying = [max(a, b) for a, b in zip(varying, arg_varying)]
                chain += [b for b in arg_chain if b not in chain]
            elif str(arg.ty.dtype) in BYTE_DTYPES:
                source = arg
            else:
                return None
            if static_shape(arg) != shape:
                return None
            sources.append(source)
        elif isinstance(arg, tvm.ir.expr.GenericConst):
            value = arg.value.numpy()
            where = _constant_shape(call, position, value, len(shape))
            if where is None or any(w not in (1, s) for w, s in zip(where, shape)):
                return None
            varying = [max(a, b) for a, b in zip(varying, where)]
        elif isinstance(getattr(arg, "ty", None), relax.TensorType):
            return None  # a tensor computed some other way
    if not sources or any(not s.same_as(sources[0]) for s in sources):
        return None
    if all(size > 1 for size in varying):  # no axis left for the 256 values
        return None
    return sources[0], tuple(varying), chain + [binding]


def tabulate(chains: list[Chain]) -> list[np.ndarray]:
    """Each chain's table (``Chain.table_shape``): its output for every 8-bit input value at
    every position its constants vary along, computed by TVM on this machine in one build."""
    bb = relax.BlockBuilder()
    for index, chain in enumerate(chains):
        dtype = str(chain.source.ty.dtype)
        low = 0 if dtype == "uint8" else -128
        axis = lookup_axis(chain.varying)
        values = np.arange(low, low + VALUES).reshape(
            [VALUES if a == axis else 1 for a in range(len(chain.varying))])
        inputs = np.broadcast_to(values, chain.table_shape).astype(dtype)
        with bb.function(f"table{index}", []):
            remap = {chain.source: relax.const(inputs)}
            for binding in chain.bindings:
                call = binding.value
                args = [remap.get(arg, arg) if isinstance(arg, relax.Var) else arg
                        for arg in call.args]
                remap[binding.var] = bb.emit(relax.Call(call.op, args, call.attrs,
                                                        call.ty_args))
            bb.emit_func_output(remap[chain.output])
    executable = tvm.compile(bb.get(), target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return [vm[f"table{index}"]().numpy() for index in range(len(chains))]


def lookup(data: te.Tensor, table: te.Tensor, varying, signed: bool) -> te.Tensor:
    """``out[i] = table[position(i), data[i]]``: ``table`` flattened from ``[*varying', 256]``
    (``varying`` without its lookup axis, then the values), ``position`` the index along the
    axes where the chain's constants vary."""
    axis = lookup_axis(varying)

    def element(*index):
        position = tirx.const(0, "int32")
        for a, size in enumerate(varying):
            if a != axis and size > 1:
                position = position * size + index[a].astype("int32")
        value = data(*index).astype("int32") + (128 if signed else 0)
        return table[position * VALUES + value]

    return te.compute(data.shape, element, name="lookup_table")


def flatten_table(table: np.ndarray, varying) -> np.ndarray:
    """``table`` (``Chain.table_shape``) as :func:`lookup` reads it: positions major, then the
    256 values."""
    axis = lookup_axis(varying)
    return np.ascontiguousarray(np.moveaxis(table, axis, -1)).reshape(-1)
