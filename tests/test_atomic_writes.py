"""Every file relaycomp writes is moved into place whole. Interrupted at the last moment (Ctrl-C
right before the move into place), a writer leaves neither the file nor a temporary behind, and
a file it was replacing keeps its old content.

Writers covered: the artifact and its manifest (``compile``), IR dumps (``--dump-ir``), ``run
--outputs``, ``prune -o``, ``distill -o``. The tuning database is an append-only log instead
(each record one flushed line; a torn last line of a killed run is skipped when read:
``tests/test_tune.py::test_a_torn_last_line_is_ignored``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from models import mlp, random_inputs

from relaycomp.cli.main import main
from relaycomp.frontend.examples import resolve_model_path

INTERRUPTED = 130
OLD = b"the previous content"


@pytest.fixture
def interrupted_moves(monkeypatch, tmp_path):
    """Every ``os.replace`` (the move into place) into the test's folder is hit by Ctrl-C (a
    move elsewhere - a private temporary build - goes through); the moves tried, in order."""
    tried, replace = [], os.replace

    def interrupt(source, destination, *args, **kwargs):
        if not Path(destination).is_relative_to(tmp_path):
            return replace(source, destination, *args, **kwargs)
        tried.append(Path(destination))
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupt)
    return tried


def _model(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(mlp(), str(path))
    return path


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name not in keep and p.is_file())


def test_compile_leaves_no_artifact_and_no_manifest(tmp_path, interrupted_moves):
    model = _model(tmp_path)
    assert main(["compile", str(model), "-o", str(tmp_path / "model.so")]) == INTERRUPTED
    assert interrupted_moves == [tmp_path / "model.so"]
    assert _leftovers(tmp_path, {"model.onnx"}) == []


def test_an_interrupted_compile_keeps_the_previous_artifact(tmp_path, request):
    model = _model(tmp_path)
    assert main(["compile", str(model), "-o", str(tmp_path / "model.so")]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    request.getfixturevalue("interrupted_moves")
    assert main(["compile", str(model), "-o", str(tmp_path / "model.so")]) == INTERRUPTED
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_ir_dumps_are_whole_files_or_none(tmp_path, interrupted_moves):
    model = _model(tmp_path)
    dump = tmp_path / "ir"
    code = main(["compile", str(model), "-o", str(tmp_path / "model.so"), "--dump-ir", str(dump)])
    assert code == INTERRUPTED
    assert interrupted_moves == [dump / "000_input.py"]
    assert _leftovers(dump, set()) == []


def test_run_outputs_keep_the_file_they_would_replace(tmp_path, request):
    model = _model(tmp_path)
    artifact = tmp_path / "model.so"
    assert main(["compile", str(model), "-o", str(artifact)]) == 0
    np.savez(tmp_path / "inputs.npz", **random_inputs(mlp()))
    outputs = tmp_path / "outputs.npz"
    outputs.write_bytes(OLD)
    tried = request.getfixturevalue("interrupted_moves")
    code = main(["run", str(artifact), "--inputs", str(tmp_path / "inputs.npz"), "--outputs",
                 str(outputs), "--repeat", "0"])
    assert code == INTERRUPTED and tried == [outputs]
    assert outputs.read_bytes() == OLD
    assert _leftovers(tmp_path, {"model.onnx", "model.so", "model.so.json", "inputs.npz",
                                 "outputs.npz"}) == []


def test_prune_output_is_whole_or_absent(tmp_path, interrupted_moves):
    model = _model(tmp_path)
    output = tmp_path / "pruned.onnx"
    assert main(["prune", str(model), "--ratio", "0.25", "-o", str(output)]) == INTERRUPTED
    assert interrupted_moves == [output]
    assert _leftovers(tmp_path, {"model.onnx"}) == []


def test_distill_output_is_whole_or_absent(tmp_path, interrupted_moves):
    digits = Path(resolve_model_path("example:digits"))
    shutil.copy(digits, tmp_path / "teacher.onnx")
    samples = np.load(digits.with_name("digits_samples.npz"))
    np.savez(tmp_path / "train.npz", input=samples["input"])
    output = tmp_path / "student.onnx"
    code = main(["distill", "--teacher", str(tmp_path / "teacher.onnx"), "--student",
                 str(tmp_path / "teacher.onnx"), "--data", str(tmp_path / "train.npz"),
                 "--epochs", "1", "-o", str(output)])
    assert code == INTERRUPTED
    assert interrupted_moves == [output]
    assert _leftovers(tmp_path, {"teacher.onnx", "train.npz"}) == []
