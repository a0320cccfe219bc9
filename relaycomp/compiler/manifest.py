"""The artifact manifest: everything ``relaycomp run`` needs besides the library and the inputs.

It lives beside the artifact as ``<artifact>.json`` (``model.so`` → ``model.so.json``) and records
the signature (input names/shapes/dtypes, output names), the target, the passes applied, the
versions that built it, and the artifact's size and sha256 with a digest of the signature, so
``relaycomp run`` refuses a library or a signature changed since (:func:`check_artifact`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from relaycomp.errors import ArtifactError, RelaycompError
from relaycomp.frontend.onnx_import import ONNX_DTYPES, TensorSpec

FORMAT_VERSION = 1
_FORMATS = ("shared-library", "object-archive")
_JSON_NAMES = {list: "list", dict: "object", str: "string"}


@dataclass
class Manifest:
    """What an artifact is and how to call it."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    target: dict
    artifact_format: str  # "shared-library" or "object-archive"
    passes: list[str] = field(default_factory=list)
    source: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    # {"bytes", "sha256", "signature_sha256"} of the artifact, filled in by write_manifest.
    artifact: dict = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime()))

    def to_json(self) -> dict:
        """The JSON document written beside the artifact."""
        return {
            "format_version": FORMAT_VERSION, "artifact_format": self.artifact_format,
            "created": self.created, "versions": self.versions, "source": self.source,
            "target": self.target, "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs], "passes": self.passes,
            "report": self.report, "artifact": self.artifact,
        }

    def signature_digest(self) -> str:
        """sha256 of the inputs and outputs as recorded, to notice a manifest edited later."""
        signature = {"inputs": [s.to_json() for s in self.inputs],
                     "outputs": [s.to_json() for s in self.outputs]}
        return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_json(cls, data: dict) -> Manifest:
        """Parse a manifest document; a newer format or a malformed one is refused."""
        if not isinstance(data, dict):
            raise ArtifactError(f"malformed manifest: a JSON {type(data).__name__}, not an "
                                "object")
        if data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"manifest format {data.get('format_version')} is not supported "
                f"(this relaycomp reads format {FORMAT_VERSION})")
        problem = schema_problem(data)
        if problem is not None:
            raise ArtifactError(f"malformed manifest: {problem}")
        return cls(
            inputs=[TensorSpec.from_json(s) for s in data["inputs"]],
            outputs=[TensorSpec.from_json(s) for s in data["outputs"]],
            target=data["target"], artifact_format=data["artifact_format"],
            passes=data.get("passes", []), source=data.get("source", {}),
            versions=data.get("versions", {}), report=data.get("report", {}),
            artifact=data.get("artifact", {}), created=data.get("created", ""),
        )


def schema_problem(data: dict) -> str | None:
    """What is wrong with the shape of a manifest document (a dict), or None.

    Checks what running needs: the signature (a list of inputs, a non-empty list of outputs,
    each with a unique name, a shape of dims and a known dtype), the target (an object) and the
    artifact format; the optional ``artifact`` record is checked when present.
    """
    for key, kind in (("inputs", list), ("outputs", list), ("target", dict),
                      ("artifact_format", str)):
        if key not in data:
            return f"'{key}' is missing"
        if not isinstance(data[key], kind):
            return f"'{key}' must be a JSON {_JSON_NAMES[kind]}"
    if data["artifact_format"] not in _FORMATS:
        return (f"'artifact_format' is '{data['artifact_format']}', not one of "
                f"{', '.join(_FORMATS)}")
    if not data["outputs"]:
        return "'outputs' is empty: a model has at least one output"
    for key in ("inputs", "outputs"):
        names = set()
        for index, spec in enumerate(data[key]):
            problem = _tensor_problem(spec, symbolic_dims=key == "outputs")
            if problem is None and spec["name"] in names:
                problem = f"the name '{spec['name']}' appears twice"
            if problem is not None:
                return f"{key}[{index}]: {problem}"
            names.add(spec["name"])
    record = data.get("artifact", {})
    if not isinstance(record, dict):
        return "'artifact' must be a JSON object"
    if "bytes" in record and (type(record["bytes"]) is not int or record["bytes"] < 0):
        return "'artifact.bytes' must be a byte count"
    for key in ("sha256", "signature_sha256"):
        if key in record and not (isinstance(record[key], str) and len(record[key]) == 64):
            return f"'artifact.{key}' must be a sha256 hex digest"
    return None


