"""Writing report figures (``--plot``): matplotlib as an optional extra, files written
atomically. The features draw their own figures (:mod:`relaycomp.tune.plot`,
:mod:`relaycomp.quantize.plot`) with these helpers.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from relaycomp.compiler.manifest import write_atomically
from relaycomp.errors import RelaycompError

SUFFIXES = (".png", ".svg", ".pdf")


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend; a clear error when not installed."""
    try:
        import matplotlib
    except ImportError:
        raise RelaycompError("plots need matplotlib",
                             hint="pip install 'relaycomp[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_figure_path(path: str | os.PathLike, flag: str) -> Path:
    """A figure path a long run may write at its end: checked before the run (suffix, folder,
    matplotlib present)."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise RelaycompError(f"{flag} {path}: name a {', '.join(SUFFIXES)} file")
    folder = path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise RelaycompError(f"{flag} {path}: cannot write in the folder '{folder}'")
    pyplot()
    return path


def save_figure(figure, path: str | os.PathLike) -> Path:
    """Render ``figure`` into ``path`` (format from the suffix) atomically, then close it."""
    path = Path(path)
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=120,
                       bbox_inches="tight")
    finally:
        pyplot().close(figure)
    write_atomically(path, buffer.getvalue())
    return path
