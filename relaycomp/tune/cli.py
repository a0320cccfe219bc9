"""The command line of auto-tuning: ``relaycomp tune``, and ``--tune N`` / ``--tuning-db DIR`` /
``--rpc HOST:PORT --key KEY`` on ``compile`` (the protocol: :mod:`relaycomp.cli.main`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from relaycomp.tune.tuner import DEFAULT_DB, TuneConfig


def _add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tuning-db", metavar="DIR",
                        help=f"tuning database folder (default for tune: {DEFAULT_DB})")
    parser.add_argument("--rpc", metavar="HOST:PORT",
                        help="measure on devices registered at this TVM RPC tracker")
    parser.add_argument("--key", help="the device key at the RPC tracker")
    parser.add_argument("--rpc-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="longest wait for the device per candidate (default: 30)")
    parser.add_argument("--trials-per-iter", type=int, default=16,
                        help="candidates per batch; XGBoost is refit between batches")
    parser.add_argument("--seed", type=int, help="seed of the search")


def add_compile_options(compile_: argparse.ArgumentParser) -> None:
    """``compile --tune N --tuning-db DIR [--rpc HOST:PORT --key KEY]``."""
    compile_.add_argument("--tune", type=int, default=0, metavar="N",
                          help="tune N trials before compiling (records go to --tuning-db)")
    _add_device_options(compile_)


def add_commands(sub) -> dict:
    """Add the ``tune`` sub-command; its handler by name."""
    tune = sub.add_parser("tune", help="auto-tune a model's kernels into a tuning database")
    tune.add_argument("model", help="ONNX file, or example:NAME")
    tune.add_argument("--target", default="host",
                      help='triple, preset, .toml or TVM target string ("llvm -mtriple=...")')
    tune.add_argument("--mcpu", help="override the target CPU (e.g. cortex-a72)")
    tune.add_argument("--mattr", help="CPU features added to the target's: +dotprod,+i8mm")
    tune.add_argument("--arch", help="CUDA architecture, e.g. sm_80")
    tune.add_argument("--num-cores", type=int, help="threads the kernels will use")
    tune.add_argument("--trials", type=int, default=64, help="candidates to measure in total")
    tune.add_argument("--quiet", action="store_true", help="no progress lines")
    tune.add_argument("--plot", metavar="FILE.png",
                      help="draw best latency vs trials (pip install 'relaycomp[plots]')")
    tune.add_argument("--json", action="store_true",
                      help="print the report as one JSON document (progress goes to stderr)")
    tune.add_argument("--input", action="append", default=[], metavar="NAME:DIMS",
                      help="pin an input's shape, e.g. x:1,3,224,224 (repeatable)")
    _add_device_options(tune)
    return {"tune": run_tune}


def compile_config(args) -> TuneConfig | None:
    """The ``TuneConfig`` of ``compile``'s arguments (None: no tuning)."""
    if not args.tune and not args.tuning_db:
        return None
    return TuneConfig(trials=args.tune, tuning_db=args.tuning_db or DEFAULT_DB, rpc=args.rpc,
                      key=args.key, rpc_timeout=args.rpc_timeout, trials_per_iter=args.trials_per_iter, seed=args.seed)


def print_summary(report: dict) -> None:
    """One line under the compile summary: the database used and what it holds."""
    print(f"  tuning: {report['workloads_with_faster_records']} tuned kernel(s) available "
          f"in {report['database']}, {report['new_trials']} new trials"
          + (f", {report['kernels_tuned']} applied" if "kernels_tuned" in report else ""))


def run_tune(args) -> int:
    """``relaycomp tune``: tune, then print the per-task table."""
    from relaycomp.frontend.onnx_import import parse_input_specs
    from relaycomp.tune.tuner import tune

    input_shapes = parse_input_specs(args.input)
    if args.plot:
        from relaycomp.compiler.figures import check_figure_path

        check_figure_path(args.plot, "--plot")
    target = f"{args.target} -mattr={args.mattr}" if args.mattr else args.target
    config = TuneConfig(target=target, trials=args.trials,
                        tuning_db=args.tuning_db or DEFAULT_DB, input_shapes=input_shapes,
                        mcpu=args.mcpu, arch=args.arch, num_cores=args.num_cores, rpc=args.rpc,
                        key=args.key, rpc_timeout=args.rpc_timeout, trials_per_iter=args.trials_per_iter, seed=args.seed,
                        progress=not args.quiet)
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        report = tune(args.model, config)  # with --json, stdout holds the document only
        if args.plot:
            from relaycomp.tune.plot import plot_tuning_curve

            print(f"wrote {plot_tuning_curve(report, args.plot)}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    print(report.table())
    print(f"tuning database: {report.database}")
    return 0
