"""CPU latency of relaycomp against onnxruntime and OpenVINO: fp32, bf16 and int8, one process.

For each model (ResNet-18 and MobileNet-V2 at 1x3x224x224, the PP-OCRv4 text detector at
1x3x640x640), batch 1, 2 threads everywhere, eight builds:

- onnxruntime fp32 (the reference) and onnxruntime int8;
- OpenVINO fp32 (``INFERENCE_PRECISION_HINT`` f32), OpenVINO default precision (bf16 on CPUs
  with BF16; the row names what OpenVINO reports) and OpenVINO int8 (the QDQ model, non-quantized
  ops pinned to f32 like the other int8 builds); n/a without openvino;
- relaycomp fp32, relaycomp int8 (the QDQ model through relaycomp's integer kernels) and
  relaycomp bf16 (``precision="bf16"``: convs on ``vdpbf16ps``; n/a on a CPU without AVX-512
  BF16, where the row gives the reason).

The int8 model is one QDQ file for all three tools: onnxruntime's ``quant_pre_process`` then
``quantize_static`` (uint8 activations, per-channel int8 weights; ``common.ort_qdq_file``) on 4
seeded calibration inputs. Inputs are seeded random tensors for the classifiers and synthetic
text pages for the detector (it answers noise with zeros). ``common.interleaved_ms`` times the
builds in turns of 3 runs (25 rounds by default), so a change in the shared machine's load hits
all of them alike, with a 0.15 s pause before each turn: the thread pools of the build timed
before busy-wait about that long and would take the cores of the next (2x on onnxruntime here).

Prints the CPU and its vector features, then per build: median and min ms, both as ratios to
onnxruntime fp32, the build time (compile; session creation for onnxruntime) and the agreement
with its reference (onnxruntime fp32 for float builds, onnxruntime int8 for int8 ones) on 8
other inputs: top-1 agreement and cosine for the classifiers; cosine, max abs error and the
share of pixels on the same side of the 0.3 text threshold for the detector.

    python benchmarks/bench_cpu.py [--model resnet18|mobilenet_v2|ppocrv4_det ...] [--rounds N]

resnet18 and mobilenet_v2 come from export_torchvision.py; the detector is fetched once from the
rapidocr-onnxruntime 1.4.4 wheel into benchmarks/models/ppocrv4_det.onnx (needs pip and network).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))

from common import (
    MODELS_DIR,
    THREADS,
    cpu_summary,
    interleaved_ms,
    openvino_model,
    ort_qdq_file,
    ort_session,
)

INPUT_SHAPES = {
    "resnet18": {"input": (1, 3, 224, 224)},
    "mobilenet_v2": {"input": (1, 3, 224, 224)},
    "ppocrv4_det": {"x": (1, 3, 640, 640)},
}
PPOCR_WHEEL = "rapidocr-onnxruntime==1.4.4"
PPOCR_MEMBER = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
AGREEMENT_INPUTS = 8
CALIBRATION_INPUTS = 4
TEXT_THRESHOLD = 0.3  # PP-OCR's default binarization threshold of the detector's map
REFERENCE = "onnxruntime fp32"
# Runs per build per turn: short turns spread a burst of another process's load over all builds.
RUNS_PER_TURN = 3
SETTLE_S = 0.15  # pause before each turn: TVM's idle workers spin ~0.13 s after a run

Run = Callable[[dict], np.ndarray]  # numpy inputs -> first output, one inference


class Unavailable(Exception):
    """A build this machine or this relaycomp cannot make: its row prints n/a and the reason."""


@dataclass(frozen=True)
class Build:
    """One row of the table: ``make()`` builds it, returning its runner and a note."""

    label: str
    reference: str  # the build whose outputs this one's are compared with
    make: Callable[[], tuple[Run, str]]


def model_path(name: str) -> Path:
    """The float ONNX file of ``name``; fetches the PP-OCRv4 detector when it is absent."""
    path = MODELS_DIR / f"{name}.onnx"
    if name == "ppocrv4_det" and not path.exists():
        fetch_ppocr_det(path)
    if not path.exists():
        raise SystemExit(f"{path} is missing: make it with benchmarks/export_torchvision.py")
    return path


def fetch_ppocr_det(path: Path) -> None:
    """Copy ``ch_PP-OCRv4_det_infer.onnx`` out of the rapidocr-onnxruntime wheel to ``path``."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        PPOCR_WHEEL, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(PPOCR_MEMBER)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def pinned_model(path: Path, shapes: dict) -> onnx.ModelProto:
    """The model with its inputs' dims fixed to ``shapes``: onnxruntime's quantizer calibrates
    on data of the shapes it reads from the graph, so a dynamic dim must be made concrete."""
    model = onnx.load(str(path))
    for value in model.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, shapes[value.name], strict=True):
                dim.dim_value = size
    return model


