"""Helpers shared by the CPU schedule rules of ``schedule_cpu_loops``.

Target facts (vector lanes, register budget, cores), static-extent queries, block access
analysis and the one loop-nest recipe every rule uses for data-parallel blocks
(:func:`schedule_spatial_block`: fuse the outer loops into one parallel loop, vectorize the
innermost one).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target, codegen

# Below this many output elements a parallel loop costs more (thread-pool wake-up) than it saves.
MIN_PARALLEL_ELEMENTS = 1 << 14
# Accumulator vectors of a register tile on AVX-512: 15 x 64 B = 960 B, under TVM's 1 KB stack
# limit for a tile buffer (a larger one goes to the heap, out of LLVM's reach for registers).
AVX512_ACCUMULATORS = 15


@dataclass(frozen=True)
class CpuFacts:
    """What the rules need to know about the CPU: SIMD width, registers and cores."""

    vector_bits: int
    accumulator_budget: int
    num_cores: int
    # A load-store ISA (AArch64, RISC-V): every multiply-add operand sits in a register - a
    # tile's weight vectors and broadcast inputs count against ``registers`` with its
    # accumulators (x86 FMAs take one operand from memory, broadcast included).
    loads_operands: bool = False
    registers: int = 16

    def lanes(self, dtype: str) -> int:
        """SIMD lanes for ``dtype`` (8 for float32 on AVX2, 16 on AVX-512, 4 on NEON/SSE)."""
        return max(self.vector_bits // tvm.DataType(dtype).bits, 1)

    @property
    def parallel(self) -> bool:
        """Whether loops should be parallelized at all."""
        return self.num_cores != 1


def cpu_facts(target: Target) -> CpuFacts:
    """Read SIMD width, accumulator register budget and ``num-cores`` off an llvm target.

    ``codegen.llvm_get_vector_width`` answers 512 for every x86 CPU in TVM 0.27, so on x86 the
    width is derived from the CPU features implied by ``mcpu``/``mattr`` instead.
    """
    num_cores = int(target.attrs.get("num-cores", 0) or 0)
    triple = str(target.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
    try:
        if triple.startswith(("x86_64", "i386", "i686")):
            # 16 vector registers (AVX2): 12 accumulators + operands. AVX-512 has 32, but the
            # tile must stay under the 1 KB below which TVM keeps a buffer on the stack (where
            # LLVM promotes it to registers): 15 x 64 bytes. 15 rather than 12 gives 2 x 7
            # tiles to the 7/14/28/56-wide convs (ResNet-18 fp32 -13% on Zen 5).
            if codegen.llvm_cpu_has_features(["avx512f"], target):
                return CpuFacts(512, AVX512_ACCUMULATORS, num_cores)
            bits = 256 if codegen.llvm_cpu_has_features(["avx"], target) else 128
            return CpuFacts(bits, 12, num_cores)
        bits = int(codegen.llvm_get_vector_width(target))
    except Exception:  # noqa: BLE001 - an unknown CPU must not fail the build
        bits = -1
    # AArch64/RISC-V have 32 vector registers; 128 bits is a safe width for anything unknown.
    bits = bits if bits >= 64 else 128
    return CpuFacts(bits, min(24, 1000 // (bits // 8)), num_cores, loads_operands=True,
                    registers=32)


@dataclass(frozen=True)
class ReductionNest:
    """A function's blocks around its one reduction, in dlight's normalized order."""

    prologue: list  # BlockInfo of the elementwise blocks before it (producers, padding)
    main: object  # BlockInfo of the reduction
    epilogue: list  # BlockInfo of the blocks after it


def single_reduction(sch: s_tir.Schedule) -> ReductionNest | None:
    """``sch``'s function split around its only reduction block; ``None`` if it cannot be
    normalized, has no or several reductions, or an epilogue block writes fewer elements than
    the reduction (a channel slice fused after a conv): inlined into the tile's write-back, that
    block would store the whole tile - past the end of its smaller output."""
    infos = normalize_prim_func(sch)
    if infos is None:
        return None
    reductions = [info for info in infos if not info.is_injective()]
    if len(reductions) != 1:
        return None
    position = infos.index(reductions[0])
    epilogue = infos[position + 1:]
    size = _written_size(sch, reductions[0].block_rv)
    if any(_written_size(sch, info.block_rv) < size for info in epilogue):
        return None
    return ReductionNest(infos[:position], reductions[0], epilogue)


def _written_size(sch: s_tir.Schedule, block_rv) -> float:
    """Elements of the buffer ``block_rv`` writes (infinite when symbolic: never smaller)."""
    size = 1.0
    for dim in sch.get(block_rv).writes[0].source.shape:
        extent = static_int(dim)
        size *= float("inf") if extent is None else extent
    return size


def reduction_operands(block, accumulator: str, data: str, weight: str) -> tuple | None:
    """``(data, weight, output)`` buffers of a block that sums ``data x weight`` into an
    ``accumulator`` output (its two reads of those dtypes, in that order), else ``None``."""
    store = block.body
    if not isinstance(store, tirx.BufferStore) or str(store.buffer.dtype) != accumulator:
        return None
    reads = [region.source for region in block.reads if not region.source.same_as(store.buffer)]
    if len(reads) != 2 or [str(b.dtype) for b in reads] != [data, weight]:
        return None
    return reads[0], reads[1], store.buffer


def matched_reduction(func: tirx.PrimFunc, match) -> tuple | None:
    """``(schedule, nest, match(main block))`` for ``func`` split around its only reduction
    block (:func:`single_reduction`), or ``None`` when it has none or ``match`` returns
    ``None`` - the first steps of every tensorized schedule."""
    sch = s_tir.Schedule(func)
    nest = single_reduction(sch)
    if nest is None:
        return None
    found = match(sch.get(nest.main.block_rv))
    return None if found is None else (sch, nest, found)


def inlined(sch: s_tir.Schedule, block) -> bool:
    """Inline ``block`` into its consumers if it can be; whether it was (else it stays a stage
    of its own)."""
    try:
        sch.compute_inline(block)
    except Exception:  # noqa: BLE001 - what cannot be inlined stays a stage of its own
        return False
    return True


def vectorize_tiles(sch: s_tir.Schedule, stages, lanes: int) -> None:
    """A register tile's init and write-back stages: their innermost loop split into vectors
    of ``lanes``, the vectors unrolled."""
    for stage in stages:
        inner, vector = sch.split(sch.get_loops(stage)[-1], [None, lanes])
        sch.vectorize(vector)
        sch.unroll(inner)


def static_int(expr) -> int | None:
    """The value of a constant integer expression, ``None`` for a symbolic one."""
    return int(expr.value) if isinstance(expr, tirx.IntImm) else None


def loop_extent(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> int | None:
    """Static extent of ``loop`` or ``None`` when it is symbolic."""
    return static_int(sch.get(loop).extent)


def largest_divisor(n: int, limit: int) -> int:
    """Largest divisor of ``n`` that is at most ``limit`` (at least 1)."""
    return max(d for d in range(1, max(min(n, limit), 1) + 1) if n % d == 0)


def buffer_size(buffer: tirx.Buffer) -> int | None:
    """Number of elements of a statically shaped buffer, ``None`` otherwise."""
    size = 1
    for dim in buffer.shape:
        value = static_int(dim)
        if value is None:
            return None
        size *= value
    return size


def collect_loads(stmt) -> list[tvm.ir.TensorLoad]:
    """Every ``BufferLoad`` in ``stmt`` (pre-order)."""
    loads: list[tvm.ir.TensorLoad] = []
    tvm_ffi.structural_walk(stmt, (tvm.ir.TensorLoad, loads.append), order="pre")
    return loads


def uses_var(expr, var: tirx.Var) -> bool:
    """Whether ``var`` occurs in ``expr``."""
    found: list[tirx.Var] = []
    tvm_ffi.structural_walk(expr, (tirx.Var, lambda v: found.append(v) if v.same_as(var) else None))
    return bool(found)


def is_unit_stride(indices, var: tirx.Var) -> bool:
    """Whether ``var`` moves the access by exactly one element: last index only, coefficient 1."""
    if any(uses_var(index, var) for index in indices[:-1]):
        return False
    coefficients = tvm.sym.detect_linear_equation(indices[-1], [var])
    return len(coefficients) == 2 and static_int(coefficients[0]) == 1


def schedule_spatial_block(
    sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, facts: CpuFacts, row_elements: int = 0,
    partitioned: s_tir.schedule.LoopRV | None = None, piece_lanes: int = 0,
) -> None:
    """Parallelize and vectorize a data-parallel block sitting at the root of the function.

    The innermost loop is split by the vector width when it divides evenly (a short innermost
    loop is vectorized whole); all other loops are fused into one loop that is made parallel when
    the block is large enough to repay waking the thread pool. Symbolic extents stay scalar.
    With ``row_elements``, the innermost loops that together hold at most that many elements
    stay serial loops inside each parallel iteration (a padded copy: one whole row per
    iteration, rather than one vector per iteration behind a div/mod of the fused index).
    ``partitioned`` (a loop of static extent, not the innermost) moves just outside the vector
    loop, out of the fused one, and is partitioned into one block per iteration: in each copy
    its index is a constant that simplification folds into the indices. With ``piece_lanes`` (a
    divisor of the innermost extent), the innermost loop is vectorized that many lanes at a
    time, and the loop over those vectors is partitioned the same way, inside ``partitioned``.
    """
    loops = sch.get_loops(block)
    if not loops:
        return
    written = sch.get(block).writes
    lanes = facts.lanes(written[0].source.dtype) if written else 4
    total = _static_product([loop_extent(sch, loop) for loop in loops])
    inner, inner_extent = loops[-1], loop_extent(sch, loops[-1])
    outer = loops[:-1]
    if inner_extent is not None and inner_extent % lanes == 0 and inner_extent > lanes:
        vectors, inner = sch.split(inner, factors=[None, lanes])
        outer.append(vectors)
    to_partition = []
    if partitioned is not None:
        outer = [loop for loop in outer if not sch.get(loop).same_as(sch.get(partitioned))]
        sch.reorder(*outer, partitioned, inner)
        if piece_lanes and (loop_extent(sch, inner) or 0) % piece_lanes == 0:
            piece, inner = sch.split(inner, factors=[None, piece_lanes])
            to_partition.append(piece)
        to_partition.append(partitioned)  # innermost first: the outer partition copies the inner
    row = loop_extent(sch, inner) or 1
    # A longer odd-sized innermost loop stays a plain loop: LLVM vectorizes it with a remainder,
    # which beats fusing it into the outer loops and paying a div/mod per element.
    if inner_extent is not None and 2 <= row <= 2 * lanes:
        sch.vectorize(inner)
    for loop in to_partition:  # the loops inside them are copied: ``inner`` is gone after this
        _partition_per_iteration(sch, loop)
    if not outer or not facts.parallel:
        return
    if total is not None and total < MIN_PARALLEL_ELEMENTS:
        return
    while len(outer) > 1 and row * (loop_extent(sch, outer[-1]) or row_elements + 1) <= (
            row_elements):
        row *= loop_extent(sch, outer.pop())
    sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _partition_per_iteration(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> None:
    """One block copy per iteration of ``loop`` (a static extent), each with its iterator
    bound to a constant."""
    extent = loop_extent(sch, loop)
    if extent is not None and extent > 1:
        sch.loop_partition(loop, [1] * (extent - 1) + [None], preserve_unit_iters=False)


def _static_product(extents) -> int | None:
    product = 1
    for extent in extents:
        if extent is None:
            return None
        product *= extent
    return product


class CpuRule(ScheduleRule):
    """A dlight ``ScheduleRule`` for llvm CPU targets that never raises.

    Subclasses implement :meth:`schedule`, which may raise anything (a ``ScheduleError`` when a
    primitive does not apply, an assertion on an unexpected shape): ``apply`` turns every failure
    into ``None`` - "rule not applicable" - so the function is left for the next rule.
    """

    name = "cpu_rule"

    def is_target_available(self, target: Target) -> bool:
        """Only llvm (CPU) targets."""
        return target.kind.name == "llvm"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        """Schedule ``func`` for ``target``; ``None`` when the rule does not apply."""
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            return self.schedule(s_tir.Schedule(func), cpu_facts(target))
        except Exception:  # noqa: BLE001 - any failure means "not applicable"
            return None

    def schedule(self, sch: s_tir.Schedule, facts: CpuFacts) -> s_tir.Schedule | None:
        """Schedule in place and return ``sch``, or return ``None`` if the rule does not apply."""
        raise NotImplementedError


def inline_epilogue(sch: s_tir.Schedule, nest: ReductionNest) -> None:
    """Inline ``nest``'s epilogue chain (bias, requantize, activation) into the write-back block
    that follows the reduction's ``cache_write``: the kernel writes its output once."""
    epilogue = [info.block_rv for info in nest.epilogue]
    for block in epilogue[:-1]:
        sch.compute_inline(block)
    if epilogue:
        sch.reverse_compute_inline(epilogue[-1])
