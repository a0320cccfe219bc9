"""Target triples and board presets → TVM target + toolchain.

::

    from relaycomp.targets import resolve, elf_machine

    spec = resolve("raspberry-pi-4")            # or "host", "aarch64-linux-gnu", "cuda", "my.toml"
    ex = tvm.compile(mod, spec.tvm_target())
    ex.export_library("model.so", fcompile=spec.toolchain.fcompile())
    elf_machine("model.so")                     # "aarch64"

Triples live in ``TRIPLES`` (``triples.py``), boards in ``presets/*.toml`` (``PRESETS``), and what
differs between TVM kinds (llvm, cuda) in ``KINDS``.
"""

from relaycomp.targets.elf import check_shared_library, elf_machine, machine_of_triple
from relaycomp.targets.host import host_triple
from relaycomp.targets.kinds import KINDS, Kind
from relaycomp.targets.presets import PRESETS, Preset, load_preset
from relaycomp.targets.resolve import known_targets, resolve
from relaycomp.targets.spec import TargetSpec
from relaycomp.targets.toolchain import Toolchain
from relaycomp.targets.triples import TRIPLES, Triple

__all__ = [
    "KINDS",
    "PRESETS",
    "TRIPLES",
    "Kind",
    "Preset",
    "TargetSpec",
    "Toolchain",
    "Triple",
    "check_shared_library",
    "elf_machine",
    "host_triple",
    "known_targets",
    "load_preset",
    "machine_of_triple",
    "resolve",
]
