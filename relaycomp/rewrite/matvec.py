"""A matrix-vector product over a constant weight packed in blocks of columns.

A classifier's product of one row of features with a ``[K, N]`` weight is bound by reading the
weight. Read as ``W[k, n]``, each parallel iteration of the kernel takes a few columns: a short
piece of every one of the K rows, ``N`` floats apart. Packed as ``[ceil(N / BLOCK), K, BLOCK]``
(the last block's missing columns zero), an iteration streams one contiguous block and keeps its
``BLOCK`` sums in vector registers. MobileNetV2's 1280 x 1000 classifier, inside the model on a
Zen 4 with 2 threads: 0.27 ms read as ``W[k, n]``; alone, its weight out of cache, 0.46-0.62 ms
against 0.24-0.29 ms packed.

:func:`call_matvec` emits the product: a kernel over the blocks (``[M, blocks, BLOCK]``) and a
reshape and slice back to ``[M, N]``, which ``FuseOps`` merges with an epilogue (a bias add).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from tvm import relax, te

# Columns per block: four AVX-512 vectors of fp32 sums, eight AVX2 ones (the schedule splits a
# block that needs more vectors than a tile holds, as on NEON).
BLOCK = 64
# Products of at most this many rows: more rows share each weight vector in the plain layout.
MAX_ROWS = 4
# A weight smaller than this stays where the kernel before left it (in cache) and is read fast.
MIN_WEIGHT_BYTES = 256 << 10
KERNEL = "matvec_packed"


def fits(rows: int | None, weight_shape, weight_bytes: int) -> bool:
    """Whether a product of ``rows`` rows (``None``: unknown) with a constant ``weight_shape``
    weight of ``weight_bytes`` bytes gains from packing: few rows, a large 2-D weight, and at
    least two blocks of columns (one per thread of a two-core machine)."""
    return (rows is not None and rows <= MAX_ROWS and len(weight_shape) == 2
            and weight_bytes >= MIN_WEIGHT_BYTES and weight_shape[1] > BLOCK)


def pack_columns(weight: np.ndarray) -> np.ndarray:
    """``[K, N]`` -> ``[ceil(N / BLOCK), K, BLOCK]``; the last block's missing columns zero."""
    depth, columns = weight.shape
    blocks = -(-columns // BLOCK)
    padded = np.zeros((depth, blocks * BLOCK), weight.dtype)
    padded[:, :columns] = weight
    return np.ascontiguousarray(padded.reshape(depth, blocks, BLOCK).transpose(1, 0, 2))


def matvec_blocks(data: te.Tensor, packed: te.Tensor,
                  widen: Callable[[te.Tensor], te.Tensor] | None = None) -> te.Tensor:
    """``out[m, b, j] = sum(data[m, k] * packed[b, k, j])``: ``[M, blocks, BLOCK]``, in fp32;
    ``widen`` turns a packed element into fp32 (bf16 bits), when it is not fp32 already."""
    k = te.reduce_axis((0, packed.shape[1]), name="k")
    widened = widen or (lambda value: value)
    return te.compute(
        (data.shape[0], packed.shape[0], packed.shape[2]),
        lambda m, b, j: te.sum(data[m, k] * widened(packed[b, k, j]), axis=k),
        name=KERNEL)


def call_matvec(builder: relax.BlockBuilder, data: relax.Expr, packed: np.ndarray,
                columns: int, widen: Callable[[te.Tensor], te.Tensor] | None = None,
                ) -> relax.Expr:
    """``data @ weight`` (``data``: ``[M, K]``) for ``packed = pack_columns(weight)`` of a
    weight with ``columns`` columns: the packed kernel, then a reshape and slice to ``[M, N]``."""
    rows = data.ty.shape[0]
    kernel = functools.partial(matvec_blocks, widen=widen)  # bound: call_te takes tensors
    blocks = builder.emit(builder.call_te(kernel, data, relax.const(packed),
                                          primfunc_name_hint=KERNEL))
    flat = builder.emit(relax.op.reshape(blocks, [rows, packed.shape[0] * packed.shape[2]]))
    return relax.op.strided_slice(flat, axes=[1], begin=[0], end=[columns])
