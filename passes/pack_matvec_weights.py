"""Pack the constant weight of a matrix-vector product in blocks of columns.

Matches: ``matmul(x, W)`` in fp32 with ``x`` of shape ``[M, K]``, ``M <= MAX_ROWS`` (a
classifier at batch 1), and ``W`` a constant ``[K, N]`` of ``MIN_WEIGHT_BYTES`` or more
(``relaycomp.rewrite.matvec``).
Produces: ``W`` packed as ``[ceil(N / BLOCK), K, BLOCK]`` at compile time, one ``matvec_packed``
kernel summing over it (each parallel iteration streams one contiguous block instead of a few
columns of every row), and a reshape and slice back to ``[M, N]``, which ``FuseOps`` merges with
the product's epilogue (a bias add).
Keeps: the function signature; outputs equal to the product's up to fp32 rounding (each sum runs
over ``k`` in order, as before; the zero columns are sliced off).
Runs: stage ``legalize``, before ``legalize_ops``, for CPU targets (a bf16 build's classifier
is packed by ``convert_to_bf16``, in bf16). Reports: ``packed`` (products packed).
"""

from __future__ import annotations

import tvm
from tvm import relax

from relaycomp.ir import mutate_relax_functions, static_shape, tensor_bytes
from relaycomp.registry import register_pass
from relaycomp.rewrite.matvec import call_matvec, fits, pack_columns

OP = "relax.matmul"


@relax.expr_functor.mutator
class _PackMatvecWeights(relax.PyExprMutator):
    """``matmul(x, constant)`` over few rows -> :func:`call_matvec`."""

    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.packed = 0

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == OP):
            return call
        data, weight = call.args
        shape = static_shape(data)
        if not (isinstance(weight, tvm.ir.expr.GenericConst) and shape is not None and len(shape) == 2
                and {str(data.ty.dtype), str(weight.ty.dtype), str(call.ty.dtype)}
                == {"float32"}
                and fits(shape[0], static_shape(weight) or (), tensor_bytes(weight.ty))):
            return call
        self.packed += 1
        value = weight.value.numpy()
        return call_matvec(self.builder_, data, pack_columns(value), value.shape[1])


def pack_matvec(mod: tvm.IRModule, report: dict | None = None) -> tvm.IRModule:
    """``mod`` with the weights of its matrix-vector products packed (module docstring)."""
    mutator = _PackMatvecWeights(mod)
    mutated = mutate_relax_functions(mod, mutator)
    if report is not None and mutator.packed:
        report["packed"] = mutator.packed
    return relax.transform.DeadCodeElimination()(mutated) if mutator.packed else mod


@register_pass("pack_matvec_weights", stage="legalize", kinds=("llvm",))
def pack_matvec_weights(target: tvm.target.Target | None = None, report: dict | None = None,
                        ) -> tvm.transform.Pass:
    """Give matrix-vector products a weight packed in blocks of columns."""

    @tvm.transform.module_pass(opt_level=0, name="pack_matvec_weights")
    def _pack(mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return pack_matvec(mod, report)

    return _pack
