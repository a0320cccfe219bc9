"""TVM's runtime libraries for a target machine: ``libtvm_runtime.so`` and ``libtvm_ffi.so``.

TVM 0.27 splits its runtime in two: ``libtvm_runtime.so`` (the Relax VM, the thread pool, the
kernels' helpers) needs ``libtvm_ffi.so`` (objects, functions, module loading). A bundle ships
both, taken from

- this machine's installed ``apache-tvm`` and ``apache-tvm-ffi`` when the target is this
  machine's architecture, and
- a folder the user names (``--runtime-dir``: TVM's runtime built for the board, e.g. with the
  Android NDK, for which TVM publishes no wheel): :func:`user_runtime_libraries`, and
- otherwise TVM's own wheels for the target's platform (the ones the emulated device installs,
  ``relaycomp.runtime.emulated_device.ARCHES``), at the host's exact versions so that the runtime
  matches the compiler that built the model. They are downloaded once with pip and the two
  libraries cached in ``$XDG_CACHE_HOME/relaycomp/runtime/ARCH-tvmVERSION/``; a prepared emulated
  device's copy is reused without a download.

::

    runtime_libraries("aarch64")   # [.../libtvm_runtime.so, .../libtvm_ffi.so]
    runtime_libraries("aarch64", runtime_dir="tvm/build-android")   # the user's build
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from relaycomp.errors import RelaycompError, last_line
from relaycomp.runtime.emulated_device import ARCHES, default_root
from relaycomp.runtime.local import elf_machine_of_this_process
from relaycomp.targets import elf_machine

# (pip distribution, path of the library inside its wheel)
LIBRARIES = (("apache-tvm", "tvm/lib/libtvm_runtime.so"),
             ("apache-tvm-ffi", "tvm_ffi/lib/libtvm_ffi.so"))
# From a --runtime-dir: the two runtime libraries, and the NDK's shared C++ library when the
# user put it there (a runtime built with ANDROID_STL=c++_shared needs it on the device).
USER_LIBRARIES = ("libtvm_runtime.so", "libtvm_ffi.so")
USER_OPTIONAL_LIBRARIES = ("libc++_shared.so",)


class BundleError(RelaycompError):
    """A device bundle cannot be made (no runtime for the target, no toolchain, bad folder)."""


def runtime_libraries(machine: str, log=print, runtime_dir=None) -> list[Path]:
    """Paths of TVM's runtime libraries built for the ELF ``machine`` ("x86_64", "aarch64"):
    from ``runtime_dir`` when given (see :func:`user_runtime_libraries`), else TVM's own."""
    if runtime_dir is not None:
        return user_runtime_libraries(runtime_dir, machine)
    if machine == elf_machine_of_this_process():
        return _installed_libraries()
    return _wheel_libraries(machine, log)


def check_available(machine: str) -> None:
    """Raise BundleError unless :func:`runtime_libraries` can provide ``machine``'s runtime."""
    if machine != elf_machine_of_this_process() and machine not in ARCHES:
        raise BundleError(
            f"TVM publishes no runtime library for {machine} that relaycomp can fetch",
            hint=f"bundles can be made for: {elf_machine_of_this_process()} (this machine), "
                 f"{', '.join(ARCHES.names())}; for {machine}, pass TVM's runtime built for "
                 "it as --runtime-dir DIR, or run the model through TVM's RPC "
                 "(relaycomp run --rpc)")


def tvm_version() -> str:
    """The installed TVM's version: a user-built runtime must be built from the same source."""
    return _versions()["apache-tvm"]


