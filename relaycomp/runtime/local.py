"""Load a built artifact and run it on this machine.

Guarantees: inputs are checked against the manifest (names, shapes, dtypes) before anything runs;
outputs come back keyed by the ONNX output names; an artifact built for another machine is refused
with a message saying where it can run.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from relaycomp import ir
from relaycomp.compiler.manifest import Manifest, check_artifact, read_manifest
from relaycomp.errors import ArtifactError, InputSpecError, last_line
from relaycomp.runtime.staging import InputStaging
from relaycomp.targets import TargetSpec, check_shared_library, elf_machine


@dataclass(frozen=True)
class Timing:
    """Latency statistics of repeated runs, in milliseconds."""

    median_ms: float
    mean_ms: float
    min_ms: float
    runs: int


def read_artifact(path: str | os.PathLike) -> tuple[Path, Manifest, TargetSpec]:
    """A runnable artifact's path, manifest and target: the file exists, its manifest beside
    it is valid, it is a shared library (an object archive must be linked first), the one the
    manifest describes (size, sha256, signature) and a whole ELF file. All of this is checked
    before anything loads it: a truncated library would crash the loading process."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no such artifact: {path}")
    manifest = read_manifest(path)
    target = TargetSpec.from_json(manifest.target)
    if manifest.artifact_format != "shared-library":
        raise ArtifactError(f"{path} is an object archive for {target.triple}",
                            hint="link it into a shared library on the device, or compile "
                                 "with an output named *.so; running needs a .so")
    check_artifact(manifest, path)
    check_shared_library(path)
    return path, manifest, target


