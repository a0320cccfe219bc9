"""Calibration and evaluation data: read, validate and cut into batches of the compiled shape.

Accepted sources, all keyed by the model's input names:

* an ``.npz`` file (or ``example:NAME``, whose ``calibration``/``input`` arrays are used);
* a directory of ``NAME.npy`` files;
* a mapping ``{name: array}``;
* an iterable of such mappings, each one batch.

An array holds one batch of the compiled input shape, several batches stacked on a new leading
axis, or samples along the batch axis (calibration data may leave the last batch short: it is
filled by cycling through the samples again). Every problem is a
:class:`CalibrationError` naming the input: unknown or missing names, shapes that fit none of
these forms, non-float data for a float input, NaN/Inf, fewer samples than required.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from relaycomp.errors import CalibrationError, RelaycompError, last_line

LABELS = "labels"  # an evaluation set may carry integer class labels under this key


def load_batches(source, inputs, min_samples: int = 1, what: str = "calibration",
                 allow_labels: bool = False, classes: int | None = None,
                 ) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
    """``source`` as a list of input batches (and the labels, if ``allow_labels`` and present).

    ``inputs`` are the model's :class:`~relaycomp.frontend.onnx_import.TensorSpec` (compiled
    shapes). Labels must be integer class indices, at least 0 and below ``classes`` when it is
    given. Data that is constant in every sample (all zeros, say) gives a warning: ranges or
    accuracies computed from it mean nothing.
    """
    arrays, label = _read(source, inputs, what)
    if isinstance(arrays, list):  # an iterable of batches
        batches = [_check_batch(batch, inputs, what, index) for index, batch in enumerate(arrays)]
        samples = len(batches) * _batch_size(inputs)
    else:
        batches, samples = _split(arrays, inputs, what)
    labels = None
    if label is not None and allow_labels:
        labels = _checked_labels(label, what, classes)
    if samples < min_samples:
        raise CalibrationError(f"{what} data holds {samples} sample(s); at least {min_samples} "
                               "are needed", hint="supply more samples (a few hundred is typical)")
    if labels is not None and labels.size != samples:
        raise CalibrationError(f"{what} data has {labels.size} labels for {samples} samples")
    _warn_if_constant(batches, inputs, what)
    return batches, labels


def _checked_labels(label, what: str, classes: int | None) -> np.ndarray:
    """Labels as a flat int64 array of class indices; anything else is a CalibrationError."""
    labels = np.asarray(label).reshape(-1)
    hint = "labels are integer class indices, one per sample: 0 .. classes-1"
    whole_floats = labels.dtype.kind == "f" and bool(np.all(np.isfinite(labels))) and bool(
        np.all(labels == np.round(labels)))  # np.zeros(n) and friends: whole numbers
    if labels.dtype.kind not in "iu" and not whole_floats:  # fractions, strings, bools, objects
        raise CalibrationError(f"{what} labels have dtype {labels.dtype} and are not all whole "
                               "numbers; class labels must be integers", hint=hint)
    if labels.size and labels.min() < 0:
        raise CalibrationError(f"{what} labels hold {int(labels.min())}; class labels cannot be "
                               "negative", hint=hint)
    if classes is not None and labels.size and labels.max() >= classes:
        raise CalibrationError(f"{what} labels hold {int(labels.max())}, but the model's output "
                               f"has {classes} classes (0..{classes - 1})", hint=hint)
    return labels.astype(np.int64)


def _warn_if_constant(batches: list[dict[str, np.ndarray]], inputs, what: str) -> None:
    for spec in inputs:
        if not np.issubdtype(np.dtype(spec.dtype), np.floating):
            continue
        arrays = [batch[spec.name] for batch in batches if batch[spec.name].size]
        if not arrays:
            continue
        low = min(float(a.min()) for a in arrays)
        high = max(float(a.max()) for a in arrays)
        if low == high:
            value = "all zeros" if low == 0 else f"the constant {low:g} everywhere"
            warnings.warn(f"{what} data for input '{spec.name}' is {value}: ranges and "
                          "accuracies measured on it will not hold for real inputs",
                          stacklevel=3)


def _read(source, inputs, what: str):
    names = [spec.name for spec in inputs]
    if isinstance(source, (str, os.PathLike)):
        return _read_path(source, names, what)
    if isinstance(source, Mapping):
        arrays = dict(source)
        label = arrays.pop(LABELS, None)
        _check_names(arrays, names, what, "the mapping")
        return arrays, label
    if isinstance(source, Iterable):
        batches = []
        for batch in source:
            if not isinstance(batch, Mapping):
                raise CalibrationError(f"{what} batches must be dicts {{input name: array}}, "
                                       f"got {type(batch).__name__}")
            batches.append(dict(batch))
        return batches, None
    raise CalibrationError(f"cannot use a {type(source).__name__} as {what} data",
                           hint="give an .npz path, a directory of .npy files, a dict of arrays "
                                "or an iterable of dicts")


def read_arrays(source: str | os.PathLike, what: str, names: list[str] | None = None,
                error: type[RelaycompError] = CalibrationError) -> dict[str, np.ndarray]:
    """The arrays stored at ``source``, by name: an ``.npz`` file, a directory of ``NAME.npy``
    files, a single ``.npy`` file (for a model whose only input is ``names[0]``), or
    ``example:NAME`` (its samples under the first of ``names``, ``labels`` too).
    Never unpickles; every problem (missing, unreadable, not an archive, a folder without
    arrays) is one ``error`` naming ``what`` the data is for."""
    from relaycomp.frontend.examples import get_example, is_example

    if is_example(source):
        samples = get_example(str(source)).samples()
        key = "calibration" if what == "calibration" and "calibration" in samples else "input"
        arrays = {(names or ["input"])[0]: samples[key]}
        if LABELS in samples:
            arrays[LABELS] = samples[LABELS]
        return arrays
    path = Path(source)
    try:
        if path.is_dir():
            files = sorted(path.glob("*.npy"))
            if not files:
                raise error(f"{what} directory {path} holds no .npy files")
            return {f.stem: np.load(f, allow_pickle=False) for f in files}
        if not path.exists():
            raise error(f"no such {what} file or directory: {path}")
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):  # a single .npy array: the model's only input
            if names is not None and len(names) == 1:
                return {names[0]: data}
            raise error(f"{what} file {path} is a single .npy array, but the model takes "
                        f"{len(names) if names is not None else 'several'} inputs",
                        hint="save an .npz keyed by input name (np.savez(path, NAME=array))")
        with data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise error(f"cannot read {what} data {path}: {last_line(err)}",
                    hint="give an .npz written by numpy.savez (no pickled objects)") from None


def _read_path(source, names: list[str], what: str):
    arrays = read_arrays(source, what, names)
    label = arrays.pop(LABELS, None)
    _check_names(arrays, names, what, str(source))
    return arrays, label


def _check_names(arrays: Mapping, names: list[str], what: str, where: str) -> None:
    unknown = sorted(set(arrays) - set(names))
    missing = [n for n in names if n not in arrays]
    if unknown:
        raise CalibrationError(f"{what} data {where} holds unknown input(s) {unknown}",
                               hint=f"the model's inputs: {names}")
    if missing:
        raise CalibrationError(f"{what} data {where} lacks input(s) {missing}",
                               hint=f"it holds {sorted(arrays)}")


def _batch_size(inputs) -> int:
    return int(inputs[0].shape[0]) if inputs and inputs[0].shape else 1


def _split(arrays: Mapping[str, np.ndarray], inputs,
           what: str) -> tuple[list[dict[str, np.ndarray]], int]:
    """Cut each array into batches of its input's shape (all inputs must give the same count);
    returns the batches and the number of distinct samples they hold."""
    pieces: dict[str, list[np.ndarray]] = {}
    samples = None
    for spec in inputs:
        array = _checked_array(arrays[spec.name], spec, what)
        shape = tuple(spec.shape)
        if array.shape == shape:
            pieces[spec.name] = [array]
        elif array.shape[1:] == shape:  # batches stacked on a new leading axis
            pieces[spec.name] = list(array)
        elif (shape and array.ndim == len(shape) and array.shape[1:] == shape[1:]
              and array.shape[0] % shape[0] == 0):  # samples along the batch axis
            pieces[spec.name] = list(array.reshape(-1, *shape))
        elif (what == "calibration" and shape and array.ndim == len(shape)
              and array.shape[1:] == shape[1:] and len(array)):
            # Samples that do not fill whole batches: the last batch is filled by cycling
            # through the samples again (ranges and histograms barely move; no labels here).
            samples = len(array)
            filled = -(-len(array) // shape[0]) * shape[0]
            pieces[spec.name] = list(np.resize(array, (filled, *shape[1:])).reshape(-1, *shape))
        else:
            raise CalibrationError(
                f"{what} array '{spec.name}' has shape {list(array.shape)}; the model is "
                f"compiled for {list(shape)}",
                hint=f"give {list(shape)}, [K, *{list(shape)}] for K batches, or "
                     f"[N*{shape[0] if shape else 1}, ...] samples")
    counts = {name: len(batches) for name, batches in pieces.items()}
    if len(set(counts.values())) > 1:
        raise CalibrationError(f"{what} inputs hold different numbers of batches: {counts}")
    count = next(iter(counts.values()), 0)
    batches = [{name: pieces[name][i] for name in pieces} for i in range(count)]
    return batches, samples if samples is not None else count * _batch_size(inputs)


def _check_batch(batch: Mapping, inputs, what: str, index: int) -> dict[str, np.ndarray]:
    _check_names(batch, [s.name for s in inputs], what, f"batch {index}")
    result = {}
    for spec in inputs:
        array = _checked_array(batch[spec.name], spec, what)
        if tuple(array.shape) != tuple(spec.shape):
            raise CalibrationError(f"{what} batch {index}: '{spec.name}' has shape "
                                   f"{list(array.shape)}, the model takes {list(spec.shape)}")
        result[spec.name] = array
    return result


def _checked_array(value, spec, what: str) -> np.ndarray:
    array = np.asarray(value)
    expected = np.dtype(spec.dtype)
    if np.issubdtype(expected, np.floating):
        if not np.issubdtype(array.dtype, np.floating):
            raise CalibrationError(f"{what} array '{spec.name}' has dtype {array.dtype}; the "
                                   f"input is {spec.dtype}", hint="convert the data to floats")
        if not np.all(np.isfinite(array)):
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise CalibrationError(f"{what} array '{spec.name}' holds {bad} NaN/Inf value(s)")
    elif array.dtype.kind != expected.kind:
        raise CalibrationError(f"{what} array '{spec.name}' has dtype {array.dtype}; the input "
                               f"is {spec.dtype}")
    # np.require keeps a 0-d (scalar) input 0-d; np.ascontiguousarray would make it [1]
    return np.require(array.astype(expected, copy=False), requirements="C")
