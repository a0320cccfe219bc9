"""Fold a bias add into the initial value of the reduction it follows.

Matches, in a PrimFunc: the one reduction block ``acc[i] = 0; acc[i] += ...`` whose result only
one block reads, as ``out[i] = acc[i] + bias[g(i)]`` (or ``bias + acc``), ``bias`` a buffer no
block writes (a kernel parameter: a conv's per-channel bias).
Produces: ``acc[i] = bias[g(i)]; acc[i] += ...`` and ``out[i] = acc[i]`` (a copy, which the
schedule inlines).
Keeps: the result up to the order of the fp32 additions (the bias is added first, not last);
the signature.

With ``copies`` (and ``column``, an iterator of the reduction block: the register tile's
columns), the start value is read from ``bias_copies[column % copies, ...]``, ``copies`` copies
of ``bias`` that a first stage of the kernel writes (a few hundred bytes per call). It is not
marked as a compile-time repack (``meta_schedule.layout_rewrite_preproc``): a bias has unit
dims, read at constant indices, which MetaSchedule's ``RemoveWeightLayoutRewriteBlock`` refuses
when the tuner builds the kernel.

Why: on a load-store ISA a depthwise conv's register tile otherwise spends, per output vector
of 9 multiply-adds, one instruction zeroing the accumulator and one adding the bias on the two
FP/SIMD pipes, next to the ReLU6 clamp and the store (the issue's "epilogue not amortized").
Started from the bias, the accumulators of one channel block would all copy one register
(``mov``, again an FP/SIMD instruction: LLVM merges loads of one address); each column's own
copy makes the start value a load, on the load pipes the loop leaves half idle.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import s_tir, tirx

from relaycomp.ir import loaded_buffer
from relaycomp.schedules.cpu.common import uses_var

COPIES_BLOCK = "bias_copies"


def fold_bias_into_init(func: tirx.PrimFunc, column: int | None = None,
                        copies: int = 1) -> tirx.PrimFunc | None:
    """``func`` with its bias add folded into the reduction's start (module docstring), read
    from ``copies`` copies of the bias along the reduction's iterator ``column``, or ``None``
    when it has no such pattern."""
    blocks = _blocks(func)
    reductions = [block for block in blocks if _zero_init(block)]
    if len(reductions) != 1:
        return None
    reduction = reductions[0]
    accumulator = reduction.init.buffer
    readers = [block for block in blocks if not block.same_as(reduction)
               and any(region.source.same_as(accumulator) for region in block.reads)]
    written = [region.source for block in blocks for region in block.writes]
    if len(readers) != 1:
        return None
    found = _bias_add(readers[0], accumulator, written)
    if found is None:
        return None
    result, bias = found
    positions = {var: reduction.init.indices[k] for k, var in enumerate(result.indices)
                 if not isinstance(var, tirx.IntImm)}
    start = tirx.BufferLoad(bias.source, [_substitute(index, positions)
                                          for index in bias.indices])
    copy_stage = None
    varies = column is not None and any(
        uses_var(index, reduction.iter_vars[column].var) for index in start.indices)
    if copies > 1 and column is not None and not varies:  # a residual varies: read as it is
        copy_stage, replicated = _copies_stage(bias.source, copies)
        which = tirx.floormod(reduction.iter_vars[column].var, copies)
        start = tirx.BufferLoad(replicated, [which, *start.indices])
    folded_reduction = s_tir.SBlock(
        reduction.iter_vars,
        [*reduction.reads, tirx.BufferRegion(
            start.source, [tvm.ir.Range.from_min_extent(index, 1) for index in start.indices])],
        reduction.writes, reduction.name_hint, reduction.body,
        tirx.BufferStore(accumulator, start, reduction.init.indices),
        reduction.alloc_buffers, reduction.match_buffers, reduction.annotations)
    reader = readers[0]
    copy = s_tir.SBlock(
        reader.iter_vars,
        [region for region in reader.reads if region.source.same_as(accumulator)],
        reader.writes, reader.name_hint,
        tirx.BufferStore(reader.body.buffer, result, reader.body.indices),
        None, reader.alloc_buffers, reader.match_buffers, reader.annotations)
    replacements = [(reduction, folded_reduction), (reader, copy)]

    def replace(node, mutator):
        for old, new in replacements:
            if node.same_as(old):
                return new
        return mutator.default_mutate(node)

    folded = tvm_ffi.structural_mutate(func, [(s_tir.SBlock, replace)])
    return folded if copy_stage is None else _with_first_stage(folded, *copy_stage)


def _copies_stage(bias, copies: int):
    """A loop nest writing ``copies`` copies of ``bias`` (``[copies, *bias.shape]``), its
    buffer, and that buffer."""
    dtype = str(bias.shape[0].ty) if bias.shape else "int64"
    shape = [tirx.IntImm(dtype, copies), *bias.shape]
    replicated = tirx.decl_buffer(shape, bias.dtype, COPIES_BLOCK)
    loops = [tirx.Var(f"i{k}", dtype) for k in range(len(shape))]
    iters = [tirx.IterVar(tvm.ir.Range.from_min_extent(tirx.IntImm(dtype, 0), extent),
                          tirx.Var(f"v{k}", dtype), tirx.IterVar.DataPar)
             for k, extent in enumerate(shape)]
    index = [it.var for it in iters]

    def points(values):
        return [tvm.ir.Range.from_min_extent(value, 1) for value in values]

    block = s_tir.SBlock(iters, [tirx.BufferRegion(bias, points(index[1:]))],
                         [tirx.BufferRegion(replicated, points(index))], COPIES_BLOCK,
                         tirx.BufferStore(replicated, tirx.BufferLoad(bias, index[1:]), index),
                         None, [], [], {})
    stmt = s_tir.SBlockRealize(loops, True, block)
    for loop, extent in reversed(list(zip(loops, shape))):
        stmt = tirx.For(loop, tirx.IntImm(dtype, 0), extent, tirx.ForKind.SERIAL, stmt)
    return (stmt, replicated), replicated


def _with_first_stage(func: tirx.PrimFunc, stage, buffer) -> tirx.PrimFunc:
    """``func`` with ``stage`` run first in its root block, which allocates ``buffer``."""
    realize = func.body
    root = realize.block
    body = root.body
    stages = list(body.seq) if isinstance(body, tirx.SeqStmt) else [body]
    new_root = s_tir.SBlock(root.iter_vars, root.reads, root.writes, root.name_hint,
                            tirx.SeqStmt([stage, *stages]), root.init,
                            [*root.alloc_buffers, buffer], root.match_buffers,
                            root.annotations)
    return func.with_body(s_tir.SBlockRealize(realize.iter_values, realize.predicate, new_root))


def _blocks(func: tirx.PrimFunc) -> list:
    found = []

    def visit(node, mutator):
        found.append(node)
        return mutator.default_mutate(node)

    tvm_ffi.structural_mutate(func, [(s_tir.SBlock, visit)])
    return found


def _zero_init(block) -> bool:
    """Whether ``block`` is a float reduction starting from 0 and adding into the same buffer."""
    init, body = block.init, block.body
    return (isinstance(init, tirx.BufferStore) and isinstance(body, tirx.BufferStore)
            and isinstance(init.value, tirx.FloatImm) and init.value.value == 0.0
            and init.buffer.same_as(body.buffer) and isinstance(body.value, tirx.Add))


def _bias_add(block, accumulator, written):
    """``(accumulator load, bias load)`` when ``block`` stores ``acc[...] + bias[...]`` (its
    iterators, each once, and constants indexing ``acc``; ``bias`` written by no block), else
    ``None``."""
    body = block.body
    if (block.init is not None or not isinstance(body, tirx.BufferStore)
            or not isinstance(body.value, tirx.Add)):
        return None
    for result, bias in ((body.value.a, body.value.b), (body.value.b, body.value.a)):
        source, other = loaded_buffer(result), loaded_buffer(bias)
        if source is None or other is None or not source.same_as(accumulator):
            continue
        if any(other.same_as(buffer) for buffer in written):
            continue
        iters = [it.var for it in block.iter_vars]
        indices = [index for index in result.indices if not isinstance(index, tirx.IntImm)]
        if len(indices) != len(iters) or not all(
                sum(index.same_as(var) for index in indices) == 1 for var in iters):
            continue  # each iterator indexes the accumulator once, the rest are constants
        if str(other.dtype) != str(accumulator.dtype):
            continue
        return result, bias
    return None


def _substitute(expr, mapping: dict):
    """``expr`` with the variables of ``mapping`` replaced."""

    def var(node, mutator):
        for old, new in mapping.items():
            if node.same_as(old):
                return new
        return node

    return tvm_ffi.structural_mutate(expr, [(tirx.Var, var)])
