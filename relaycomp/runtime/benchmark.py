"""Benchmark a compiled artifact: latency percentiles and throughput over a time budget, a
per-kernel profile, memory, MACs and bytes moved per inference, and an energy estimate.

::

    report = benchmark("model.so", BenchmarkConfig(seconds=5))
    print(report.latency_ms["p99"], report.kernels[0].name, report.energy["total_uj"])

- Latency: uninstrumented calls of ``main`` (inputs already on the device, no copies timed),
  repeated until ``seconds`` have passed (and at least ``min_runs`` times); p50/p90/p99 of those
  samples. Throughput is single-stream: runs per second of measured latency.
- Kernels, workspace, weights and bytes moved: :mod:`relaycomp.runtime.profile` (the VM's
  instrument hook; a few separate runs, so its overhead never reaches the latency numbers).
- MACs: from the ONNX model the artifact was compiled from (its manifest names the file and its
  sha256), per conv/matmul node, in the precision it runs in (the quantize report's int8 layers,
  or a QDQ model's quantized weights).
- Energy: MACs x pJ/MAC + bytes moved x pJ/byte, with the target's coefficients
  (:func:`relaycomp.targets.target_energy`, sources in the preset): an estimate, not a
  measurement.

On a remote device (``rpc=``) latency is timed there by TVM's time evaluator; the instrument
hook runs only in this process, so the kernel profile, memory and energy need a local run.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from relaycomp import ir
from relaycomp.errors import InputSpecError
from relaycomp.runtime.local import load, random_inputs
from relaycomp.runtime.profile import KernelStat, Profile, profile_vm
from relaycomp.targets import target_energy

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class BenchmarkConfig:
    """How long and how: ``seconds`` of timed runs (at least ``min_runs``), ``warmup`` untimed
    runs first, ``profile_runs`` instrumented runs for the kernel table, ``threads``."""

    seconds: float = 5.0
    min_runs: int = 10
    warmup: int = 3
    profile_runs: int = 20
    threads: int | None = None

    def __post_init__(self):
        if not self.seconds > 0:
            raise InputSpecError(f"--seconds must be positive, got {self.seconds}")
        for name in ("min_runs", "profile_runs"):
            if getattr(self, name) < 1:
                raise InputSpecError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise InputSpecError(f"warmup must be 0 or more, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise InputSpecError(f"--threads must be at least 1, got {self.threads}")


@dataclass
class BenchmarkReport:
    """Everything one benchmark measured or estimated (``to_json`` for ``--json``)."""

    artifact: str
    target: str
    device: str
    latency_ms: dict[str, float]
    runs: int
    seconds: float
    throughput: float
    kernels: list[KernelStat] = field(default_factory=list)
    profile_runs: int = 0
    memory: dict | None = None
    macs: dict[str, int] | None = None
    bytes_moved: int | None = None
    energy: dict | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """One JSON document with every number the text output shows."""
        return {"artifact": self.artifact, "target": self.target, "device": self.device,
                "latency_ms": self.latency_ms, "runs": self.runs, "seconds": self.seconds,
                "throughput_per_s": self.throughput, "profile_runs": self.profile_runs,
                "kernels": [k.to_json() for k in self.kernels], "memory": self.memory,
                "macs": self.macs, "bytes_moved": self.bytes_moved, "energy": self.energy,
                "notes": self.notes}


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """p50/p90/p99, mean, min and max of latency samples."""
    values = np.asarray(samples_ms, dtype=np.float64)
    stats = {f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES}
    stats.update(mean=float(values.mean()), min=float(values.min()), max=float(values.max()))
    return stats


def time_budget(sample: Callable[[], float], seconds: float, min_runs: int) -> list[float]:
    """Call ``sample`` (one run, returning its ms) until ``seconds`` of wall time have passed
    and it ran at least ``min_runs`` times."""
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < min_runs or time.perf_counter() < deadline:
        samples.append(sample())
    return samples


def benchmark(path: str | Path, config: BenchmarkConfig = BenchmarkConfig(),
              inputs: Mapping[str, np.ndarray] | None = None, *, rpc: str | None = None,
              key: str | None = None, model_file: str | Path | None = None) -> BenchmarkReport:
    """Benchmark the artifact at ``path`` here, or on the RPC device ``key`` at ``rpc``."""
    if rpc is not None or key is not None:
        return _benchmark_remote(path, config, inputs, rpc, key)
    model = load(path, threads=config.threads)
    inputs = dict(inputs) if inputs is not None else random_inputs(model.manifest.inputs)
    model.run(inputs)  # checks the inputs against the manifest, loads the pages
    kind = "cuda" if model.target.kind == "cuda" else "cpu"
    vm, device = ir.load_vm(str(model.path), kind)
    args = [ir.to_device(np.require(inputs[s.name], requirements="C"), device)  # keeps 0-d
            for s in model.manifest.inputs]
    main = vm["main"]

    def one_run() -> float:
        start = time.perf_counter()
        main(*args)
        device.sync()
        return (time.perf_counter() - start) * 1e3

    for _ in range(config.warmup):
        one_run()
    samples = time_budget(one_run, config.seconds, config.min_runs)
    profile = profile_vm(ir.load_vm(str(model.path), kind)[0], args, config.profile_runs,
                         sync=device.sync)
    report = _report(model, samples, "this machine")
    _add_profile(report, profile)
    macs, note = model_macs(model.manifest, model_file)
    if note:
        report.notes.append(note)
    report.macs = macs
    energy = target_energy(model.manifest.target["name"], model.target.kind)
    report.energy = {**energy.estimate(macs or {}, profile.bytes_moved),
                     "macs_counted": macs is not None, "coefficients": energy.to_json()}
    return report


def _benchmark_remote(path, config, inputs, rpc, key) -> BenchmarkReport:
    from relaycomp.runtime.remote import load_remote

    if not rpc or not key:
        raise InputSpecError("--rpc HOST:PORT and --key KEY go together")
    model = load_remote(path, rpc, key, threads=config.threads)
    inputs = dict(inputs) if inputs is not None else random_inputs(model.manifest.inputs)
    model.time(inputs, repeat=1, warmup=config.warmup)
    samples = time_budget(lambda: model.time(inputs, repeat=1, warmup=0).min_ms,
                          config.seconds, config.min_runs)
    report = _report(model, samples, f"device '{key}' at {rpc}")
    report.notes.append("kernel profile, memory and energy: run `relaycomp benchmark` on the "
                        "device itself (the VM instrument runs only in the local process)")
    return report


def _report(model, samples: list[float], device: str) -> BenchmarkReport:
    return BenchmarkReport(
        artifact=str(model.path), target=model.manifest.target["name"], device=device,
        latency_ms=percentiles(samples), runs=len(samples), seconds=sum(samples) / 1e3,
        throughput=len(samples) / (sum(samples) / 1e3))


def _add_profile(report: BenchmarkReport, profile: Profile) -> None:
    report.kernels = profile.kernels
    report.profile_runs = profile.runs
    report.bytes_moved = profile.bytes_moved
    report.memory = {
        "workspace_bytes": profile.workspace_bytes, "storages": profile.storages,
        "weight_bytes": profile.weight_bytes,
        "how": "sum of the storage the VM allocates per inference (vm.builtin.alloc_storage: "
               "the statically planned intermediates plus the outputs, all live until main "
               "returns); weights are the constant tensors the kernels read"}


def model_macs(manifest, model_file: str | Path | None = None) -> tuple[dict | None, str]:
    """MACs per inference by precision, from the source ONNX model; (None, why) if unknown."""
    from relaycomp.frontend.onnx_import import load_onnx

    source = manifest.source or {}
    path = Path(model_file or source.get("file", ""))
    if not path.is_file():
        return None, (f"MACs not counted: the source model {path} is not here; pass --model "
                      "MODEL.onnx")
    if model_file is None and source.get("sha256") and \
            hashlib.sha256(path.read_bytes()).hexdigest() != source["sha256"]:
        return None, (f"MACs not counted: {path} changed since the compile; pass --model with "
                      "the model it was compiled from")
    shapes = {s.name: list(s.shape) for s in manifest.inputs}
    per_node = macs_per_node(load_onnx(path), shapes)
    precision = _node_precisions(manifest, load_onnx(path))
    macs: dict[str, int] = {}
    for name, count in per_node.items():
        kind = precision.get(name, "float32")
        macs[kind] = macs.get(kind, 0) + count
    return macs, ""


def macs_per_node(model, input_shapes: dict) -> dict[str, int]:
    """MACs of each conv/matmul node (by node name, else first output) at ``input_shapes``."""
    import onnx

    from relaycomp.frontend.fold import fold_shape_subgraphs, static_shapes
    from relaycomp.frontend.model_info import MAC_COUNTERS
    from relaycomp.frontend.onnx_import import (
        graph_inputs,
        opset_of,
        pin_input_shapes,
        set_input_shapes,
    )
    from relaycomp.frontend.qoperator import convert_qoperator

    inputs, _ = pin_input_shapes(graph_inputs(model), input_shapes)
    pinned = onnx.ModelProto.FromString(model.SerializeToString())
    set_input_shapes(pinned, inputs)
    convert_qoperator(pinned)
    folded, _ = fold_shape_subgraphs(pinned, opset_of(model))
    shapes = static_shapes(folded)
    shapes.update({i.name: tuple(i.dims) for i in folded.graph.initializer})
    return {node.name or node.output[0]: MAC_COUNTERS[node.op_type](node, shapes)
            for node in folded.graph.node if node.op_type in MAC_COUNTERS}


def _node_precisions(manifest, model) -> dict[str, str]:
    """Node name -> the precision its MACs run in, where not float32."""
    layers = (manifest.report.get("quantize") or {}).get("layers", [])
    modes = {"int8": "int8", "float16": "float16"}
    found = {layer.get("onnx_name") or layer["name"]: modes[layer["mode"]]
             for layer in layers if layer.get("mode") in modes}
    # An imported QDQ model: a conv/matmul whose weight is dequantized runs on int8 kernels.
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear"
                   for out in node.output}
    for node in model.graph.node:
        if len(node.input) > 1 and node.input[1] in dequantized:
            found.setdefault(node.name or node.output[0], "int8")
    return found
