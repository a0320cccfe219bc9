"""Reduced-precision float compute: ``PrecisionConfig(dtype="bfloat16")`` runs convolutions on
bf16 operands with fp32 sums (``passes/convert_to_bf16.py``, the ``vdpbf16ps`` kernels on x86,
``bfdot`` on AArch64)."""

from relaycomp.precision.config import PrecisionConfig

__all__ = ["PrecisionConfig"]
