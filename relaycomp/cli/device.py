"""Command-line options of devices: ``run --rpc HOST:PORT --key KEY`` and
``relaycomp emulate-device`` (an emulated ARM board to tune and run on)."""

from __future__ import annotations

import argparse


def add_remote_options(run: argparse.ArgumentParser) -> None:
    """``run --rpc HOST:PORT --key KEY``: run on a device registered at a TVM RPC tracker."""
    run.add_argument("--rpc", metavar="HOST:PORT",
                     help="run on a device registered at this TVM RPC tracker")
    run.add_argument("--key", help="the device key at the RPC tracker")
    run.add_argument("--rpc-timeout", type=float, metavar="SECONDS", default=None,
                     help="longest wait for the device to be free and to answer each request "
                          "(default: 300)")


def add_emulate_parser(sub) -> None:
    """``emulate-device --rpc HOST:PORT --key KEY``: an emulated ARM board for RPC work."""
    from relaycomp.runtime.emulated_device import ARCHES

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
    from relaycomp.runtime.emulated_device import EmulatedDevice

    device = EmulatedDevice(args.rpc, args.key, arch=args.arch, host=args.host,
                            threads=args.threads, root=args.root).start()
    print("Ctrl-C to stop", flush=True)
    try:
        device.wait()  # returns only by raising: Ctrl-C/SIGTERM, or the server died
    finally:
        device.stop()  # qemu and the sessions it forked: its whole process group
    return 0


def load_for_run(args):
    """The remote model ``run --rpc`` asks for, or None to run here."""
    if args.rpc is None and args.key is None:
        return None
    from relaycomp.errors import RelaycompError
    from relaycomp.runtime.remote import REPLY_TIMEOUT_SECONDS, load_remote

    timeout = REPLY_TIMEOUT_SECONDS if args.rpc_timeout is None else args.rpc_timeout
    if not timeout > 0:
        raise RelaycompError(f"--rpc-timeout must be more than 0 seconds, got {timeout:g}")
    return load_remote(args.artifact, args.rpc, args.key, threads=args.threads,
                       reply_timeout=timeout)
