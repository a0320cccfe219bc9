"""MetaSchedule's logging, scoped to one tuning run.

MetaSchedule configures Python logging process-wide (``logging.config.dictConfig``): a console
and a file handler on the ``tvm.s_tir.meta_schedule`` logger, a file handler per task logger,
each file in the run's folder. Left in place, they leak from one run into the next: file handlers
stay open on the folders of earlier runs, and the next configuration rebuilds its handler list
from the handlers it finds attached (by name; one without a name breaks it). The
:func:`scoped_meta_schedule_logging` context puts every logger under that name back as it was,
and keeps handlers someone else attached without a name out of MetaSchedule's way meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

ROOT = "tvm.s_tir.meta_schedule"


def _loggers() -> list[logging.Logger]:
    names = [n for n in logging.Logger.manager.loggerDict if n == ROOT or n.startswith(ROOT + ".")]
    return [logging.getLogger(n) for n in names]


@contextmanager
def scoped_meta_schedule_logging(level: int = logging.WARNING) -> Iterator[None]:
    """Run MetaSchedule with its loggers' console output at ``level`` (its full log still goes
    to the run folder's ``logs/``); afterwards close the handlers it added and restore every
    ``tvm.s_tir.meta_schedule*`` logger's handlers, level and propagation."""
    saved = {lg.name: (list(lg.handlers), lg.level, lg.propagate) for lg in _loggers()}
    root = logging.getLogger(ROOT)
    for handler in [h for h in root.handlers if h.get_name() is None]:
        root.removeHandler(handler)  # MetaSchedule's configuration cannot take an unnamed one
    root.setLevel(level)  # the console handler MetaSchedule installs takes this level
    try:
        yield
    finally:
        for logger in _loggers():
            handlers, level_before, propagate = saved.get(logger.name, ([], logging.NOTSET,
                                                                         True))
            for handler in list(logger.handlers):
                if handler not in handlers:
                    logger.removeHandler(handler)
                    handler.close()
            for handler in handlers:
                if handler not in logger.handlers:
                    logger.addHandler(handler)
            logger.setLevel(level_before)
            logger.propagate = propagate
