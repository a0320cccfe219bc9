"""Winograd F(m x m, 3 x 3) convolution on blocked ``NCHW[b]c`` activations, as three TE kernels.

A 3x3 stride-1 conv computes each ``m x m`` output tile from an ``alpha x alpha`` input tile
(``alpha = m + 2``) with ``alpha^2`` elementwise products instead of ``9 m^2``:
``Y = A^T [(G g G^T) . (B^T d B)] A`` (Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks", 2015). For F(4x4, 3x3) that is 36 multiply-adds per channel pair and tile where the
direct conv does 144. The matrices come from TVM's Cook-Toom construction at the interpolation
points of Barabasz et al. (``tvm.topi.nn.winograd_util``), which keep F(4x4, 3x3)'s fp32 error
near 3e-7.

The kernels, each a ``te.compute`` whose name the schedule rule
(:mod:`relaycomp.schedules.cpu.winograd`) recognizes:

- :func:`input_transform` ``V[e, p, c] = (B^T d_p B)[e]`` for tile ``p`` and channel ``c``
  (``e`` runs over the ``alpha x alpha`` tile, row-major); padding is read as zeros.
- :func:`tile_products` ``M[e, p, k] = sum_c V[e, p, c] * U[e, c, k]``: ``alpha^2``
  independent matrix products, which the contraction rule register-tiles like any matmul;
  ``U = G g G^T`` is the weight transformed at compile time (:func:`transform_weight`).
- :func:`output_transform` ``Y[n, kb, y, x, l] = (A^T M_p A)[y % m, x % m]``: the output back on
  ``NCHW[b]c``; injective, so the conv's epilogue (bias, residual add, ReLU) fuses into it.

Each transform is two one-dimensional passes (rows, then columns); its coefficients are written
as lookups that become constants once the schedule unrolls the tile's loops, and a zero
coefficient then drops its term.
"""

from __future__ import annotations

import functools

import numpy as np
from tvm import te, tirx
from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

KERNEL = 3  # the filter size this module handles
INPUT_TRANSFORM = "winograd_input"
INPUT_ROWS = "winograd_input_rows"
TILE_PRODUCTS = "winograd_products"
OUTPUT_TRANSFORM = "winograd_output"
OUTPUT_ROWS = "winograd_output_rows"


