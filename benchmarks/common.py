"""Shared benchmark helpers: peers (onnxruntime, OpenVINO) timed the same way as relaycomp."""

from __future__ import annotations

import os
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


def interleaved_ms(runners: dict, rounds: int = 8, repeat: int = 10,
                   warmup: int = 3) -> dict[str, tuple[float, float]]:
    """``label -> (median, min)`` ms of each ``runners[label]()``, timed in turns: each round
    runs every runner ``repeat`` times, so a change in the machine's load hits all of them
    alike (timing one after the other on a shared machine compares different loads). The
    median is over all runs, the min the steadiest figure."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(rounds):
        for label, fn in runners.items():
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
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return median_ms(lambda: session.run(None, inputs), repeat)


def openvino_ms(model_path: Path, inputs: dict, repeat: int = 30) -> float | None:
    """OpenVINO fp32 latency (precision pinned to f32: it defaults to bf16), or None if absent."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    compiled = core.compile_model(str(model_path), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": THREADS,
        "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return median_ms(lambda: request.infer(inputs), repeat)


def ratio(ms: float | None, reference_ms: float) -> str:
    """``12.3 ms (4.56x)`` against the reference."""
    if ms is None:
        return "n/a"
    return f"{ms:8.2f} ms ({ms / reference_ms:5.2f}x)"
