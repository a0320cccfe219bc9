"""Lower activation layout changes to kernels written over their output, so that they fuse.

Matches: ``layout_transform(x, index_map)`` with a static shape - the layout changes
``plan_conv_layout`` leaves where a chain of blocked convs starts or ends (``NCHW`` to
``NCHW[b]c`` and back, channels padded with ``pad_value``).
Produces: one ``call_tir`` each of :func:`layout_transform_gather`, which computes every output
element from the input element the index map sends there (``index_map``'s inverse), or the pad
value where none does. TVM's own lowering iterates the *input* and writes through the map: a
scatter (its stores 16 floats apart in a blocked layout) that ``FuseOps`` must leave alone
(opaque), so every change was a kernel of its own that wrote one element per store. Written
over the output, the kernel is injective: ``FuseOps`` merges it with the concat/resize/slice
that makes its input or the reduction/elementwise ops that read it (PP-OCRv4 det's neck: four
changes of 96 x 160 x 160 tensors, 19% of the fp32 model, become parts of other kernels), and
each vector it stores is one contiguous run of the output.
Keeps: the function signature; outputs identical (a copy, element for element).
Runs: stage ``legalize``, before ``legalize_ops``, for CPU targets. Reports: ``lowered``.
"""

from __future__ import annotations

import functools

import tvm
from tvm import relax, te, tirx

from relaycomp.ir import mutate_relax_functions
from relaycomp.registry import register_pass

OP = "relax.layout_transform"
KERNEL = "layout_transform"


def layout_transform_gather(data: te.Tensor, index_map: tirx.IndexMap, pad_value,
                            inverse: tuple | None = None) -> te.Tensor:
    """``out[j] = data[index_map^-1(j)]``, or ``pad_value`` where ``j`` is padding;
    ``inverse`` is ``index_map.non_surjective_inverse`` of ``data``'s shape, if known."""
    inverse, padding = inverse or index_map.non_surjective_inverse(data.shape)
    out_shape = index_map.map_shape(list(data.shape))

    def element(*indices):
        value = data[tuple(inverse.map_indices(indices))]
        if isinstance(padding, tirx.IntImm) and not padding.value:
            return value
        is_pad = tirx.IndexMap(inverse.initial_indices, [padding], None).map_indices(indices)[0]
        return tirx.if_then_else(is_pad, tirx.const(pad_value, data.dtype), value)

    return te.compute(out_shape, element, name=KERNEL, tag="injective")


@relax.expr_functor.mutator
class _TransformsToGathers(relax.PyExprMutator):
    """``layout_transform`` with static shapes -> :func:`layout_transform_gather`."""

    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.lowered = 0

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == OP):
            return call
        data_type = call.args[0].ty
        if not isinstance(data_type, relax.TensorType) or data_type.shape is None or not all(
                isinstance(dim, tirx.IntImm) for dim in data_type.shape.values):
            return call
        try:  # a map without an inverse (none that ConvertLayout makes) keeps TVM's lowering
            inverse = call.attrs.index_map.non_surjective_inverse(data_type.shape.values)
        except Exception:  # noqa: BLE001 - TVM raises its own error types here
            return call
        pad_value = call.attrs.pad_value
        pad = pad_value.value if pad_value is not None else (
            0 if str(data_type.dtype).startswith(("int", "uint")) else 0.0)
        self.lowered += 1
        kernel = functools.partial(layout_transform_gather, index_map=call.attrs.index_map,
                                   pad_value=pad, inverse=tuple(inverse))  # bound, not passed
        return self.builder_.call_te(kernel, call.args[0], primfunc_name_hint=KERNEL)


def lower_layout_transforms(mod: tvm.IRModule, report: dict | None = None) -> tvm.IRModule:
    """``mod`` with every static ``layout_transform`` a gather kernel (module docstring)."""
    mutator = _TransformsToGathers(mod)
    mutated = mutate_relax_functions(mod, mutator)
    if report is not None and mutator.lowered:
        report["lowered"] = mutator.lowered
    return relax.transform.DeadCodeElimination()(mutated) if mutator.lowered else mod


@register_pass("legalize_layout_transforms", stage="legalize", kinds=("llvm",))
def legalize_layout_transforms(target: tvm.target.Target | None = None,
                               report: dict | None = None) -> tvm.transform.Pass:
    """Turn static ``layout_transform`` ops into kernels written over their output."""

    @tvm.transform.module_pass(opt_level=0, name="legalize_layout_transforms")
    def _legalize(mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return lower_layout_transforms(mod, report)

    return _legalize
