"""SIGTERM ends a command the way Ctrl-C does: as ``KeyboardInterrupt``, so that every
``finally`` on the way out runs and stops what the command started (the emulated device's qemu,
build and measurement worker pools, the RPC watchdog). Python's default SIGTERM kills the process
at once and leaves those children running."""

from __future__ import annotations

import contextlib
import signal
import threading


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_interrupts():
    """Within the block (in the main thread), SIGTERM raises ``KeyboardInterrupt``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