def text_page(shape: tuple, seed: int) -> np.ndarray:
    """A grey page with lines of random 7x5 blocky glyphs, normalized as PP-OCR does: enough
    text-like structure for the detector to answer (random noise gives an all-zero map)."""
    rng = np.random.default_rng(seed)
    _, channels, height, width = shape
    page = 0.9 + rng.normal(0, 0.02, (height, width))
    top = int(rng.integers(8, 40))
    while top < height - 48:
        size = int(rng.integers(14, 40))
        left = int(rng.integers(8, width // 3))
        end = int(rng.integers(left + 4 * size, width))
        while left + size < end:
            glyph = np.kron(rng.random((7, 5)) < 0.45, np.ones((size // 7 + 1, size // 8 + 1)))
            rows, columns = glyph.shape
            page[top:top + rows, left:left + columns][glyph > 0] = 0.1
            left += columns + size // 5
        top += size + int(rng.integers(10, 60))
    mean = np.array([0.485, 0.456, 0.406])[:channels, None, None]
    std = np.array([0.229, 0.224, 0.225])[:channels, None, None]
    return ((page[None] - mean) / std)[None].astype(np.float32)


def sample_inputs(name: str, specs, seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs of ``specs``: text pages for the detector, random tensors otherwise."""
    from relaycomp.runtime.local import random_inputs

    if name == "ppocrv4_det":
        return {spec.name: text_page(tuple(spec.shape), seed) for spec in specs}
    return random_inputs(specs, seed)


def onnxruntime_build(path: Path) -> tuple[Run, str]:
    """An onnxruntime CPU session (``common.ort_session``)."""
    session = ort_session(path)
    return lambda inputs: session.run(None, inputs)[0], ""


def openvino_build(path: Path, precision: str | None) -> tuple[Run, str]:
    """OpenVINO on the CPU with ``precision`` pinned (None: its default); notes what it uses."""
    compiled = openvino_model(path, precision)
    if compiled is None:
        raise Unavailable("openvino is not installed")
    request = compiled.create_infer_request()
    used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return lambda inputs: request.infer(inputs)[0], f"precision hint {used}"


def relaycomp_build(path: Path, output: Path, shapes: dict, **options) -> tuple[Run, str]:
    """``relaycomp.compile`` for this machine with ``THREADS`` cores, loaded."""
    import relaycomp

    artifact = relaycomp.compile(path, output, inputs=shapes, num_cores=THREADS, **options)
    model = relaycomp.load(artifact.path, threads=THREADS)
    name = model.manifest.outputs[0].name
    return lambda inputs: model.run(inputs)[name], ""


def relaycomp_bf16_build(path: Path, output: Path, shapes: dict) -> tuple[Run, str]:
    """relaycomp in bf16 (refused, so n/a, on a CPU without AVX-512 BF16)."""
    from relaycomp.errors import RelaycompError, last_line

    try:
        return relaycomp_build(path, output, shapes, precision="bf16")
    except RelaycompError as err:
        raise Unavailable(last_line(err)) from err


def builds(fp32: Path, int8: Path, folder: Path, shapes: dict) -> list[Build]:
    """The eight builds, in table order."""
    int8_reference = "onnxruntime int8"
    return [
        Build(REFERENCE, REFERENCE, lambda: onnxruntime_build(fp32)),
        Build(int8_reference, REFERENCE, lambda: onnxruntime_build(int8)),
        Build("OpenVINO fp32", REFERENCE, lambda: openvino_build(fp32, "f32")),
        Build("OpenVINO default", REFERENCE, lambda: openvino_build(fp32, None)),
        Build("OpenVINO int8", int8_reference, lambda: openvino_build(int8, "f32")),
        Build("relaycomp fp32", REFERENCE,
              lambda: relaycomp_build(fp32, folder / "fp32.so", shapes)),
        Build("relaycomp int8", int8_reference,
              lambda: relaycomp_build(int8, folder / "int8.so", shapes)),
        Build("relaycomp bf16", REFERENCE,
              lambda: relaycomp_bf16_build(fp32, folder / "bf16.so", shapes)),
    ]


def agreement(reference: np.ndarray, actual: np.ndarray) -> str:
    """Top-1 and cosine for class scores ([batch, classes]), else cosine, max abs error and
    the share of pixels on the same side of the detector's text threshold."""
    from relaycomp.quantize.guard import compare_outputs

    result = compare_outputs(reference, actual)
    if reference.ndim == 2:
        return f"top-1 {result.top1_agreement:4.0%}, cosine {result.cosine:.5f}"
    same = np.mean((reference > TEXT_THRESHOLD) == (actual > TEXT_THRESHOLD))
    return (f"cosine {result.cosine:.5f}, max err {result.max_abs_error:.3g}, "
            f"text mask {same:.2%}")


def bench(name: str, rounds: int) -> None:
    """Build, check and time every build of one model; print its table."""
    from relaycomp.errors import last_line
    from relaycomp.frontend.onnx_import import graph_inputs, pin_input_shapes

    shapes = INPUT_SHAPES[name]
    model = pinned_model(model_path(name), shapes)
    specs, _ = pin_input_shapes(graph_inputs(model), shapes)
    inputs = sample_inputs(name, specs, seed=0)
    checks = [sample_inputs(name, specs, seed) for seed in range(1, AGREEMENT_INPUTS + 1)]
    calibration = [sample_inputs(name, specs, 100 + i) for i in range(CALIBRATION_INPUTS)]
    rows: dict[str, str] = {}  # label -> "build s, agreement [note]", or why it has no timing
    outputs: dict[str, np.ndarray] = {}
    runners: dict[str, Callable[[], np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fp32, int8 = folder / "fp32.onnx", folder / "int8.onnx"
        onnx.save(model, fp32)
        ort_qdq_file(fp32, int8, calibration)
        for build in builds(fp32, int8, folder, shapes):
            start = time.perf_counter()
            try:
                run, note = build.make()
                seconds = time.perf_counter() - start
                outputs[build.label] = np.concatenate([run(check) for check in checks])
            except Unavailable as reason:
                rows[build.label] = f"n/a ({reason})"
                continue
            except Exception as err:  # noqa: BLE001 - a peer failing on a model is a result
                rows[build.label] = f"failed: {last_line(err)}"
                continue
            reference = outputs.get(build.reference)
            if build.reference == build.label:
                match = "reference"
            elif reference is None:
                match = f"n/a ({build.reference} failed)"
            else:
                match = agreement(reference, outputs[build.label])
            rows[build.label] = f"{seconds:8.1f}  {match}" + (f"  [{note}]" if note else "")
            runners[build.label] = lambda run=run: run(inputs)
        timings = interleaved_ms(runners, rounds=rounds, repeat=RUNS_PER_TURN,
                                 settle_s=SETTLE_S)
    print_table(name, shapes, rounds, rows, timings)


def print_table(name: str, shapes: dict, rounds: int, rows: dict[str, str],
                timings: dict[str, tuple[float, float]]) -> None:
    """One line per build; ratios are latency / onnxruntime fp32 latency (lower is faster)."""
    dims = "; ".join(f"{k} {'x'.join(map(str, v))}" for k, v in shapes.items())
    print(f"\n{name} ({dims}), batch 1, {THREADS} threads, {rounds} rounds x {RUNS_PER_TURN} runs "
          "interleaved")
    print(f"  {'build':<18} {'median ms':>10} {'min ms':>9} {'x ort fp32':>16} {'build s':>8}"
          f"  agreement with reference")
    reference = timings.get(REFERENCE)
    for label, text in rows.items():
        if label not in timings:
            print(f"  {label:<18} {text}")
            continue
        median, fastest = timings[label]
        ratios = ("n/a" if reference is None
                  else f"{median / reference[0]:.2f} / {fastest / reference[1]:.2f}")
        print(f"  {label:<18} {median:10.2f} {fastest:9.2f} {ratios:>16} {text}")


def main(argv: list[str] | None = None) -> None:
    """``--model NAME`` (repeatable; default all three), ``--rounds N`` interleaved rounds."""
    import onnxruntime
    import tvm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=sorted(INPUT_SHAPES))
    parser.add_argument("--rounds", type=int, default=25, help="interleaved rounds (default 25)")
    args = parser.parse_args(argv)
    try:
        import openvino

        openvino_version = openvino.__version__.split("-")[0]
    except ImportError:
        openvino_version = "not installed"
    print(f"CPU: {cpu_summary()}")
    print(f"onnxruntime {onnxruntime.__version__}, OpenVINO {openvino_version}, TVM "
          f"{tvm.__version__}; ratios: median / min latency over onnxruntime fp32's")
    for name in args.model or list(INPUT_SHAPES):
        bench(name, args.rounds)


if __name__ == "__main__":
    main()
