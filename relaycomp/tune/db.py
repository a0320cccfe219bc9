"""The persistent tuning database: one directory per target, shared by models, runs and tuners.

Layout::

    DIR/<target-key>/run-<host>-<pid>-<time>/database_workload.json       MetaSchedule JSONDatabase
                                            /database_tuning_record.json
                                            /relaycomp.jsonl  heuristic baselines, finished budgets

Every tuning run writes only its own ``run-*`` folder (a MetaSchedule ``JSONDatabase`` appends one
line per record and flushes it), so two tuners on one database never write the same file, and a
run killed with SIGKILL keeps every record it finished. Readers merge all runs, dropping a torn
last line. Workloads are keyed by their structural hash, so identical kernels of different models
share their records.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm.s_tir import meta_schedule as ms

from relaycomp import ir
from relaycomp.errors import TuningError, last_line

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
NOTES = "relaycomp.jsonl"
FAILED_SECONDS = 1e9  # MetaSchedule's run time of a candidate that failed to build or run
WIN_MARGIN = 0.03  # a tuned kernel must beat the heuristic one by 3% in the paired check


def target_key(target: tvm.target.Target) -> str:
    """A folder name for ``target``: readable kind and cpu, plus a hash of everything else."""
    text = str(target)
    config = target.export()
    readable = "-".join(str(part) for part in (config.get("kind"), config.get("mcpu"),
                                                config.get("mtriple")) if part)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{readable}-{digest}".replace("/", "_")


def workload_key(mod: tvm.IRModule) -> str:
    """The key of a task's workload, as MetaSchedule's JSON database stores it."""
    return ir.structural_key(mod)


@dataclass
class WorkloadState:
    """What the database knows about one workload, merged over all runs."""

    trials: int = 0                 # candidates measured (failed ones included)
    budget_done: int = 0            # the largest per-task budget a run finished
    baseline_seconds: float | None = None   # the heuristic schedule's run time
    best: ms.database.TuningRecord | None = None
    best_seconds: float = float("inf")
    # Paired checks of records against the heuristic schedule, both measured as they ship:
    # the record's search time (which identifies it) -> (heuristic, tuned) best-of-N seconds.
    checks: dict[float, tuple[float, float]] = field(default_factory=dict)
    # Every record as stored (search time -> (record JSON, workload)), parsed only when applied:
    # a record that won its check stays applied when a later best-in-search loses its own.
    stored: dict[float, tuple] = field(default_factory=dict, repr=False)

    @property
    def check(self) -> tuple[float, float] | None:
        """The paired check of the best record: (heuristic, tuned) seconds, or None."""
        return self.checks.get(self.best_seconds) if self.best is not None else None

    @property
    def needs_check(self) -> bool:
        """Whether the best record has not been checked against the heuristic yet."""
        return self.best is not None and self.best_seconds < FAILED_SECONDS and self.check is None

    @property
    def winner(self) -> float | None:
        """The search time of the record a build applies: of the records that beat the
        heuristic schedule by ``WIN_MARGIN`` in their paired check, the fastest there (None if
        none did; an unchecked record is never applied)."""
        won = [(tuned, seconds) for seconds, (heuristic, tuned) in self.checks.items()
               if tuned < heuristic * (1 - WIN_MARGIN) and seconds in self.stored]
        return min(won)[1] if won else None

    @property
    def tuned_is_faster(self) -> bool:
        """Whether a record beat the heuristic schedule in its paired check (and is applied)."""
        return self.winner is not None

    @property
    def shown_check(self) -> tuple[float, float] | None:
        """The paired check to report: the applied record's, else the best record's."""
        winner = self.winner
        return self.checks[winner] if winner is not None else self.check

    @property
    def applied_record(self) -> ms.database.TuningRecord | None:
        """The record a build applies (see :attr:`winner`), or None."""
        winner = self.winner
        if winner is None:
            return None
        record_json, workload = self.stored[winner]
        return _parse_record(record_json, workload, "the tuning database")

    @property
    def shipped_seconds(self) -> float | None:
        """The paired-check time of what a build uses for this kernel (else the baseline)."""
        check = self.shown_check
        if check is None:
            return self.baseline_seconds
        return check[1] if self.tuned_is_faster else check[0]


@dataclass
class TuningDatabase:
    """A tuning database directory for one target (see the module docstring)."""

    root: Path
    target: tvm.target.Target
    states: dict[str, WorkloadState] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """The target's folder inside the database."""
        return Path(self.root) / target_key(self.target)

    def load(self) -> TuningDatabase:
        """Read every run's records and notes (a torn last line is ignored); returns self."""
        self.states = {}
        if Path(self.root).exists() and not Path(self.root).is_dir():
            raise TuningError(f"tuning database {self.root} is not a directory")
        for run in sorted(self.path.glob("run-*")):
            self._load_run(run)
        return self

    def state(self, key: str) -> WorkloadState:
        """The merged state of workload ``key`` (empty if unknown)."""
        return self.states.setdefault(key, WorkloadState())

    def _load_run(self, run: Path) -> None:
        notes = _complete_lines(run / NOTES, _is_note, "note")
        # The records a run seeded its search with (tune_space.seed_records) are not its trials.
        seeds: dict[str, list[float]] = {}
        for note in notes:
            seeds.setdefault(note["workload"], []).extend(note.get("seed_seconds", ()))
        workloads = [_workload(line) for line in _complete_lines(run / WORKLOADS, _is_workload,
                                                                  "workload")]
        for line in _complete_lines(run / RECORDS, _is_record, "tuning record"):
            index, record_json = line
            if not 0 <= index < len(workloads) or workloads[index] is None:
                continue
            key, workload = workloads[index]
            seconds = _mean(record_json[1])
            if seconds in seeds.get(key, ()):
                seeds[key].remove(seconds)
                continue
            state = self.state(key)
            state.trials += 1
            state.stored.setdefault(seconds, (record_json, workload))
            if seconds < state.best_seconds:
                state.best_seconds = seconds
                state.best = _parse_record(record_json, workload, run / RECORDS)
        for note in notes:
            state = self.state(note["workload"])
            if "baseline_seconds" in note:
                state.baseline_seconds = note["baseline_seconds"]
            if "budget_done" in note:
                state.budget_done = max(state.budget_done, note["budget_done"])
            if "checked_record_seconds" in note:
                state.checks[note["checked_record_seconds"]] = (
                    note["checked_heuristic_seconds"], note["checked_tuned_seconds"])

    def best_records(self) -> ms.database.MemoryDatabase:
        """A database holding, per workload, the applied record: the fastest that beat the
        heuristic schedule in its paired check (see :mod:`relaycomp.tune.check`)."""
        database = ms.database.MemoryDatabase()
        for state in self.states.values():
            record = state.applied_record
            if record is not None:
                workload = database.commit_workload(record.workload.mod)
                database.commit_tuning_record(ms.database.TuningRecord(
                    record.trace, workload, record.run_secs, record.target, record.args_info))
        return database

    def new_run(self) -> TuningRun:
        """Open a fresh run folder for this process to write into."""
        name = f"run-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        run = self.path / name
        try:
            run.mkdir(parents=True)
        except OSError as err:
            raise TuningError(f"cannot create the tuning database folder {run}: {err}") from err
        return TuningRun(run)


