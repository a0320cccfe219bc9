"""The teacher's outputs for distillation: run once over the data, or per augmented batch.

The teacher is an ONNX file / ``example:NAME`` / ModelProto (compiled by relaycomp for this
machine), a :class:`~relaycomp.runtime.local.LoadedModel`, a Relax ``IRModule`` or
``ImportedModel`` (built with TVM), or precomputed outputs. Its outputs are matched to the
student's by name, else by position (:func:`~relaycomp.distill.outputs.match_teacher_outputs`);
hinted intermediate tensors come after them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from relaycomp.distill.data import Dataset, batches
from relaycomp.distill.student import DistillError
from relaycomp.frontend.onnx_import import TensorSpec


def teacher_logits(teacher, data: Dataset, specs: Sequence[TensorSpec],
                   chunk: int = 64) -> np.ndarray:
    """Run the teacher once over every sample: float32 [N, classes].

    ``teacher``: an ONNX file / ``example:NAME`` / ModelProto (compiled by relaycomp for this
    machine), a :class:`~relaycomp.runtime.local.LoadedModel`, a Relax ``IRModule`` or
    ``ImportedModel`` (built with TVM), or precomputed logits (an array [N, classes]).
    """
    return teacher_outputs(teacher, data, specs, (), chunk)[0]


def teacher_outputs(teacher, data: Dataset, specs: Sequence[TensorSpec],
                    features: Sequence[str] = (), chunk: int = 64,
                    outputs: Sequence[str] | None = None) -> list[np.ndarray]:
    """The teacher's outputs on every sample, one per student output (``outputs``: the
    student's output names, matched by name or position, :func:`~relaycomp.distill.outputs.
    match_teacher_outputs`; None: the teacher's first output only), then its tensors named in
    ``features`` (for hints; those need an ONNX teacher), each float32 with the samples on
    the first axis. Precomputed outputs: an array (one output), or a list of arrays / a
    mapping by output name."""
    wanted = list(outputs) if outputs is not None else [None]
    if isinstance(teacher, (np.ndarray, list, tuple, Mapping)):
        if features:
            raise DistillError("hints need the teacher as an ONNX model, not its outputs",
                               hint="give the teacher's .onnx file or ModelProto")
        return _precomputed(teacher, data, wanted)
    results = []
    with tempfile.TemporaryDirectory(prefix="relaycomp-teacher-") as folder:
        run, batch = _teacher_runner(teacher, data, specs, chunk, Path(folder), features,
                                     wanted)
        for rows, weights in batches(np.arange(len(data)), batch):
            real = int((weights > 0).sum())
            results.append([np.asarray(a, np.float32)[:real] for a in run(data.take(rows))])
    arrays = [np.concatenate(column) for column in zip(*results)]
    if outputs is None and arrays[0].ndim != 2:
        raise DistillError(f"the teacher's output has shape {list(arrays[0].shape[1:])} per "
                           f"sample; distillation needs [classes] logits")
    return arrays


def _precomputed(teacher, data: Dataset, wanted: list) -> list[np.ndarray]:
    if isinstance(teacher, Mapping):
        missing = [name for name in wanted if name not in teacher]
        if missing and len(teacher) != len(wanted):
            raise DistillError(f"the teacher's outputs {sorted(teacher)} lack {missing}",
                               hint="key precomputed outputs by the student's output names")
        arrays = [teacher[name] for name in wanted] if not missing else list(teacher.values())
    elif isinstance(teacher, np.ndarray):
        arrays = [teacher]
    else:
        arrays = list(teacher)
    if len(arrays) != len(wanted):
        raise DistillError(f"{len(arrays)} precomputed teacher output(s) for a student with "
                           f"{len(wanted)}", hint="give one array per student output")
    arrays = [np.asarray(a, np.float32) for a in arrays]
    for array in arrays:
        if array.ndim < 2 or len(array) != len(data):
            what = "logits" if len(wanted) == 1 else "outputs"
            raise DistillError(f"teacher {what} have shape {list(array.shape)}; expected "
                               f"[{len(data)}, classes]" if len(wanted) == 1 else
                               f"teacher {what} have shape {list(array.shape)}; expected "
                               f"[{len(data)}, ...]")
    return arrays


def batch_teacher(teacher, data: Dataset, features: Sequence[str], batch: int, folder: Path,
                  outputs: Sequence[str] | None = None):
    """``run(feed) -> [*outputs, *features]`` for batches of ``batch`` samples (for augmented
    batches, which the teacher must see as the student does); the library goes in ``folder``."""
    import onnx

    if not isinstance(teacher, (str, os.PathLike, onnx.ModelProto)):
        raise DistillError(f"augmentation needs the teacher as an ONNX model (it labels every "
                           f"augmented batch), not a {type(teacher).__name__}",
                           hint="give the teacher's .onnx file or ModelProto")
    wanted = list(outputs) if outputs is not None else [None]
    run, compiled = _compiled_onnx_teacher(teacher, data, batch, folder, features, wanted)
    if compiled != batch:
        raise DistillError(f"augmentation runs the teacher on training batches of {batch}, "
                           f"but its batch dim is fixed at {compiled}",
                           hint=f"use --batch-size {compiled} or a teacher with a symbolic "
                                f"batch dim")
    return run


def _teacher_runner(teacher, data: Dataset, specs, chunk: int, folder: Path, features,
                    wanted: list):
    """``(run(feed) -> [*outputs, *features], batch)``."""
    import onnx

    from relaycomp.runtime.local import LoadedModel

    if isinstance(teacher, (str, os.PathLike, onnx.ModelProto)):
        return _compiled_onnx_teacher(teacher, data, chunk, folder, features, wanted)
    if features:
        raise DistillError(f"hints need the teacher as an ONNX model, not a "
                           f"{type(teacher).__name__}",
                           hint="give the teacher's .onnx file or ModelProto")
    if isinstance(teacher, LoadedModel):
        batch = int(teacher.manifest.inputs[0].shape[0])
        names = [o.name for o in teacher.manifest.outputs]
        picked = _pick(wanted, names)

        def run_loaded(feed):
            results = list(teacher.run(feed).values())
            return [results[i] for i in picked]

        return run_loaded, batch
    run, batch, count = _relax_teacher(teacher, specs)
    picked = _pick(wanted, [f"output_{i}" for i in range(count)])

    def run_relax(feed):
        results = run(feed)
        return [results[i] for i in picked]

    return run_relax, batch


def _pick(wanted: list, names: list[str]) -> list[int]:
    from relaycomp.distill.outputs import match_teacher_outputs

    return [0] if wanted == [None] else match_teacher_outputs(wanted, names)


def _compiled_onnx_teacher(teacher, data: Dataset, chunk: int, folder: Path, features,
                           wanted: list):
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
    names = [o.name for o in model.graph.output]
    picked = [names[i] for i in _pick(wanted, names)]
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
        return [*(results[name] for name in picked), *(results[name] for name in features)]

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
        return ir.to_numpy(vm["main"](*[tvm.runtime.tensor(feed[n]) for n in names]))

    ret = mod["main"].ret_ty
    return run, batch, len(ret.fields) if isinstance(ret, relax.TupleType) else 1
