"""Energy per multiply-accumulate and per byte of DRAM traffic: the data behind the energy
estimate of ``relaycomp benchmark``.

The numbers are data, not code: a board preset carries them in an ``[energy]`` table, and
targets without one (``host``, a bare triple, a TVM target string) take the default of their kind
from ``energy.toml`` beside this file. Every table names its sources::

    [energy]
    pj-per-mac = { float32 = 4.6, float16 = 1.5, int8 = 0.3 }
    pj-per-dram-byte = 162.5
    sources = ["Horowitz, ISSCC 2014, 45 nm: fp32 mult 3.7 pJ + add 0.9 pJ, ..."]
    notes = "45 nm numbers, not scaled to the board's process node"

An estimate from these is ``MACs x pJ/MAC + bytes x pJ/byte``: an order of magnitude for
budgeting, not a measurement (see :func:`estimate_energy`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from relaycomp.errors import TargetError

DEFAULTS_FILE = Path(__file__).parent / "energy.toml"
PRECISIONS = ("float32", "float16", "int8")
_KEYS = ("pj-per-mac", "pj-per-dram-byte", "sources", "notes")


@dataclass(frozen=True)
class EnergyModel:
    """Picojoules per MAC (by precision) and per byte moved to or from DRAM, with sources.

    Example::

        model = EnergyModel({"float32": 4.6, "float16": 1.5, "int8": 0.3}, 162.5,
                            sources=("Horowitz, ISSCC 2014",))
        model.estimate({"float32": 1e6}, dram_bytes=1e5)["total_uj"]   # 4.6 + 16.25 µJ
    """

    pj_per_mac: dict[str, float]
    pj_per_dram_byte: float
    sources: tuple[str, ...] = ()
    notes: str = ""
    origin: str = field(default="", compare=False)  # the file the numbers came from

    def __post_init__(self):
        where = self.origin or "energy table"
        missing = [p for p in PRECISIONS if p not in self.pj_per_mac]
        unknown = sorted(set(self.pj_per_mac) - set(PRECISIONS))
        if missing or unknown:
            raise TargetError(f"{where}: pj-per-mac needs exactly {', '.join(PRECISIONS)}"
                              + (f"; missing {', '.join(missing)}" if missing else "")
                              + (f"; unknown {', '.join(unknown)}" if unknown else ""))
        for name, value in [*self.pj_per_mac.items(), ("pj-per-dram-byte", self.pj_per_dram_byte)]:
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise TargetError(f"{where}: energy '{name}' must be a positive number, "
                                  f"got {value!r}")
        if not self.sources:
            raise TargetError(f"{where}: an [energy] table must name its 'sources'",
                              hint="e.g. sources = [\"Horowitz, ISSCC 2014, 45 nm\"]")

    @classmethod
    def from_table(cls, table: object, origin: str) -> EnergyModel:
        """Read an ``[energy]`` TOML table; mistakes raise TargetError naming ``origin``."""
        if not isinstance(table, dict):
            raise TargetError(f"{origin}: 'energy' must be a table ([energy])")
        unknown = sorted(set(table) - set(_KEYS))
        if unknown:
            raise TargetError(f"{origin}: unknown key 'energy.{unknown[0]}'",
                              hint="energy keys: " + ", ".join(_KEYS))
        macs, sources = table.get("pj-per-mac"), table.get("sources", [])
        if not isinstance(macs, dict):
            raise TargetError(f"{origin}: 'energy.pj-per-mac' must be a table like "
                              "{ float32 = 4.6, float16 = 1.5, int8 = 0.3 }")
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise TargetError(f"{origin}: 'energy.sources' must be a list of strings")
        return cls(pj_per_mac=dict(macs), pj_per_dram_byte=table.get("pj-per-dram-byte"),
                   sources=tuple(sources), notes=str(table.get("notes", "")), origin=origin)

    def estimate(self, macs: dict[str, int], dram_bytes: float) -> dict:
        """Microjoules for ``macs`` (by precision) and ``dram_bytes``: compute, memory, total."""
        unknown = sorted(set(macs) - set(PRECISIONS))
        if unknown:
            raise TargetError(f"no energy per MAC for precision(s) {', '.join(unknown)}",
                              hint="known: " + ", ".join(PRECISIONS))
        compute = sum(count * self.pj_per_mac[p] for p, count in macs.items()) * 1e-6
        memory = dram_bytes * self.pj_per_dram_byte * 1e-6
        return {"compute_uj": compute, "memory_uj": memory, "total_uj": compute + memory}

    def to_json(self) -> dict:
        """The coefficients and their sources (for ``benchmark --json``)."""
        return {"pj_per_mac": dict(self.pj_per_mac), "pj_per_dram_byte": self.pj_per_dram_byte,
                "sources": list(self.sources), "notes": self.notes, "origin": self.origin}


def default_energy(kind: str) -> EnergyModel:
    """The default coefficients of a target kind ("llvm", "cuda") from ``energy.toml``."""
    data = tomllib.loads(DEFAULTS_FILE.read_text())
    if kind not in data:
        raise TargetError(f"{DEFAULTS_FILE}: no default energy table for kind '{kind}'")
    return EnergyModel.from_table(data[kind], f"{DEFAULTS_FILE.name} [{kind}]")