def _tensor_problem(spec, symbolic_dims: bool) -> str | None:
    if not isinstance(spec, dict):
        return "must be an object with name, shape and dtype"
    missing = [key for key in ("name", "shape", "dtype") if key not in spec]
    if missing:
        return f"'{missing[0]}' is missing"
    if not isinstance(spec["name"], str) or not spec["name"]:
        return "'name' must be a non-empty string"
    shape = spec["shape"]
    if not isinstance(shape, list) or not all(
            (type(d) is int and d >= 0) or (symbolic_dims and isinstance(d, str)) for d in shape):
        return f"'shape' of '{spec['name']}' must be a list of sizes, got {shape!r}"
    if spec["dtype"] not in ONNX_DTYPES.values():
        return f"'dtype' of '{spec['name']}' is {spec['dtype']!r}, not a tensor type"
    return None


def manifest_path(artifact: str | os.PathLike) -> Path:
    """Where the manifest of ``artifact`` lives."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def write_manifest(manifest: Manifest, artifact: str | os.PathLike) -> Path:
    """Write the manifest atomically beside ``artifact``, recording (in ``manifest.artifact``)
    the artifact's size and sha256 and the signature's digest, for :func:`check_artifact`."""
    path = manifest_path(artifact)
    if Path(artifact).is_file():
        manifest.artifact = {"bytes": Path(artifact).stat().st_size,
                             "sha256": file_digest(artifact),
                             "signature_sha256": manifest.signature_digest()}
    text = json.dumps(manifest.to_json(), indent=2, default=str)
    write_atomically(path, text.encode())
    return path


def read_manifest(artifact: str | os.PathLike) -> Manifest:
    """Read the manifest beside ``artifact``, with a clear error if it is missing or corrupt."""
    path = manifest_path(artifact)
    if not path.is_file():
        raise ArtifactError(f"no manifest beside {artifact} (expected {path})",
                            hint="artifacts are built by `relaycomp compile`, which writes both")
    rebuild = "rebuild the artifact with `relaycomp compile`, which writes its manifest"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise ArtifactError(f"cannot read the manifest {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ArtifactError(f"the manifest {path} is not text (binary bytes)",
                            hint=rebuild) from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise ArtifactError(f"the manifest {path} is not valid JSON: {err}", hint=rebuild) \
            from None
    try:
        return Manifest.from_json(data)
    except ArtifactError as err:
        raise ArtifactError(f"{path}: {err}", hint=rebuild) from None


def check_artifact(manifest: Manifest, artifact: str | os.PathLike) -> None:
    """Raise ArtifactError if ``artifact`` or the manifest's signature changed since compiling:
    its size or sha256 differ from the manifest's record, or the signature was edited.
    A manifest without the record (older relaycomp) passes."""
    record = manifest.artifact
    path = Path(artifact)
    hint = "copy the artifact and its manifest again, or recompile"
    size = path.stat().st_size
    if "bytes" in record and size != record["bytes"]:
        raise ArtifactError(f"{path} has {size} bytes, but its manifest records "
                            f"{record['bytes']}: the file was truncated or replaced", hint=hint)
    if "sha256" in record and file_digest(path) != record["sha256"]:
        raise ArtifactError(f"{path} differs from the library its manifest describes "
                            "(sha256 mismatch)", hint=hint)
    if "signature_sha256" in record and manifest.signature_digest() != record["signature_sha256"]:
        raise ArtifactError(f"the inputs/outputs in the manifest of {path} were edited after "
                            "compiling; the library takes the ones it was compiled for",
                            hint="recompile with --input NAME:DIMS for other shapes")


def check_output_file(path: Path, what: str,
                      error: type[RelaycompError] = RelaycompError) -> None:
    """Raise ``error`` unless a file can be written at ``path`` (``what``: the option or thing
    it is, for the message): its folder exists and is writable, and it is not a folder. Called
    before long work, so a typo in an output path costs nothing."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise error(f"{what} {path} is a folder", hint="name a file to write")
    if not parent.is_dir():
        raise error(f"cannot write {what} {path}: the folder {parent} does not exist",
                    hint=f"create it first (mkdir -p {parent})")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise error(f"cannot write {what} {path}: permission denied")


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so no half-written file remains.

    The file gets the permissions a plain ``open(path, "w")`` would give it (mkstemp's are
    owner-only): those of the file it replaces, else the umask's."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _new_file_mode(path))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)  # the only way to read it
        os.umask(umask)
        return 0o666 & ~umask


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file, to tie an artifact to its source model."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
