"""Replace an elementwise function of one 8-bit tensor by a table lookup.

Matches: a uint8/int8 tensor computed from one other uint8/int8 tensor by elementwise ops
(quantize, dequantize, arithmetic, min/max/clip, activations, casts) and constants alone, with at
least two quantize ops on the way and intermediate values nothing else reads
(``relaycomp.rewrite.byte_tables``): a QDQ model's activation between two quantized convs, such
as PP-OCRv4 det's hardswish (seven quantize/dequantize round trips per element).
Produces: one ``lookup_table`` kernel: ``out[i] = table[position(i), in[i]]``, the table
(256 values per position of the per-channel constants) computed at compile time by running the
chain itself on every input value. It is marked elementwise, so ``FuseOps`` puts it in the
kernel that makes its input (the conv before it) as the chain was.
Keeps: the function signature; outputs equal to the chain's as TVM computes it on this machine
(the table is that computation; a target whose float rounding differed at a tie could differ by
one step).
Runs: stage ``quantize``, after ``lower_qdq_to_integer``. Reports: ``tabulated`` (chains),
``quantize_ops`` (quantize ops they held).
"""

from __future__ import annotations

import tvm
from tvm import relax, te

from relaycomp.ir import emit_rebound, mutate_relax_functions, static_shape
from relaycomp.registry import register_pass
from relaycomp.rewrite.byte_tables import find_chains, flatten_table, lookup, tabulate

ELEMWISE = 0  # TVM's kElemWise op pattern


@relax.expr_functor.mutator
class _ChainsToLookups(relax.PyExprMutator):
    """The output binding of each chain -> a ``lookup_table`` kernel of its source."""

    def __init__(self, mod: tvm.IRModule, tables: dict):
        super().__init__(mod)
        self.tables = tables  # output var -> (chain, flattened table)

    def visit_var_binding_(self, binding):
        found = self.tables.get(binding.var)
        if found is None:
            super().visit_var_binding_(binding)
            return
        chain, table = found
        source = self.visit_expr(chain.source)
        data = te.placeholder(static_shape(chain.output), str(chain.source.ty.dtype), "data")
        values = te.placeholder(table.shape, str(table.dtype), "table")
        result = lookup(data, values, chain.varying, str(chain.source.ty.dtype) == "int8")
        func = te.create_prim_func([data, values, result]).with_attr(
            "op_pattern", ELEMWISE).without_attr("global_symbol")
        gvar = self.builder_.add_func(func, "lookup_table")
        call = relax.call_tir(gvar, [source, relax.const(table)], chain.output.ty)
        self.set_var_remap(binding.var, emit_rebound(self.builder_, binding.var, call))


def tabulate_chains(mod: tvm.IRModule, report: dict | None = None) -> tvm.IRModule:
    """``mod`` with its tabulable chains looked up (module docstring); ``mod`` if none."""
    chains = [chain for _, func in mod.functions_items() if isinstance(func, relax.Function)
              for chain in find_chains(func)]
    if not chains:
        return mod
    try:
        computed = tabulate(chains)
    except Exception:  # noqa: BLE001 - a table is an optimization, never a failed build
        return mod
    tables = {chain.output: (chain, flatten_table(table, chain.varying))
              for chain, table in zip(chains, computed)}
    mutated = mutate_relax_functions(mod, _ChainsToLookups(mod, tables))
    if report is not None:
        report["tabulated"] = len(chains)
        report["quantize_ops"] = sum(b.value.op.name == "relax.quantize"
                                     for chain in chains for b in chain.bindings)
    return relax.transform.DeadCodeElimination()(mutated)


@register_pass("tabulate_byte_functions", stage="quantize")
def tabulate_byte_functions(target: tvm.target.Target | None = None,
                            report: dict | None = None) -> tvm.transform.Pass:
    """Turn elementwise functions of one 8-bit tensor into table lookups."""

    @tvm.transform.module_pass(opt_level=0, name="tabulate_byte_functions")
    def _tabulate(mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return tabulate_chains(mod, report)

    return _tabulate
