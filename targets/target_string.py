"""Target strings as TVM and tvmc users write them.

``"llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon,+dotprod -num-cores=4"`` and
``"cuda -arch=sm_80"`` are TVM's own form; relaycomp also accepts its names with the same flags,
``"raspberry-pi-4 -mattr=+dotprod"`` or ``"host -num-cores=1"``. Only the flags relaycomp acts
on are accepted (an unknown one is an error, not silently dropped); the values are checked as a
preset's are (LLVM's -mcpu and -mattr names, CUDA's sm_XY).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from relaycomp.errors import TargetError
from relaycomp.targets.triples import TRIPLES, triple_names

# flag -> the form of its value (the kinds a flag applies to are checked by the preset).
FLAGS = {
    "mtriple": "TRIPLE (with llvm)",
    "mcpu": "CPU",
    "mattr": "+FEATURE,-FEATURE",
    "num-cores": "N",
    "arch": "sm_XY (CUDA)",
}
_FLAG = re.compile(r"--?([a-z][a-z0-9-]*)=(.*)")
# Vendor fields LLVM triples may carry that relaycomp's triples leave out.
_VENDORS = re.compile(r"-(unknown|pc|none)-")


@dataclass(frozen=True)
class TargetString:
    """A parsed target string: the base name and the flags given (None / () when absent)."""

    base: str
    mtriple: str | None = None
    mcpu: str | None = None
    mattr: tuple[str, ...] = ()
    num_cores: int | None = None
    arch: str | None = None


def is_target_string(text: str) -> bool:
    """True for TVM's form: a base name followed by flags, or a bare ``llvm``."""
    stripped = text.strip()
    return stripped == "llvm" or (" " in stripped and not stripped.endswith(".toml"))


def parse_target_string(text: str) -> TargetString:
    """Split ``text`` into its base and flags; malformed or unknown flags raise TargetError."""
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise TargetError(f"target '{text}': {exc}") from None
    if not tokens or tokens[0].startswith("-"):
        raise TargetError(f"target '{text}': starts with a flag, not a name",
                          hint='write the kind or a preset first: "llvm -mcpu=..."')
    values: dict[str, str] = {}
    for token in tokens[1:]:
        match = _FLAG.fullmatch(token)
        if match is None:
            raise TargetError(f"target '{text}': '{token}' is not a -flag=value",
                              hint=_supported())
        key, value = match.groups()
        if key not in FLAGS:
            raise TargetError(f"target '{text}': unsupported flag -{key}", hint=_supported())
        if key in values:
            raise TargetError(f"target '{text}': -{key} given twice")
        values[key] = value
    return TargetString(
        base=tokens[0],
        mtriple=values.get("mtriple"),
        mcpu=values.get("mcpu"),
        mattr=tuple(attr.strip() for attr in values.get("mattr", "").split(",") if attr.strip()),
        num_cores=_cores(values.get("num-cores"), text),
        arch=values.get("arch"),
    )


def triple_of_mtriple(mtriple: str, text: str) -> str:
    """relaycomp's triple for an LLVM ``-mtriple`` (``aarch64-unknown-linux-gnu`` and
    ``aarch64-linux-android29`` included)."""
    name = _VENDORS.sub("-", mtriple)
    name = re.sub(r"(android(eabi)?)\d+$", r"\1", name)
    if name in TRIPLES and TRIPLES.get(name).kind == "llvm":
        return TRIPLES.get(name).name
    raise TargetError(f"target '{text}': unsupported -mtriple={mtriple}",
                      hint="supported: " + ", ".join(n for n in triple_names()
                                                     if TRIPLES.get(n).kind == "llvm"))


def _supported() -> str:
    return "supported flags: " + " ".join(f"-{name}={form}" for name, form in FLAGS.items())


def _cores(value: str | None, text: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise TargetError(f"target '{text}': -num-cores must be a positive integer, "
                          f"got '{value}'")
    return int(value)