class LoadedModel:
    """A compiled model ready to run: ``outputs = model.run({"x": array})``.

    CPU kernels run on ``threads`` threads (default: the target's ``num-cores``), unless
    TVM_NUM_THREADS is set or TVM's thread pool already started in this process. Either is
    capped at the CPUs this process may use (more threads only contend; TVM's pool aborts
    at very large counts); capping an explicit ``threads`` warns.

    On the CPU, :meth:`run` passes an aligned numpy input to the kernels without a copy and
    copies any other into a buffer it reuses (``relaycomp.runtime.staging``); calls from several
    threads run one at a time.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        if threads is not None and threads < 1:
            raise InputSpecError(f"threads must be at least 1, got {threads}")
        self.path, self.manifest, self.target = read_artifact(path)
        self._check_runnable_here()
        if self.target.kind == "llvm":
            ir.request_threads(_thread_count(threads, self.target.target.get("num-cores")))
        try:
            self._vm, self._device = ir.load_vm(str(self.path), self._device_kind())
        except Exception as err:
            raise ArtifactError(f"cannot load {self.path}: {last_line(err)}") from err
        self._staging = InputStaging() if self._device_kind() == "cpu" else None
        self._lock = threading.Lock()

    def _device_kind(self) -> str:
        return "cuda" if self.target.kind == "cuda" else "cpu"

    def _check_runnable_here(self) -> None:
        machine = elf_machine(self.path)
        host = elf_machine_of_this_process()
        if machine != host:
            raise ArtifactError(
                f"{self.path} was built for {self.target.triple} ({machine}); "
                f"this machine is {host}",
                hint="copy it with its .json manifest to the device and run it there")

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; returns ``{output name: array}``."""
        arrays = self._check_inputs(inputs)
        try:
            with self._lock:
                tensors = [self._staging.tensor(i, a) if self._staging is not None
                           else ir.to_device(a, self._device) for i, a in enumerate(arrays)]
                results = ir.to_numpy(self._vm["main"](*tensors))
        except Exception as err:  # noqa: BLE001 - TVM's checks raise its own error types
            # The inputs fit the manifest, so the library disagrees with its manifest.
            raise ArtifactError(f"{self.path} rejects inputs of its manifest's signature: "
                                f"{last_line(err)}",
                                hint="the manifest does not match the library; recompile") \
                from None
        if len(results) != len(self.manifest.outputs):
            raise ArtifactError(f"{self.path} returns {len(results)} output(s), its manifest "
                                f"names {len(self.manifest.outputs)}",
                                hint="the manifest does not match the library; recompile")
        return {spec.name: value for spec, value in zip(self.manifest.outputs, results)}

    def time(self, inputs: Mapping[str, np.ndarray], repeat: int = 20,
             warmup: int = 3) -> Timing:
        """Latency of ``main`` with inputs already on the device (no copies timed)."""
        if repeat < 1 or warmup < 0:
            raise InputSpecError(f"timing needs repeat >= 1 and warmup >= 0, got {repeat} and "
                                 f"{warmup}")
        tensors = [ir.to_device(a, self._device) for a in self._check_inputs(inputs)]
        main = self._vm["main"]
        for _ in range(warmup):
            main(*tensors)
        samples = []
        for _ in range(repeat):
            start = time.perf_counter()
            main(*tensors)
            samples.append((time.perf_counter() - start) * 1e3)
        return Timing(float(np.median(samples)), float(np.mean(samples)), min(samples), repeat)

    def _check_inputs(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        expected = self.manifest.inputs
        names = [spec.name for spec in expected]
        missing = [n for n in names if n not in inputs]
        extra = [n for n in inputs if n not in names]
        if missing or extra:
            problem = f"missing input(s) {missing}" if missing else f"unknown input(s) {extra}"
            raise InputSpecError(f"{problem}", hint=f"the model takes: {describe(expected)}")
        arrays = []
        for spec in expected:
            array = np.asarray(inputs[spec.name])
            if tuple(array.shape) != tuple(spec.shape):
                raise InputSpecError(
                    f"input '{spec.name}' has shape {list(array.shape)}, "
                    f"the artifact was compiled for {list(spec.shape)}",
                    hint="recompile with --input NAME:DIMS for another shape")
            if str(array.dtype) != spec.dtype:
                raise InputSpecError(
                    f"input '{spec.name}' has dtype {array.dtype}, expected {spec.dtype}")
            # np.ascontiguousarray would turn a 0-d input into shape [1]
            arrays.append(np.require(array, requirements="C"))
        return arrays


def _thread_count(requested: int | None, num_cores: int | None) -> int:
    """Threads for TVM's pool: ``requested``, else the target's ``num_cores``, at most the
    usable CPUs; capping a requested count warns."""
    cpus = ir.usable_cpus()
    if requested is not None and requested > cpus:
        warnings.warn(f"{requested} threads requested but this machine has {cpus} CPU(s); "
                      f"using {cpus}", stacklevel=3)
    return min(requested or num_cores or cpus, cpus)


def random_inputs(specs, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs matching ``specs`` (floats in [0,1), ints in [0,10), random bools)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in specs:
        if spec.dtype == "bool":
            arrays[spec.name] = rng.random(spec.shape) < 0.5
        elif spec.dtype.startswith(("int", "uint")):
            arrays[spec.name] = rng.integers(0, 10, spec.shape).astype(spec.dtype)
        else:
            arrays[spec.name] = rng.random(spec.shape).astype(spec.dtype)
    return arrays


def describe(specs) -> str:
    """``name:dtype[dims]`` list for messages."""
    return ", ".join(f"{s.name}:{s.dtype}{list(s.shape)}" for s in specs)


def elf_machine_of_this_process() -> str:
    """The ELF machine of the running Python interpreter (what a host library must match)."""
    exe = "/proc/self/exe" if os.path.exists("/proc/self/exe") else sys.executable
    return elf_machine(os.path.realpath(exe))


def load(path: str | os.PathLike, threads: int | None = None) -> LoadedModel:
    """Load an artifact built by :func:`relaycomp.compile` (see :class:`LoadedModel`)."""
    return LoadedModel(path, threads)
