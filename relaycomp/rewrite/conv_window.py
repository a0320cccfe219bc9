"""The sliding window of a 2-D conv written as a TE compute: padded input and output size."""

from __future__ import annotations

from tvm import te, topi


def pad_spatial(data: te.Tensor, padding) -> te.Tensor:
    """``data`` (``N, C, H, W[, c]``) with ``padding`` (top, left, bottom, right) zeros around
    its two spatial axes (``data`` itself when there is none)."""
    top, left, bottom, right = padding
    if not any(padding):
        return data
    rest = [0] * (len(data.shape) - 4)
    return topi.nn.pad(data, [0, 0, top, left, *rest], [0, 0, bottom, right, *rest],
                       pad_value=0, name="pad_temp")


def output_size(height, width, kernel, strides, padding, dilation) -> tuple:
    """``(out_h, out_w)`` of a conv over a ``height x width`` map."""
    (kernel_h, kernel_w), (stride_h, stride_w), (dilation_h, dilation_w) = kernel, strides, dilation
    top, left, bottom, right = padding
    return ((height + top + bottom - dilation_h * (kernel_h - 1) - 1) // stride_h + 1,
            (width + left + right - dilation_w * (kernel_w - 1) - 1) // stride_w + 1)
