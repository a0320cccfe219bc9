"""resolve(): a user's target name → TargetSpec.

Names are tried in order: "host", a known triple (or "cuda"), a bundled preset, a path to a
preset ``.toml`` file.
"""

from __future__ import annotations

import platform

from relaycomp.errors import TargetError
from relaycomp.targets import llvm
from relaycomp.targets.host import host_triple, physical_cores
from relaycomp.targets.kinds import KINDS
from relaycomp.targets.presets import PRESETS, Preset, load_preset
from relaycomp.targets.spec import TargetSpec
from relaycomp.targets.toolchain import NATIVE
from relaycomp.targets.triples import TRIPLES, triple_names

HOST = "host"


def _host_preset() -> Preset:
    """This machine: its triple, LLVM's name for its CPU and its physical cores.

    Vector features LLVM's CPU name implies but this CPU lacks (a hypervisor can hide AVX
    behind a "znver3" model number) are switched off, so host code always runs here.
    """
    triple = host_triple()
    if triple not in TRIPLES:
        raise TargetError(
            f"this machine's architecture '{platform.machine()}' is not supported",
            hint="known triples: " + ", ".join(triple_names()),
        )
    mcpu = llvm.host_cpu()
    if mcpu is not None and not llvm.is_valid_cpu(mcpu, TRIPLES.get(triple).defaults["mtriple"]):
        mcpu = None
    probe = Preset(name=HOST, triple=triple, mcpu=mcpu)
    target, _ = KINDS.get(probe.kind).build(probe)
    hidden = tuple(f"-{feature}" for feature in llvm.missing_vector_features(target))
    cores = physical_cores()
    return Preset(
        name=HOST,
        triple=triple,
        mcpu=mcpu,
        mattr=hidden,
        num_cores=cores,
        description=f"this machine ({platform.machine()}, {mcpu or 'generic'}, {cores} cores)",
    )


def _known_names() -> list[str]:
    return [HOST, *TRIPLES.names(), *PRESETS.names()]


def _lookup(name: str) -> Preset:
    if name == HOST:
        return _host_preset()
    if name in TRIPLES:
        triple = TRIPLES.get(name)
        return Preset(name=name, triple=triple.name, description=triple.description)
    if name in PRESETS:
        return PRESETS.get(name)
    if name.endswith(".toml"):
        return load_preset(name)
    raise TargetError(
        f"unknown target '{name}'",
        hint="known: " + ", ".join(_known_names()) + "; or a path to a board .toml file",
    )


def resolve(
    name: str, *, mcpu: str | None = None, arch: str | None = None, num_cores: int | None = None
) -> TargetSpec:
    """The TargetSpec for ``name``: "host", a triple, "cuda", a preset, or a preset .toml path.

    ``mcpu``, ``arch`` and ``num_cores`` override the preset's (for cuda, ``mcpu`` is the CPU
    side's). Unknown names and invalid values raise TargetError listing what is known.

    Example::

        resolve("raspberry-pi-4").target
        # {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"],
        #  "mcpu": "cortex-a72", "num-cores": 4}
        resolve("cuda", arch="sm_90").host["mtriple"]  # this machine's triple
    """
    preset = _lookup(name).with_overrides(mcpu=mcpu, arch=arch, num_cores=num_cores)
    target, host = KINDS.get(preset.kind).build(preset)
    library_triple = (host or target)["mtriple"]
    toolchain = NATIVE if library_triple == host_triple() else TRIPLES.get(library_triple).toolchain
    return TargetSpec(
        name=name,
        triple=TRIPLES.get(preset.triple).name,
        kind=preset.kind,
        target=target,
        host=host,
        toolchain=toolchain,
        description=preset.description,
    )


def known_targets() -> list[TargetSpec]:
    """Every known target: this machine, each triple, each bundled preset (for ``targets``)."""
    names = [HOST, *triple_names(), *PRESETS.names()]
    return [resolve(name) for name in names]
