"""Run ONNX's operator conformance cases and backend model cases through relaycomp.

Each case goes import → compile (host CPU) → run, and its outputs are compared with the
reference outputs the onnx package ships (its own tolerances). Every case ends in one class:

- ``pass``:       the outputs match;
- ``refused``:    a clear ``RelaycompError`` for an unsupported op or feature (class b);
- ``wrapped``:    a ``RelaycompError`` that only wraps a failure inside TVM or a pass
                  ("cannot import node ...", "pass ... failed", "rejects inputs"): a bug (c);
- ``internal``:   any other exception, a crash or a timeout (c);
- ``wrong``:      compiled and ran, but the outputs differ (c, the worst kind); float16 and
                  bfloat16 outputs may differ by one rounding step (1 ULP) beyond the case's
                  tolerance: the reference rounds every step to half, relaycomp sums in float32;
- ``skipped``:    not a numeric-tensor case (strings, sequences/optionals as graph inputs or
                  outputs, training ops, float8/int4 and other types outside the standard ones).

Inputs that real exports hold as constants (axes, shapes, pads, k, scales, ...) are turned into
initializers first, as the issue this tool was written for measures them.

    python tools/onnx_conformance.py --sample 250 --seed 0 --json out.json
    python tools/onnx_conformance.py --models           # the backend model cases
    python tools/onnx_conformance.py --cases test_abs,test_relu
    python tools/onnx_conformance.py --models --expected tools/onnx_conformance_expected.json

``tools/onnx_conformance_expected.json`` lists the cases of ``--sample 250 --seed 0`` and of
``--models`` that do not pass yet, each with its reason; ``--expected`` fails on any other.

Each case runs in a worker process that is restarted after a crash; ``--timeout`` bounds one
case. Summary counts go to stdout, per-case results to ``--json``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

# (op type, input positions) whose integer inputs real exporters store as constants.
CONSTANT_INPUTS = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3),
    "Resize": (1, 2, 3), "Upsample": (1,), "TopK": (1,), "Squeeze": (1,), "Unsqueeze": (1,),
    "Split": (1,), "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,),
    "ReduceProd": (1,), "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,),
    "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,), "ConstantOfShape": (0,), "OneHot": (1, 2),
    "CumSum": (1,), "CumProd": (1,), "Range": (0, 1, 2), "CenterCropPad": (1,),
    "DFT": (1, 2), "STFT": (1, 2), "NonMaxSuppression": (2,), "Trilu": (1,),
    "RoiAlign": (2,), "GridSample": (), "BlackmanWindow": (0,), "HannWindow": (0,),
    "HammingWindow": (0,), "MelWeightMatrix": (0, 1, 2), "Compress": (1,),
}
SKIPPED_DOMAINS = ("ai.onnx.preview.training",)
STANDARD_TYPES = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT8, onnx.TensorProto.INT16,
    onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT8,
    onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
    onnx.TensorProto.BOOL,
}
WRAPPED_MARKERS = ("cannot import node", "cannot import the model", ") failed:",
                   "rejects inputs", "cannot build", "internal")
MODEL_FOLDERS = ("simple", "pytorch-converted", "pytorch-operator")


def node_cases() -> dict[str, tuple]:
    """name -> (model, inputs, outputs, rtol, atol) of the in-memory operator cases."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    result = {}
    for case in cases:
        if not case.data_sets:
            continue
        inputs, outputs = case.data_sets[0]
        result[case.name] = (case.model, [_as_array(a) for a in inputs],
                             [_as_array(a) for a in outputs], case.rtol, case.atol)
    return result


def _as_array(value):
    """Arrays, numpy scalars (0-d inputs) and TensorProtos (bfloat16 data) as arrays; lists
    (sequences) and other values as they are."""
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, np.generic):
        return np.asarray(value)
    return value


def model_case(folder: str) -> tuple:
    """(model, inputs, outputs, rtol, atol) of a backend model case folder."""
    model = onnx.load(os.path.join(folder, "model.onnx"))
    data = min(glob.glob(os.path.join(folder, "test_data_set_*")))
    inputs = [_read_pb(p) for p in sorted(glob.glob(os.path.join(data, "input_*.pb")),
                                          key=_index)]
    outputs = [_read_pb(p) for p in sorted(glob.glob(os.path.join(data, "output_*.pb")),
                                           key=_index)]
    return model, inputs, outputs, 1e-3, 1e-7


def model_cases() -> dict[str, str]:
    """name -> folder of the backend model cases (simple, pytorch-converted/-operator)."""
    root = Path(onnx.__file__).parent / "backend" / "test" / "data"
    found = {}
    for sub in MODEL_FOLDERS:
        for folder in sorted((root / sub).iterdir()):
            if (folder / "model.onnx").is_file():
                found[f"{sub}/{folder.name}"] = str(folder)
    return found


