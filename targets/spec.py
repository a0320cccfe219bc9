"""TargetSpec: everything the build needs to know about where the code will run."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import tvm

from relaycomp.errors import TargetError
from relaycomp.targets.elf import machine_of_triple
from relaycomp.targets.kinds import KINDS
from relaycomp.targets.toolchain import Toolchain


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: TVM target dicts plus the toolchain that links the library.

    ``name`` is what the user asked for ("host", "raspberry-pi-4", "cuda", a .toml path);
    ``target`` is the TVM target dict of the device code and ``host`` the dict of its CPU side
    (cuda) or None (CPU targets). Construction checks that TVM accepts the dicts.

    Example::

        spec = resolve("raspberry-pi-4")
        ex = tvm.compile(mod, spec.tvm_target())
        ex.export_library("model.so", fcompile=spec.toolchain.fcompile())
        assert elf_machine("model.so") == spec.machine
    """

    name: str
    triple: str
    kind: str
    target: dict
    host: dict | None
    toolchain: Toolchain
    description: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise TargetError(
                f"target '{self.name}': unknown kind '{self.kind}'",
                hint="known kinds: " + ", ".join(KINDS.names()),
            )
        self.tvm_target()  # TVM rejects unknown keys and ill-typed values here

    def tvm_target(self) -> tvm.target.Target:
        """The ``tvm.target.Target`` to compile with (host attached for cuda)."""
        try:
            return tvm.target.Target(self.target, host=self.host)
        except ValueError as exc:
            raise TargetError(f"target '{self.name}': TVM rejects it: {exc}") from None

    @property
    def machine(self) -> str:
        """ELF machine of the exported library ("aarch64", "x86_64", "arm", …): its CPU side."""
        return machine_of_triple((self.host or self.target)["mtriple"])

    @property
    def runs_on_this_machine(self) -> bool:
        """True if a library built for this spec can be loaded and run here.

        CPU targets: same triple and no vector extension this CPU lacks (an AVX-512 preset is
        False on an AVX2 machine). cuda: a GPU of at least ``arch`` is present.
        """
        return KINDS.get(self.kind).runs_here(self)

    def to_json(self) -> dict:
        """A JSON-ready dict for the artifact manifest; :meth:`from_json` reads it back."""
        return {
            "name": self.name,
            "triple": self.triple,
            "kind": self.kind,
            "target": copy.deepcopy(self.target),
            "host": copy.deepcopy(self.host),
            "toolchain": self.toolchain.to_json(),
            "description": self.description,
        }

    @classmethod
    def from_json(cls, data: dict) -> TargetSpec:
        """Inverse of :meth:`to_json`; a dict TVM cannot build raises TargetError."""
        try:
            return cls(
                name=data["name"],
                triple=data["triple"],
                kind=data["kind"],
                target=copy.deepcopy(data["target"]),
                host=copy.deepcopy(data.get("host")),
                toolchain=Toolchain.from_json(data["toolchain"]),
                description=data.get("description", ""),
            )
        except (KeyError, TypeError) as exc:
            raise TargetError(f"malformed target description: missing or bad {exc}") from None
