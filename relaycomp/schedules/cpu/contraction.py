"""The contraction rule of ``schedule_cpu_loops``: conv2d, dense/matmul, batch matmul, pooling.

Matches a PrimFunc with exactly one reduction block ("main") - its iterators of static extent but
for outer spatial ones (a dynamic batch) - surrounded by injective blocks (padding before it, an
elementwise epilogue after it).

Schedule (``_cpu_plan`` picks the vector axis ``v``, the register axis ``u`` and, for a tile
short of accumulators, a second register axis ``u2``)::

    parallel(fused outer spatial loops) / reduction loops / [unroll(u2_inner)] / unroll(u_inner)
        / vectorize(v_inner)

or, when ``v`` is walked with a stride (strided depthwise conv, pooling)::

    parallel(fused outer spatial loops) / v (for LLVM to vectorize) / unrolled reduction

The ``u_inner x v_inner`` output tile accumulates in a small stack buffer laid out with ``v``
last, which LLVM keeps in registers (cache_write + decompose_reduction); the epilogue (bias,
batch-norm, residual add, relu) is inlined into the write-back of that tile
(reverse_compute_inline + reverse_compute_at); elementwise producers are inlined. A zero-padded
input is computed inside the parallel loop, for the rows each iteration reads (the tiles along
``u`` then a serial loop in it), when the iterations together pad it at most
``MAX_PADDING_RECOMPUTED`` times over (a depthwise conv; measured 1.5-2.5x faster on MobileNetV2's
than a padded copy of the whole input through memory); else (a dense conv, whose every block of
output channels would pad it again) padding is a parallel stage of its own that copies a whole
row per iteration (not one vector behind a div/mod of the fused index). A pool (max/min) reads
its input where it is, the padding folded into its loads (2.2x faster on ResNet-18's max pool
than a padded copy). A repacked weight copy is annotated
``meta_schedule.layout_rewrite_preproc`` so that a constant weight can be packed once, at
compile time (``relax.transform.SplitLayoutRewritePreproc`` + ``FoldConstant``).

On a load-store ISA (AArch64), a reduction unrolled inside the tile (a depthwise conv's window)
that a bias add follows starts from the bias (``bias_init``: no zeroing and no bias add per
output vector on the FP/SIMD pipes), and a depthwise conv over a two-vector channel block keeps
its row's tiles a serial loop inside the parallel one (``Plan.serial_register_outer``: the
window's weights stay in registers along the row).

For the auto-tuner, :meth:`ContractionRule.design_spaces` gives the same schedule as MetaSchedule
design spaces: one per plan variant, tile sizes and an unroll step as samples whose decisions are
the heuristic's (``relaycomp.tune.space``).
"""

from __future__ import annotations

from dataclasses import replace

import tvm
from tvm import s_tir, tirx

from relaycomp.schedules.cpu.bias_init import COPIES_BLOCK, fold_bias_into_init
from relaycomp.schedules.cpu.common import (
    CpuFacts,
    CpuRule,
    buffer_size,
    cpu_facts,
    loop_extent,
    schedule_spatial_block,
    single_reduction,
    static_int,
    uses_var,
)
from relaycomp.schedules.cpu.int8 import schedule_int8_conv
from relaycomp.schedules.cpu.plan import Plan, plan_variants

LAYOUT_REWRITE_PREPROC = "meta_schedule.layout_rewrite_preproc"
MAX_VARIANTS = 8  # plan variants the auto-tuner gets as design spaces
UNROLL_STEPS = (0, 16, 64, 512)  # the auto-tuner's choices of pragma_auto_unroll_max_step
MAX_UNROLLED_WINDOW = 64  # reduction steps unrolled inside a row (a 7x7 window at most)
# A padded input computed inside the parallel loop may be padded this many times over in all
# (a depthwise conv's 3-row window: 3; a dense conv's would be 3 x its output-channel blocks).
MAX_PADDING_RECOMPUTED = 3.5
PADDED_ROW_ELEMENTS = 4096  # else a padding stage copies this much, a row, per parallel iteration
MAX_COPIES = 256  # copies of a bias to start accumulators from (bias_init): one per column
_HAS_IF_THEN_ELSE = tvm.get_global_func("s_tir.schedule.HasIfThenElse")


