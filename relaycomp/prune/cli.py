"""``relaycomp prune`` and ``relaycomp compile --prune``: the command-line side of pruning.

    relaycomp prune model.onnx --ratio 0.3 -o pruned.onnx [--importance l2] [--scope global]
                    [--round-to 8] [--protect NODE] [--override NODE=RATIO] [--calib data.npz]
                    [--compensate]

The prune feature's command-line part (see :mod:`relaycomp.cli.main` for the protocol);
imports nothing heavy at module level.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from relaycomp.errors import CalibrationError, InputSpecError


def add_commands(sub) -> dict:
    """Add the ``prune`` sub-command to the CLI's sub-parsers; its handler by name."""
    prune = sub.add_parser("prune", help="remove whole channels/filters; write a pruned ONNX")
    prune.add_argument("model", help="ONNX file, or example:NAME")
    prune.add_argument("-o", "--output", help="pruned model (default: MODEL.pruned.onnx)")
    prune.add_argument("--ratio", type=float, required=True,
                       help="fraction of channels to remove, in [0, 1)")
    prune.add_argument("--importance", default="l2",
                       help="l1, l2, bn_scale, activation (needs --calib) or random")
    prune.add_argument("--scope", default="uniform", choices=("uniform", "global"),
                       help="same ratio in every layer, or ranked across layers")
    prune.add_argument("--round-to", type=int, default=8,
                       help="round kept channel counts up to a multiple of this (default 8)")
    prune.add_argument("--protect", action="append", default=[], metavar="NODE",
                       help="keep every channel this node produces (repeatable)")
    prune.add_argument("--override", action="append", default=[], metavar="NODE=RATIO",
                       help="a ratio of its own for this node's group (repeatable)")
    prune.add_argument("--calib", metavar="NPZ",
                       help=".npz keyed by input name (or example:NAME) for --importance "
                            "activation")
    prune.add_argument("--compensate", action="store_true",
                       help="fold the removed channels' mean contribution into the next "
                            "layer's bias (their mean on --calib data when given)")
    prune.add_argument("--input", action="append", default=[], metavar="NAME:DIMS",
                       help="pin an input's shape, e.g. x:1,3,224,224 (repeatable)")
    prune.add_argument("--json", action="store_true", help="print the report as JSON")
    return {"prune": run_prune}


def add_compile_options(parser: argparse.ArgumentParser) -> None:
    """``compile --prune RATIO``."""
    parser.add_argument("--prune", type=float, metavar="RATIO",
                        help="prune this fraction of channels (L2, uniform, multiples of 8) "
                             "with the prune_channels pass; see `relaycomp prune` for the "
                             "other options")


def compile_config(args):
    """The ``PruneConfig`` of ``compile --prune RATIO`` (None when absent)."""
    ratio = args.prune
    if ratio is None:
        return None
    from relaycomp.prune.pruner import PruneConfig

    return PruneConfig(ratio=ratio)


def _overrides(specs: list[str]) -> dict[str, float]:
    overrides = {}
    for text in specs:
        name, sep, value = text.rpartition("=")
        try:
            overrides[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise InputSpecError(f"bad --override '{text}'", hint="expected NODE=RATIO")
    return overrides


def _calibration(ref: str | None, model) -> dict | None:
    if ref is None:
        return None
    from relaycomp.frontend.inputs import read_arrays

    names = [i.name for i in model.graph.input
             if i.name not in {t.name for t in model.graph.initializer}]
    arrays = read_arrays(ref, "calibration", names)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise CalibrationError(f"{ref} lacks input(s) {missing}", hint=f"it holds {sorted(arrays)}")
    return {n: arrays[n] for n in names}


def print_summary(report: dict) -> None:
    """One line under the compile summary: MACs and parameters before and after."""
    before, after = report["before"], report["after"]
    print(f"  pruned: MACs {before['macs']:,} -> {after['macs']:,}, "
          f"params {before['params']:,} -> {after['params']:,}")


def run_prune(args) -> int:
    """``relaycomp prune``: write the pruned ONNX and print what changed."""
    from relaycomp.compiler.manifest import check_output_file, write_atomically
    from relaycomp.frontend.examples import resolve_model_path
    from relaycomp.frontend.onnx_import import load_onnx, parse_input_specs
    from relaycomp.prune.pruner import PruneConfig, prune

    source = resolve_model_path(args.model)
    output = Path(args.output or f"{source.stem}.pruned.onnx")
    check_output_file(output, "pruned model")  # before the work, not after it
    model = load_onnx(source)
    config = PruneConfig(ratio=args.ratio, importance=args.importance, scope=args.scope,
                         round_to=args.round_to, protected=tuple(args.protect),
                         overrides=_overrides(args.override),
                         input_shapes=parse_input_specs(args.input),
                         compensate=args.compensate)
    pruned, report = prune(model, config, calib=_calibration(args.calib, model))
    write_atomically(output, pruned.SerializeToString())  # never a half-written model
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(f"pruned {args.model} -> {output}")
        print(report.summary())
    return 0