@dataclass
class TuningRun:
    """The folder one tuning run writes: a MetaSchedule JSONDatabase and relaycomp's notes."""

    path: Path

    def json_database(self) -> ms.database.JSONDatabase:
        """The MetaSchedule database tuning commits its records to."""
        return ms.database.JSONDatabase(str(self.path / WORKLOADS), str(self.path / RECORDS),
                                        allow_missing=True)

    def note(self, workload: str, **values) -> None:
        """Append one note line (flushed and locked, so a reader never sees half of it)."""
        line = json.dumps({"workload": workload, **values}) + "\n"
        with open(self.path / NOTES, "a", encoding="utf-8") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            file.write(line)
            file.flush()
            os.fsync(file.fileno())


def _complete_lines(path: Path, valid, what: str) -> list:
    """The JSON values of ``path``'s complete lines; a torn line (a killed writer) is skipped.

    A file that cannot be read (a folder in its place, no permission, not UTF-8) or a complete
    line that is JSON of the wrong shape (``valid(value)`` is False; ``what`` names the kind of
    line) raises TuningError naming the file: it was not written by a tuning run.
    """
    hint = f"move the folder {path.parent} out of the tuning database (or delete it)"
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return []
    except OSError as err:
        raise TuningError(f"cannot read the tuning database file {path}: {err.strerror}",
                          hint=hint) from None
    except UnicodeDecodeError:
        raise TuningError(f"the tuning database file {path} is not text (undecodable bytes)",
                          hint=hint) from None
    values = []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if not line.endswith("\n") or not line.strip():
            continue
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if not valid(value):
            raise TuningError(f"{path}, line {number}: not a {what} of a tuning database",
                              hint=hint)
        values.append(value)
    return values


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_note(value) -> bool:
    numbers = ("baseline_seconds", "budget_done", "checked_record_seconds",
               "checked_heuristic_seconds", "checked_tuned_seconds")
    check = ("checked_record_seconds", "checked_heuristic_seconds", "checked_tuned_seconds")
    return (isinstance(value, dict) and isinstance(value.get("workload"), str)
            and all(_is_number(value[key]) for key in numbers if key in value)
            and (all(key in value for key in check) or not any(key in value for key in check))
            and isinstance(value.get("seed_seconds", []), list)
            and all(_is_number(v) for v in value.get("seed_seconds", [])))


def _is_workload(value) -> bool:
    # MetaSchedule's workload line: [structural hash, serialized module]
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


def _is_record(value) -> bool:
    # MetaSchedule's record line: [workload index, [trace, run seconds, target, args info]]
    if not (isinstance(value, list) and len(value) == 2 and type(value[0]) is int
            and isinstance(value[1], list) and len(value[1]) >= 2):
        return False
    run_secs = value[1][1]
    return run_secs is None or (isinstance(run_secs, list) and all(map(_is_number, run_secs)))


def _parse_record(record_json, workload, where) -> ms.database.TuningRecord:
    try:
        return ms.database.TuningRecord.from_json(record_json, workload)
    except Exception as err:  # noqa: BLE001 - TVM raises its own error types here
        raise TuningError(f"a tuning record in {where} cannot be read: {last_line(err)}",
                          hint="move the run-* folder holding it out of the tuning database"
                          ) from None


def _workload(line) -> tuple[str, ms.database.Workload] | None:
    try:
        workload = ms.database.Workload.from_json(line)
    except Exception:  # noqa: BLE001 - an unreadable workload only loses its own records
        return None
    return workload_key(workload.mod), workload


def _mean(run_secs) -> float:
    if not run_secs:
        return FAILED_SECONDS
    values = [float(v) for v in run_secs]
    return sum(values) / len(values)
