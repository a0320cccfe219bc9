"""Target triples and board presets → TVM target + toolchain.

::

    from relaycomp.targets import resolve, elf_machine

    spec = resolve("raspberry-pi-4")            # or "host", "aarch64-linux-gnu", "cuda", "my.toml",
                                                # "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72"
    ex = tvm.compile(mod, spec.tvm_target())
    ex.export_library("model.so", fcompile=spec.toolchain.fcompile())
    elf_machine("model.so")                     # "aarch64"

Triples live in ``TRIPLES`` (``triples.py``), boards in ``presets/*.toml`` (``PRESETS``), and what
differs between TVM kinds (llvm, cuda) in ``KINDS``.
"""

from relaycomp.targets.elf import check_shared_library, elf_machine, machine_of_triple
from relaycomp.targets.energy import EnergyModel, default_energy
from relaycomp.targets.host import host_triple
from relaycomp.targets.kinds import KINDS, Kind
from relaycomp.targets.presets import PRESETS, Preset, load_preset, user_preset_dir
from relaycomp.targets.resolve import known_targets, resolve, target_energy, user_targets
from relaycomp.targets.spec import TargetSpec
from relaycomp.targets.toolchain import Toolchain
from relaycomp.targets.triples import TRIPLES, Triple

__all__ = [
    "KINDS",
    "PRESETS",
    "TRIPLES",
    "EnergyModel",
    "Kind",
    "Preset",
    "TargetSpec",
    "Toolchain",
    "Triple",
    "check_shared_library",
    "default_energy",
    "elf_machine",
    "host_triple",
    "known_targets",
    "load_preset",
    "machine_of_triple",
    "resolve",
    "target_energy",
    "user_preset_dir",
    "user_targets",
]
