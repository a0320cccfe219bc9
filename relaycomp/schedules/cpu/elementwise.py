"""Rules of ``schedule_cpu_loops`` for data-parallel functions and the last-resort fallback.

- :class:`InjectiveRule`: functions made only of injective blocks (elementwise, broadcast, pad,
  transpose, reshape, concat, layout transforms). Producers are inlined into consumers where
  possible; every remaining block gets fused-outer-parallel / vectorized-inner loops; a padded
  block that reads several tensors gets the pad value from a fill block of its own; a concat
  along a blocked axis gets a block copy per channel block (and per piece-aligned vector).
- :class:`ParallelOuterRule`: anything else with leading spatial loops (reductions no other rule
  took, symbolic shapes): those loops are fused and made parallel, injective blocks vectorized.
- :class:`GuardedRule`: runs a TVM dlight rule (e.g. ``dlight.cpu.Reduction``)
  so that an exception inside it means "not applicable" instead of a failed build.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule, try_inline
from tvm.target import Target

from relaycomp.schedules.cpu.common import (
    MIN_PARALLEL_ELEMENTS,
    CpuFacts,
    CpuRule,
    collect_loads,
    schedule_spatial_block,
    uses_var,
)

_IF_THEN_ELSE = tvm.ir.Op.get("prim.if_then_else")
MAX_PIECE_LOOP = 16  # channel blocks of a concat given a block copy each (:func:`_piece_selecting_loop`)


class InjectiveRule(CpuRule):
    """Inline, then parallelize and vectorize every block of an all-injective function."""

    name = "injective"

    def schedule(self, sch: s_tir.Schedule, facts: CpuFacts) -> s_tir.Schedule | None:
        """Schedule an all-injective function; ``None`` if any block reduces - also over a
        reduction axis of extent 1 (a ``[m, 1] @ [1, n]`` matmul): its block keeps an ``init``,
        and inlining a consumer into it adds that consumer's other operands twice."""
        infos = normalize_prim_func(sch)
        if not infos or not all(info.is_injective() for info in infos):
            return None
        if any(sch.get(info.block_rv).init is not None for info in infos):
            return None
        for info in try_inline(sch, infos):
            fill = _split_off_padding(sch, info.block_rv)
            if fill is not None:
                schedule_spatial_block(sch, fill, facts)
            pieces = _piece_selecting_loop(sch, info)
            schedule_spatial_block(sch, info.block_rv, facts,
                                   partitioned=pieces.loop if pieces else None,
                                   piece_lanes=pieces.lanes if pieces else 0)
        return sch


@dataclass(frozen=True)
class PieceLoop:
    """Where a blocked concat's pieces change: ``loop`` (the channel blocks) gets a block copy
    per iteration, and the vector loop runs ``lanes`` lanes at a time when a piece starts inside
    a block (24-channel pieces in ``NCHW16c``: 8), 0 when pieces start on block boundaries."""

    loop: s_tir.schedule.LoopRV
    lanes: int


def _piece_selecting_loop(sch: s_tir.Schedule, info) -> PieceLoop | None:
    """For a concat along a blocked axis (``NCHW16c`` pieces of 24 channels: which piece a
    lane reads depends on the channel block *and* the lane), the channel-block loop, to give a
    block copy per iteration just outside the vector loop: each copy's piece boundaries are
    then constants, its selects fold away and it reads plain vectors (PP-OCRv4 det's
    resize-concat kernel: 1.93 ms a lane at a time, 0.14 ms now). Else ``None``: a condition
    the vector lane does not enter is uniform across the vector.

    ``info`` is the block's dlight ``BlockInfo`` (one loop per block iterator). The loop is the
    first (outermost) one, other than the lane's, whose iterator one comparison of a select's
    condition reads with the lane's, in its index arithmetic (a comparison of loaded values -
    ``isnan(x)``, ``x > 0`` - selects per element, not per piece), with a static extent of at
    most :data:`MAX_PIECE_LOOP`. Its lanes: the largest divisor of the lane loop's extent that
    divides every constant of those comparisons (piece starts at 24, 48, 72 of a 16-lane block:
    8), so that no vector straddles two pieces - TVM's vectorizer then proves each condition
    uniform across the vector, where one straddling vector scalarizes the whole loop."""
    store = sch.get(info.block_rv).body
    if not isinstance(store, tirx.BufferStore) or len(info.iters) < 2:
        return None
    conditions = [comparison for condition in _select_conditions(store.value)
                  for comparison in _comparisons(condition)
                  if uses_var(comparison, info.iters[-1].var) and not collect_loads(comparison)]
    for it in info.iters[:-1]:
        if (isinstance(it.dom, int) and 1 < it.dom <= MAX_PIECE_LOOP
                and any(uses_var(condition, it.var) for condition in conditions)):
            return PieceLoop(it.loop_rv, _piece_lanes(conditions, info.iters[-1].dom))
    return None


