"""A user's own pass, never seen by relaycomp: count the ``conv2d`` calls of ``main`` and record
the number as a function attribute (visible with ``--dump-ir``).

Use it from the command line::

    relaycomp compile model.onnx -o model.so --pass examples/my_pass.py:count_convs@simplify

or from Python::

    from relaycomp import register_pass
    register_pass("count_convs", stage="simplify")(count_convs)

A pass is a function ``(mod: IRModule) -> IRModule``, a ``tvm.transform.Pass``, or a factory
``(target) -> Pass`` registered with ``@register_pass``. It must return a well-formed module with
``main``'s signature unchanged; relaycomp checks both after it runs and names it if not.
"""

import tvm
from tvm import relax


def count_convs(mod: tvm.IRModule) -> tvm.IRModule:
    """Record how many ``conv2d`` calls ``main`` makes as the function attribute ``conv_count``."""
    count = 0

    def visit(expr):
        nonlocal count
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            count += expr.op.name == "relax.nn.conv2d"

    relax.analysis.post_order_visit(mod["main"], visit)
    updated = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    updated["main"] = mod["main"].with_attr("conv_count", count)
    return updated