class ContractionRule(CpuRule):
    """Register-tiled, vectorized, parallel schedule for one reduction block plus its epilogue."""

    name = "contraction"

    def apply(self, func, target, tunable):
        """An int8 conv2d gets its tensorized schedule (``_cpu_int8``) when the CPU has one;
        everything else, or an int8 conv it does not fit, the generic schedule below."""
        if isinstance(func, tirx.PrimFunc) and self.is_target_available(target):
            try:
                sch = schedule_int8_conv(func, target, cpu_facts(target))
            except Exception:  # noqa: BLE001 - not applicable: the generic schedule
                sch = None
            if sch is not None:
                return sch
        return super().apply(func, target, tunable)

    def schedule(self, sch: s_tir.Schedule, facts: CpuFacts) -> s_tir.Schedule | None:
        """See the module docstring."""
        return _schedule(_bias_started(sch, facts) or sch, facts, variant=0, tunable=False)

    def design_spaces(self, sch: s_tir.Schedule, facts: CpuFacts) -> list[s_tir.Schedule]:
        """The auto-tuner's design spaces: copies of ``sch`` (a traced schedule) scheduled as
        :meth:`schedule` does, one per plan variant (``_cpu_plan.plan_variants``, the heuristic
        plan first), with the tile sizes as MetaSchedule samples (``sample_perfect_tile``) and an
        unroll step (``sample_categorical``) whose decisions are the heuristic's: the first
        space, with its decisions as sampled, is the heuristic schedule. Empty when the rule
        does not apply or leaves nothing to tune (a row loop left to LLVM)."""
        spaces = []
        for variant in range(MAX_VARIANTS):
            space = sch.copy()
            try:
                scheduled = _schedule(space, facts, variant=variant, tunable=True)
            except Exception:  # noqa: BLE001 - a variant that does not apply is left out
                scheduled = None
            if scheduled is None:
                if variant == 0:
                    return []
                break
            spaces.append(scheduled)
        return spaces


def _schedule(sch: s_tir.Schedule, facts: CpuFacts, variant: int,
              tunable: bool) -> s_tir.Schedule | None:
    """Schedule ``sch`` with plan variant ``variant`` (0: the heuristic plan); ``tunable`` makes
    the tile sizes and the unroll step samples whose decisions are the plan's."""
    nest = single_reduction(sch)
    if nest is None or set(nest.main.dom_kind()) != {"S", "R"}:
        return None
    main = nest.main.block_rv
    prologue = [info.block_rv for info in nest.prologue]
    if _blocked_pool(sch.get(main)):  # a pool over whole channel vectors reads its input
        prologue = [block for block in prologue if not _try(sch.compute_inline, block)]
    kept = [  # elementwise producers fold into main; padding and bias copies stay stages
        block
        for block in prologue
        if _HAS_IF_THEN_ELSE(sch.get(block))
        or sch.get(block).name_hint == COPIES_BLOCK
        or not _try(sch.compute_inline, block)
    ]
    plans = plan_variants(sch.get(main), facts, MAX_VARIANTS)
    if variant >= len(plans) or tunable and plans[variant].vector_tile == 0:
        return None
    plan = plans[variant]
    epilogue = [info.block_rv for info in nest.epilogue]
    padding = [producer for producer in kept if _HAS_IF_THEN_ELSE(sch.get(producer))]
    if padding and plan.vector_tile and plan.register_iter is not None:
        trial = sch.copy()
        parallel = _tile_with_producers(trial, main, plan, kept, padding, epilogue, facts,
                                        tunable)
        if all(_padding_recomputed(trial, pad, parallel) <= MAX_PADDING_RECOMPUTED
               for pad in padding):
            if tunable:
                _sample_unroll(trial)
            return trial
    _tile_with_producers(sch, main, plan, kept, [], epilogue, facts, tunable)
    if tunable:
        _sample_unroll(sch)
    return sch


