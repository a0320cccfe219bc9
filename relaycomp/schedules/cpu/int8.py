"""The int8 conv2d schedule of ``schedule_cpu_loops`` on x86: a dot-product instruction tensorized.

Matches a PrimFunc (as in ``_cpu_contraction``) whose one reduction block is an NCHW conv2d
``acc[n, f, y, x] += int32(data[n, c, y*s + ry*d, x*s + rx*d]) * int32(weight[f, c, ry, rx])``
with uint8 ``data``, int8 ``weight`` (a parameter: a constant weight is repacked at compile
time), ``f`` a multiple of the lanes and ``c`` of the group (below) - what
``lower_qdq_to_integer`` produces - on an x86 CPU with AVX-512 VNNI or AVX2
(:func:`int8_instructions`).

Schedule (``L`` lanes, ``G`` group)::

    parallel(n, f / L F, y, x / U) / c / G, ry, rx / unroll(U) / unroll(F) / dot_LxG

- AVX2 with pair-safe weights, ``dot_8x4`` (:data:`DOT_8X4_AVX2`): ``vpmaddubsw`` (u8 x s8,
  adjacent products summed into int16) then ``vpmaddwd`` with ones, 8 output channels x 4 input
  channels - twice the products per instruction of ``dot_8x2``. The int16 pair sums saturate
  unless every weight pair keeps them in range (7-bit weights always do: ``QuantConfig``'s
  ``reduce_range``); the ``mark_pair_safe_weights`` pass marks the kernels whose constant
  weights do (:data:`PAIR_SAFE_PARAMS`, :func:`pair_safe`), and only those take this path.
- AVX2, ``dot_8x2`` (:data:`DOT_8X2_AVX2`): one ``vpmaddwd``, 8 output channels x 2 input
  channels, u8 and s8 widened to 16 bits, so the pair sums are exact for any int8 weights.
- AVX-512 VNNI, ``dot_16x4`` (:data:`DOT_16X4_VNNI`): one ``vpdpbusd``, 16 channels x 4,
  exact.
- AArch64 dotprod, ``sdot`` (s8 x s8, 4 channels x 4): lane-indexed, ``sdot v.4s, v.16b,
  v.4b[i]``, over the ``U`` columns of a tile (one 16-byte input load for four pixels; the
  columns loop inside the channel blocks), else ``ld1r`` broadcasts; the tile counts the
  input registers too (:func:`_register_tile`).

``data`` gets the layout ``[n, c/G, h, w, G]`` (written so by the padding stage, or a copy in the
kernel: ~1/(9 f) of the work), ``weight`` ``[f/LF, c/G, ry, rx, F, L, G]`` (prepacked:
``meta_schedule.layout_rewrite_preproc``); the ``U x LF`` accumulator tile (in vector registers
with its operands) is laid out channel-last; the epilogue (zero-point correction, rescale, bias,
activation, next ``quantize``) is inlined into its write-back, so the kernel reads and writes
8-bit tensors.

On AVX-512 VNNI three shapes get kernels of their own: a 1x1 conv over rows of whole 16-pixel
vectors puts the lanes along the row instead (``int8_pointwise``: no transposing write-back),
tried first; a depthwise conv (``int8_depthwise``: integer accumulation, four taps a
``vpdpbusd``) and a batch-1 matrix-vector product (``int8_gemv``) where this schedule does
not match. On AVX-512 VNNI and on AVX2, the convs ``int8_layout`` planned on ``NCHW[b]c``
activations have schedules of their own (``int8_nchwc``, ``int8_nchwc_depthwise``: 16 lanes on
``vpdpbusd``, 8 on ``vpmaddubsw`` + ``vpmaddwd``), as has the batch-1 head on AVX2
(``int8_gemv``: ``vpmaddwd`` on widened operands).

The same schedule runs bf16 convs (``convert_to_bf16``: ``acc += widen(data) * widen(weight)``
over bf16 bits held as ``uint16``, fp32 ``acc``) on AVX-512 BF16's ``vdpbf16ps``, 16 or 8 lanes x
2, and on AArch64 BF16's ``bfdot``, 4 lanes x 2, lane-indexed like ``sdot``
(:func:`bf16_instructions`); there the epilogue writes fp32, or bf16 bits when the next conv
reads them.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.target import Target

from relaycomp.schedules.cpu.bf16_llvm import IMPORT_PRAGMA
from relaycomp.schedules.cpu.bf16_nchwc import schedule_bf16_nchwc
from relaycomp.schedules.cpu.bf16_products import schedule_bf16_products
from relaycomp.schedules.cpu.common import (
    CpuFacts,
    collect_loads,
    inline_epilogue,
    inlined,
    schedule_spatial_block,
    single_reduction,
    static_int,
    uses_var,
)
from relaycomp.schedules.cpu.int8_depthwise import schedule_int8_depthwise
from relaycomp.schedules.cpu.int8_gemv import schedule_int8_gemv
from relaycomp.schedules.cpu.int8_isa import (  # noqa: F401 - re-exported, the public names
    ARM_BFDOT,
    ARM_SDOT,
    AVX2,
    AVX2_PAIRS,
    AVX512_BF16,
    AVX512_BF16_YMM,
    AVX512_VNNI,
    AVX512_VNNI_YMM,
    PAIR_SAFE_PARAMS,
    X86_TRIPLES,
    Int8Instructions,
    bf16_instructions,
    int8_data_dtype,
    int8_instructions,
    pair_safe,
    prefers_pair_safe_weights,
)
from relaycomp.schedules.cpu.int8_names import (  # noqa: F401 - re-exported
    DOT_4X2_BFDOT,
    DOT_4X4_SDOT,
    DOT_8X2_AVX2,
    DOT_8X2_BF16,
    DOT_8X4_AVX2,
    DOT_8X4_VNNI,
    DOT_16X2_BF16,
    DOT_16X4_VNNI,
)
from relaycomp.schedules.cpu.int8_nchwc import schedule_int8_nchwc
from relaycomp.schedules.cpu.int8_nchwc_depthwise import schedule_int8_depthwise_nchwc
from relaycomp.schedules.cpu.int8_pointwise import (
    groups_last,
    schedule_groups_last_stage,
    schedule_int8_pointwise,
)

LAYOUT_REWRITE_PREPROC = "meta_schedule.layout_rewrite_preproc"
EPILOGUE_COST = 14  # instructions per vector of outputs: gather, rescale, round, clip, store
STACK_TILE_BYTES = 1024  # TVM puts a "global" buffer on the stack only below 1 KB
_HAS_IF_THEN_ELSE = tvm.get_global_func("s_tir.schedule.HasIfThenElse")
def _lane_intrinsic(isa: Int8Instructions, columns: int, stride: int) -> str:
    """The lane-indexed form of ``isa`` (``sdot`` or ``bfdot``) over ``columns`` columns."""
    if isa is ARM_BFDOT:
        from relaycomp.schedules.cpu.bf16_arm_intrin import bfdot_lanes

        return bfdot_lanes(columns, stride)
    from relaycomp.schedules.cpu.int8_intrin import sdot_lanes

    return sdot_lanes(columns, stride)


def _register_intrinsics() -> None:
    """Parse and register the tensor intrinsics on first use (TVMScript parsing costs ~4 s,
    which every ``import relaycomp`` would otherwise pay)."""
    from relaycomp.schedules.cpu import bf16_arm_intrin, bf16_intrin, int8_intrin  # noqa: F401


def _reads_bf16(block) -> bool:
    """Whether ``block`` sums into fp32 from bf16 bits (``uint16``: ``convert_to_bf16``)."""
    return (any(str(region.source.dtype) == "float32" for region in block.writes)
            and any(str(region.source.dtype) == "uint16" for region in block.reads))


def _feeds(sch: s_tir.Schedule, block, consumer) -> bool:
    return any(sch.get(c).same_as(sch.get(consumer)) for c in sch.get_consumers(block))


def _is_cast(block) -> bool:
    """Whether ``block`` writes a dtype none of its inputs has (``astype``)."""
    written = {str(region.source.dtype) for region in block.writes}
    return bool(block.reads) and not written & {str(r.source.dtype) for r in block.reads}


def schedule_int8_conv(func: tirx.PrimFunc, target: Target,
                       facts: CpuFacts) -> s_tir.Schedule | None:
    """The schedule of the module docstring, or ``None`` when ``func`` does not match. On
    AArch64 the lane-indexed ``sdot`` form where it applies (convs of stride 1 or 2 along the
    row: ``int8_intrin.sdot_lanes``), else ``ld1r`` broadcasts."""
    if int8_instructions(target) is not ARM_SDOT:
        return _schedule_int8_conv(func, target, facts, lane_form=False)
    try:
        return _schedule_int8_conv(func, target, facts, lane_form=True)
    except Exception:  # noqa: BLE001 - the lane-indexed form did not apply: broadcasts
        return _schedule_int8_conv(func, target, facts, lane_form=False)


def _schedule_int8_conv(func: tirx.PrimFunc, target: Target, facts: CpuFacts,
                        lane_form: bool) -> s_tir.Schedule | None:
    sch = s_tir.Schedule(func)
    nest = single_reduction(sch)
    if nest is None:
        return None
    main = nest.main.block_rv
    bf16 = _reads_bf16(sch.get(main))
    isa = bf16_instructions(target) if bf16 else int8_instructions(target)
    if isa is None:
        return None
    _register_intrinsics()
    if isa is AVX512_VNNI:  # a 1x1 conv over long rows: lanes along the row (int8_pointwise)
        pointwise = schedule_int8_pointwise(func, target, facts)
        if pointwise is not None:
            return pointwise
    if isa is AVX2 and _weight_is_pair_safe(sch.mod["main"], sch.get(main)):
        isa = AVX2_PAIRS if _conv_shape(sch.get(main), AVX2_PAIRS) is not None else AVX2
    shape = _conv_shape(sch.get(main), isa)
    narrower = {AVX512_VNNI: AVX512_VNNI_YMM, AVX512_BF16: AVX512_BF16_YMM}
    if shape is None and isa in narrower:
        isa = narrower[isa]
        shape = _conv_shape(sch.get(main), isa)
    if shape is None:
        if bf16:  # the blocked layout of plan_conv_layout, or Winograd's tile products
            return (schedule_bf16_nchwc(func, bf16_instructions(target), facts,
                                        narrower=AVX512_BF16_YMM)
                    or schedule_bf16_products(func, bf16_instructions(target), facts))
        return (schedule_int8_nchwc(func, target, facts)  # planned NCHW[b]c (int8_layout)
                or schedule_int8_depthwise_nchwc(func, target, facts)
                or schedule_int8_depthwise(func, target, facts)
                or schedule_int8_gemv(func, target, facts))
    out_channels, width, steps, batch_loops = shape
    # Padding stays a stage of its own, writing the input pairs-last, once; so does a cast that
    # feeds the conv directly (round_to_bf16 of a 1x1 conv's input); other elementwise producers
    # are inlined (a cast into the padding stage).
    kept = [info.block_rv for info in nest.prologue
            if _HAS_IF_THEN_ELSE(sch.get(info.block_rv))
            or (_is_cast(sch.get(info.block_rv)) and _feeds(sch, info.block_rv, main))
            or not inlined(sch, info.block_rv)]
    stride = (_column_stride(sch.get(main), batch_loops)
              if lane_form and isa.lane_columns else None)
    blocks, tile = _register_tile(out_channels // isa.lanes, width, steps, isa, stride)
    lane_form = _lanes_apply(isa, tile, stride)
    data = sch.get(main).reads[0].source  # the parameter itself once a copy was inlined
    copies = []
    if any(data.same_as(param) for param in sch.mod["main"].params):
        copies.append(sch.cache_read(main, 0, "global"))
    # A padding stage (or the copy) writes the input pairs-last; the conv reads it so.
    sch.transform_layout(main, ("read", 0), groups_last(isa.group))
    for block in kept:
        schedule_groups_last_stage(sch, block, isa.group, facts)
    weight_copy = sch.cache_read(main, 1, "global")
    sch.annotate(weight_copy, LAYOUT_REWRITE_PREPROC, True)
    sch.transform_layout(main, ("read", 1), _packed_weight(blocks, isa))

    loops = sch.get_loops(main)
    f, y, x, c, *window = loops[batch_loops:]
    f_outer, f_block, f_lane = sch.split(f, [None, blocks, isa.lanes])
    x_outer, x_inner = sch.split(x, [None, tile])
    c_outer, c_group = sch.split(c, [None, isa.group])
    if lane_form:  # the tile's columns inside: one intrinsic call per channel block
        sch.reorder(*loops[:batch_loops], f_outer, y, x_outer, c_outer, *window, f_block,
                    x_inner, f_lane, c_group)
    else:
        sch.reorder(*loops[:batch_loops], f_outer, y, x_outer, c_outer, *window, x_inner,
                    f_block, f_lane, c_group)
    outer = sch.fuse(*loops[:batch_loops], f_outer, y, x_outer)
    if facts.parallel:
        sch.parallel(outer)
    if isa.llvm_ir:
        sch.annotate(outer, IMPORT_PRAGMA, isa.llvm_ir)
    write_back = sch.cache_write(main, 0, "global")
    sch.transform_layout(main, ("write", 0), _channels_last)
    inline_epilogue(sch, nest)
    sch.reverse_compute_at(write_back, outer, preserve_unit_loops=True)
    init = sch.decompose_reduction(main, c_outer)
    if lane_form:
        sch.tensorize(x_inner, _lane_intrinsic(isa, tile, stride))
    else:
        sch.tensorize(f_lane, isa.intrinsic)
        sch.unroll(x_inner)
    sch.unroll(f_block)
    for block in (init, write_back):
        tile_loops = sch.get_loops(block)
        sch.vectorize(tile_loops[-1])
    for copy in copies:
        schedule_groups_last_stage(sch, copy, isa.group, facts)
    schedule_spatial_block(sch, weight_copy, facts)
    return sch


def _column_stride(block, batch_loops: int) -> int | None:
    """How many input pixels apart adjacent output columns read: the conv's stride along the
    row, when it is 1 or 2 (the lane-indexed form's; else ``None``)."""
    column = block.iter_vars[batch_loops + 2].var
    data = block.reads[0].source
    loads = [load for load in collect_loads(block.body) if load.source.same_as(data)]
    if not loads or any(uses_var(index, column) for index in loads[0].indices[:-1]):
        return None
    coefficients = tvm.sym.detect_linear_equation(loads[0].indices[-1], [column])
    stride = static_int(coefficients[0]) if len(coefficients) == 2 else None
    return stride if stride in (1, 2) else None


def _lanes_apply(isa: Int8Instructions, tile: int, stride: int | None) -> bool:
    """Whether ``tile`` columns ``stride`` pixels apart span one lane-indexed input load."""
    return bool(isa.lane_columns and stride and (tile - 1) * stride + 1 >= isa.lane_columns)


def _weight_is_pair_safe(func: tirx.PrimFunc, block) -> bool:
    """Whether the block's second read (the weight) is a parameter marked pair-safe."""
    marked = (func.attrs or {}).get(PAIR_SAFE_PARAMS, None)
    if not marked or len(block.reads) < 2:
        return False
    weight = block.reads[1].source
    safe = {int(i) for i in marked}
    return any(i in safe and param.same_as(weight) for i, param in enumerate(func.params))



def _conv_shape(block, isa: Int8Instructions) -> tuple[int, int, int, int] | None:
    """``(out_channels, out_width, reduction steps of the instruction, batch loops)`` of an
    int8 NCHW conv2d block, else ``None``."""
    store = block.body
    if (not isinstance(store, tirx.BufferStore)
            or str(store.buffer.dtype) != isa.accumulator_dtype):
        return None
    reads = [region.source for region in block.reads if not region.source.same_as(store.buffer)]
    if len(reads) != 2 or [str(b.dtype) for b in reads] != [isa.data_dtype, isa.weight_dtype]:
        return None
    data, weight = reads
    if len(data.shape) != 4 or len(weight.shape) != 4:
        return None
    kinds = "".join("S" if it.iter_type == tirx.IterVar.DataPar else "R"
                    for it in block.iter_vars)
    spatial = len(kinds.rstrip("R"))
    if kinds != "S" * spatial + "R" * (len(kinds) - spatial) or spatial not in (3, 4):
        return None  # (n,) f, y, x, c (, ry, rx): unit window loops vanish in 1x1 convs
    extents = [int(it.dom.extent) if isinstance(it.dom.extent, tirx.IntImm) else None
               for it in block.iter_vars]
    batch = spatial - 3
    out_channels, width, in_channels = extents[batch], extents[batch + 2], extents[batch + 3]
    if None in (out_channels, width, in_channels):
        return None
    if out_channels % isa.lanes or in_channels % isa.group or int(weight.shape[0]) != out_channels:
        return None
    if int(weight.shape[1]) != in_channels:  # grouped / depthwise: the generic schedule
        return None
    return out_channels, width, int(np.prod(extents[batch + 3:])) // isa.group, batch


def _register_tile(channel_blocks: int, width: int, steps: int, isa: Int8Instructions,
                   lane_stride: int | None = None) -> tuple[int, int]:
    """``(F, U)``: channel blocks and output columns per tile. The ``F x U`` accumulators, the
    ``F`` weight vectors and the scratch registers must fit (a spilled accumulator costs a load
    and a store per multiply-add); of those tiles, the fewest instructions per output: ``steps``
    reduction steps of ``U`` broadcasts, ``F`` weight loads and ``F x U`` multiply-adds, then
    the epilogue, vectorized along the ``U`` columns (:data:`EPILOGUE_COST` per vector) - which
    decides when the reduction is short (a 1x1 conv over 16 channels). With ``isa.lane_columns``
    the inputs of a step take registers too: one per 16-byte load in the lane-indexed form
    (columns ``lane_stride`` pixels apart), one per column with broadcasts."""
    best = (float("inf"), 0, 1, 1)
    for blocks in (4, 2, 1):
        if channel_blocks % blocks:
            continue
        for tile in range(1, width + 1):
            accumulators = blocks * tile
            inputs, loads = isa.scratch, isa.broadcast_cost * tile
            if isa.lane_columns:
                inputs = tile
                if _lanes_apply(isa, tile, lane_stride):
                    from relaycomp.schedules.cpu.int8_intrin import lane_loads

                    inputs = len(lane_loads(tile, lane_stride))
                loads = inputs
            if (width % tile or accumulators + blocks + inputs > isa.registers
                    or accumulators * isa.lanes * 4 >= STACK_TILE_BYTES):
                continue
            reduction = steps * (loads + blocks + isa.mac_cost * accumulators)
            epilogue = EPILOGUE_COST * blocks * isa.lanes * -(-tile // isa.lanes)
            per_output = (reduction + epilogue) / (accumulators * isa.lanes)
            best = min(best, (per_output, -accumulators, blocks, tile))
    return best[2], best[3]


def _packed_weight(blocks: int, isa: Int8Instructions):
    width, lanes, group = isa.lanes * blocks, isa.lanes, isa.group

    def index_map(f, c, ry, rx):
        return [f // width, c // group, ry, rx, f % width // lanes, f % lanes, c % group]

    def one_block(f, c, ry, rx):  # a constant block index would not invert
        return [f // lanes, c // group, ry, rx, f % lanes, c % group]

    return one_block if blocks == 1 else index_map


def _channels_last(n, f, y, x):
    return [n, y, x, f]

