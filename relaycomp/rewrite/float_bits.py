"""Float predicates written on a value's bits, so TVM's ``VectorizeLoop`` keeps them vector.

TVM 0.27's vectorizer has no rule for the ``tirx.isnan`` intrinsic: a vectorized loop that
calls it is scalarized whole (its loop variable renamed ``*_s``), and LLVM re-vectorizes such a
loop only sometimes. A bf16 conv's epilogue (``round_to_bf16``'s NaN test) ran one lane at a
time, with a branch per lane: MobileNetV2's bf16 projection convs spent most of their time
there. The integer comparison below is the same test and vectorizes like any other.
"""

from __future__ import annotations

import tvm
from tvm import tirx

# dtype -> (the unsigned type of its bits, its exponent mask): NaN is an all-ones exponent with a
# nonzero mantissa, so ``exponent mask < bits & ~sign`` exactly when the value is NaN.
_LAYOUTS = {
    "float16": ("uint16", 0x7C00),
    "float32": ("uint32", 0x7F800000),
    "float64": ("uint64", 0x7FF0000000000000),
}


def is_nan(value: tirx.PrimExpr) -> tirx.PrimExpr:
    """``isnan(value)`` as a comparison of its bits (float16/32/64, scalar or vector; other
    dtypes: ``isnan``)."""
    dtype = tvm.DataType(str(value.ty))
    layout = _LAYOUTS.get(str(dtype.with_lanes(1)))
    if layout is None:
        return tirx.isnan(value)
    bits_type, exponent = layout
    sign = 1 << (tvm.DataType(bits_type).bits - 1)
    bits = tirx.reinterpret(lanes_of(bits_type, dtype.lanes), value)
    magnitude = bits & constant(sign - 1, bits_type, dtype.lanes)
    return tirx.LT(constant(exponent, bits_type, dtype.lanes), magnitude)


def lanes_of(dtype: str, lanes: int) -> str:
    """``dtype`` with ``lanes`` lanes (``uint32``, 16 -> ``uint32x16``)."""
    return dtype if lanes == 1 else f"{dtype}x{lanes}"


def constant(number: int, dtype: str, lanes: int = 1) -> tirx.PrimExpr:
    """``number`` as a ``dtype`` scalar, or broadcast to ``lanes`` lanes."""
    scalar = tirx.const(number, dtype)
    return scalar if lanes == 1 else tirx.Broadcast(scalar, lanes)