def _index(path: str) -> int:
    return int(Path(path).stem.split("_")[-1])


def _read_pb(path: str):
    tensor = onnx.TensorProto()
    with open(path, "rb") as f:
        tensor.ParseFromString(f.read())
    return numpy_helper.to_array(tensor)


def skip_reason(model: onnx.ModelProto, inputs, outputs) -> str | None:
    """Why a case is not a numeric-tensor case, or None."""
    graph = model.graph
    for node in graph.node:
        if node.domain in SKIPPED_DOMAINS:
            return f"training op {node.op_type}"
    for value in list(graph.input) + list(graph.output):
        if not value.type.HasField("tensor_type"):
            return f"non-tensor graph input/output '{value.name}'"
        if value.type.tensor_type.elem_type not in STANDARD_TYPES:
            name = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
            return f"element type {name}"
    for array in list(inputs) + list(outputs):
        if not isinstance(array, np.ndarray) or array.dtype.kind in "OSU":
            return "non-numeric data"
    return None


def constant_shape_inputs(model: onnx.ModelProto, inputs) -> tuple[onnx.ModelProto, list]:
    """Graph inputs feeding CONSTANT_INPUTS positions become initializers."""
    graph = model.graph
    names = [v.name for v in graph.input]
    arrays = dict(zip(names, inputs))
    constant = set()
    for node in graph.node:
        for position in CONSTANT_INPUTS.get(node.op_type, ()):
            name = node.input[position] if position < len(node.input) else ""
            if name in arrays and arrays[name].dtype.kind in "iuf":  # Resize scales too
                constant.add(name)
    if not constant:
        return model, list(inputs)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    kept = [v for v in model.graph.input if v.name not in constant]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    for name in sorted(constant):
        model.graph.initializer.append(numpy_helper.from_array(arrays[name], name))
    return model, [arrays[v.name] for v in kept]


def classify_error(err: BaseException) -> str:
    from relaycomp.errors import RelaycompError

    if isinstance(err, RelaycompError):
        text = str(err).lower()
        return "wrapped" if any(m in text for m in WRAPPED_MARKERS) else "refused"
    return "internal"


