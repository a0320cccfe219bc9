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

from relaycomp.errors import InputSpecError

_DEPENDENT = ("calib", "eval", "calib_method", "keep_float", "max_accuracy_drop",
              "plot_sensitivity")


def add_commands(sub) -> dict:
    """Quantization has no command of its own (it is ``compile --quantize``)."""
    return {}


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
        given = [f"--{name.replace('_', '-')}" for name in _DEPENDENT
                 if getattr(args, name) not in (None, [])]
        flags = given + [f for f, on in (("--per-tensor", args.per_tensor),
                                         ("--weight-only", args.weight_only),
                                         ("--weight-bits", args.weight_bits != 8)) if on]
        if flags:
            raise InputSpecError(f"{', '.join(flags)} need(s) --quantize int8")
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
    """``--plot-sensitivity FILE``: the chart, from the compile's quantize report."""
    if getattr(args, "plot_sensitivity", None):
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
