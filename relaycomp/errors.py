"""One base error, a subclass per stage.

Every error a user can cause is a ``RelaycompError``: the CLI prints its message (and ``hint``) on
one
line and exits non-zero. Anything else escaping is a bug in relaycomp.
"""

from __future__ import annotations


class RelaycompError(Exception):
    """Base of every user-facing relaycomp error.

    ``hint`` is an optional second line telling the user what to do next.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class OnnxImportError(RelaycompError):
    """The ONNX file is unreadable, invalid, or uses ops the importer cannot translate."""


class InputSpecError(RelaycompError):
    """An ``--input NAME:DIMS`` spec or a supplied input array does not fit the model."""


class TargetError(RelaycompError):
    """Unknown target/preset, bad target options, or a missing (cross) toolchain."""


class PassError(RelaycompError):
    """A pass raised or produced an ill-formed module."""

    def __init__(self, pass_name: str, stage: str, reason: str, hint: str | None = None):
        super().__init__(f"pass '{pass_name}' (stage '{stage}') failed: {reason}", hint)
        self.pass_name = pass_name
        self.stage = stage


class BuildError(RelaycompError):
    """Compiling or exporting the artifact failed."""


class ArtifactError(RelaycompError):
    """An artifact or its manifest is missing, corrupt or was built for another machine."""


class CalibrationError(RelaycompError):
    """Calibration data is missing, malformed or insufficient."""


class TuningError(RelaycompError):
    """Auto-tuning could not run or its database is unusable."""


def last_line(err: BaseException | str) -> str:
    """The last non-empty line of an exception's (or a program's output) text: TVM and most
    tools put the reason there."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    if lines:
        return lines[-1].strip()
    return type(err).__name__ if isinstance(err, BaseException) else "no output"