def outputs_match(got, want, rtol: float, atol: float) -> str | None:
    """None when ``got`` matches ``want`` (NaN matches NaN), else what differs."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return f"shape {list(got.shape)} != {list(want.shape)}"
    if want.dtype in (np.float16,) or "bfloat16" in want.dtype.name:
        return _half_outputs_match(got, want, rtol, atol)
    if want.dtype.kind in "fc" or got.dtype.kind in "fc" or "bfloat16" in (want.dtype.name,
                                                                           got.dtype.name):
        try:
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                                       rtol=rtol, atol=atol, equal_nan=True)
        except AssertionError as err:
            return str(err).strip().splitlines()[2] if str(err).count("\n") > 2 else str(err)
        return None
    if not np.array_equal(got.astype(want.dtype), want) or got.dtype != want.dtype:
        return f"values or dtype differ ({got.dtype} vs {want.dtype})"
    return None


def _half_outputs_match(got, want, rtol: float, atol: float) -> str | None:
    """float16/bfloat16 outputs: the case's tolerance plus one rounding step (ULP) of the
    output type. The reference rounds every intermediate to half precision; relaycomp (like
    onnxruntime) sums in float32 and rounds once, which can land one step away."""
    want64, got64 = want.astype(np.float64), got.astype(np.float64)
    nan = np.isnan(want64)
    if not np.array_equal(nan, np.isnan(got64)):
        return "nan location mismatch"
    finite = ~nan & np.isfinite(want64)
    if not np.array_equal(want64[~finite & ~nan], got64[~finite & ~nan]):
        return "infinities differ"
    mantissa_bits = 10 if want.dtype == np.float16 else 7
    exponent = np.floor(np.log2(np.maximum(np.abs(want64[finite]), 2.0**-24)))
    step = 2.0 ** (exponent - mantissa_bits)
    error = np.abs(got64[finite] - want64[finite])
    bad = error > atol + rtol * np.abs(want64[finite]) + step
    if bad.any():
        return f"{int(bad.sum())} of {bad.size} elements beyond tolerance + 1 ULP " \
               f"(max error {float(error.max()):.3g})"
    return None


def run_case(case: tuple, workdir: str, constant_shapes: bool = True) -> dict:
    """Import, compile and run one case; returns {"class": ..., "detail": ...}."""
    import relaycomp

    model, inputs, outputs, rtol, atol = case
    reason = skip_reason(model, inputs, outputs)
    if reason:
        return {"class": "skipped", "detail": reason}
    if constant_shapes:  # operator cases; the model cases are run as they are
        model, inputs = constant_shape_inputs(model, inputs)
    names = [v.name for v in model.graph.input
             if v.name not in {i.name for i in model.graph.initializer}]
    feeds = dict(zip(names, inputs))
    artifact = os.path.join(workdir, "case.so")
    try:
        relaycomp.compile(model, artifact, inputs={k: v.shape for k, v in feeds.items()})
        got = relaycomp.load(artifact).run(feeds)
    except Exception as err:  # noqa: BLE001 - every failure is classified
        kind = classify_error(err)
        text = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        return {"class": kind, "detail": text[:300]}
    values = list(got.values())
    if len(values) != len(outputs):
        return {"class": "wrong", "detail": f"{len(values)} outputs, expected {len(outputs)}"}
    for index, (have, want) in enumerate(zip(values, outputs)):
        problem = outputs_match(have, want, rtol, atol)
        if problem:
            return {"class": "wrong", "detail": f"output {index}: {problem}"[:300]}
    return {"class": "pass", "detail": ""}


def worker(names: list[str], timeout: int) -> None:
    """Run the named cases, one JSON line each on stdout ("start" before, result after)."""
    import signal

    def alarm(signum, frame):
        raise TimeoutError(f"timed out after {timeout} s")

    signal.signal(signal.SIGALRM, alarm)
    warnings.simplefilter("ignore")
    nodes = node_cases() if any(not n.startswith(MODEL_FOLDERS) for n in names) else {}
    folders = model_cases()
    with tempfile.TemporaryDirectory(prefix="relaycomp-conformance-") as workdir:
        for name in names:
            print(json.dumps({"start": name}), flush=True)
            started = time.perf_counter()
            signal.alarm(timeout)
            try:
                if name in folders:
                    result = run_case(model_case(folders[name]), workdir, constant_shapes=False)
                else:
                    result = run_case(nodes[name], workdir)
            except TimeoutError as err:
                result = {"class": "internal", "detail": str(err)}
            except Exception as err:  # noqa: BLE001 - a broken case must not stop the rest
                result = {"class": "internal", "detail": f"{type(err).__name__}: {err}"[:300]}
            finally:
                signal.alarm(0)
            result.update(name=name, seconds=round(time.perf_counter() - started, 2))
            print(json.dumps(result), flush=True)


def run_all(names: list[str], timeout: int) -> list[dict]:
    """Run ``names`` in worker processes, restarting after a crash."""
    results, pending = [], list(names)
    while pending:
        process = subprocess.Popen([sys.executable, __file__, "--worker", "--timeout",
                                    str(timeout), "--cases", ",".join(pending)],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        current = None
        for line in process.stdout:
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if "start" in record:
                current = record["start"]
                continue
            results.append(record)
            pending.remove(record["name"])
            current = None
            print(f"{record['class']:9} {record['name']} {record['detail'][:140]}", flush=True)
        process.wait()
        if current is not None:
            results.append({"name": current, "class": "internal",
                            "detail": f"worker died (exit {process.returncode})"})
            print(f"internal  {current} worker died", flush=True)
            pending.remove(current)
        elif pending and process.returncode != 0:
            raise SystemExit(f"worker failed before any case (exit {process.returncode})")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", help="comma-separated case names")
    parser.add_argument("--models", action="store_true", help="the backend model cases")
    parser.add_argument("--sample", type=int, help="a random sample of this many node cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=120, help="seconds per case")
    parser.add_argument("--json", help="write per-case results here")
    parser.add_argument("--expected", help="expected-failures file (JSON: case -> reason); exit "
                                           "1 when another case fails, list cases that now pass")
    parser.add_argument("--write-expected", help="write the failures of this run to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.cases.split(","), args.timeout)
        return 0
    if args.cases:
        models = {name.split("/")[-1]: name for name in model_cases()}
        names = [models.get(name, name) for name in args.cases.split(",")]
    elif args.models:
        names = list(model_cases())
    else:
        names = sorted(node_cases())
        if args.sample:
            names = sorted(random.Random(args.seed).sample(names, args.sample))
    results = run_all(names, args.timeout)
    counts: dict[str, int] = {}
    for record in results:
        counts[record["class"]] = counts.get(record["class"], 0) + 1
    numeric = len(results) - counts.get("skipped", 0)
    print(json.dumps(counts, sort_keys=True))
    if numeric:
        print(f"pass rate over {numeric} numeric cases: {counts.get('pass', 0) / numeric:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    failed = {r["name"]: f"{r['class']}: {r['detail']}" for r in results
              if r["class"] not in ("pass", "skipped")}
    if args.write_expected:
        Path(args.write_expected).write_text(json.dumps(dict(sorted(failed.items())), indent=1)
                                             + "\n")
    if args.expected:
        expected = json.loads(Path(args.expected).read_text())
        fixed = sorted(name for name in expected if name in names and name not in failed)
        new = sorted(name for name in failed if name not in expected)
        for name in fixed:
            print(f"now passes (remove from {args.expected}): {name}")
        for name in new:
            print(f"unexpected failure: {name}: {failed[name]}")
        return 1 if new else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