def _tile_with_producers(sch: s_tir.Schedule, main, plan: Plan, kept: list, padding: list,
                         epilogue: list, facts: CpuFacts, tunable: bool):
    """Schedule the kept producers and tile ``main``; the producers in ``padding`` (a padded
    input) are computed inside each parallel iteration, for the rows it reads. Returns the
    parallel loop."""
    for producer in kept:
        if producer not in padding:
            schedule_spatial_block(sch, producer, facts, PADDED_ROW_ELEMENTS
                                   if _HAS_IF_THEN_ELSE(sch.get(producer)) else 0)
    params = list(sch.mod["main"].params)
    for relayout in plan.relayouts:
        _relayout(sch, main, relayout, params, facts)
    if padding:  # the row's tiles a serial loop, so that one iteration reads whole rows
        plan = replace(plan, serial_register_outer=True)
    parallel = _tile(sch, main, plan, epilogue, facts, tunable)
    for producer in padding:
        _pad_per_row(sch, producer, parallel, facts)
    return parallel


def _padding_recomputed(sch: s_tir.Schedule, pad, parallel) -> float:
    """How many times over the parallel iterations compute the padded input, in total
    (infinite when an extent is symbolic: a dynamic batch)."""
    loops = sch.get_loops(pad)
    outer = sch.get(parallel)
    start = next(i for i, loop in enumerate(loops) if sch.get(loop).same_as(outer))
    computed = 1
    for loop in loops[start:]:
        computed *= loop_extent(sch, loop) or float("inf")
    size = buffer_size(sch.get(pad).writes[0].source)
    return computed / size if size else float("inf")


def _bias_started(sch: s_tir.Schedule, facts: CpuFacts) -> s_tir.Schedule | None:
    """On a load-store ISA, a reduction short enough for its epilogue to weigh (at most
    ``MAX_UNROLLED_WINDOW`` steps: a depthwise conv's 3x3 window, a 1x1 conv over few channels)
    that a bias add follows starts from the bias instead, read from one copy of it per column of the
    tile - per column of the row when the row's tiles are a serial loop, along which LLVM would
    otherwise hoist the start values and, short of registers, spill them
    (:mod:`relaycomp.schedules.cpu.bias_init`); else ``None``. Only for the heuristic schedule:
    the tuner's design spaces are traces of the function as it is."""
    nest = single_reduction(sch) if facts.loads_operands else None
    if nest is None:
        return None
    block = sch.get(nest.main.block_rv)
    window = 1
    for it in block.iter_vars:
        if it.iter_type != tirx.IterVar.DataPar:
            window *= static_int(it.dom.extent) or MAX_UNROLLED_WINDOW + 1
    plans = plan_variants(block, facts, 1)
    if window > MAX_UNROLLED_WINDOW or not plans or not plans[0].vector_tile:
        return None
    plan = plans[0]
    if plan.register_iter is None or plan.register_tile < 2:
        return None
    copies = plan.register_tile
    if plan.serial_register_outer:
        copies = static_int(block.iter_vars[plan.register_iter].dom.extent) or copies
    folded = fold_bias_into_init(sch.mod["main"], plan.register_iter, min(copies, MAX_COPIES))
    return None if folded is None else s_tir.Schedule(folded)


def _blocked_pool(block) -> bool:
    """Whether ``block`` is a max/min pool on a blocked layout (``NCHW[b]c``: a channel block
    innermost), whose loads stay whole vectors with the padding folded into them; on NCHW the
    folded bounds checks cost more than the copy (a uint8 max pool: 12x slower)."""
    return (isinstance(block.body.value, (tirx.Max, tirx.Min))
            and all(len(region.source.shape) == 5 for region in block.writes))


def _try(primitive, *args) -> bool:
    try:
        primitive(*args)
    except Exception:  # noqa: BLE001 - a primitive that does not apply is an answer, not an error
        return False
    return True


def _relayout(sch: s_tir.Schedule, block_rv, relayout, params, facts: CpuFacts) -> None:
    """Change an operand's layout: in place for a temporary, through a copy for a parameter
    (marked as a layout-rewrite preprocessing step: for a weight, a compile-time candidate)."""
    buffer = sch.get(block_rv).reads[relayout.read].source
    if any(param.same_as(buffer) for param in params):
        copy = sch.cache_read(block_rv, relayout.read, "global")
        sch.annotate(copy, LAYOUT_REWRITE_PREPROC, True)
        sch.transform_layout(block_rv, ("read", relayout.read), relayout.index_map)
        schedule_spatial_block(sch, copy, facts)
    else:
        sch.transform_layout(block_rv, ("read", relayout.read), relayout.index_map)


