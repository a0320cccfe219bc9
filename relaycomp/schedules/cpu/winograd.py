"""The Winograd transforms' rule of ``schedule_cpu_loops`` (kernels of
:mod:`relaycomp.rewrite.winograd`; their tile products go to the contraction rule).

- Input transform: one parallel iteration per (tile, channel block); inside it, for each row of
  the transformed tile, the row pass (``B^T d``, one input row of the tile's window per
  coefficient) into a small stack buffer, then the column pass into ``V``; the tile's loops
  unrolled (the coefficients fold to constants, zero terms drop) and the channel block vectorized.
  A bf16 input's widening and ``V``'s rounding to bf16 are inlined into the two passes.
- Output transform (with the conv's epilogue inlined: bias, residual add, ReLU): one parallel
  iteration per (image, output-channel block, row of tiles); per tile and output row, the row
  pass (``A^T M``) into a stack buffer, then the columns, written as whole channel vectors. A
  block fused after them in another shape (a layout change where the chain ends) is a parallel
  stage of its own.

Each stack buffer holds one row of the tile (``alpha x b`` floats, under the 1 KB that lowering
keeps on the stack rather than allocating per iteration).
"""

from __future__ import annotations

from tvm import s_tir

from relaycomp.rewrite.winograd import INPUT_ROWS, INPUT_TRANSFORM, OUTPUT_ROWS, OUTPUT_TRANSFORM
from relaycomp.schedules.cpu.common import CpuFacts, CpuRule, loop_extent, schedule_spatial_block


class WinogradRule(CpuRule):
    """Schedule a Winograd input or output transform (see the module docstring)."""

    name = "winograd"

    def schedule(self, sch: s_tir.Schedule, facts: CpuFacts) -> s_tir.Schedule | None:
        names = {sch.get(block).name_hint for block in _blocks(sch)}
        if {INPUT_ROWS, INPUT_TRANSFORM} <= names:
            return _schedule_input(sch, facts)
        if {OUTPUT_ROWS, OUTPUT_TRANSFORM} <= names:
            return _schedule_output(sch, facts)
        return None


def _schedule_input(sch: s_tir.Schedule, facts: CpuFacts) -> s_tir.Schedule:
    blocks = _blocks(sch)
    names = [sch.get(block).name_hint for block in blocks]
    position = names.index(INPUT_TRANSFORM)
    for index, (block, name) in enumerate(zip(blocks, names, strict=True)):
        if name not in (INPUT_ROWS, INPUT_TRANSFORM):  # a bf16 input's widening and rounding
            if index < position:
                sch.compute_inline(block)
            else:
                sch.reverse_compute_inline(block)
    transform, rows = sch.get_sblock(INPUT_TRANSFORM), sch.get_sblock(INPUT_ROWS)
    block = int(sch.get(rows).writes[0].source.shape[-1])
    alpha = int(sch.get(rows).writes[0].source.shape[2])
    element, tile, channel = sch.get_loops(transform)
    channel_block, lane = sch.split(channel, [None, block])
    row, column = sch.split(element, [alpha, alpha])
    sch.reorder(tile, channel_block, row, column, lane)
    outer = sch.fuse(tile, channel_block)
    return _tile_loops(sch, facts, outer, rows, row, column, lane)


def _schedule_output(sch: s_tir.Schedule, facts: CpuFacts) -> s_tir.Schedule:
    rows = sch.get_sblock(OUTPUT_ROWS)
    tile = int(sch.get(rows).writes[0].source.shape[2])
    blocks = [block for block in _blocks(sch) if sch.get(block).name_hint != OUTPUT_ROWS]
    shapes = [[int(d) for d in sch.get(block).writes[0].source.shape] for block in blocks]
    # the transform and the epilogue written over its output (bias, residual add, ReLU) become
    # one block; what follows in another shape (a layout change at the chain's end) stays a
    # stage of its own
    same = next((i for i, shape in enumerate(shapes) if shape != shapes[0]), len(shapes))
    *inlined, last = blocks[:same]
    for block in reversed(inlined):
        sch.compute_inline(block)
    for block in blocks[same:]:
        schedule_spatial_block(sch, block, facts)
    batch, channel_block, y, x, lane = sch.get_loops(last)
    tile_y, row = sch.split(y, [None, tile])
    tile_x, column = sch.split(x, [None, tile])
    sch.reorder(batch, channel_block, tile_y, tile_x, row, column, lane)
    outer = sch.fuse(batch, channel_block, tile_y)
    return _tile_loops(sch, facts, outer, rows, row, column, lane)


def _tile_loops(sch: s_tir.Schedule, facts: CpuFacts, outer, rows, row, column,
                lane) -> s_tir.Schedule:
    """``outer`` parallel; the row pass (``rows``) computed per row of the tile, its loops
    unrolled but the lanes; the rows and columns unrolled (every coefficient a constant) and the
    channel lanes vectorized."""
    if facts.parallel:
        sch.parallel(outer)
    sch.compute_at(rows, row, preserve_unit_loops=True)
    _unroll_vectorize(sch, rows, row)
    sch.unroll(row)  # the row's coefficients constants too
    sch.unroll(column)
    sch.vectorize(lane)
    return sch


def _blocks(sch: s_tir.Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _unroll_vectorize(sch: s_tir.Schedule, block, outer) -> None:
    """The loops of ``block`` under ``outer``: the innermost vectorized, the others unrolled."""
    loops = sch.get_loops(block)
    start = next(i for i, loop in enumerate(loops) if sch.get(loop).same_as(sch.get(outer))) + 1
    inner = [loop for loop in loops[start:] if loop_extent(sch, loop) != 1]
    for loop in inner[:-1]:
        sch.unroll(loop)
    sch.vectorize(inner[-1])
