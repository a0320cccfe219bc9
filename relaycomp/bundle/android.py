"""What an Android bundle needs, and one error naming everything that is missing.

TVM publishes no Android build of its runtime, so an Android bundle needs two things from the
user: the Android NDK (its ``clang++`` builds the runner) and TVM's runtime built with that NDK
(``--runtime-dir``). The NDK is found as the Android tools find it: ``ANDROID_NDK_HOME``, then
``ANDROID_NDK_ROOT``, then the folder of ``ndk-build`` on PATH; a
``aarch64-linux-android*-clang++`` on PATH also serves.

::

    cxx = check_android(resolve("aarch64-linux-android"), runtime_dir="tvm/build-android")
    # BundleError: a bundle for aarch64-linux-android needs the Android NDK (...) and TVM's
    # runtime built for Android (...)   hint: how to get each
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from relaycomp.bundle.compiler import cxx_toolchain
from relaycomp.bundle.runtime_libs import BundleError, tvm_version, user_runtime_libraries
from relaycomp.errors import RelaycompError
from relaycomp.targets import TargetSpec

NDK_VARIABLES = ("ANDROID_NDK_HOME", "ANDROID_NDK_ROOT")
NDK_BIN = "toolchains/llvm/prebuilt/*/bin"
NDK_INSTALL = "install the Android NDK (developer.android.com/ndk) and set ANDROID_NDK_HOME to its folder"


def is_android(spec: TargetSpec) -> bool:
    """``spec`` is an Android target (a ``*-linux-android*`` triple)."""
    return "-linux-android" in spec.triple


def find_android_ndk() -> tuple[Path, str] | None:
    """The NDK's folder and how it was found (``"$ANDROID_NDK_HOME"``, ``"ndk-build on PATH"``),
    or None."""
    for variable in NDK_VARIABLES:
        value = os.environ.get(variable)
        if value and Path(value).is_dir():
            return Path(value), f"${variable}"
    ndk_build = shutil.which("ndk-build")
    if ndk_build:
        return Path(ndk_build).resolve().parent, "ndk-build on PATH"
    return None


def _runtime_build_hint(ndk: Path | None) -> str:
    toolchain_file = f"{ndk or '$ANDROID_NDK_HOME'}/build/cmake/android.toolchain.cmake"
    return (f"build TVM {tvm_version()}'s runtime with the NDK (in TVM's source: cmake "
            f"-DCMAKE_TOOLCHAIN_FILE={toolchain_file} "
            "-DANDROID_ABI=arm64-v8a -DANDROID_PLATFORM=android-24 -DANDROID_STL=c++_static .. "
            "&& cmake --build . --target tvm_runtime) and pass that build folder as "
            "--runtime-dir (it needs libtvm_runtime.so and libtvm_ffi.so)")


def check_android(spec: TargetSpec, runtime_dir=None) -> str:
    """The NDK's C++ compiler for ``spec``'s runner, after checking ``runtime_dir``; one
    BundleError naming every missing piece (the NDK, the runtime) and how to provide each."""
    missing, hints = [], []
    ndk = find_android_ndk()
    toolchain = cxx_toolchain(spec)
    if ndk is not None:   # ndk-build's folder is not among the C toolchain's search folders
        toolchain = replace(toolchain, search_dirs=(*toolchain.search_dirs,
                                                    str(ndk[0] / NDK_BIN)))
    cxx = None
    try:
        cxx = toolchain.find()
    except RelaycompError:
        if ndk is None:
            missing.append("the Android NDK (ANDROID_NDK_HOME and ANDROID_NDK_ROOT are unset, "
                           f"and neither ndk-build nor {toolchain.compiler} is on PATH)")
            hints.append(NDK_INSTALL)
        else:
            missing.append(f"the NDK's C++ compiler (no {toolchain.compiler} in "
                           f"{ndk[0] / NDK_BIN}; the NDK found through {ndk[1]})")
            hints.append("install a complete NDK (r23 or later) and point ANDROID_NDK_HOME "
                         "at it")
    if runtime_dir is None:
        missing.append("TVM's runtime built for Android (TVM publishes none; pass it as "
                       "--runtime-dir DIR)")
        hints.append(_runtime_build_hint(ndk[0] if ndk else None))
    if missing:
        raise BundleError(f"a bundle for {spec.triple} needs {' and '.join(missing)}",
                          hint="; ".join(hints))
    user_runtime_libraries(runtime_dir, spec.machine)
    return cxx
