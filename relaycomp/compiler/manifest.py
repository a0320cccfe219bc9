"""The artifact manifest: everything ``relaycomp run`` needs besides the library and the inputs.

It lives beside the artifact as ``<artifact>.json`` (``model.so`` → ``model.so.json``) and records
the signature (input names/shapes/dtypes, output names), the target, the passes applied and the
versions that built it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from relaycomp.errors import ArtifactError
from relaycomp.frontend.onnx_import import TensorSpec

FORMAT_VERSION = 1


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
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime()))

    def to_json(self) -> dict:
        """The JSON document written beside the artifact."""
        return {
            "format_version": FORMAT_VERSION, "artifact_format": self.artifact_format,
            "created": self.created, "versions": self.versions, "source": self.source,
            "target": self.target, "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs], "passes": self.passes,
            "report": self.report,
        }

    @classmethod
    def from_json(cls, data: dict) -> Manifest:
        """Parse a manifest document; a newer format is refused."""
        if data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"manifest format {data.get('format_version')} is not supported "
                f"(this relaycomp reads format {FORMAT_VERSION})")
        return cls(
            inputs=[TensorSpec.from_json(s) for s in data["inputs"]],
            outputs=[TensorSpec.from_json(s) for s in data["outputs"]],
            target=data["target"], artifact_format=data["artifact_format"],
            passes=data.get("passes", []), source=data.get("source", {}),
            versions=data.get("versions", {}), report=data.get("report", {}),
            created=data.get("created", ""),
        )


def manifest_path(artifact: str | os.PathLike) -> Path:
    """Where the manifest of ``artifact`` lives."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def write_manifest(manifest: Manifest, artifact: str | os.PathLike) -> Path:
    """Write the manifest atomically beside ``artifact``."""
    path = manifest_path(artifact)
    text = json.dumps(manifest.to_json(), indent=2, default=str)
    write_atomically(path, text.encode())
    return path


def read_manifest(artifact: str | os.PathLike) -> Manifest:
    """Read the manifest beside ``artifact``, with a clear error if it is missing or corrupt."""
    path = manifest_path(artifact)
    if not path.is_file():
        raise ArtifactError(f"no manifest beside {artifact} (expected {path})",
                            hint="artifacts are built by `relaycomp compile`, which writes both")
    try:
        return Manifest.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ArtifactError(f"the manifest {path} is corrupt: {err}") from None


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so no half-written file remains."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file, to tie an artifact to its source model."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
