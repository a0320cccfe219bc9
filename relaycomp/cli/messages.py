"""The command line's lines on stderr besides the errors: ``relaycomp: warning: ...``.

Every warning the CLI prints comes through :func:`warning`: its own (a broken user preset or
plugin) and the library's, which the library raises as Python warnings (``warnings.warn``, so
that a Python caller can filter or record them) and :func:`show_python_warning` prints while a
command runs. The form matches the errors' ``relaycomp: error: ...``.

::

    warning("2 threads requested but this machine has 1 CPU(s)")
    # stderr: relaycomp: warning: 2 threads requested but this machine has 1 CPU(s)
"""

from __future__ import annotations

import sys

PREFIX = "relaycomp: warning: "


def warning(text: str) -> None:
    """Print one warning line on stderr (only the first line of ``text``)."""
    lines = str(text).strip().splitlines()
    print(PREFIX + (lines[0] if lines else "(no message)"), file=sys.stderr)


def show_python_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the CLI: a Python warning as one :func:`warning` line (no
    source file and line: the message says what happened)."""
    text = str(message).strip()
    warning(text or category.__name__)
