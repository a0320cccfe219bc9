"""Training data for distillation: reading, checking, splitting, batching (the teacher's outputs:
:mod:`relaycomp.distill.teacher`).

Data is a mapping (or an ``.npz``) keyed by the student's input names, first axis = samples;
labels (optional) are integer classes, one per sample (an ``.npy`` or an array), -1 for a
sample without a label (it then only contributes the soft-target term). Every check
names the input and says what was expected. Static-shape batches: the last batch is padded
with weight-0 copies, so every sample is seen each epoch whatever the batch size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from relaycomp.distill.student import DistillError
from relaycomp.frontend.inputs import read_arrays
from relaycomp.frontend.onnx_import import TensorSpec

UNLABELLED = -1  # a label that marks a sample without one (semi-supervised distillation)


@dataclass
class Dataset:
    """Checked samples: ``inputs[name]`` is [N, ...]; ``labels`` is int64 [N] (-1: no label for
    that sample) or None (no labels at all)."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """The inputs of the samples at ``index``."""
        return {name: array[index] for name, array in self.inputs.items()}


def _read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    return read_arrays(path, "training", error=DistillError)


def _read_labels(labels) -> np.ndarray | None:
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        try:
            labels = np.load(labels, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DistillError(f"cannot read labels {labels}: {err}") from None
        if not isinstance(labels, np.ndarray):
            raise DistillError("labels must be an .npy file holding one integer array")
    return np.asarray(labels)


def sample_shapes(data: Mapping[str, np.ndarray] | str | os.PathLike,
                  specs: Sequence[TensorSpec]) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """Read ``data`` and check it names every model input; returns arrays and per-sample shapes."""
    arrays = _read_npz(data) if isinstance(data, (str, os.PathLike)) else dict(data)
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise DistillError(f"the data lacks input(s) {missing}",
                           hint=f"it holds {sorted(arrays)}; the student takes "
                                + ", ".join(f"{s.name}{list(s.shape)}" for s in specs))
    shapes = {}
    for spec in specs:
        array = np.asarray(arrays[spec.name])
        if array.ndim != len(spec.shape) or array.ndim == 0:
            raise DistillError(
                f"data '{spec.name}' has shape {list(array.shape)}; the student's input is "
                f"{list(spec.shape)}", hint="the first axis indexes samples, the rest must match")
        for axis, (have, want) in enumerate(zip(array.shape[1:], spec.shape[1:]), start=1):
            if isinstance(want, int) and want > 0 and have != want:
                raise DistillError(f"data '{spec.name}' dim {axis} is {have}; the student's "
                                   f"input {list(spec.shape)} needs {want}")
        shapes[spec.name] = tuple(array.shape[1:])
    return arrays, shapes


def check_dataset(arrays: Mapping[str, np.ndarray], labels, specs: Sequence[TensorSpec],
                  classes: int | None) -> Dataset:
    """Cast to the input dtypes and check counts, finiteness and the label range (against
    ``classes``; None: later, :func:`check_label_range`)."""
    inputs = {s.name: np.ascontiguousarray(arrays[s.name], dtype=s.dtype) for s in specs}
    counts = {name: len(array) for name, array in inputs.items()}
    if len(set(counts.values())) > 1:
        raise DistillError(f"inputs hold different numbers of samples: {counts}")
    count = next(iter(counts.values()))
    if count == 0:
        raise DistillError("the data holds no samples")
    for name, array in inputs.items():
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad = int(np.size(array) - np.isfinite(array).sum())
            raise DistillError(f"data '{name}' holds {bad} NaN/inf value(s)")
    labels = _read_labels(labels)
    if labels is not None:
        if labels.ndim != 1 or len(labels) != count:
            raise DistillError(f"labels have shape {list(labels.shape)}; expected [{count}] "
                               f"(one integer class per sample)")
        integral = np.issubdtype(labels.dtype, np.integer) or (
            np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)))
        if not integral:
            raise DistillError(f"labels must be integer classes, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
        if classes is not None:
            check_label_range(labels, classes)
        if int(labels.max()) == UNLABELLED:
            labels = None  # nothing labelled: pure soft-target distillation
    return Dataset(inputs, labels)


def check_label_range(labels: np.ndarray | None, classes: int) -> None:
    """Labels must be classes of the student's class-score output (or -1)."""
    if labels is None:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < UNLABELLED or high >= classes:
        raise DistillError(f"labels range over [{low}, {high}], but the student has "
                           f"{classes} classes (0..{classes - 1}; -1 marks no label)")


def split(count: int, val_split: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Shuffled train / validation indices (validation empty when ``val_split`` is 0)."""
    order = rng.permutation(count)
    held = round(val_split * count)
    if val_split > 0 and (held < 1 or held >= count):
        raise DistillError(f"val_split {val_split} of {count} samples leaves "
                           f"{held} for validation and {count - held} for training",
                           hint="use more data or another --val-split (0 disables it)")
    return np.sort(order[held:]), np.sort(order[:held])


def batches(index: np.ndarray, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(sample indices, weights) per batch; the last is padded with weight-0 samples."""
    for start in range(0, len(index), batch):
        chunk = index[start:start + batch]
        real = len(chunk)
        weights = np.zeros(batch, np.float32)
        weights[:real] = 1.0 / real
        if real < batch:
            chunk = np.concatenate([chunk, np.resize(chunk, batch - real)])
        yield chunk, weights
