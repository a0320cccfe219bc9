"""``relaycomp compile --precision bf16``: the command-line side of the precision feature (see
:mod:`relaycomp.cli.main` for the protocol)."""

from __future__ import annotations

import argparse


def add_commands(sub) -> dict:
    """Precision has no command of its own (it is ``compile --precision``)."""
    return {}


def add_compile_options(parser: argparse.ArgumentParser) -> None:
    """The ``compile`` option of the precision feature."""
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: convs on bf16 weights and activations with fp32 sums "
                             "(AVX-512 BF16 or Armv8.6 BF16 targets, e.g. aws-graviton3); "
                             "its accuracy against fp32 is measured on --calib/--eval data")


def compile_config(args):
    """The ``PrecisionConfig`` of the parsed options (None for fp32)."""
    if args.precision == "fp32":
        return None
    from relaycomp.precision.config import PrecisionConfig

    return PrecisionConfig(dtype=args.precision)


def print_summary(report: dict) -> None:
    """One line: the precision and, when measured, its agreement with fp32."""
    accuracy = report.get("accuracy")
    if not accuracy:
        print(f"  bf16: convs on bf16 operands ({report.get('note', 'accuracy not measured')})")
        return
    top1 = accuracy.get("top1_agreement")
    agreement = f"top-1 agreement {top1:.1%}, " if top1 is not None else ""
    print(f"  bf16: {agreement}cosine {accuracy['cosine']:.5f}, max abs error "
          f"{accuracy['max_abs_error']:.3g} vs fp32 on {accuracy['samples']} sample(s)")