def user_runtime_libraries(folder, machine: str) -> list[Path]:
    """``libtvm_runtime.so`` and ``libtvm_ffi.so`` (and ``libc++_shared.so`` if present) from
    ``folder`` or its ``lib/`` (where TVM's own CMake build puts ``libtvm_ffi.so``), each
    checked to be an ELF library for ``machine``; BundleError names what is missing or wrong."""
    folder = Path(folder)
    option = f"--runtime-dir {folder}"
    if not folder.is_dir():
        raise BundleError(f"{option}: no such folder",
                          hint="name the folder holding libtvm_runtime.so and libtvm_ffi.so")
    found = {}
    for name in (*USER_LIBRARIES, *USER_OPTIONAL_LIBRARIES):
        path = next((p for p in (folder / name, folder / "lib" / name) if p.is_file()), None)
        if path is not None:
            found[name] = path
    missing = [name for name in USER_LIBRARIES if name not in found]
    if missing:
        raise BundleError(
            f"{option}: {' and '.join(missing)} not found there (nor in its lib/)",
            hint=f"TVM {tvm_version()}'s runtime is two libraries, libtvm_runtime.so and "
                 "libtvm_ffi.so: put both in the folder")
    for name, path in found.items():
        try:
            built = elf_machine(path)
        except RelaycompError as err:
            raise BundleError(f"{option}: {name}: {err}") from None
        if built != machine:
            raise BundleError(f"{option}: {name} is built for {built}, the target is {machine}",
                              hint=f"build TVM's runtime for {machine} (with the target's "
                                   "toolchain) and name that folder")
    return list(found.values())


def _installed_libraries() -> list[Path]:
    import tvm.libinfo
    import tvm_ffi.libinfo

    return [Path(tvm.libinfo.find_libtvm_runtime()), Path(tvm_ffi.libinfo.find_libtvm_ffi())]


def _versions() -> dict[str, str]:
    return {name: metadata.version(name) for name, _ in LIBRARIES}


def cache_folder(machine: str) -> Path:
    """Where the runtime libraries of ``machine`` at this TVM's version are cached."""
    versions = _versions()
    return default_root().parent / "runtime" / f"{machine}-tvm{versions['apache-tvm']}"


def _wheel_libraries(machine: str, log) -> list[Path]:
    check_available(machine)
    arch = ARCHES.get(machine)
    folder = cache_folder(machine)
    stamp = folder / "versions.json"
    paths = [folder / Path(member).name for _, member in LIBRARIES]
    if stamp.is_file() and json.loads(stamp.read_text()) == _versions() and \
            all(p.is_file() for p in paths):
        return paths
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=_made(folder.parent)))
    try:
        if not _copy_from_emulated_device(arch.name, staging):
            _download(arch, staging, log)
        (staging / "versions.json").write_text(json.dumps(_versions()))
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _copy_from_emulated_device(arch: str, staging: Path) -> bool:
    """Copy the libraries of a prepared emulated device at the same versions; False if none."""
    device = default_root() / arch
    stamp = device / "ready.json"
    if not stamp.is_file():
        return False
    ready = json.loads(stamp.read_text())
    if any(ready.get(name) != version for name, version in _versions().items()):
        return False
    sources = [device / "site-packages" / member for _, member in LIBRARIES]
    if not all(p.is_file() for p in sources):
        return False
    for source in sources:
        shutil.copy2(source, staging / source.name)
    return True


def _download(arch, staging: Path, log) -> None:
    """pip-download the two wheels for ``arch`` and extract just the libraries."""
    requirements = [f"{name}=={version}" for name, version in _versions().items()]
    log(f"downloading TVM's {arch.name} runtime ({', '.join(requirements)}; once)")
    wheels = staging / "wheels"
    platforms = [f"--platform={p}" for p in arch.wheel_platforms]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--only-binary=:all:", "--python-version=3.11", "--implementation=cp",
         "--abi=cp311", *platforms, "--dest", str(wheels), *requirements],
        check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise BundleError(f"cannot download TVM's {arch.name} wheels: "
                          f"{last_line(result.stdout)}",
                          hint="the first bundle for this architecture needs access to PyPI")
    for name, member in LIBRARIES:
        wheel = next(wheels.glob(f"{name.replace('-', '_')}-*.whl"), None)
        if wheel is None:
            raise BundleError(f"pip downloaded no {name} wheel for {arch.name}")
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, \
                open(staging / Path(member).name, "wb") as target:
            shutil.copyfileobj(source, target)
        (staging / Path(member).name).chmod(0o755)
    shutil.rmtree(wheels)
