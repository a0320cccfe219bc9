"""Fuse user-registered op patterns into single kernels (TVM's FuseOpsByPattern, no BYOC).

Matches: every pattern registered with :func:`register_fusion_pattern`, in registration order
(built on TVM's dataflow pattern language, ``tvm.relax.dpl``). Produces: one primitive Relax
function per match, which ``legalize`` lowers and ``fuse_tir`` turns into one kernel — so a user
can fuse what the stock ``FuseOps`` keeps apart (e.g. two reductions) in a few lines::

    from tvm.relax.dpl import is_op, wildcard
    from relaycomp.passes.fuse_by_pattern import register_fusion_pattern

    x, w, b = wildcard(), wildcard(), wildcard()
    register_fusion_pattern(
        "dense_bias_relu",
        is_op("relax.nn.relu")(is_op("relax.add")(is_op("relax.matmul")(x, w), b)))

Keeps: numerics and the signature. Runs: stage ``simplify`` (end), before ``legalize``.
Reports: groups fused per pattern, via :func:`fused_groups`. No pattern registered: no change.
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import relax
from tvm.relax.dpl import DFPattern

from relaycomp.registry import Registry, register_pass

FUSION_PATTERNS: Registry[relax.transform.FusionPattern] = Registry("fusion pattern")


def register_fusion_pattern(name: str, pattern: DFPattern,
                            check: Callable | None = None) -> None:
    """Fuse every match of ``pattern`` into one kernel; ``check(context) -> bool`` may veto a
    match (``context`` is TVM's ``PatternCheckContext``)."""
    FUSION_PATTERNS.add(name, relax.transform.FusionPattern(name, pattern, {}, check))


def fused_groups(mod: tvm.IRModule) -> dict[str, int]:
    """Pattern name → number of fused groups present in ``mod``."""
    counts: dict[str, int] = {}
    for func in mod.functions.values():
        if isinstance(func, relax.Function) and func.attrs and "Composite" in func.attrs:
            name = str(func.attrs["Composite"])
            counts[name] = counts.get(name, 0) + 1
    return counts


@register_pass("fuse_by_pattern", stage="simplify")
def fuse_by_pattern(target: tvm.target.Target | None = None) -> tvm.transform.Pass:
    """Fuse the registered patterns."""

    @tvm.transform.module_pass(opt_level=0, name="fuse_by_pattern")
    def run(mod: tvm.IRModule, ctx) -> tvm.IRModule:
        patterns = [FUSION_PATTERNS.get(name) for name in FUSION_PATTERNS.names()]
        if not patterns:
            return mod
        # Constants stay outside: FuseTIR cannot take tensor constants inside primitives.
        return relax.transform.FuseOpsByPattern(patterns, bind_constants=False,
                                                annotate_codegen=False)(mod)

    return run