def _tile(sch: s_tir.Schedule, block_rv, plan: Plan, epilogue: list, facts: CpuFacts,
          tunable: bool = False):
    """Tile ``block_rv`` as ``plan`` says; returns the outer (parallel) loop of the tiles."""
    block = sch.get(block_rv)
    kinds = [it.iter_type for it in block.iter_vars]
    vector_var = block.iter_vars[plan.vector_iter].var
    loops = sch.get_loops(block_rv)
    if plan.vector_tile == 0:
        _tile_rows(sch, block_rv, plan, epilogue, facts)
        return
    # A packed operand's layout fixes the vector tile; an unpacked one lets the tuner vary it.
    vector_outer, vector_inner = _split(sch, loops[plan.vector_iter], plan.vector_tile,
                                        tunable and not plan.relayouts, 4 * plan.vector_tile)
    register_inner = outer_register_inner = serial = None
    spatial_outer, reduction = [], []
    for i, loop in enumerate(loops):
        if i == plan.vector_iter:
            spatial_outer.append(vector_outer)
        elif i == plan.register_iter:
            outer, register_inner = _split(sch, loop, plan.register_tile, tunable,
                                           max(2 * facts.accumulator_budget, plan.register_tile))
            if plan.serial_register_outer:
                serial = outer
            else:
                spatial_outer.append(outer)
        elif i == plan.outer_register_iter:
            outer, outer_register_inner = _split(sch, loop, plan.outer_register_tile, tunable,
                                                 facts.accumulator_budget)
            spatial_outer.append(outer)
        elif kinds[i] == tirx.IterVar.DataPar:
            spatial_outer.append(loop)
        else:
            reduction.append(loop)
    inner = [loop for loop in (outer_register_inner, register_inner) if loop is not None]
    if facts.loads_operands:
        # The longest reduction loop (a conv's input channels) innermost: LLVM unrolls a 3x3
        # window loop inside it whole, and on a load-store ISA the window's weight vectors
        # (18 for two vectors) then take registers next to the accumulators and spill.
        # Only that loop moves (the last of the longest: a blocked conv's input-channel block
        # stays innermost, its other loops where they were).
        longest = max(reversed(reduction), key=lambda loop: loop_extent(sch, loop) or 0)
        reduction.remove(longest)
        reduction.append(longest)
    rows = [serial] if serial is not None else []
    sch.reorder(*spatial_outer, *rows, *reduction, *inner, vector_inner)
    outer = sch.fuse(*spatial_outer) if len(spatial_outer) > 1 else spatial_outer[0]
    tiles = loop_extent(sch, outer)  # None when a dynamic batch is among the outer loops
    if facts.parallel and (tiles is None or tiles > 1 and tiles * plan.vector_tile >= 64):
        sch.parallel(outer)
    parallel = outer
    if serial is not None:  # the tile's write-back and start inside the serial row loop
        outer = serial

    # "global", not "local": only global-scope buffers under 1 KB become stack allocas on CPU.
    write_back = sch.cache_write(block_rv, 0, "global")
    _accumulate_along_lanes(sch, block_rv, vector_var)
    _fuse_epilogue(sch, epilogue, facts)
    sch.reverse_compute_at(write_back, outer, preserve_unit_loops=True)
    _vectorize_tile(sch, write_back, outer)
    sch.vectorize(vector_inner)
    for loop in inner:
        sch.unroll(loop)
    init = sch.decompose_reduction(block_rv, reduction[0])
    _vectorize_tile(sch, init, outer)
    return parallel


def _pad_per_row(sch: s_tir.Schedule, pad, parallel, facts: CpuFacts) -> None:
    """Compute the padded input's rows that one parallel iteration reads inside it (a small
    buffer per iteration, which lowering allocates there), its channel lanes vectorized."""
    sch.compute_at(pad, parallel, preserve_unit_loops=True)
    loops = sch.get_loops(pad)
    inner = loops[-1]
    lanes = facts.lanes(sch.get(pad).writes[0].source.dtype)
    extent = loop_extent(sch, inner)
    if extent and extent % lanes == 0:
        if extent > lanes:
            inner = sch.split(inner, [None, lanes])[1]
        sch.vectorize(inner)


