"""The int8 depthwise conv2d of ``schedule_cpu_loops`` on AVX-512 VNNI: integer accumulation,
four taps of a kernel row per ``vpdpbusd``.

Matches a PrimFunc whose one reduction block is an NCHW depthwise conv2d
``acc[n, c, y, x] += int32(data[n, c, y*s + ry, x*s + rx]) * int32(weight[c, 0, ry, rx])``
with uint8 ``data``, int8 ``weight`` and int32 ``acc``, kernel rows :data:`TAPS` wide (what
``lower_qdq_to_integer`` makes of a 3x3 depthwise conv for such targets, :func:`depthwise_taps`:
a fourth column of zero weights, one more column of padding on the right - the same outputs),
on an x86 CPU with AVX-512 VNNI.

Schedule: ``parallel(n, c, y) / ry / x / L / dot_Lx4``, one output row of accumulators in
vector registers (``L`` int32 lanes: 16, 14, 8 or 7, whichever divides the row first), its
epilogue (zero-point correction, rescale, bias, activation, next ``quantize``) applied as the
row is written back along ``x``: NCHW rows are contiguous, so the epilogue is plain vector code.

``dot_Lx4`` (:func:`depthwise_dot`): ``C[i] += sum_k A[i*s + k] * B[k]`` for ``L`` output
columns ``s`` pixels apart - the ``s*(L-1) + 4`` input bytes a row of the tile reads (two
overlapping loads), one byte shuffle laying out each column's four taps as a dword
(``vpermt2b`` with AVX-512 VBMI, as on Zen 4/5 and Ice Lake), one ``vpdpbusd`` with the four
weights broadcast: 3 multiply-add instructions per ``L`` outputs of a 3x3 conv, where float
accumulation needs 9 (and as many conversions). Zen 5, 2 threads, MobileNetV2's depthwise
kernels: 0.35-0.4x the time of float accumulation at stride 2, 0.65-0.85x at stride 1.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder.tirx import prim_func as build_prim_func
from tvm.target import Target, codegen

from relaycomp.schedules.cpu.common import (
    CpuFacts,
    collect_loads,
    inline_epilogue,
    inlined,
    matched_reduction,
    reduction_operands,
    schedule_spatial_block,
)

TAPS = 4  # kernel columns one vpdpbusd sums: a 3-wide kernel row gets one zero column
# Accumulator lanes, tried in order, one of which must divide the row. 7 only at stride 2: a
# 7-wide row (MobileNetV2's last stage) leaves 9 of 16 lanes idle, 1.36x the time of float
# accumulation at stride 1 (Zen 5, 2 threads), so ``lower_qdq_to_integer`` keeps those convs
# in float; at stride 2 float accumulation gathers its inputs and takes 1.5x this kernel's.
ROW_LANES = (16, 14, 8, 7)
MAX_ROW = 128  # output columns of one register row: 8 zmm accumulators at most
_HAS_IF_THEN_ELSE = tvm.get_global_func("s_tir.schedule.HasIfThenElse")


def u8_s8_operands(block) -> tuple | None:
    """``(data, weight)`` buffers of a block that accumulates ``uint8 x int8`` into an
    ``int32`` output, else ``None``."""
    found = reduction_operands(block, "int32", "uint8", "int8")
    return found[:2] if found else None


def has_avx512_vnni(target: Target | None) -> bool:
    """Whether ``target`` is an x86 CPU with AVX-512 VNNI (an unknown CPU has not)."""
    if target is None or target.kind.name != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
    if not triple.startswith(("x86_64", "i686", "i386")):
        return False
    try:
        return bool(codegen.llvm_cpu_has_features(["avx512vnni"], target))
    except Exception:  # noqa: BLE001 - an unknown CPU has none
        return False


def depthwise_taps(target: Target | None) -> int | None:
    """The kernel-row width ``target``'s int8 depthwise kernel takes (``lower_qdq_to_integer``
    pads narrower rows with zero weights to it), or ``None`` when it has none: AVX-512 VNNI."""
    return TAPS if has_avx512_vnni(target) else None


def depthwise_dot(lanes: int, stride: int) -> str:
    """The name of the ``dot_Lx4`` intrinsic (module docstring) for ``lanes`` output columns
    ``stride`` pixels apart, registered on first use."""
    name = f"relaycomp_depthwise_dot_{lanes}x{TAPS}_stride_{stride}_vnni"
    if s_tir.TensorIntrin.get(name, allow_missing=True) is None:
        s_tir.TensorIntrin.register(name, _dot_desc(lanes, stride), _dot_vnni(lanes, stride))
    return name


def _window(lanes: int, stride: int) -> int:
    """Input bytes ``lanes`` columns ``stride`` pixels apart read."""
    return stride * (lanes - 1) + TAPS


def _dot_desc(lanes: int, stride: int):
    window = _window(lanes, stride)

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((window,), "uint8", offset_factor=1),
             B: T.Buffer((TAPS,), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:window], B[0:TAPS])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, TAPS):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vi * stride + vk], "int32") * T.cast(B[vk], "int32")

    return desc


def _dot_vnni(lanes: int, stride: int):
    """``vpdpbusd`` on 16 lanes (8 on a ymm register for 8 columns); fewer columns than the
    register's lanes ride in its low lanes, the rest computing column 0 again, unused. Built
    with the IR builder: the shuffle indices are constants."""
    window = _window(lanes, stride)
    width = 8 if lanes == 8 else 16
    with IRBuilder() as builder, build_prim_func():
        a, b, c = (T.arg(name, T.handle()) for name in "abc")
        A = T.match_buffer(a, (window,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (TAPS,), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:window], B[0:TAPS])
            T.writes(C[0:lanes])
            columns = [i if i < lanes else 0 for i in range(width)]
            # The window as two overlapping loads of a legal vector size (LLVM assembles an
            # odd-sized vector byte by byte), at its start and ending at its end; a shuffle
            # has no more lanes than its operands: the pair repeated (loaded once).
            chunk = 1 << (window.bit_length() - 1)
            starts = sorted({0, window - chunk})
            loads = [A.vload([start], f"uint8x{chunk}") for start in starts]

            def position(byte: int) -> int:
                part = len(starts) - 1 if byte >= starts[-1] else 0
                return part * chunk + byte - starts[part]

            quads = tirx.Shuffle(loads * -(-width * TAPS // (chunk * len(starts))),
                                 [position(i * stride + k) for i in columns for k in range(TAPS)])
            weights = T.broadcast(T.reinterpret(B.vload([0], f"int8x{TAPS}"), dtype="int32"),
                                  width)
            acc = C.vload([0], f"int32x{lanes}")
            if lanes != width:
                acc = tirx.Shuffle([acc] * -(-width // lanes), columns)
            total = T.call_llvm_pure_intrin(
                f"int32x{width}", f"llvm.x86.avx512.vpdpbusd.{width * 32}", acc,
                T.reinterpret(quads, dtype=f"int8x{width * TAPS}"),
                T.reinterpret(weights, dtype=f"int8x{width * TAPS}"))
            if lanes != width:
                total = tirx.Shuffle([total], list(range(lanes)))
            T.buffer_store(C, total, [T.ramp(0, 1, lanes)])
    return builder.get()


def _depthwise_shape(block) -> tuple[int, int, int] | None:
    """``(out_width, stride, spatial loops)`` of an int8 NCHW depthwise conv block with
    :data:`TAPS`-wide kernel rows, else ``None``."""
    operands = u8_s8_operands(block)
    if operands is None:
        return None
    data, weight = operands
    if len(data.shape) != 4 or len(weight.shape) != 4 or int(weight.shape[1]) != 1:
        return None
    kinds = "".join("S" if it.iter_type == tirx.IterVar.DataPar else "R"
                    for it in block.iter_vars)
    spatial = len(kinds.rstrip("R"))
    # (n,) c, y, x, (rc,) ry, rx: normalization drops unit loops (the batch, the one channel)
    if kinds not in ("SSSRR", "SSSRRR", "SSSSRR", "SSSSRRR") or int(weight.shape[3]) != TAPS:
        return None
    extents = [it.dom.extent for it in block.iter_vars]
    if not all(isinstance(e, tirx.IntImm) for e in extents):
        return None
    batch = spatial - 3
    channels, width = int(extents[batch]), int(extents[batch + 2])
    if int(weight.shape[0]) != channels or int(data.shape[1]) != channels:
        return None
    if int(extents[-1]) != TAPS or len(kinds) - spatial == 3 and int(extents[-3]) != 1:
        return None
    column = block.iter_vars[batch + 2].var
    loads = [load for load in collect_loads(block.body.value) if load.source.same_as(data)]
    if len(loads) != 1:
        return None
    coefficients = tvm.sym.detect_linear_equation(loads[0].indices[-1], [column])
    if len(coefficients) != 2 or not isinstance(coefficients[0], tirx.IntImm):
        return None
    return width, int(coefficients[0].value), spatial


def row_lanes(width: int, stride: int) -> int | None:
    """The accumulator lanes of a row ``width`` columns wide, ``stride`` input pixels apart
    (:data:`ROW_LANES`), or ``None``."""
    if width > MAX_ROW:
        return None
    lanes = next((lanes for lanes in ROW_LANES if width % lanes == 0), None)
    return None if lanes == 7 and stride == 1 else lanes


def schedule_int8_depthwise(func: tirx.PrimFunc, target: Target,
                            facts: CpuFacts) -> s_tir.Schedule | None:
    """The schedule of the module docstring, or ``None`` when ``func`` does not match."""
    matched = (matched_reduction(func, _depthwise_shape)
               if depthwise_taps(target) is not None else None)
    if matched is None:
        return None
    sch, nest, (width, stride, spatial) = matched
    main = nest.main.block_rv
    lanes = row_lanes(width, stride)
    if lanes is None:
        return None
    kept = [info.block_rv for info in nest.prologue
            if _HAS_IF_THEN_ELSE(sch.get(info.block_rv)) or not inlined(sch, info.block_rv)]
    loops = sch.get_loops(main)
    *outer, y, x = loops[:spatial]
    *channel, ry, rx = loops[spatial:]
    x_outer, x_lane = sch.split(x, [None, lanes])
    sch.reorder(*outer, y, *channel, ry, x_outer, x_lane, rx)
    row = sch.fuse(*outer, y)
    if facts.parallel:
        sch.parallel(row)
    write_back = sch.cache_write(main, 0, "global")
    inline_epilogue(sch, nest)
    sch.reverse_compute_at(write_back, row, preserve_unit_loops=True)
    init = sch.decompose_reduction(main, ry)
    sch.tensorize(x_lane, depthwise_dot(lanes, stride))
    sch.unroll(x_outer)
    for block in (init, write_back):
        sch.vectorize(sch.get_loops(block)[-1])
    for block in kept:
        schedule_spatial_block(sch, block, facts)
    return sch

