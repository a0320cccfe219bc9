"""Board presets: one small TOML file per board in ``presets/``, or a user's own file.

A preset file names a triple and what is known about the board::

    description = "Raspberry Pi 4 Model B (4x Cortex-A72), 64-bit OS"
    triple = "aarch64-linux-gnu"
    mcpu = "cortex-a72"
    num-cores = 4

Keys: description, triple (required), mcpu, mattr, num-cores (CPU targets); arch, host-triple,
host-mcpu, num-cores (cuda targets, whose CPU side the host-* keys and num-cores describe); an
optional ``[energy]`` table (:mod:`relaycomp.targets.energy`) for ``relaycomp benchmark``.
Without num-cores (here or from ``--num-cores``) a CPU target gets this machine's logical CPU
count (:func:`relaycomp.targets.host.default_num_cores`): MetaSchedule needs one.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from relaycomp.errors import TargetError
from relaycomp.registry import Registry
from relaycomp.targets.energy import EnergyModel
from relaycomp.targets.kinds import KINDS
from relaycomp.targets.triples import TRIPLES, triple_names

PRESET_DIR = Path(__file__).parent / "presets"

# TOML key -> Preset field.
_KEYS = {
    "description": "description",
    "triple": "triple",
    "mcpu": "mcpu",
    "mattr": "mattr",
    "num-cores": "num_cores",
    "arch": "arch",
    "host-triple": "host_triple",
    "host-mcpu": "host_mcpu",
    "energy": "energy",
}
_FIELD_KEYS = {field: key for key, field in _KEYS.items()}
_TEXT_FIELDS = ("description", "mcpu", "arch", "host_triple", "host_mcpu")
_KIND_FIELDS = ("mcpu", "mattr", "num_cores", "arch", "host_triple", "host_mcpu")


@dataclass(frozen=True)
class Preset:
    """What relaycomp knows about a board: a triple plus the CPU/GPU details to tune for.

    Validated on construction (types, known triple, fields that apply to the triple's kind,
    mcpu/mattr/arch against LLVM and CUDA naming); errors name ``source``, the preset's file.
    """

    name: str
    triple: str
    description: str = ""
    mcpu: str | None = None
    mattr: tuple[str, ...] = ()
    num_cores: int | None = None
    arch: str | None = None
    host_triple: str | None = None
    host_mcpu: str | None = None
    energy: EnergyModel | None = None
    source: str = ""

    @property
    def where(self) -> str:
        """How errors refer to this preset: its file, else its name."""
        return self.source or f"target '{self.name}'"

    @property
    def kind(self) -> str:
        """The TVM target kind of the preset's triple ("llvm", "cuda")."""
        return TRIPLES.get(self.triple).kind

    def __post_init__(self):
        if not isinstance(self.triple, str) or self.triple not in TRIPLES:
            raise TargetError(
                f"{self.where}: unknown triple '{self.triple}'",
                hint="known triples: " + ", ".join(TRIPLES.names()),
            )
        self._check_types()
        object.__setattr__(self, "mattr", tuple(self.mattr))
        kind = KINDS.get(self.kind)
        for field in _KIND_FIELDS:
            if getattr(self, field) not in (None, ()) and field not in kind.accepts:
                allowed = ", ".join(sorted(_FIELD_KEYS[name] for name in kind.accepts))
                self._fail(
                    f"'{_FIELD_KEYS[field]}' does not apply to {self.kind} targets "
                    f"(they take: {allowed})"
                )
        kind.build(self)  # checks mcpu, mattr and arch against LLVM / CUDA naming

    def _check_types(self) -> None:
        for field in _TEXT_FIELDS:
            value = getattr(self, field)
            if value is not None and not isinstance(value, str):
                self._fail(f"'{_FIELD_KEYS[field]}' must be a string, got {value!r}")
        if not isinstance(self.mattr, list | tuple) or not all(
            isinstance(attr, str) and attr[:1] in ("+", "-") for attr in self.mattr
        ):
            self._fail(f"'mattr' must be a list like [\"+neon\"], got {self.mattr!r}")
        if self.energy is not None and not isinstance(self.energy, EnergyModel):
            self._fail(f"'energy' must be an [energy] table, got {self.energy!r}")
        cores = self.num_cores
        if cores is not None and (type(cores) is not int or cores < 1):  # bool is not a count
            self._fail(f"'num-cores' must be a positive integer, got {cores!r}")

    def _fail(self, message: str) -> None:
        raise TargetError(f"{self.where}: {message}")

    def with_overrides(
        self,
        *,
        mcpu: str | None = None,
        arch: str | None = None,
        num_cores: int | None = None,
        mattr: tuple[str, ...] = (),
    ) -> Preset:
        """A copy with the given values replaced (None keeps the preset's own); ``mattr`` is
        added to the preset's (``+dotprod`` switches a feature on, ``-neon`` off).

        For cuda presets ``mcpu`` sets the CPU side's mcpu.
        """
        changes = {
            KINDS.get(self.kind).mcpu_field: mcpu,
            "arch": arch,
            "num_cores": num_cores,
            "mattr": (*self.mattr, *mattr) if mattr else None,
        }
        changes = {field: value for field, value in changes.items() if value is not None}
        if not changes:
            return self
        # Errors in an override are the caller's, not the preset file's: name the target.
        return dataclasses.replace(self, **changes, source="")


def load_preset(path: str | Path) -> Preset:
    """Read one preset file; the board is named after the file (``raspberry-pi-4.toml``).

    An unreadable or malformed file, an unknown key or a missing triple raise TargetError
    naming the file.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise TargetError(f"cannot read preset file '{path}': {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TargetError(f"{path}: not a TOML preset (binary bytes, not UTF-8 text)",
                          hint="a preset is a small text file; see `relaycomp targets`") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise TargetError(
            f"{path}: unknown key '{unknown[0]}'", hint="preset keys: " + ", ".join(_KEYS)
        )
    if "triple" not in data:
        raise TargetError(
            f"{path}: missing required key 'triple'",
            hint="known triples: " + ", ".join(triple_names()),
        )
    fields = {_KEYS[key]: value for key, value in data.items()}
    if "energy" in fields:
        fields["energy"] = EnergyModel.from_table(fields["energy"], str(path))
    return Preset(name=path.stem, source=str(path), **fields)


def user_preset_dir() -> Path:
    """The folder of the user's own board presets: ``$XDG_CONFIG_HOME/relaycomp/targets``
    (``~/.config/relaycomp/targets`` when XDG_CONFIG_HOME is unset, the XDG default)."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "relaycomp" / "targets"


def user_preset_files() -> dict[str, Path]:
    """The user's preset files by board name (read on every call: the folder may change)."""
    folder = user_preset_dir()
    if not folder.is_dir():
        return {}
    return {path.stem: path for path in sorted(folder.glob("*.toml"))}


PRESETS: Registry[Preset] = Registry("target preset")
"""The bundled board presets, by board name."""

for _path in sorted(PRESET_DIR.glob("*.toml")):
    PRESETS.add(_path.stem, load_preset(_path))
