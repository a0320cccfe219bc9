"""Which CPU a compiled library is for, read from its ELF header, and which CPU a triple means."""

from __future__ import annotations

import os

from relaycomp.errors import ArtifactError

# e_machine values from the System V ABI (elf.h EM_*), named as relaycomp reports them.
_ELF_MACHINES = {
    3: "x86",
    8: "mips",
    20: "ppc",
    21: "ppc64",
    22: "s390",
    40: "arm",
    62: "x86_64",
    183: "aarch64",
    243: "riscv",
    258: "loongarch",
}

# First component of a triple -> the e_machine name its libraries carry.
_TRIPLE_ARCHES = {
    "x86_64": "x86_64",
    "i686": "x86",
    "aarch64": "aarch64",
    "arm": "arm",
    "armv7": "arm",
    "armv7a": "arm",
    "riscv64": "riscv",
}

_ELF_MAGIC = b"\x7fELF"
_HEADER_BYTES = 20  # e_ident (16) + e_type (2) + e_machine (2)


def elf_machine(path: str | os.PathLike) -> str:
    """The CPU architecture an ELF file was built for: "x86_64", "aarch64", "arm", …

    A missing or non-ELF file raises ArtifactError. An architecture not in the table comes
    back as ``"unknown-<e_machine>"``.
    """
    try:
        with open(path, "rb") as handle:
            header = handle.read(_HEADER_BYTES)
    except OSError as exc:
        raise ArtifactError(f"cannot read '{path}': {exc.strerror}") from None
    if len(header) < _HEADER_BYTES or not header.startswith(_ELF_MAGIC):
        raise ArtifactError(
            f"'{path}' is not an ELF file", hint="expected a shared library built by relaycomp"
        )
    byte_order = "big" if header[5] == 2 else "little"  # EI_DATA: 1 = LSB, 2 = MSB
    machine = int.from_bytes(header[18:20], byte_order)
    return _ELF_MACHINES.get(machine, f"unknown-{machine}")


def machine_of_triple(triple: str) -> str:
    """The ELF machine name of libraries built for ``triple`` ("armv7a-linux-gnueabihf" → "arm")."""
    arch = triple.split("-", 1)[0]
    return _TRIPLE_ARCHES.get(arch, arch)
