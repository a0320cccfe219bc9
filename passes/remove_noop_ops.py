"""Drop operations that do nothing: identity reshapes, transposes and casts; x+0 and x*1.

Matches: ``reshape``/``permute_dims``/``astype`` whose result has exactly the input's type (same
shape and dtype, and for transposes the identity permutation), and ``add``/``subtract`` of an
all-zero constant or ``multiply``/``divide`` by an all-one constant that does not broadcast the
input to a larger shape. Produces: the input itself. Keeps: outputs bit-identical, the signature.
Runs: stage ``simplify`` (exported graphs are full of these after shape folding).
Reports: rewrites per rule, into the runner's report dict.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.relax.dpl import is_const, is_op, wildcard

from relaycomp.registry import register_pass
from relaycomp.rewrite.rules import Rule, rule_pass

_x, _const = wildcard(), is_const()


def _same_type(expr, matches) -> bool:
    return str(expr.ty) == str(matches[_x].ty)


def _to_input(expr, matches):
    return matches[_x] if _same_type(expr, matches) else expr


def _identity_permutation(expr, matches):
    axes = expr.attrs.axes
    if axes is None:  # no axes: reverse them, the identity only up to rank 1
        rank = getattr(matches[_x].ty, "ndim", -1)
        return _to_input(expr, matches) if 0 <= rank <= 1 else expr
    if [int(a) for a in axes] != list(range(len(axes))):
        return expr
    return _to_input(expr, matches)


def _constant_is(value: float):
    def check(matches) -> bool:
        return bool(np.all(matches[_const].value.numpy() == value))
    return check


RULES = (
    Rule("identity_reshape", is_op("relax.reshape")(_x, wildcard()), _to_input),
    Rule("identity_transpose", is_op("relax.permute_dims")(_x), _identity_permutation),
    Rule("identity_cast", is_op("relax.astype")(_x), _to_input),
    Rule("add_zero", is_op("relax.add")(_x, _const) | is_op("relax.add")(_const, _x),
         _to_input, _constant_is(0)),
    Rule("subtract_zero", is_op("relax.subtract")(_x, _const), _to_input, _constant_is(0)),
    Rule("multiply_one", is_op("relax.multiply")(_x, _const) | is_op("relax.multiply")(_const, _x),
         _to_input, _constant_is(1)),
    Rule("divide_one", is_op("relax.divide")(_x, _const), _to_input, _constant_is(1)),
)


@register_pass("remove_noop_ops", stage="simplify")
def remove_noop_ops(target: tvm.target.Target | None = None, report: dict | None = None,
                    ) -> tvm.transform.Pass:
    """Drop identity reshapes/transposes/casts and x+0, x*1."""
    return rule_pass("remove_noop_ops", RULES, report)
