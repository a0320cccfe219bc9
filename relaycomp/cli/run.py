"""``relaycomp run``: run an artifact here or on an RPC device, save, time and check its
outputs against the ONNX model's reference run (``--json``: one document on stdout)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from relaycomp.cli.device import load_for_run
from relaycomp.errors import InputSpecError, RelaycompError


def signature(specs) -> str:
    """``name:dtype[shape], ...`` of tensor specs."""
    return ", ".join(f"{s.name}:{s.dtype}{list(s.shape)}" for s in specs)


# --check tolerances when none is given: float builds to 1e-3 of the largest output; int8
# builds are compared with the float model, and quantization moves outputs by a few percent.
DEFAULT_RTOL = {"float": 1e-3, "int8": 0.1}


def _read_inputs(path: str | None, model) -> dict[str, np.ndarray]:
    from relaycomp.runtime.local import random_inputs

    specs = model.manifest.inputs
    if path is None:
        print("note: no --inputs given; running on seeded random data", file=sys.stderr)
        return random_inputs(specs)
    return read_inputs(path, specs)


def read_inputs(path: str, specs) -> dict[str, np.ndarray]:
    """The arrays of an ``--inputs`` file for the inputs ``specs``; one missing is an error."""
    from relaycomp.frontend.inputs import read_arrays

    data = read_arrays(path, "--inputs", [s.name for s in specs], InputSpecError)
    missing = [s.name for s in specs if s.name not in data]
    if missing:
        raise InputSpecError(f"{path} lacks input(s) {missing}",
                             hint=f"it holds: {sorted(data)}; the model takes: {signature(specs)}")
    return {s.name: data[s.name] for s in specs}


def run_artifact(args) -> int:
    """``relaycomp run``: load, feed, print, optionally save, time and check."""
    from relaycomp.compiler.manifest import check_output_file, write_atomically
    from relaycomp.runtime.local import load

    if args.threads is not None and args.threads < 1:
        raise InputSpecError(f"--threads must be at least 1, got {args.threads}")
    if args.repeat < 0:
        raise InputSpecError(f"--repeat must be 0 (no timing) or more, got {args.repeat}")
    for flag in ("rtol", "atol"):
        value = getattr(args, flag)
        if value is not None and not value >= 0:
            raise InputSpecError(f"--{flag} must be 0 or more, got {value}")
        if value is not None and not args.check:
            raise InputSpecError(f"--{flag} needs --check MODEL")
    if args.outputs:
        check_output_file(Path(args.outputs), "--outputs")
    model = load_for_run(args) or load(args.artifact, threads=args.threads)
    inputs = _read_inputs(args.inputs, model)
    outputs = model.run(inputs)
    result = {"artifact": args.artifact,
              "outputs": [{"name": name, "dtype": str(value.dtype), "shape": list(value.shape)}
                          for name, value in outputs.items()]}
    say = (lambda line: None) if args.json else print
    for name, value in outputs.items():
        say(f"{name}: {value.dtype}{list(value.shape)}")
    if args.outputs:
        buffer = _npz_bytes(outputs)
        write_atomically(Path(args.outputs), buffer)
        result["outputs_file"] = args.outputs
        say(f"wrote {args.outputs}")
    if args.repeat:
        timing = model.time(inputs, repeat=args.repeat)
        result["latency_ms"] = {"median": timing.median_ms, "mean": timing.mean_ms,
                                "min": timing.min_ms, "runs": timing.runs}
        say(f"latency: median {timing.median_ms:.3f} ms, min {timing.min_ms:.3f} ms "
            f"over {timing.runs} runs")
    if args.check:
        precision = "int8" if is_int8_build(model.manifest) else "float"
        rtol = args.rtol if args.rtol is not None else DEFAULT_RTOL[precision]
        result["check"] = _check(args.check, inputs, outputs, rtol=rtol,
                                 atol=args.atol or 0.0, say=say)
        result["check"]["build"] = precision
    if args.json:  # only when everything passed: a failure is the error line on stderr
        print(json.dumps(result, indent=2))
    return 0


def is_int8_build(manifest) -> bool:
    """True if the artifact runs some layers on int8 kernels (its quantize report says so)."""
    layers = (manifest.report.get("quantize") or {}).get("layers", [])
    return any(layer.get("mode") == "int8" for layer in layers)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _check(model_ref: str, inputs, outputs, rtol: float, atol: float = 0.0,
           say=print) -> dict:
    """Compare ``outputs`` with the reference runtime's on ``model_ref``. An output passes when
    its largest error is at most ``atol + rtol x`` the reference's largest magnitude; a larger
    one, or a NaN/Inf where the reference has none (or another), is a user-facing error."""
    from relaycomp.frontend.examples import resolve_model_path
    from relaycomp.frontend.onnx_import import load_onnx
    from relaycomp.runtime.reference import compare, run_reference

    expected, runtime = run_reference(load_onnx(resolve_model_path(model_ref)), inputs)
    for name, want in expected.items():
        if name not in outputs or np.shape(outputs[name]) != np.shape(want):
            have = {key: list(np.shape(value)) for key, value in outputs.items()}
            raise RelaycompError(
                f"--check {model_ref}: its output '{name}' {list(np.shape(want))} is not among "
                f"the artifact's outputs {have}",
                hint="check against the ONNX model the artifact was compiled from")
    errors = compare(outputs, expected)
    for name, err in errors.items():
        say(f"check vs {runtime}: {name}: max abs error {err['max_abs']:.3g}, "
              f"relative {err['max_rel']:.3g}"
              + (f", {err['nonfinite_mismatches']} NaN/Inf mismatch(es)"
                 if err["nonfinite_mismatches"] else ""))
    nonfinite = {name: e["nonfinite_mismatches"] for name, e in errors.items()
                 if e["nonfinite_mismatches"]}
    if nonfinite:
        raise RelaycompError(
            f"outputs differ from {runtime}: NaN/Inf where it has other values "
            f"({', '.join(f'{name}: {count}' for name, count in nonfinite.items())})",
            hint="save the outputs with --outputs FILE to see where; NaN or Inf in the inputs "
                 "can make kernels disagree")
    failed = {}
    for name, want in expected.items():
        finite = np.asarray(want, dtype=np.float64)
        scale = float(np.abs(finite[np.isfinite(finite)]).max(initial=0.0))
        if errors[name]["max_abs"] > atol + rtol * scale:
            failed[name] = errors[name]
    if failed:
        name, err = max(failed.items(), key=lambda item: item[1]["max_rel"])
        raise RelaycompError(
            f"outputs differ from {runtime}: '{name}' by {err['max_abs']:.3g} "
            f"({err['max_rel']:.3g} of its largest value), more than --rtol {rtol:g}"
            + (f" + --atol {atol:g}" if atol else ""),
            hint="loosen --rtol/--atol if this is expected (int8 builds are compared with the "
                 "float model); save the outputs with --outputs FILE to compare them")
    return {"reference": runtime, "rtol": rtol, "atol": atol, "passed": True,
            "errors": {name: dict(err) for name, err in errors.items()}}
