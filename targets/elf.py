"""Which CPU a compiled library is for, read from its ELF header, and which CPU a triple means."""

from __future__ import annotations

import os
import struct

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


# ELF header and program header layouts (System V gABI), after e_ident: the fields read here.
_HEADER_FORMATS = {1: "HHIIIIIHHHHHH", 2: "HHIQQQIHHHHHH"}  # ELFCLASS32 / ELFCLASS64
_PROGRAM_HEADER = {1: ("IIIIIIII", 1, 4), 2: ("IIQQQQQQ", 2, 5)}  # format, p_offset, p_filesz
_PT_LOAD = 1
_ET_DYN = 3


def check_shared_library(path: str | os.PathLike) -> None:
    """Raise ArtifactError unless ``path`` is a whole ELF shared library.

    Checks the header (magic, class, byte order, type ET_DYN), then that the program header
    table, the section header table and every loadable segment lie inside the file: a truncated
    library would otherwise be mapped by ``dlopen`` and kill the process with SIGBUS when its
    missing pages are touched.
    """
    hint = "copy the artifact again, or recompile it"
    try:
        with open(path, "rb") as handle:
            data = handle.read(64)
            size = os.fstat(handle.fileno()).st_size
            if len(data) < 16 or not data.startswith(_ELF_MAGIC):
                raise ArtifactError(f"'{path}' is not an ELF file",
                                    hint="expected a shared library built by relaycomp")
            elf_class, encoding = data[4], data[5]
            if elf_class not in _HEADER_FORMATS or encoding not in (1, 2):
                raise ArtifactError(f"'{path}' has an invalid ELF header", hint=hint)
            order = "<" if encoding == 1 else ">"
            header_format = order + _HEADER_FORMATS[elf_class]
            if len(data) < 16 + struct.calcsize(header_format):
                raise ArtifactError(f"'{path}' is truncated inside its ELF header", hint=hint)
            (e_type, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
             _) = struct.unpack_from(header_format, data, 16)
            if e_type != _ET_DYN:
                raise ArtifactError(f"'{path}' is an ELF file but not a shared library",
                                    hint="expected a .so built by `relaycomp compile`")
            tables = [("program header table", phoff, phnum * phentsize)]
            if shoff:
                tables.append(("section header table", shoff, shnum * shentsize))
            for what, offset, length in tables:
                _check_extent(path, what, offset + length, size)
            program_format, offset_field, size_field = _PROGRAM_HEADER[elf_class]
            program_format = order + program_format
            if phnum and phentsize < struct.calcsize(program_format):
                raise ArtifactError(f"'{path}' has an invalid ELF program header size",
                                    hint=hint)
            handle.seek(phoff)
            table = handle.read(phnum * phentsize)
    except OSError as exc:
        raise ArtifactError(f"cannot read '{path}': {exc.strerror}") from None
    for index in range(phnum):
        fields = struct.unpack_from(program_format, table, index * phentsize)
        if fields[0] == _PT_LOAD:
            end = fields[offset_field] + fields[size_field]
            _check_extent(path, f"loadable segment {index}", end, size)


def _check_extent(path, what: str, end: int, size: int) -> None:
    if end > size:
        raise ArtifactError(
            f"'{path}' is truncated or corrupt: its {what} ends at byte {end}, "
            f"but the file has {size} bytes",
            hint="copy the artifact again, or recompile it")
