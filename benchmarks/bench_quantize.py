"""int8 with relaycomp's own calibration vs fp32: relaycomp and onnxruntime, same run, 2 threads.

Models: the bundled digits CNN (batch 32, calibrated on its 32 calibration digits, checked on
the 64 held-out ones) and benchmarks/models/{resnet18,mobilenet_v2}.onnx (batch 1, calibrated
and checked on seeded random inputs: no ImageNet here). relaycomp int8 is
``compile --quantize int8 --calib ...`` (quantize_int8 → lower_qdq_to_integer → int8 kernels);
onnxruntime int8 is its own ``quantize_static`` (QDQ, per-channel, see tests/qdq.py).
Prints median and min latencies (the four builds timed in turns, so a change in the machine's
load hits all alike), ratios, int8/fp32 for both, the accuracy report of the quantizer (vs
float) and the weight sizes.

    python benchmarks/bench_quantize.py [--model digits] [--calib-method entropy]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from common import MODELS_DIR, THREADS, interleaved_ms, ort_session


def _data(name: str, model: onnx.ModelProto):
    """(input name, compiled shape, calibration samples, held-out samples, labels)."""
    input_name = model.graph.input[0].name
    if name == "digits":
        from relaycomp.frontend.examples import get_example

        samples = get_example("digits").samples()
        return input_name, (32, 1, 8, 8), samples["calibration"], samples["input"], \
            samples["labels"]
    dims = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((16, *dims[1:])).astype(np.float32)
    held_out = rng.standard_normal((8, *dims[1:])).astype(np.float32)
    return input_name, tuple(dims), calib, held_out, None


def bench(name: str, model: onnx.ModelProto, model_path: Path, method: str,
          reduce_range: bool | None) -> None:
    """Compile fp32 and int8, time both and onnxruntime's fp32/int8, print the table."""
    from qdq import ort_qdq

    import relaycomp
    from relaycomp.compiler.build import CompileConfig, compile_model
    from relaycomp.quantize.quantizer import QuantConfig
    from relaycomp.schedules.cpu.int8 import prefers_pair_safe_weights

    input_name, shape, calib, held_out, labels = _data(name, model)
    inputs = {input_name: held_out[:shape[0]] if shape[0] > 1 else held_out[:1]}
    evaluation = {input_name: held_out, **({"labels": labels} if labels is not None else {})}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = {}
        for label, extra in (("fp32", {}), ("int8", {
                "quantize": QuantConfig(calibration=method, reduce_range=reduce_range),
                "calibration": {input_name: calib},
                "evaluation": evaluation})):
            config = CompileConfig(input_shapes={input_name: shape}, num_cores=THREADS, **extra)
            start = time.perf_counter()
            artifact = compile_model(model, folder / f"{label}.so", config)
            seconds = time.perf_counter() - start
            results[label] = (relaycomp.load(artifact.path), seconds, artifact,
                              artifact.path.stat().st_size)
        fixed = onnx.load(str(model_path))
        _pin(fixed, input_name, shape)
        float_path, int8_path = folder / "f.onnx", folder / "q.onnx"
        onnx.save(fixed, float_path)
        ort_reduce = reduce_range if reduce_range is not None else prefers_pair_safe_weights(None)
        onnx.save(ort_qdq(fixed, batches=4, reduce_range=ort_reduce), int8_path)
        sessions = {label: ort_session(path) for label, path in (("fp32", float_path),
                                                                  ("int8", int8_path))}
        runners = {f"{tool} {label}": (lambda run=run: run(inputs)) for tool, label, run in (
            ("relaycomp", "int8", results["int8"][0].run),
            ("relaycomp", "fp32", results["fp32"][0].run),
            ("onnxruntime", "int8", lambda x: sessions["int8"].run(None, x)),
            ("onnxruntime", "fp32", lambda x: sessions["fp32"].run(None, x)))}
        timings = interleaved_ms(runners)
        ort_agreement = _agreement(float_path, int8_path, input_name, held_out, shape[0])
    int8, fp32 = timings["relaycomp int8"], timings["relaycomp fp32"]
    ort_int8, ort_fp32 = timings["onnxruntime int8"], timings["onnxruntime fp32"]
    report = results["int8"][2].manifest.report["quantize"]
    accuracy = report["accuracy"]
    print(f"\n{name} {list(shape)}: median / min ms, {THREADS} threads (min ratio to relaycomp "
          "fp32; min is the steadier figure on a shared machine)")
    for label, (median, fastest) in (("relaycomp int8", int8), ("relaycomp fp32", fp32),
                                     ("onnxruntime int8", ort_int8),
                                     ("onnxruntime fp32", ort_fp32)):
        print(f"  {label:<18} {median:8.3f} / {fastest:8.3f} ms ({fastest / fp32[1]:5.2f}x)")
    print(f"  int8/fp32 (min): relaycomp {int8[1] / fp32[1]:.2f}x, onnxruntime "
          f"{ort_int8[1] / ort_fp32[1]:.2f}x; relaycomp int8 / onnxruntime int8 "
          f"{int8[1] / ort_int8[1]:.2f}x")
    print(f"  compile: fp32 {results['fp32'][1]:.0f} s, int8 {results['int8'][1]:.0f} s "
          f"(calibration {method} + accuracy check)")
    sizes = results["fp32"][3], results["int8"][3]
    print(f"  artifact {sizes[0] / 1e6:.2f} -> {sizes[1] / 1e6:.2f} MB ({sizes[1] / sizes[0]:.0%}),"
          f" layer weights {report['weight_bytes_float'] / 1e6:.2f} -> "
          f"{report['weight_bytes_quantized'] / 1e6:.2f} MB "
          f"({report['weight_bytes_quantized'] / report['weight_bytes_float']:.0%})")
    text = f"top-1 agreement {accuracy['top1_agreement']:.1%}, cosine {accuracy['cosine']:.4f}"
    if accuracy["float_accuracy"] is not None:
        text = (f"accuracy {accuracy['float_accuracy']:.1%} float -> "
                f"{accuracy['quant_accuracy']:.1%} int8, " + text)
    print(f"  vs float on {report['evaluated_on']}: {text}")
    print(f"  onnxruntime int8 vs its float on the same batches: top-1 agreement "
          f"{ort_agreement[0]:.1%}, cosine {ort_agreement[1]:.4f}")


