"""Bundled example models, addressable as ``example:NAME`` wherever a model path is accepted."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from relaycomp.errors import RelaycompError
from relaycomp.registry import Registry

DATA_DIR = Path(__file__).parent.parent / "data"  # relaycomp/data
PREFIX = "example:"


@dataclass(frozen=True)
class Example:
    """A shipped ONNX model with held-out samples (``input``, ``labels``, ``calibration``)."""

    name: str
    model_file: str
    samples_file: str
    description: str

    @property
    def model_path(self) -> Path:
        """Absolute path of the ONNX file."""
        return DATA_DIR / self.model_file

    def samples(self) -> dict[str, np.ndarray]:
        """The bundled sample arrays."""
        with np.load(DATA_DIR / self.samples_file) as data:
            return {key: data[key] for key in data.files}


EXAMPLES: Registry[Example] = Registry("example")
EXAMPLES.add("digits", Example(
    "digits", "digits_cnn.onnx", "digits_samples.npz",
    "small CNN trained on scikit-learn's 8x8 digits; input 'input' [batch,1,8,8], "
    "output 'logits' [batch,10]"))


def is_example(ref: str | os.PathLike) -> bool:
    """True for ``example:NAME`` references."""
    return isinstance(ref, str) and ref.startswith(PREFIX)


def get_example(ref: str) -> Example:
    """The example named by ``example:NAME`` (or plain ``NAME``)."""
    return EXAMPLES.get(ref.removeprefix(PREFIX))


def resolve_model_path(ref: str | os.PathLike) -> Path:
    """A model path, with ``example:NAME`` mapped to the bundled file."""
    if is_example(ref):
        path = get_example(str(ref)).model_path
        if not path.is_file():
            raise RelaycompError(f"the bundled example file {path} is missing from the install")
        return path
    return Path(ref)
