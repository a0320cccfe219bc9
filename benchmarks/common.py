"""Shared benchmark helpers: peers (onnxruntime, OpenVINO) timed the same way as relaycomp."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

THREADS = 2
MODELS_DIR = Path(__file__).parent / "models"
os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))  # before TVM's thread pool starts


def median_ms(fn, repeat: int = 30, warmup: int = 5) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return float(np.median(samples))


def interleaved_ms(runners: dict, rounds: int = 8, repeat: int = 10, warmup: int = 3,
                   settle_s: float = 0.0) -> dict[str, tuple[float, float]]:
    """``label -> (median, min)`` ms of each ``runners[label]()``, timed in turns: each round
    runs every runner ``repeat`` times, so a change in the machine's load hits all of them
    alike (timing one after the other on a shared machine compares different loads). The
    median is over all runs, the min the steadiest figure. ``settle_s`` pauses before each
    turn until the thread pools used before it sleep: TVM's workers yield-spin ~0.13 s after a
    run (300000 rounds) and onnxruntime's spin too, taking cores from the runner timed next."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(rounds):
        for label, fn in runners.items():
            time.sleep(settle_s)
            for _ in range(repeat):
                start = time.perf_counter()
                fn()
                samples[label].append((time.perf_counter() - start) * 1e3)
    return {label: (float(np.median(v)), float(np.min(v))) for label, v in samples.items()}


def ort_session(model_path: Path):
    """An onnxruntime CPU session with ``THREADS`` intra-op threads, all graph optimizations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def onnxruntime_ms(model_path: Path, inputs: dict, repeat: int = 30) -> float:
    """onnxruntime CPU latency with ``THREADS`` intra-op threads, all graph optimizations on."""
    session = ort_session(model_path)
    return median_ms(lambda: session.run(None, inputs), repeat)


def openvino_model(model_path: Path, precision: str | None = "f32"):
    """An OpenVINO CPU compiled model with ``THREADS`` threads and the latency hint, or None if
    openvino is absent. ``precision`` pins ``INFERENCE_PRECISION_HINT``; None keeps OpenVINO's
    default (bf16 on CPUs with AVX-512 BF16 or AMX), which
    ``compiled.get_property("INFERENCE_PRECISION_HINT")`` reports. A QDQ model runs in int8."""
    try:
        import openvino as ov
    except ImportError:
        return None
    config = {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    return ov.Core().compile_model(str(model_path), "CPU", config)


def openvino_ms(model_path: Path, inputs: dict, repeat: int = 30) -> float | None:
    """OpenVINO fp32 latency (precision pinned to f32: it defaults to bf16), or None if absent."""
    compiled = openvino_model(model_path, "f32")
    if compiled is None:
        return None
    request = compiled.create_infer_request()
    return median_ms(lambda: request.infer(inputs), repeat)



def ort_qdq_file(float_path: Path, out_path: Path, batches: list[dict]) -> None:
    """Write onnxruntime's QDQ int8 model of ``float_path`` to ``out_path``: ``quant_pre_process``
    then ``quantize_static`` (uint8 activations, per-channel int8 weights, as tests/qdq.py),
    calibrated on ``batches`` (input name -> array). A model below opset 13 is converted first:
    per-channel QDQ needs DequantizeLinear's ``axis``, which quantize_static writes anyway."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(batches)

        def get_next(self):
            return next(self._batches, None)

    model = onnx.load(str(float_path))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    with tempfile.TemporaryDirectory() as folder:
        source, prepared = Path(folder) / "float.onnx", Path(folder) / "prepared.onnx"
        onnx.save(version_converter.convert_version(model, 13) if opset < 13 else model, source)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out_path), Batches(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)

# The /proc/cpuinfo flags that decide which kernels a CPU runtime can pick.
CPU_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw",
                "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8",
                "amx_bf16")


def cpu_summary() -> str:
    """``model name (family, model, cores); has: avx2 fma ...; lacks: ...`` from /proc/cpuinfo
    on Linux, else the processor name Python knows."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    fields = {}
    for line in text.splitlines():  # every core repeats the same fields: keep the first
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    has = " ".join(f for f in CPU_FEATURES if f in flags) or "-"
    lacks = " ".join(f for f in CPU_FEATURES if f not in flags) or "-"
    return (f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')}, {os.cpu_count()} cores); has: {has}; "
            f"lacks: {lacks}")


def ratio(ms: float | None, reference_ms: float) -> str:
    """``12.3 ms (4.56x)`` against the reference."""
    if ms is None:
        return "n/a"
    return f"{ms:8.2f} ms ({ms / reference_ms:5.2f}x)"
