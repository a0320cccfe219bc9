"""Where a relaycomp build spends its time: every kernel of ``main`` built and timed alone.

The model goes through the pipeline up to the ``lower`` stage (optionally int8-quantized with
seeded random calibration data); each ``call_tir`` kernel is built on its own and timed with
random arguments of its shapes (the best of 5 x 10 calls, 2 threads). Prints the kernels by
total time (time x calls), with their argument types, so the slowest are the first to look at.
The sum leaves out what the whole model adds (the VM, allocations, thread-pool wake-ups between
kernels, colder caches): compare it with ``relaycomp run``'s latency.

    python benchmarks/profile_kernels.py benchmarks/models/mobilenet_v2.onnx [--quantize | --bf16]
        [--top 20] [--target x86-64-avx2]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))

from common import THREADS


def scheduled_module(path: Path, quantize: bool, bf16: bool = False, preset: str = "host"):
    """The model's Relax module after the ``schedule`` stage, and the target (``preset``: a
    target preset name, as ``--target`` takes it)."""
    from relaycomp.compiler.pipeline import (
        Placement,
        default_stages,
        run_stages,
        split_before,
        with_passes,
    )
    from relaycomp.frontend.onnx_import import import_onnx
    from relaycomp.targets import resolve

    target = resolve(preset, num_cores=THREADS).tvm_target()
    stages, _ = split_before(default_stages("llvm"), "lower")
    if bf16:
        stages = with_passes(stages, [Placement("convert_to_bf16", "layout", "end")])
    if not quantize:
        return run_stages(import_onnx(onnx.load(str(path))).mod, stages, target)[0], target
    from relaycomp.quantize.quantizer import QuantConfig
    from relaycomp.quantize.quantizer import quantize as quantize_module

    model = onnx.load(str(path))
    graph_input = model.graph.input[0]
    shape = [d.dim_value or 1 for d in graph_input.type.tensor_type.shape.dim]
    calib = {graph_input.name: np.random.default_rng(0).standard_normal(
        (8, *shape[1:])).astype(np.float32)}
    mod, _ = quantize_module(str(path), QuantConfig(), calib=calib, target=target)
    _, rest = split_before(stages, "quantize")
    return run_stages(mod, rest, target)[0], target


def kernel_times(mod, target) -> tuple[dict[str, float], Counter]:
    """Kernel name -> ms per call, and calls per kernel."""
    import tvm
    from tvm.driver import build as tvm_build

    from relaycomp import ir

    calls = Counter(call.args[0].name_hint for call in ir.kernel_calls(mod))
    device, rng, times = tvm.cpu(), np.random.default_rng(0), {}
    for name in calls:
        func = mod[name].with_attr("global_symbol", "main")
        kernel = tvm_build(tvm.IRModule({"main": func}), target=target)
        args = [tvm.runtime.tensor(_random(rng, [int(d) for d in p.shape], str(p.dtype)), device)
                for p in func.params]
        timer = kernel.time_evaluator("main", device, number=10, repeat=5)
        times[name] = min(timer(*args).results) * 1e3
    return times, calls


def _random(rng, shape, dtype: str) -> np.ndarray:
    if "float" in dtype:
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -64), min(info.max, 64) + 1, shape).astype(dtype)


def signature(func) -> str:
    """``uint8[1, 16, 112, 112] int8[...] ...``: the kernel's parameters."""
    return " ".join(f"{p.dtype}{[int(d) for d in p.shape]}" for p in func.params)


def main(argv: list[str] | None = None) -> None:
    """Print the table; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--quantize", action="store_true", help="int8, own calibration")
    parser.add_argument("--bf16", action="store_true", help="convs in bf16 (convert_to_bf16)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--target", default="host", help="a target preset (default: host)")
    args = parser.parse_args(argv)
    from relaycomp import ir

    ir.request_threads(THREADS)
    mod, target = scheduled_module(args.model, args.quantize, args.bf16, args.target)
    times, calls = kernel_times(mod, target)
    total = sum(times[k] * calls[k] for k in times)
    print(f"{args.model.name}{' int8' if args.quantize else ''}: {total:.2f} ms in "
          f"{sum(calls.values())} kernel calls ({len(calls)} kernels), {THREADS} threads")
    for name in sorted(times, key=lambda k: -times[k] * calls[k])[:args.top]:
        spent = times[name] * calls[name]
        print(f"{spent:8.3f} ms {spent / total:6.1%} x{calls[name]:<3} {name[:48]:<48} "
              f"{signature(mod[name])}")


if __name__ == "__main__":
    main()
