"""Training data for distillation: reading, checking, splitting, batching; the teacher's logits.

Data is a mapping (or an ``.npz``) keyed by the student's input names, first axis = samples;
labels (optional) are integer classes, one per sample (an ``.npy`` or an array), -1 for a
sample without a label (it then only contributes the soft-target term). Every check
names the input and says what was expected. Static-shape batches: the last batch is padded
with weight-0 copies, so every sample is seen each epoch whatever the batch size.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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
                  classes: int) -> Dataset:
    """Cast to the input dtypes and check counts, finiteness and the label range."""
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
        low, high = int(labels.min()), int(labels.max())
        if low < UNLABELLED or high >= classes:
            raise DistillError(f"labels range over [{low}, {high}], but the student has "
                               f"{classes} classes (0..{classes - 1}; -1 marks no label)")
        if high == UNLABELLED:
            labels = None  # nothing labelled: pure soft-target distillation
    return Dataset(inputs, labels)


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


# --- the teacher ----------------------------------------------------------------------------

def teacher_logits(teacher, data: Dataset, specs: Sequence[TensorSpec],
                   chunk: int = 64) -> np.ndarray:
    """Run the teacher once over every sample: float32 [N, classes].

    ``teacher``: an ONNX file / ``example:NAME`` / ModelProto (compiled by relaycomp for this
    machine), a :class:`~relaycomp.runtime.local.LoadedModel`, a Relax ``IRModule`` or
    ``ImportedModel`` (built with TVM), or precomputed logits (an array [N, classes]).
    """
    return teacher_outputs(teacher, data, specs, (), chunk)[0]


def teacher_outputs(teacher, data: Dataset, specs: Sequence[TensorSpec],
                    features: Sequence[str] = (), chunk: int = 64) -> list[np.ndarray]:
    """The teacher's logits [N, classes], then its tensors named in ``features`` (for hints;
    those need an ONNX teacher), each float32 with the samples on the first axis."""
    if isinstance(teacher, np.ndarray):
        if features:
            raise DistillError("hints need the teacher as an ONNX model, not its logits",
                               hint="give the teacher's .onnx file or ModelProto")
        logits = np.asarray(teacher, np.float32)
        if logits.ndim != 2 or len(logits) != len(data):
            raise DistillError(f"teacher logits have shape {list(logits.shape)}; expected "
                               f"[{len(data)}, classes]")
        return [logits]
    outputs = []
    with tempfile.TemporaryDirectory(prefix="relaycomp-teacher-") as folder:
        run, batch = _teacher_runner(teacher, data, specs, chunk, Path(folder), features)
        for rows, weights in batches(np.arange(len(data)), batch):
            real = int((weights > 0).sum())
            outputs.append([np.asarray(a, np.float32)[:real] for a in run(data.take(rows))])
    arrays = [np.concatenate(column) for column in zip(*outputs)]
    if arrays[0].ndim != 2:
        raise DistillError(f"the teacher's output has shape {list(arrays[0].shape[1:])} per "
                           f"sample; distillation needs [classes] logits")
    return arrays


def batch_teacher(teacher, data: Dataset, features: Sequence[str], batch: int, folder: Path):
    """``run(feed) -> [logits, *features]`` for batches of ``batch`` samples (for augmented
    batches, which the teacher must see as the student does); the library goes in ``folder``."""
    import onnx

    if not isinstance(teacher, (str, os.PathLike, onnx.ModelProto)):
        raise DistillError(f"augmentation needs the teacher as an ONNX model (it labels every "
                           f"augmented batch), not a {type(teacher).__name__}",
                           hint="give the teacher's .onnx file or ModelProto")
    run, compiled = _compiled_onnx_teacher(teacher, data, batch, folder, features)
    if compiled != batch:
        raise DistillError(f"augmentation runs the teacher on training batches of {batch}, "
                           f"but its batch dim is fixed at {compiled}",
                           hint=f"use --batch-size {compiled} or a teacher with a symbolic "
                                f"batch dim")
    return run


def _teacher_runner(teacher, data: Dataset, specs, chunk: int, folder: Path, features):
    """``(run(feed) -> [logits, *features], batch)``."""
    import onnx

    from relaycomp.runtime.local import LoadedModel

    if isinstance(teacher, (str, os.PathLike, onnx.ModelProto)):
        return _compiled_onnx_teacher(teacher, data, chunk, folder, features)
    if features:
        raise DistillError(f"hints need the teacher as an ONNX model, not a "
                           f"{type(teacher).__name__}",
                           hint="give the teacher's .onnx file or ModelProto")
    if isinstance(teacher, LoadedModel):
        batch = int(teacher.manifest.inputs[0].shape[0])
        return (lambda feed: [next(iter(teacher.run(feed).values()))]), batch
    run, batch = _relax_teacher(teacher, specs)
    return (lambda feed: [run(feed)]), batch


def _compiled_onnx_teacher(teacher, data: Dataset, chunk: int, folder: Path, features):
    import onnx

    from relaycomp.compiler import build
    from relaycomp.distill.student import batch_of, with_outputs
    from relaycomp.frontend.examples import resolve_model_path
    from relaycomp.frontend.onnx_import import graph_inputs, load_onnx
    from relaycomp.runtime.local import load

    model = teacher if isinstance(teacher, onnx.ModelProto) else load_onnx(
        resolve_model_path(teacher))
    specs = graph_inputs(model)
    missing = [s.name for s in specs if s.name not in data.inputs]
    if missing:
        raise DistillError(f"the teacher takes input(s) {missing} that the data does not hold",
                           hint="teacher and student must read the same inputs")
    first = model.graph.output[0].name
    if features:
        model = with_outputs(model, features, "teacher")
    batch = batch_of(specs, chunk)
    shapes = {s.name: (batch, *data.inputs[s.name].shape[1:]) for s in specs}
    artifact = build.compile_model(model, folder / "teacher.so",
                                   build.CompileConfig(input_shapes=shapes))
    loaded = load(artifact.path)
    names = [s.name for s in specs]

    def run(feed):
        results = loaded.run({n: feed[n] for n in names})
        return [results[first], *(results[name] for name in features)]

    return run, batch


def _relax_teacher(teacher, specs):
    import tvm
    from tvm import relax

    from relaycomp import ir
    from relaycomp.frontend.onnx_import import ImportedModel

    mod = teacher.mod if isinstance(teacher, ImportedModel) else teacher
    if not isinstance(mod, tvm.IRModule):
        raise DistillError(f"unsupported teacher type {type(teacher).__name__}",
                           hint="give an ONNX file/ModelProto, a loaded artifact, a Relax "
                                "IRModule or an array of logits")
    params = mod["main"].params
    batch = int(params[0].ty.shape[0])
    vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    names = [p.name for p in params]

    def run(feed):
        return ir.to_numpy(vm["main"](*[tvm.runtime.tensor(feed[n]) for n in names]))[0]

    return run, batch