def _split(sch: s_tir.Schedule, loop, inner: int, sampled: bool, most: int):
    """``loop`` split into ``[extent // inner, inner]``; with ``sampled`` the factors are a
    ``sample_perfect_tile`` (inner factor at most ``most``) whose decision is that split."""
    if not sampled:
        return sch.split(loop, [None, inner])
    extent = loop_extent(sch, loop)
    factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=most,
                                      decision=[extent // inner, inner])
    return sch.split(loop, factors)


def _sample_unroll(sch: s_tir.Schedule) -> None:
    """Let the tuner pick an explicit unroll step for the loop nests (MetaSchedule's
    ``RewriteParallelVectorizeUnroll`` turns it into ``pragma_auto_unroll_max_step``); the
    decision, 0, leaves the nests as the heuristic schedule has them."""
    root = sch.get_sblock("root")
    step = sch.sample_categorical(list(UNROLL_STEPS), [1 / len(UNROLL_STEPS)] * len(UNROLL_STEPS),
                                  decision=0)
    sch.annotate(root, "meta_schedule.unroll_explicit", step)


def _tile_rows(sch: s_tir.Schedule, block_rv, plan: Plan, epilogue: list, facts: CpuFacts):
    """Parallel outer loops; the innermost output loop whole, around the unrolled reduction."""
    kinds = [it.iter_type for it in sch.get(block_rv).iter_vars]
    loops = sch.get_loops(block_rv)
    spatial = [loop for i, loop in enumerate(loops) if kinds[i] == tirx.IterVar.DataPar]
    reduction = [loop for i, loop in enumerate(loops) if kinds[i] != tirx.IterVar.DataPar]
    row = loops[plan.vector_iter]
    spatial.remove(row)
    sch.reorder(*spatial, row, *reduction)
    outer = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    if facts.parallel and (loop_extent(sch, outer) or 2) > 1:
        sch.parallel(outer)
    write_back = sch.cache_write(block_rv, 0, "global")
    _fuse_epilogue(sch, epilogue, facts)
    sch.reverse_compute_at(write_back, outer, preserve_unit_loops=True)
    window = 1
    for loop in reduction:
        window *= loop_extent(sch, loop)
    if window <= MAX_UNROLLED_WINDOW:  # a straight-line body lets LLVM vectorize the row loop
        for loop in reduction:
            sch.unroll(loop)
    sch.decompose_reduction(block_rv, reduction[0])


def _fuse_epilogue(sch: s_tir.Schedule, epilogue: list, facts: CpuFacts) -> None:
    """Inline the epilogue chain into the write-back block that follows a ``cache_write``."""
    for producer in epilogue[:-1]:
        if not _try(sch.compute_inline, producer):
            schedule_spatial_block(sch, producer, facts)
    if epilogue and not _try(sch.reverse_compute_inline, epilogue[-1]):
        schedule_spatial_block(sch, epilogue[-1], facts)


def _accumulate_along_lanes(sch: s_tir.Schedule, block_rv, vector_var) -> None:
    """Lay the accumulator tile out with the vector axis last: whole-vector loads and stores
    that LLVM keeps in registers, rather than strided lanes it spills."""
    indices = sch.get(block_rv).body.indices
    dims = [d for d, index in enumerate(indices) if uses_var(index, vector_var)]
    if len(dims) != 1 or dims[0] == len(indices) - 1:
        return
    (dim,) = dims
    sch.transform_layout(
        block_rv, ("write", 0), lambda *axes: [*axes[:dim], *axes[dim + 1 :], axes[dim]]
    )


def _vectorize_tile(sch: s_tir.Schedule, block_rv, outer) -> None:
    """Vectorize the innermost non-unit loop of a tile nest under ``outer``, unroll the rest."""
    loops = sch.get_loops(block_rv)
    outer_loop = sch.get(outer)
    start = next(i for i, loop in enumerate(loops) if sch.get(loop).same_as(outer_loop)) + 1
    tile = [loop for loop in loops[start:] if loop_extent(sch, loop) != 1]
    if not tile:
        return
    sch.vectorize(tile[-1])
    for loop in tile[:-1]:
        sch.unroll(loop)
