"""``relaycomp compile --quantize int8 --calib samples.npz ...``: the command-line side of int8.

    relaycomp compile model.onnx --quantize int8 --calib samples.npz [--calib-method entropy]
        [--per-tensor] [--symmetric-activations] [--keep-float NAME,...]
        [--max-accuracy-drop 0.01] [--eval held_out.npz] [--weight-only [--weight-bits 4]]

The quantize feature's command-line part (see :mod:`relaycomp.cli.main` for the protocol);
imports nothing heavy at module level.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from relaycomp.errors import InputSpecError

_DEPENDENT = ("calib", "eval", "calib_method", "keep_float", "max_accuracy_drop",
              "plot_sensitivity")


def add_commands(sub) -> dict:
    """``relaycomp quantize MODEL --calib DATA -o MODEL.int8.onnx``: the int8 plan a compile
    would make, written as a QDQ ONNX model (onnxruntime runs it)."""
    command = sub.add_parser("quantize", help="write the int8 plan as a QDQ ONNX model "
                                              "(what compile --quantize int8 would run)")
    command.add_argument("model", help="ONNX file, or example:NAME")
    command.add_argument("-o", "--output", help="the QDQ model (default: MODEL.int8.onnx)")
    command.add_argument("--calib", metavar="DATA", required=True,
                         help="calibration data: .npz keyed by input name, a folder of "
                              "NAME.npy, or example:NAME")
    command.add_argument("--eval", metavar="DATA",
                         help="held-out data (+ 'labels') for the accuracy check")
    command.add_argument("--input", action="append", default=[], metavar="NAME:DIMS",
                         help="pin an input's shape (repeatable)")
    for flag in ("--calib-method", "--per-tensor", "--symmetric-activations", "--keep-float",
                 "--max-accuracy-drop"):
        action = next(a for a in _option_template()._actions if flag in a.option_strings)
        command._add_action(action)
    return {"quantize": cmd_quantize}


def _option_template() -> argparse.ArgumentParser:
    """A parser holding the compile options of int8, to share their definitions."""
    template = argparse.ArgumentParser(add_help=False)
    add_compile_options(template)
    return template


def cmd_quantize(args) -> int:
    """``relaycomp quantize``: plan int8 as a compile does, write the QDQ ONNX model."""
    import json
    from pathlib import Path

    from relaycomp.compiler.manifest import check_output_file, write_atomically
    from relaycomp.frontend.onnx_import import parse_input_specs
    from relaycomp.quantize.export import quantize_to_qdq
    from relaycomp.quantize.quantizer import QuantConfig, QuantReport

    output = Path(args.output or f"{Path(args.model.removeprefix('example:')).stem}.int8.onnx")
    check_output_file(output, "the QDQ model")
    keep = tuple(name.strip() for text in args.keep_float for name in text.split(",")
                 if name.strip())
    config = QuantConfig(calibration=args.calib_method or "minmax",
                         per_channel=not args.per_tensor,
                         activations="symmetric" if args.symmetric_activations else "asymmetric",
                         keep_float=keep, max_accuracy_drop=args.max_accuracy_drop)
    qdq, report, skipped = quantize_to_qdq(args.model, config, calib=args.calib,
                                           eval_data=args.eval,
                                           input_shapes=parse_input_specs(args.input))
    write_atomically(output, qdq.SerializeToString())
    if args.json:
        print(json.dumps({"model": str(output), "report": report.to_json(),
                          "left_float": skipped}, indent=2))
        return 0
    lines = QuantReport.from_json(report.to_json()).summary().splitlines()
    print(f"wrote {output} (QDQ ONNX; onnxruntime runs it)")
    print(f"  int8: {lines[0]}")
    for line in lines[1:]:
        print(f"    {line.strip()}")
    for name, reason in skipped.items():
        print(f"  left float in the ONNX model: {name} ({reason})")
    return 0


def add_compile_options(parser: argparse.ArgumentParser) -> None:
    """The ``compile`` options of quantization."""
    group = parser.add_argument_group("int8 quantization")
    group.add_argument("--quantize", choices=("int8", "float16"),
                       help="int8 conv/matmul layers, or float16 mixed precision (CUDA)")
    group.add_argument("--calib-method", choices=("minmax", "percentile", "entropy", "mse"),
                       help="how activation ranges are chosen (default minmax)")
    group.add_argument("--per-tensor", action="store_true",
                       help="one weight scale per tensor (default: per output channel)")
    group.add_argument("--symmetric-activations", action="store_true",
                       help="activations without zero point (default: asymmetric)")
    group.add_argument("--keep-float", action="append", default=[], metavar="NAME,...",
                       help="layers (ONNX node names) or kinds (conv2d, "
                            "depthwise_conv2d, matmul) kept in float (repeatable)")
    group.add_argument("--max-accuracy-drop", type=float, metavar="FRACTION",
                       help="return the most sensitive layers to float until the accuracy "
                            "lost on --eval is at most this (e.g. 0.01)")
    group.add_argument("--weight-only", action="store_true",
                       help="int8 weights, float activations (memory-bound models)")
    group.add_argument("--weight-bits", type=int, choices=(8, 4), default=8,
                       help="with --weight-only: 4 stores matmul weights as int4")
    group.add_argument("--plot-sensitivity", metavar="FILE.png",
                       help="draw the accuracy guard's per-layer sensitivity (needs "
                            "--max-accuracy-drop; pip install 'relaycomp[plots]')")


def compile_config(args):
    """The ``QuantConfig`` of the parsed options (None without --quantize)."""
    if args.quantize is None:
        # --calib/--eval also serve --precision bf16 (its accuracy is measured on them)
        shared = ("calib", "eval") if getattr(args, "precision", "fp32") != "fp32" else ()
        given = [f"--{name.replace('_', '-')}" for name in _DEPENDENT
                 if name not in shared and getattr(args, name) not in (None, [])]
        flags = given + [f for f, on in (("--per-tensor", args.per_tensor),
                                         ("--weight-only", args.weight_only),
                                         ("--weight-bits", args.weight_bits != 8)) if on]
        if flags:
            also = (" (--calib/--eval also go with --precision bf16)"
                    if {"--calib", "--eval"} & set(flags) else "")
            raise InputSpecError(f"{', '.join(flags)} need(s) --quantize int8{also}")
        return None
    from relaycomp.quantize.quantizer import QuantConfig

    if args.plot_sensitivity:
        from relaycomp.compiler.figures import check_figure_path

        if args.max_accuracy_drop is None:
            raise InputSpecError("--plot-sensitivity needs --max-accuracy-drop (the guard "
                                 "measures the per-layer sensitivity)")
        check_figure_path(args.plot_sensitivity, "--plot-sensitivity")
    keep = tuple(name.strip() for text in args.keep_float for name in text.split(",")
                 if name.strip())
    config = QuantConfig(dtype=args.quantize, calibration=args.calib_method or "minmax",
                         per_channel=not args.per_tensor,
                         activations="symmetric" if args.symmetric_activations else "asymmetric",
                         keep_float=keep, max_accuracy_drop=args.max_accuracy_drop,
                         weight_only=args.weight_only, weight_bits=args.weight_bits)
    return config


def after_compile(args, report: dict) -> None:
    """``--plot-sensitivity FILE``: the chart, from the compile's quantize report; a warning
    and no chart when the guard measured no layer (the artifact is written and good)."""
    if not getattr(args, "plot_sensitivity", None):
        return
    if not any("sensitivity" in layer for layer in report.get("layers", [])):
        warnings.warn(f"no chart written to {args.plot_sensitivity}: the all-int8 build is "
                      "within --max-accuracy-drop on the --eval data, so the accuracy guard "
                      "measured no layer's sensitivity", stacklevel=2)
        return
    from relaycomp.quantize.plot import plot_sensitivity

    path = plot_sensitivity(report, args.plot_sensitivity)
    print(f"wrote {path}", file=sys.stderr)


def print_summary(report: dict) -> None:
    """The quantization report of a compiled artifact, indented under the compile summary."""
    from relaycomp.quantize.quantizer import QuantReport

    lines = QuantReport.from_json(report).summary().splitlines()
    print(f"  int8: {lines[0]}")
    for line in lines[1:]:
        print(f"    {line.strip()}")
