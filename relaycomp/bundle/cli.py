"""The bundle's command-line part: ``relaycomp compile ... --bundle DIR [--force]
[--runtime-dir RUNTIME]`` and ``relaycomp package ARTIFACT DIR [--force] [--runtime-dir
RUNTIME] [--json]``.

``cli/main.py`` calls :func:`add_compile_options` and :func:`add_commands` while building its
parser, :func:`check_compile_options` before compiling (so a bad folder or a missing toolchain
fails before a long compile) and :func:`after_compile` with the written artifact.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

# The bundle's modules load TVM: imported where used, so that building the parser stays cheap.


RUNTIME_DIR_HELP = ("with --bundle: ship TVM's runtime from this folder (libtvm_runtime.so and "
                    "libtvm_ffi.so built for the target, e.g. with the Android NDK) instead of "
                    "TVM's own build")


def add_compile_options(parser: argparse.ArgumentParser) -> None:
    """``--bundle DIR`` and ``--force`` on ``compile``."""
    parser.add_argument("--bundle", metavar="DIR",
                        help="also write a folder the board runs the model from without "
                             "Python: model, TVM runtime, C++ runner, run.sh, README")
    parser.add_argument("--force", action="store_true",
                        help="with --bundle: replace an existing non-empty folder")
    parser.add_argument("--runtime-dir", metavar="DIR", help=RUNTIME_DIR_HELP)


def add_commands(sub) -> dict:
    """The ``package`` command: the bundle of an artifact compiled earlier."""
    package = sub.add_parser("package", help="write a device bundle (runs without Python) "
                                             "for a compiled .so")
    package.add_argument("artifact", help="a .so built by `relaycomp compile`")
    package.add_argument("folder", help="the bundle folder to write")
    package.add_argument("--force", action="store_true",
                         help="replace an existing non-empty folder")
    package.add_argument("--runtime-dir", metavar="DIR", help=RUNTIME_DIR_HELP.removeprefix(
        "with --bundle: "))
    return {"package": cmd_package}


def check_compile_options(args) -> None:
    """Refuse ``--bundle`` requests that cannot succeed, before compiling."""
    from relaycomp.bundle.runtime_libs import BundleError

    if not getattr(args, "bundle", None):
        if getattr(args, "runtime_dir", None):
            raise BundleError("--runtime-dir goes with --bundle DIR (the runtime it ships)")
        return
    from relaycomp.bundle.android import find_android_ndk, is_android
    from relaycomp.bundle.writer import check_folder, check_target
    from relaycomp.targets import resolve

    if args.output and not args.output.endswith(".so"):
        raise BundleError(f"--bundle needs a shared library, but -o {args.output} is not a .so",
                          hint="name the output *.so (or leave -o out)")
    check_folder(args.bundle, args.force)
    spec = resolve(args.target)
    check_target(spec, args.runtime_dir)
    if is_android(spec):
        _check_model_linker(spec, find_android_ndk())


def _check_model_linker(spec, ndk) -> None:
    """The model's own link needs the NDK's clang, which the target looks for on PATH and in
    $ANDROID_NDK_HOME/$ANDROID_NDK_ROOT only: an NDK found through ndk-build needs the variable."""
    from relaycomp.bundle.runtime_libs import BundleError
    from relaycomp.errors import RelaycompError

    try:
        spec.toolchain.find()
    except RelaycompError:
        raise BundleError(f"the model's link needs {spec.toolchain.compiler} from the NDK at "
                          f"{ndk[0]} (found through {ndk[1]}), which is looked for on PATH and "
                          "in $ANDROID_NDK_HOME only",
                          hint=f"export ANDROID_NDK_HOME={ndk[0]}") from None


def after_compile(args, artifact) -> dict | None:
    """Write the bundle of the artifact just compiled, if ``--bundle`` asked for one; returns
    its :func:`bundle_json` (for ``compile --json``)."""
    if getattr(args, "bundle", None):
        from relaycomp.bundle.writer import write_bundle

        return print_bundle(write_bundle(artifact.path, args.bundle, force=args.force,
                                         runtime_dir=args.runtime_dir))
    return None


def cmd_package(args) -> int:
    """``relaycomp package``."""
    from relaycomp.bundle.writer import write_bundle

    if args.json:   # progress lines (a download) go to stderr, the document to stdout
        with contextlib.redirect_stdout(sys.stderr):
            bundle = write_bundle(args.artifact, args.folder, force=args.force,
                                  runtime_dir=args.runtime_dir)
        print(json.dumps(bundle_json(bundle), indent=2))
        return 0
    print_bundle(write_bundle(args.artifact, args.folder, force=args.force,
                              runtime_dir=args.runtime_dir))
    return 0


def bundle_json(bundle) -> dict:
    """A bundle as JSON: its folder, machine, runner and files."""
    folder = Path(bundle.folder)
    return {"folder": str(folder), "machine": bundle.machine, "runner": str(bundle.runner),
            "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                            if p.is_file() and "include" not in p.relative_to(folder).parts)}


def print_bundle(bundle) -> dict:
    """Where the bundle went and how to run it; returns :func:`bundle_json`."""
    print(f"bundle for {bundle.machine} -> {bundle.folder}/")
    print(f"  run it on the board: cd {Path(bundle.folder).name} && ./run.sh  "
          "(see its README.md)")
    return bundle_json(bundle)