@functools.cache
def matrices(tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A, B, G)`` of F(tile x tile, 3 x 3), float64: ``A`` is ``alpha x tile``, ``B``
    ``alpha x alpha``, ``G`` ``alpha x 3``."""
    points = _interpolation_points(tile + KERNEL - 2)
    a, b, g = _cook_toom_convolution(points, tile, KERNEL)
    return np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(g, np.float64)


def transform_weight(weight: np.ndarray, tile: int) -> np.ndarray:
    """``U[e, c, k] = (G g_kc G^T)[e]`` of an ``OIHW`` weight ``[K, C, 3, 3]``: float32
    ``[alpha^2, C, K]`` (the products' operand, output channels contiguous)."""
    _, _, g = matrices(tile)
    transformed = np.einsum("ai,kcij,bj->abck", g, weight.astype(np.float64), g)
    alpha = g.shape[0]
    return transformed.reshape(alpha * alpha, *transformed.shape[2:]).astype(np.float32)


def _coefficient(column: np.ndarray, index: tirx.PrimExpr) -> tirx.PrimExpr:
    """``column[index]`` as an expression: a chain of selects that folds to the constant once
    ``index`` is (an unrolled loop)."""
    value = tirx.const(float(column[-1]), "float32")
    for position in range(len(column) - 2, -1, -1):
        value = tirx.Select(index == position, tirx.const(float(column[position]), "float32"),
                            value)
    return value


def _dot(coefficients: np.ndarray, index, term) -> tirx.PrimExpr:
    """``sum_j coefficients[index, j] * term(j)`` over the columns that are not all zero."""
    total = None
    for j in range(coefficients.shape[1]):
        if not coefficients[:, j].any():
            continue
        product = _coefficient(coefficients[:, j], index) * term(j)
        total = product if total is None else total + product
    return total


def input_transform(data: te.Tensor, tile: int, padding: tuple[int, int],
                    out_size: tuple[int, int]) -> te.Tensor:
    """``V[e, p, c]``: the input tiles of ``data`` (``N, C/b, H, W, b``) transformed, ``p``
    running over ``N x (out_h / tile) x (out_w / tile)`` and ``c`` over the ``C`` channels;
    ``padding`` is (top, left), the tiles' rows and columns past the input read zeros."""
    batch, blocks, height, width, block = (int(d) for d in data.shape)
    _, b, _ = matrices(tile)
    alpha = tile + KERNEL - 1
    tiles_h, tiles_w = tile_counts(out_size, tile)
    tiles = batch * tiles_h * tiles_w
    top, left = padding

    def read(p, row, column, c, lane):
        y = (p // tiles_w) % tiles_h * tile + row - top
        x = p % tiles_w * tile + column - left
        inside = tirx.all(y >= 0, y < height, x >= 0, x < width)
        return tirx.if_then_else(inside, data[p // (tiles_h * tiles_w), c, y, x, lane],
                                 tirx.const(0.0, data.dtype))

    # rows[p, c, eps, column, lane] = sum_a B[a, eps] * d[a, column]
    rows = te.compute(
        (tiles, blocks, alpha, alpha, block),
        lambda p, c, eps, column, lane: _dot(
            b.T, eps, lambda a: read(p, a, column, c, lane)),
        name=INPUT_ROWS)
    return te.compute(
        (alpha * alpha, tiles, blocks * block),
        lambda e, p, c: _dot(
            b.T, e % alpha, lambda column: rows[p, c // block, e // alpha, column, c % block]),
        name=INPUT_TRANSFORM, tag=INPUT_TRANSFORM)


def tile_products(transformed: te.Tensor, weight: te.Tensor) -> te.Tensor:
    """``M[e, p, k] = sum_c V[e, p, c] * U[e, c, k]``."""
    channels = te.reduce_axis((0, transformed.shape[2]), name="c")
    return te.compute(
        (transformed.shape[0], transformed.shape[1], weight.shape[2]),
        lambda e, p, k: te.sum(transformed[e, p, channels] * weight[e, channels, k],
                               axis=channels),
        name=TILE_PRODUCTS, tag=TILE_PRODUCTS)


def output_transform(products: te.Tensor, tile: int, batch: int, out_size: tuple[int, int],
                     block: int) -> te.Tensor:
    """``Y[n, kb, y, x, l]`` (``NCHW[b]c``, ``b = block``) from the tile products ``M``."""
    a, _, _ = matrices(tile)
    alpha = tile + KERNEL - 1
    out_h, out_w = out_size
    tiles_h, tiles_w = tile_counts(out_size, tile)
    channels = int(products.shape[2])

    def tile_of(n, y, x):
        return (n * tiles_h + y // tile) * tiles_w + x // tile

    # rows[p, kb, i, column, l] = sum_a A[a, i] * M[a, column]
    rows = te.compute(
        (int(products.shape[1]), channels // block, tile, alpha, block),
        lambda p, kb, i, column, lane: _dot(
            a.T, i, lambda r: products[r * alpha + column, p, kb * block + lane]),
        name=OUTPUT_ROWS)
    return te.compute(
        (batch, channels // block, out_h, out_w, block),
        lambda n, kb, y, x, lane: _dot(
            a.T, x % tile, lambda column: rows[tile_of(n, y, x), kb, y % tile, column, lane]),
        name=OUTPUT_TRANSFORM, tag=OUTPUT_TRANSFORM)


def tile_counts(out_size: tuple[int, int], tile: int) -> tuple[int, int]:
    """Tiles along the output's height and width: the last row and column of tiles may reach
    past the output (inputs there read as zeros, outputs there are not written)."""
    return -(-out_size[0] // tile), -(-out_size[1] // tile)
