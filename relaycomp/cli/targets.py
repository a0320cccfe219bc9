"""Targets on the command line: ``relaycomp targets [--json]``, ``--target``/``--mattr``
(TVM target strings welcome), ``--version``, and the working folder for ``--pass module:fn``."""

from __future__ import annotations

import json
import os
import sys
from importlib import metadata

from relaycomp.cli.messages import warning

TARGET_HELP = ('"host", a triple, a board preset (yours too), a preset .toml, or a TVM target '
               'string such as "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon" '
               "(see `relaycomp targets`)")
MATTR_HELP = "CPU features added to the target's, LLVM names: +dotprod,+i8mm or -avx512f"


def version_line() -> str:
    """``relaycomp 0.1.0 (Apache TVM 0.27.0.post1)``, from the installed distributions."""
    def version_of(distribution: str) -> str:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            return "not installed"

    return f"relaycomp {version_of('relaycomp')} (Apache TVM {version_of('apache-tvm')})"


def with_mattr(target: str, mattr: str | None) -> str:
    """``--target T --mattr +a,+b`` as one target string, ``"T -mattr=+a,+b"``, which
    :func:`relaycomp.targets.resolve` validates (LLVM feature names, the target's kind)."""
    if not mattr:
        return target
    return f"{target} -mattr={mattr.replace(' ', '')}"


def add_working_folder_to_path() -> None:
    """Put the working folder first on ``sys.path``, as ``python -m`` does, so ``--pass
    mypkg.passes:my_pass`` imports ``mypkg`` from where the command runs."""
    folder = os.getcwd()
    if folder not in sys.path and "" not in sys.path:
        sys.path.insert(0, folder)


def list_targets(args) -> int:
    """``relaycomp targets``: this machine, the triples, the bundled presets, then the user's
    presets (a broken or shadowed one is a ``relaycomp: warning:`` line, never a failure)."""
    from relaycomp.targets import known_targets, user_preset_dir, user_targets

    bundled = known_targets()
    users, problems = user_targets()
    for problem in problems:
        warning(problem)
    if args.json:
        print(json.dumps({
            "targets": [{**_entry(spec), "origin": "bundled"} for spec in bundled]
            + [{**_entry(spec), "origin": "user"} for spec in users],
            "user_preset_dir": str(user_preset_dir())}, indent=2))
        return 0
    for spec in bundled:
        print(f"{spec.name:28} {spec.triple:26} {spec.description}")
    print(f"your presets ({user_preset_dir()}):" + ("" if users else " none"))
    for spec in users:
        print(f"{spec.name:28} {spec.triple:26} {spec.description}")
    print('also: a .toml path, or a TVM target string: "llvm -mtriple=TRIPLE -mcpu=CPU '
          '-mattr=+FEATURE,..." / "cuda -arch=sm_XY" / "PRESET -mattr=..."')
    return 0


def _entry(spec) -> dict:
    return {"name": spec.name, "triple": spec.triple, "kind": spec.kind,
            "description": spec.description, "target": spec.target, "host": spec.host}
