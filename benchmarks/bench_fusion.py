"""Fusion: kernels, intermediate bytes and latency — stock TVM vs relaycomp vs onnxruntime.

For each model: stock TVM's fusion (cpu_generic LegalizeOps + FuseOps + FuseTIR on the stock
importer's module) against relaycomp's pipeline (BN folding, no-op removal, horizontal merging,
then the same fusion), and latency of stock ``tvm.compile``, relaycomp without its graph passes,
full relaycomp and onnxruntime — same run, 2 threads.

    python benchmarks/bench_fusion.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).parent))
from common import MODELS_DIR, THREADS, median_ms, onnxruntime_ms, ratio

ROOT = Path(__file__).parents[1]
GRAPH_PASSES = ("fold_batchnorm", "remove_noop_ops", "merge_parallel_convs",
                "merge_parallel_matmuls")


def models() -> dict[str, tuple[Path, dict]]:
    """Name → (ONNX path, input shapes)."""
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    found = {
        "resnet18": (MODELS_DIR / "resnet18.onnx", {}),
        "mobilenet_v2": (MODELS_DIR / "mobilenet_v2.onnx", {}),
        "inception_v1": (light / "light_inception_v1.onnx", {}),
        "attention_block": (ROOT / "tests" / "fixtures" / "torch_attention_block.onnx",
                            {"x": (1, 128, 32)}),
    }
    return {name: spec for name, spec in found.items() if spec[0].is_file()}


def stock_fusion(path: Path, shapes: dict) -> dict:
    """Kernels and intermediate bytes after stock TVM's import + legalize + fuse."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from relaycomp import ir
    from relaycomp.frontend.onnx_import import import_onnx

    mod = import_onnx(onnx.load(str(path)), shapes).mod  # stock from_onnx fails on some models
    target = tvm.target.Target({"kind": "llvm", "num-cores": THREADS})
    with target:
        mod = tvm.transform.Sequential(cpu.legalize_passes(target))(mod)
    return ir.kernel_traffic(mod)


def stock_latency(path: Path, inputs: dict) -> float:
    """Stock ``tvm.compile`` (default pipeline) latency."""
    import tvm

    from relaycomp.frontend.onnx_import import import_onnx

    mod = import_onnx(onnx.load(str(path)), {k: v.shape for k, v in inputs.items()}).mod
    target = tvm.target.Target({"kind": "llvm", "num-cores": THREADS})
    vm = tvm.relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
    tensors = [tvm.runtime.tensor(v) for v in inputs.values()]
    return median_ms(lambda: vm["main"](*tensors), repeat=3, warmup=1)


def relaycomp_build(path: Path, shapes: dict, folder: Path, graph_passes: bool):
    """Compile with or without relaycomp's graph passes; returns the loaded model and artifact."""
    import relaycomp
    from relaycomp.compiler.build import CompileConfig, compile_model
    from relaycomp.compiler.pipeline import Stage, default_stages

    stages = default_stages("llvm")
    if not graph_passes:
        stages = [Stage(s.name, tuple(p for p in s.passes if p not in GRAPH_PASSES))
                  for s in stages]
    name = "fused.so" if graph_passes else "plain.so"
    artifact = compile_model(path, folder / name, CompileConfig(
        input_shapes=shapes, num_cores=THREADS, stages=tuple(stages)))
    return relaycomp.load(artifact.path), artifact


def main() -> None:
    from relaycomp.runtime.local import random_inputs

    print(f"threads: {THREADS}; latency ratios are against onnxruntime (lower is better)")
    for name, (path, shapes) in models().items():
        with tempfile.TemporaryDirectory() as tmp:
            fused, artifact = relaycomp_build(path, shapes, Path(tmp), graph_passes=True)
            plain, _ = relaycomp_build(path, shapes, Path(tmp), graph_passes=False)
            inputs = random_inputs(fused.manifest.inputs)
            stock = stock_fusion(path, {k: v.shape for k, v in inputs.items()})
            ours = artifact.manifest.report["fusion"]
            ort_ms = onnxruntime_ms(path, inputs)
            fused_ms = fused.time(inputs, repeat=20).median_ms
            plain_ms = plain.time(inputs, repeat=20).median_ms
            stock_ms = stock_latency(path, inputs)
        print(f"\n{name}")
        print(f"  kernels:            stock fusion {stock['kernels']:4d}   "
              f"relaycomp {ours['kernels_after']:4d}")
        print(f"  intermediate bytes: stock fusion {stock['intermediate_bytes'] / 2**20:7.2f} MiB"
              f"   relaycomp {ours['intermediate_bytes_after'] / 2**20:7.2f} MiB")
        print(f"  onnxruntime                     {ort_ms:8.2f} ms ( 1.00x)")
        print(f"  stock tvm.compile               {ratio(stock_ms, ort_ms)}")
        print(f"  relaycomp, no graph passes      {ratio(plain_ms, ort_ms)}")
        print(f"  relaycomp, fused                {ratio(fused_ms, ort_ms)}")


if __name__ == "__main__":
    main()
