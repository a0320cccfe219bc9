"""The README's first command: compile the bundled digits CNN for this machine and run it.

Prints each step with the equivalent CLI command, the held-out accuracy, the largest error against
the reference runtime, and the latency; then the same model with int8 kernels (calibrated on the
bundled calibration images): accuracy, weight size and latency next to the float build.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from relaycomp.compiler.build import CompileConfig, compile_model
from relaycomp.frontend.examples import get_example
from relaycomp.frontend.onnx_import import load_onnx
from relaycomp.runtime.local import load
from relaycomp.runtime.reference import compare, run_reference


def run_demo(output_dir: str | Path = "relaycomp-demo") -> int:
    """Compile ``example:digits`` into ``output_dir``, run it and check it; returns an exit code."""
    example = get_example("digits")
    samples = example.samples()
    images, labels = samples["input"], samples["labels"]
    output_dir = Path(output_dir)
    output_dir.mkdir(exist_ok=True)
    artifact_path = output_dir / "digits.so"
    batch = images.shape[0]

    print(f"$ relaycomp compile example:digits --input input:{batch},1,8,8 -o {artifact_path}")
    artifact = compile_model("example:digits", artifact_path,
                             CompileConfig(input_shapes={"input": images.shape}))
    print(f"  {len(artifact.manifest.passes)} passes, "
          f"{artifact.manifest.report['kernels']} kernels, "
          f"{artifact_path.stat().st_size / 1024:.0f} KiB")

    print(f"$ relaycomp run {artifact_path} --inputs example:digits --check example:digits")
    model = load(artifact_path)
    logits = model.run({"input": images})["logits"]
    accuracy = float(np.mean(np.argmax(logits, axis=1) == labels))
    expected, runtime = run_reference(load_onnx(example.model_path), {"input": images})
    error = compare({"logits": logits}, expected)["logits"]
    timing = model.time({"input": images}, repeat=50)
    print(f"  held-out accuracy: {accuracy:.1%} on {batch} digits")
    print(f"  max error vs {runtime}: {error['max_abs']:.2e} (relative {error['max_rel']:.2e})")
    print(f"  latency: {timing.median_ms:.3f} ms per batch of {batch}")
    _int8_step(images, labels, output_dir / "digits_int8.so", accuracy)
    return 0 if error["max_rel"] <= 1e-3 else 1


def _int8_step(images: np.ndarray, labels: np.ndarray, path: Path, float_accuracy: float) -> None:
    from relaycomp.quantize.quantizer import QuantConfig

    batch = images.shape[0]
    print(f"$ relaycomp compile example:digits --input input:{batch},1,8,8 --quantize int8 "
          f"--calib example:digits -o {path}")
    config = CompileConfig(input_shapes={"input": images.shape}, features=(QuantConfig(),),
                           calibration="example:digits")
    report = compile_model("example:digits", path, config).manifest.report["quantize"]
    model = load(path)
    accuracy = float(np.mean(np.argmax(model.run({"input": images})["logits"], axis=1) == labels))
    timing = model.time({"input": images}, repeat=50)
    print(f"  int8 held-out accuracy: {accuracy:.1%} (float {float_accuracy:.1%}); weights "
          f"{report['weight_bytes_float'] / 1024:.1f} -> "
          f"{report['weight_bytes_quantized'] / 1024:.1f} KiB; "
          f"latency {timing.median_ms:.3f} ms per batch of {batch}")
