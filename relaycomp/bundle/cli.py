"""The bundle's command-line part: ``relaycomp compile ... --bundle DIR [--force]`` and
``relaycomp package ARTIFACT DIR [--force]``.

``cli/main.py`` calls :func:`add_compile_options` and :func:`add_commands` while building its
parser, :func:`check_compile_options` before compiling (so a bad folder or a missing toolchain
fails before a long compile) and :func:`after_compile` with the written artifact.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# The bundle's modules load TVM: imported where used, so that building the parser stays cheap.


def add_compile_options(parser: argparse.ArgumentParser) -> None:
    """``--bundle DIR`` and ``--force`` on ``compile``."""
    parser.add_argument("--bundle", metavar="DIR",
                        help="also write a folder the board runs the model from without "
                             "Python: model, TVM runtime, C++ runner, run.sh, README")
    parser.add_argument("--force", action="store_true",
                        help="with --bundle: replace an existing non-empty folder")


def add_commands(sub) -> dict:
    """The ``package`` command: the bundle of an artifact compiled earlier."""
    package = sub.add_parser("package", help="write a device bundle (runs without Python) "
                                             "for a compiled .so")
    package.add_argument("artifact", help="a .so built by `relaycomp compile`")
    package.add_argument("folder", help="the bundle folder to write")
    package.add_argument("--force", action="store_true",
                         help="replace an existing non-empty folder")
    return {"package": cmd_package}


def check_compile_options(args) -> None:
    """Refuse ``--bundle`` requests that cannot succeed, before compiling."""
    if not getattr(args, "bundle", None):
        return
    from relaycomp.bundle.runtime_libs import BundleError
    from relaycomp.bundle.writer import check_folder, check_target
    from relaycomp.targets import resolve

    if args.output and not args.output.endswith(".so"):
        raise BundleError(f"--bundle needs a shared library, but -o {args.output} is not a .so",
                          hint="name the output *.so (or leave -o out)")
    check_folder(args.bundle, args.force)
    check_target(resolve(args.target))


def after_compile(args, artifact) -> None:
    """Write the bundle of the artifact just compiled, if ``--bundle`` asked for one."""
    if getattr(args, "bundle", None):
        from relaycomp.bundle.writer import write_bundle

        print_bundle(write_bundle(artifact.path, args.bundle, force=args.force))


def cmd_package(args) -> int:
    """``relaycomp package``."""
    from relaycomp.bundle.writer import write_bundle

    print_bundle(write_bundle(args.artifact, args.folder, force=args.force))
    return 0


def print_bundle(bundle) -> None:
    """Where the bundle went and how to run it."""
    print(f"bundle for {bundle.machine} -> {bundle.folder}/")
    print(f"  run it on the board: cd {Path(bundle.folder).name} && ./run.sh  "
          "(see its README.md)")
