"""MetaSchedule's process-wide logging stays inside a tuning run: nothing leaks into the next."""

import logging

import pytest
from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir

from relaycomp.tune.logs import ROOT, scoped_meta_schedule_logging


@pytest.fixture
def unnamed_handler():
    """A handler without a name on MetaSchedule's logger, as another library might leave one."""
    logger, handler = logging.getLogger(ROOT), logging.NullHandler()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _handlers(name: str = ROOT) -> list[logging.Handler]:
    return list(logging.getLogger(name).handlers)


def test_metaschedule_alone_breaks_on_an_unnamed_handler(unnamed_handler, tmp_path):
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'format'"):
        get_loggers_from_work_dir(str(tmp_path), ["task"])


def test_a_run_leaves_the_loggers_as_it_found_them(unnamed_handler, tmp_path):
    before = _handlers()
    for run in ("first", "second"):  # the second run configures MetaSchedule again
        with scoped_meta_schedule_logging():
            (task_logger,) = get_loggers_from_work_dir(str(tmp_path / run), ["task"])
            task_logger.info("measured")
            assert unnamed_handler not in _handlers()
            assert {h.get_name() for h in _handlers()} >= {f"{ROOT}.console", f"{ROOT}.file"}
        assert _handlers() == before
        assert not logging.getLogger(task_logger.name).handlers, "its log file is closed"
    log = tmp_path / "first" / "logs" / "tvm.s_tir.meta_schedule.logging.task_0_task.log"
    assert "measured" in log.read_text(), "the run's own log still goes to its folder"
