"""Replace ``max``/``min`` over a stack of tensors with elementwise ``maximum``/``minimum``.

The ONNX importer lowers ``Max(a, b, ...)``/``Min(...)`` to ``max(stack((a, b, ...)), axis)``:
a copy of every input into one tensor, then a reduction, whose ``acc > x ? acc : x`` combiner
drops a NaN unless it comes last (onnxruntime propagates a NaN from any input).

Matches: ``max``/``min`` over exactly the new axis of a ``stack`` of an inline tuple, without
``keepdims``. Produces: ``maximum(maximum(a, b), ...)`` (``minimum`` for ``min``): no copy, and
elementwise kernels that ``propagate_nan_in_max_min`` makes NaN-propagating.
Keeps: every result, the signature. Runs: stage ``simplify``, before the channel analysis of
``prune`` (which reads ``maximum``/``minimum`` as ONNX ``Max``/``Min``).
Reports: rewrites per rule, into the runner's report dict.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, wildcard

from relaycomp.registry import register_pass
from relaycomp.rewrite.rules import Rule, rule_pass

_tensors = wildcard()
_stack = is_op("relax.stack")(_tensors)


def _over_the_stacked_axis(reduced: relax.Call, stacked: relax.Call) -> bool:
    axes, shape = reduced.attrs.axis, getattr(stacked.ty, "shape", None)
    if reduced.attrs.keepdims or axes is None or len(axes) != 1 or shape is None:
        return False
    return int(axes[0]) % len(shape) == int(stacked.attrs.axis) % len(shape)


def _elementwise(combine):
    def rewrite(expr, matches):
        tensors = matches[_tensors]
        if (not isinstance(tensors, relax.Tuple)
                or not _over_the_stacked_axis(expr, matches[_stack])):
            return expr  # declines: a reduction over other axes too, or a tuple variable
        fields = list(tensors.fields)
        result = fields[0]
        for tensor in fields[1:]:
            result = combine(result, tensor)
        return result
    return rewrite


RULES = (
    Rule("max_of_stack", is_op("relax.max")(_stack), _elementwise(relax.op.maximum)),
    Rule("min_of_stack", is_op("relax.min")(_stack), _elementwise(relax.op.minimum)),
)


@register_pass("unstack_max_min", stage="simplify")
def unstack_max_min(target: tvm.target.Target | None = None, report: dict | None = None,
                    ) -> tvm.transform.Pass:
    """max/min over a stack of tensors -> elementwise maximum/minimum."""
    return rule_pass("unstack_max_min", RULES, report)
