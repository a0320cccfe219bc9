"""The C toolchain that links TVM's object files into a library for one target triple."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from tvm.support import cc

from relaycomp.errors import TargetError


def _natural_key(path: str) -> list:
    """Sort key that orders ``android21`` before ``android121`` (numbers compared as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


@dataclass(frozen=True)
class Toolchain:
    """A C compiler able to link shared libraries for one target.

    ``compiler`` is a program name (or glob, e.g. ``aarch64-linux-android*-clang`` for the Android
    NDK, whose compilers carry the API level in their name), or None for the host's default C
    compiler. It is looked up on PATH, then in ``search_dirs`` (glob patterns; ``$VARS`` are
    expanded, patterns naming an unset variable are skipped).

    Example::

        Toolchain("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu").find()
        # -> "/usr/bin/aarch64-linux-gnu-gcc", or TargetError with an apt-get hint
    """

    compiler: str | None
    debian_package: str | None
    options: tuple[str, ...] = ()
    search_dirs: tuple[str, ...] = ()
    install_hint: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "options", tuple(self.options))
        object.__setattr__(self, "search_dirs", tuple(self.search_dirs))

    def _candidate_dirs(self) -> list[str]:
        dirs = list(os.get_exec_path())
        for pattern in self.search_dirs:
            expanded = os.path.expandvars(pattern)
            if "$" not in expanded:
                dirs.extend(sorted(glob.glob(expanded)))
        return dirs

    def _hint(self) -> str:
        if self.install_hint:
            return self.install_hint
        if self.debian_package:
            return f"install it: apt-get install {self.debian_package}"
        return "install a C compiler for this target and put it on PATH"

    def find(self) -> str:
        """Absolute path of the compiler; a missing compiler raises TargetError with a hint."""
        if self.compiler is None:
            found = cc.get_cc()
            if found is None:
                raise TargetError("no C compiler found on PATH", hint=self._hint())
            return found
        for directory in self._candidate_dirs():
            matches = [
                path
                for path in glob.glob(os.path.join(glob.escape(directory), self.compiler))
                if os.path.isfile(path) and os.access(path, os.X_OK)
            ]
            if matches:
                # NDK: the lowest API level found, so the library loads on the most devices.
                return os.path.abspath(min(matches, key=_natural_key))
        raise TargetError(f"cross compiler '{self.compiler}' not found on PATH", hint=self._hint())

    def fcompile(self) -> Callable:
        """A function for ``executable.export_library(path, fcompile=...)`` using this compiler.

        Finds the compiler first, so a missing toolchain fails here with TargetError rather
        than deep inside TVM's export.
        """
        path = self.find()
        base_options = list(self.options)

        # Not tvm.support.cc.cross_compiler: it appends per-call options to its captured
        # base list, so options accumulate when one fcompile is used for several exports.
        def link(output, objects, options=None):
            cc.create_shared(output, objects, options=[*base_options, *(options or [])], cc=path)

        link.output_format = "so"
        link.get_target_triple = cc.get_target_by_dump_machine(path)
        return link

    def to_json(self) -> dict:
        """A JSON-ready dict (for the artifact manifest)."""
        return {
            "compiler": self.compiler,
            "debian_package": self.debian_package,
            "options": list(self.options),
            "search_dirs": list(self.search_dirs),
            "install_hint": self.install_hint,
        }

    @classmethod
    def from_json(cls, data: dict) -> Toolchain:
        """Inverse of :meth:`to_json`."""
        return cls(
            compiler=data["compiler"],
            debian_package=data.get("debian_package"),
            options=tuple(data.get("options", ())),
            search_dirs=tuple(data.get("search_dirs", ())),
            install_hint=data.get("install_hint"),
        )


NATIVE = Toolchain(compiler=None, debian_package="gcc")
"""The host's default C compiler (TVM's choice: $CXX/$CC, else g++, gcc, clang…)."""
