"""Rewrite rules as data: a pattern, a guard and a rewrite side by side.

Built on TVM's dataflow pattern language (``tvm.relax.dpl``)::

    x, w = wildcard(), is_const()
    Rule("double_to_mul", is_op("relax.add")(x, x), rewrite=lambda call, m: R.multiply(...))

:func:`rule_pass` turns rules into a module pass that rewrites every Relax function, removes the
bindings the rewrites left unused, and counts how often each rule fired.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax.dpl import DFPattern, rewrite_call


def _always(matches) -> bool:
    return True


@dataclass(frozen=True)
class Rule:
    """``rewrite(matched_expr, matches) -> Expr`` replaces what ``pattern`` matched when
    ``check(matches)`` holds; returning the matched expression unchanged declines."""

    name: str
    pattern: DFPattern
    rewrite: Callable
    check: Callable = _always


def apply_rules(func: relax.Function, rules: Sequence[Rule], fired: dict[str, int],
                ) -> relax.Function:
    """Rewrite ``func`` with each rule in turn; unused bindings are removed afterwards."""
    for rule in rules:
        def rewrite(expr, matches, rule=rule):
            if not rule.check(matches):
                return expr
            new = rule.rewrite(expr, matches)
            if new is not expr:
                fired[rule.name] = fired.get(rule.name, 0) + 1
            return new

        func = rewrite_call(rule.pattern, rewrite, func)
    return relax.analysis.remove_all_unused(func)


def rule_pass(name: str, rules: Sequence[Rule], report: dict | None = None,
              ) -> tvm.transform.Pass:
    """A module pass applying ``rules`` to every Relax function of the module; how often each
    rule fired goes into ``report`` (the dict the pass runner hands the pass), by rule name."""

    @tvm.transform.module_pass(opt_level=0, name=name)
    def run(mod: tvm.IRModule, ctx) -> tvm.IRModule:
        fired = report if report is not None else {}
        fired.clear()
        updates = {gvar: apply_rules(func, rules, fired)
                   for gvar, func in mod.functions_items() if isinstance(func, relax.Function)}
        mod = mod.clone() if hasattr(mod, "clone") else tvm.IRModule(dict(mod.functions))
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return run
