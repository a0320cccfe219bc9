"""The command line of auto-tuning: ``relaycomp tune``, ``--tune N`` / ``--tuning-db DIR`` /
``--rpc HOST:PORT --key KEY`` on ``compile``, ``--rpc HOST:PORT --key KEY`` on ``run``, and
``relaycomp emulate-device`` (an emulated ARM board to tune and run on).
"""

from __future__ import annotations

import argparse

from .tune import DEFAULT_DB, TuneConfig


def _add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tuning-db", metavar="DIR",
                        help=f"tuning database folder (default for tune: {DEFAULT_DB})")
    parser.add_argument("--rpc", metavar="HOST:PORT",
                        help="measure on devices registered at this TVM RPC tracker")
    parser.add_argument("--key", help="the device key at the RPC tracker")
    parser.add_argument("--trials-per-iter", type=int, default=16,
                        help="candidates per batch; XGBoost is refit between batches")
    parser.add_argument("--seed", type=int, help="seed of the search")


def add_tune_options(compile_: argparse.ArgumentParser) -> None:
    """``compile --tune N --tuning-db DIR [--rpc HOST:PORT --key KEY]``."""
    compile_.add_argument("--tune", type=int, default=0, metavar="N",
                          help="tune N trials before compiling (records go to --tuning-db)")
    _add_device_options(compile_)


def add_tune_parser(sub) -> argparse.ArgumentParser:
    """The ``tune`` sub-command (its shape options are added by the caller)."""
    tune = sub.add_parser("tune", help="auto-tune a model's kernels into a tuning database")
    tune.add_argument("model", help="ONNX file, or example:NAME")
    tune.add_argument("--target", default="host", help="triple, preset or .toml (see targets)")
    tune.add_argument("--mcpu", help="override the target CPU (e.g. cortex-a72)")
    tune.add_argument("--arch", help="CUDA architecture, e.g. sm_80")
    tune.add_argument("--num-cores", type=int, help="threads the kernels will use")
    tune.add_argument("--trials", type=int, default=64, help="candidates to measure in total")
    tune.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_device_options(tune)
    return tune


def add_remote_options(run: argparse.ArgumentParser) -> None:
    """``run --rpc HOST:PORT --key KEY``: run on a device registered at a TVM RPC tracker."""
    run.add_argument("--rpc", metavar="HOST:PORT",
                     help="run on a device registered at this TVM RPC tracker")
    run.add_argument("--key", help="the device key at the RPC tracker")


def add_emulate_parser(sub) -> None:
    """``emulate-device --rpc HOST:PORT --key KEY``: an emulated ARM board for RPC work."""
    from .emulated_device import ARCHES

    emulate = sub.add_parser("emulate-device",
                             help="serve an emulated aarch64 device (qemu-user) at an RPC tracker")
    emulate.add_argument("--rpc", metavar="HOST:PORT", required=True,
                         help="the TVM RPC tracker to register at")
    emulate.add_argument("--key", required=True, help="the device key to register under")
    emulate.add_argument("--arch", default="aarch64", choices=ARCHES.names())
    emulate.add_argument("--host", default="127.0.0.1",
                         help="address the server binds to (default: loopback only)")
    emulate.add_argument("--threads", type=int, default=2, help="threads of TVM's runtime")
    emulate.add_argument("--root", metavar="DIR",
                         help="the device's folder (default: ~/.cache/relaycomp/emulated)")


def run_emulate(args) -> int:
    """``relaycomp emulate-device``: start the server and serve until it exits or Ctrl-C."""
    from .emulated_device import EmulatedDevice

    device = EmulatedDevice(args.rpc, args.key, arch=args.arch, host=args.host,
                            threads=args.threads, root=args.root).start()
    print("Ctrl-C to stop", flush=True)
    try:
        return device.wait()
    finally:
        device.stop()


def load_for_run(args):
    """The remote model ``run --rpc`` asks for, or None to run here."""
    if args.rpc is None and args.key is None:
        return None
    from .remote import load_remote

    return load_remote(args.artifact, args.rpc, args.key, threads=args.threads)


def tuning_option(args) -> TuneConfig | None:
    """The ``CompileConfig.tuning`` value of ``compile``'s arguments (None: no tuning)."""
    if not args.tune and not args.tuning_db:
        return None
    return TuneConfig(trials=args.tune, tuning_db=args.tuning_db or DEFAULT_DB, rpc=args.rpc,
                      key=args.key, trials_per_iter=args.trials_per_iter, seed=args.seed)


def run_tune(args, input_shapes) -> int:
    """``relaycomp tune``: tune, then print the per-task table."""
    from .tune import tune

    config = TuneConfig(target=args.target, trials=args.trials,
                        tuning_db=args.tuning_db or DEFAULT_DB, input_shapes=input_shapes,
                        mcpu=args.mcpu, arch=args.arch, num_cores=args.num_cores, rpc=args.rpc,
                        key=args.key, trials_per_iter=args.trials_per_iter, seed=args.seed,
                        progress=not args.quiet)
    report = tune(args.model, config)
    print(report.table())
    print(f"tuning database: {report.database}")
    return 0