def _agreement(float_path: Path, int8_path: Path, name: str, held_out: np.ndarray,
               batch: int) -> tuple[float, float]:
    """(top-1 agreement, cosine) of onnxruntime's int8 model with its float one."""
    import onnxruntime as ort

    outputs = []
    for path in (float_path, int8_path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs.append(np.concatenate([session.run(None, {name: held_out[i:i + batch]})[0]
                                       for i in range(0, len(held_out) - batch + 1, batch)]))
    from relaycomp.quantize.guard import compare_outputs  # the report's own measure

    agreement = compare_outputs(*outputs)
    return agreement.top1_agreement, agreement.cosine


def _pin(model: onnx.ModelProto, name: str, shape) -> None:
    for value in model.graph.input:
        if value.name == name:
            for dim, size in zip(value.type.tensor_type.shape.dim, shape):
                dim.dim_value = size


def main(argv: list[str] | None = None) -> None:
    """``--model NAME`` (digits, resnet18, mobilenet_v2; default all), ``--calib-method``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append")
    parser.add_argument("--calib-method", default="minmax")
    parser.add_argument("--full-range", action="store_true",
                        help="8-bit weights (default: 7-bit where the int8 kernels want them)")
    args = parser.parse_args(argv)
    from relaycomp.frontend.examples import get_example

    paths = {"digits": get_example("digits").model_path}
    paths.update({p.stem: p for p in sorted(MODELS_DIR.glob("*.onnx"))})
    for name in args.model or list(paths):
        bench(name, onnx.load(str(paths[name])), paths[name], args.calib_method,
              False if args.full_range else None)


if __name__ == "__main__":
    main()
