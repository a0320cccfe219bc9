"""Write a device bundle: a folder a board runs the model from, without Python.

The folder is assembled in a hidden sibling folder and renamed into place at the end, so a
failure (no toolchain, no download, a compiler error) leaves nothing half-written; an existing
folder is only replaced with ``force``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from relaycomp.bundle.android import check_android, is_android
from relaycomp.bundle.compiler import build_command, cxx_toolchain, runner_options
from relaycomp.bundle.runtime_libs import (
    BundleError,
    check_available,
    runtime_libraries,
    user_runtime_libraries,
)
from relaycomp.bundle.texts import RUN_SH, build_script, readme_text, signature_text
from relaycomp.compiler.manifest import Manifest
from relaycomp.errors import last_line
from relaycomp.runtime.local import random_inputs, read_artifact
from relaycomp.targets import TargetSpec, elf_machine

RUNNER_SOURCES = Path(__file__).resolve().parent / "runner"
RUNNER_FILES = ("relaycomp_runner.cc", "npy.h")
BUILD_TIMEOUT_SECONDS = 300


@dataclass(frozen=True)
class Bundle:
    """A written bundle: its folder, the runner in it and the run command (from the folder)."""

    folder: Path
    runner: Path
    machine: str

    def command(self, inputs: str | os.PathLike, outputs: str | os.PathLike,
                repeat: int = 20) -> list[str]:
        """The runner's command line for ``inputs`` (.npz or folder) into ``outputs``."""
        return [str(self.runner), str(self.folder / "model.so"),
                str(self.folder / "signature.txt"), str(inputs), str(outputs),
                "--repeat", str(repeat)]


def check_folder(folder: str | os.PathLike, force: bool = False) -> Path:
    """``folder`` can receive a bundle: missing, empty, or (with ``force``) replaceable."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BundleError(f"--bundle {folder}: it is a file, not a folder",
                          hint="name a folder (it is created)")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise BundleError(f"--bundle {folder}: the folder exists and is not empty",
                          hint="pass --force to replace it, or name another folder")
    parent = folder.absolute().parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("/"))
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise BundleError(f"--bundle {folder}: cannot write in {existing}")
    return folder


def check_target(spec: TargetSpec, runtime_dir=None) -> str:
    """The C++ compiler for ``spec``, or BundleError/TargetError saying what is missing (for
    Android: the NDK and ``runtime_dir``, TVM's runtime built with it)."""
    if spec.kind != "llvm":
        raise BundleError(f"bundles run on CPUs; {spec.name} is a {spec.kind} target",
                          hint="run GPU builds with `relaycomp run` on a machine with the GPU")
    if is_android(spec):
        return check_android(spec, runtime_dir)
    if runtime_dir is None:
        check_available(spec.machine)
    else:
        user_runtime_libraries(runtime_dir, spec.machine)
    return cxx_toolchain(spec).find()   # a missing cross compiler says what to install


def write_bundle(artifact: str | os.PathLike, folder: str | os.PathLike, force: bool = False,
                 log=print, runtime_dir: str | os.PathLike | None = None) -> Bundle:
    """Write the bundle of the compiled ``artifact`` (a ``.so`` with its manifest) to
    ``folder``: the model, TVM's runtime for its target (``runtime_dir``'s when given, e.g. one
    built with the Android NDK), the runner (source and prebuilt), ``signature.txt``,
    ``example_inputs.npz``, ``run.sh`` and a README."""
    folder = check_folder(folder, force)
    path, manifest, spec = read_artifact(artifact)
    cxx = check_target(spec, runtime_dir)
    libraries = runtime_libraries(spec.machine, log=log, runtime_dir=runtime_dir)
    folder.absolute().parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.absolute().parent))
    staging.chmod(0o755)  # mkdtemp's folder is owner-only; a bundle is for copying around
    try:
        _fill(staging, path, manifest, spec, libraries, cxx, folder.name)
        _replace(folder, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Bundle(folder, folder / "relaycomp-runner", spec.machine)


def _fill(staging: Path, artifact: Path, manifest: Manifest, spec: TargetSpec,
          libraries: list[Path], cxx: str, folder_name: str) -> None:
    shutil.copyfile(artifact, staging / "model.so")
    shutil.copyfile(artifact.with_name(artifact.name + ".json"), staging / "model.so.json")
    (staging / "lib").mkdir()
    for library in libraries:
        shutil.copyfile(library, staging / "lib" / library.name)
    runner = staging / "runner"
    runner.mkdir()
    for name in RUNNER_FILES:
        shutil.copyfile(RUNNER_SOURCES / name, runner / name)
    _copy_headers(runner / "include")
    (staging / "signature.txt").write_text(signature_text(manifest))
    np.savez(staging / "example_inputs.npz", **random_inputs(manifest.inputs))
    options = runner_options(spec)
    board_build = " ".join(shlex.quote(a) for a in build_command("${CXX:-g++}", options))
    board_build = board_build.replace("'${CXX:-g++}'", '"${CXX:-g++}"')
    _write_executable(runner / "build.sh", build_script(board_build))
    _write_executable(staging / "run.sh", RUN_SH)
    (staging / "README.md").write_text(
        readme_text(manifest, spec, [p.name for p in libraries], board_build, folder_name))
    _build_runner(staging, cxx, options, spec)


def _copy_headers(include: Path) -> None:
    """tvm-ffi's C++ headers (with dlpack's), which the runner compiles against."""
    import tvm_ffi.libinfo

    for source in {tvm_ffi.libinfo.find_include_path(), tvm_ffi.libinfo.find_dlpack_include_path()}:
        shutil.copytree(source, include, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("tvm_ffi_python_*.h"))


def _write_executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def _build_runner(staging: Path, cxx: str, options: tuple[str, ...], spec: TargetSpec) -> None:
    command = build_command(cxx, options)
    try:
        result = subprocess.run(command, cwd=staging, check=False, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                timeout=BUILD_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise BundleError(f"building the runner with {cxx} took over "
                          f"{BUILD_TIMEOUT_SECONDS} s") from None
    if result.returncode != 0:
        errors = [line for line in result.stdout.splitlines() if "error" in line]
        raise BundleError(f"building the runner with {cxx} failed: "
                          f"{last_line(errors[0] if errors else result.stdout)}",
                          hint=f"the command was: {shlex.join(command)}")
    built = elf_machine(staging / "relaycomp-runner")
    if built != spec.machine:
        raise BundleError(f"{cxx} built a {built} runner for a {spec.machine} target",
                          hint="put the target's cross compiler first on PATH")


def _replace(folder: Path, staging: Path) -> None:
    """Move ``staging`` to ``folder``; an existing ``folder`` is moved aside first and removed
    only once the new one is in place."""
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.absolute().parent))
        os.replace(folder, old / folder.name)
    try:
        os.replace(staging, folder)
    except BaseException:
        if old is not None:
            os.replace(old / folder.name, folder)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