def _piece_lanes(conditions: list[tirx.PrimExpr], extent) -> int:
    """The lanes of a vector that stays inside one piece: the gcd of the lane loop's static
    ``extent`` and the integer constants of ``conditions``; 0 when that is ``extent`` itself
    (or the extent is symbolic) - no split needed - or under 4 lanes, not worth a vector."""
    if not isinstance(extent, int):
        return 0
    constants: list[int] = []
    for condition in conditions:
        tvm_ffi.structural_walk(condition, (tirx.IntImm, lambda imm: constants.append(
            abs(int(imm.value)))))
    lanes = math.gcd(extent, *constants)
    return lanes if 4 <= lanes < extent else 0


def _comparisons(condition: tirx.PrimExpr) -> list[tirx.PrimExpr]:
    """``condition`` split at its ``&&`` and ``||``: a padding's ``1 <= y && 1 <= x`` tests each
    index alone, where a blocked concat's ``72 <= c * 16 + lane`` tests both in one."""
    if isinstance(condition, (tirx.And, tirx.Or)):
        return _comparisons(condition.a) + _comparisons(condition.b)
    return [condition]


def _select_conditions(value) -> list[tirx.PrimExpr]:
    """The conditions of every ``Select`` and ``if_then_else`` in ``value``."""
    found: list[tirx.PrimExpr] = []
    tvm_ffi.structural_walk(value, (tirx.Select, lambda node: found.append(node.condition)))
    tvm_ffi.structural_walk(value, (tvm.ir.expr.Call, lambda node: found.append(node.args[0])
                                    if node.op.same_as(_IF_THEN_ELSE) else None))
    return found


def _split_off_padding(sch: s_tir.Schedule, block_rv) -> s_tir.schedule.SBlockRV | None:
    """For a padded block that reads several tensors (a concat padded for the next conv), a
    block of its own filling the pad value (a memset), the padded block then writing only the
    interior, without the bounds test per element that kept LLVM from vectorizing it; returns
    the fill block, or ``None`` (a one-input pad vectorizes as it is: measured slower split)."""
    store = sch.get(block_rv).body
    if not isinstance(store, tirx.BufferStore):
        return None
    sources = {load.source for load in collect_loads(store.value)}
    if len(sources) < 2:
        return None
    try:
        return sch.decompose_padding(block_rv, sch.get_loops(block_rv)[0])
    except Exception:  # noqa: BLE001 - not a padding pattern
        return None


class ParallelOuterRule(CpuRule):
    """Fuse and parallelize the leading spatial loops of every block (vectorize injective ones)."""

    name = "parallel_outer"

    def schedule(self, sch: s_tir.Schedule, facts: CpuFacts) -> s_tir.Schedule | None:
        """Parallelize what can be; ``None`` if no block has a leading spatial loop."""
        infos = normalize_prim_func(sch)
        if not infos or not facts.parallel:
            return None
        changed = False
        for info in infos:
            if info.is_injective():
                schedule_spatial_block(sch, info.block_rv, facts)
                changed = True
                continue
            kinds = info.dom_kind()
            leading = len(kinds) - len(kinds.lstrip("S"))
            loops = [it.loop_rv for it in info.iters[:leading]]
            if not loops or _static_product(info.dom()[:leading]) == 1:
                continue
            fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
            work = _static_product(info.dom())
            if work is None or work >= MIN_PARALLEL_ELEMENTS:
                sch.parallel(fused)
                changed = True
        return sch if changed else None


class GuardedRule(CpuRule):
    """Adapts any dlight ``ScheduleRule``: a rule that raises is a rule that does not apply."""

    def __init__(self, name: str, rule: ScheduleRule):
        self.name = name
        self.rule = rule

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        """Run the wrapped rule; ``None`` on any exception or unsupported target."""
        if not self.is_target_available(target):
            return None
        try:
            result = self.rule.apply(func, target, tunable)
        except Exception:  # noqa: BLE001 - a crashing rule must not fail the build
            return None
        return result if isinstance(result, s_tir.Schedule) else None


def _static_product(extents) -> int | None:
    product = 1
    for extent in extents:
        if not isinstance(extent, int):
            return None
        product *= extent
    return product
