"""``is_nan`` on a value's bits: the same answer as ``isnan`` for every float class, and a loop
vectorized over it stays vector through TVM's ``VectorizeLoop`` (its ``isnan`` intrinsic has no
vector rule: the loop would be scalarized, ``*_s``)."""

import numpy as np
import pytest
import tvm
from helpers import scalarized_loops
from tvm import s_tir, te, tirx

from relaycomp.rewrite.float_bits import is_nan


def _nan_flags(dtype: str) -> tvm.IRModule:
    """``y[i] = is_nan(x[i])`` over 64 values, the inner 16 vectorized."""
    x = te.placeholder((64,), dtype, name="x")
    y = te.compute((64,), lambda i: tirx.Select(is_nan(x(i)), tirx.const(1, "int8"),
                                                tirx.const(0, "int8")), name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    (loop,) = sch.get_loops(sch.get_sblock("y"))
    sch.vectorize(sch.split(loop, [None, 16])[1])
    return sch.mod


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_is_nan_answers_as_numpy_for_every_class_of_value(dtype):
    info = np.finfo(dtype)
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -2.5, info.max,
                        -info.max, info.tiny, info.tiny / 4, -info.tiny / 4], dtype)
    nan_bits = np.array([0x7C01, 0xFE00, 0x7FFF], "uint16") if dtype == "float16" else None
    values = np.resize(special, 64)
    if nan_bits is not None:  # signalling and negative NaNs with other payloads
        values[-3:] = nan_bits.view("float16")
    flags = tvm.runtime.tensor(np.zeros(64, "int8"))
    tvm.compile(_nan_flags(dtype), {"kind": "llvm"})(tvm.runtime.tensor(values), flags)
    np.testing.assert_array_equal(flags.numpy(), np.isnan(values))


def test_a_loop_over_is_nan_stays_vectorized():
    assert not scalarized_loops(_nan_flags("float32"))
