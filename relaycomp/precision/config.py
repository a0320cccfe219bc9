"""The precision feature's config."""

from __future__ import annotations

from dataclasses import dataclass

from relaycomp.errors import RelaycompError

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16"}


@dataclass(frozen=True)
class PrecisionConfig:
    """Compute precision of the convolutions: ``bfloat16`` (``bf16``) operands, fp32 sums.

    ``samples`` bounds the calibration/evaluation samples the accuracy check runs (the float and
    the bf16 module, both compiled for this machine)."""

    dtype: str = "bfloat16"
    samples: int = 32

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise RelaycompError(f"precision '{self.dtype}' is not one relaycomp has",
                                 hint="bf16 (int8 is --quantize int8)")
        object.__setattr__(self, "dtype", DTYPES[self.dtype])
        if self.samples < 1:
            raise RelaycompError(f"samples must be at least 1, got {self.samples}")
