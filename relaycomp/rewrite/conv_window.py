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


class SlidingWindow:
    """A conv's window over ``data`` (``N, C, H, W[, c]``), for a TE compute: the padded input,
    the output's ``height`` and ``width``, the reduction axes ``ry``/``rx`` over the kernel, and
    the input row and column an output pixel reads (:meth:`at`)."""

    def __init__(self, data: te.Tensor, kernel, strides, padding, dilation):
        self.padded = pad_spatial(data, padding)
        self.height, self.width = output_size(data.shape[2], data.shape[3], kernel, strides,
                                              padding, dilation)
        self.ry = te.reduce_axis((0, kernel[0]), name="ry")
        self.rx = te.reduce_axis((0, kernel[1]), name="rx")
        self._strides, self._dilation = strides, dilation

    def at(self, y, x) -> tuple:
        """The padded input's row and column under output pixel ``(y, x)`` at ``(ry, rx)``."""
        (stride_h, stride_w), (dilation_h, dilation_w) = self._strides, self._dilation
        return y * stride_h + self.ry * dilation_h, x * stride_w + self.rx * dilation_w
