"""The C++ compiler that builds the bundle's runner for a target, and the build command.

It is the C++ sibling of the C toolchain that linked the model (``TargetSpec.toolchain``):
``aarch64-linux-gnu-gcc`` → ``aarch64-linux-gnu-g++`` (Debian ``g++-aarch64-linux-gnu``), the
NDK's ``aarch64-linux-android*-clang`` → ``…-clang++``, and the host's ``g++`` (or ``c++``,
``clang++``) for a library linked by the host's compiler.

::

    cxx = cxx_toolchain(resolve("raspberry-pi-4")).find()   # /usr/bin/aarch64-linux-gnu-g++
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace

from relaycomp.bundle.runtime_libs import BundleError
from relaycomp.targets import TargetSpec, Toolchain
from relaycomp.targets.toolchain import NATIVE

HOST_CXX = ("g++", "c++", "clang++")
# The runner needs C++17 (tvm-ffi's headers); rpath $ORIGIN/lib finds the bundled runtime
# wherever the folder is copied; --no-as-needed keeps libtvm_runtime.so loaded although the
# runner calls none of its symbols directly: loading it registers the Relax VM's loader.
CXX_FLAGS = ("-std=c++17", "-O2")
LINK_FLAGS = ("-Wl,-rpath,$ORIGIN/lib", "-Llib", "-Wl,--no-as-needed", "-ltvm_runtime",
              "-ltvm_ffi", "-Wl,--as-needed")


class HostCxx:
    """The host's C++ compiler, found on PATH."""

    def find(self) -> str:
        for name in HOST_CXX:
            found = shutil.which(name)
            if found:
                return found
        raise BundleError("no C++ compiler found on PATH (tried " + ", ".join(HOST_CXX) + ")",
                          hint="install one: apt-get install g++")


def cxx_toolchain(spec: TargetSpec) -> Toolchain | HostCxx:
    """The C++ compiler for ``spec``'s CPU side, with ``find()`` like :class:`Toolchain`."""
    toolchain = spec.toolchain
    if toolchain.compiler is None or toolchain == NATIVE:
        return HostCxx()
    compiler = re.sub(r"gcc$", "g++", toolchain.compiler)
    compiler = re.sub(r"clang$", "clang++", compiler)
    package = toolchain.debian_package
    if package:
        package = re.sub(r"^gcc", "g++", package)
    return replace(toolchain, compiler=compiler, debian_package=package)


def runner_options(spec: TargetSpec) -> tuple[str, ...]:
    """The target's compiler options for the runner: its C toolchain's, plus for Android the
    static C++ library (the NDK's clang++ would otherwise need libc++_shared.so on the
    device)."""
    options = tuple(spec.toolchain.options)
    if "-linux-android" in spec.triple:
        options += ("-static-libstdc++",)
    return options


def build_command(cxx: str, options: tuple[str, ...] = ()) -> list[str]:
    """The command building ``relaycomp-runner`` inside a bundle folder (its working folder),
    with the shipped ``runner/include`` headers and ``lib/`` libraries."""
    return [cxx, *CXX_FLAGS, *options, "-Irunner/include", "runner/relaycomp_runner.cc",
            "-o", "relaycomp-runner", *LINK_FLAGS]
