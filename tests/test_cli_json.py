"""``--json`` on every reporting command (one document on stdout, nothing else), ``--version``,
``--debug`` after the command, and ``--pass module:fn`` from the working folder."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers import ort_outputs, run_cli
from models import mlp, random_inputs

import relaycomp


@pytest.fixture(scope="module")
def digits_so(tmp_path_factory):
    path = tmp_path_factory.mktemp("json") / "digits.so"
    relaycomp.compile("example:digits", path)
    return path


def _document(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # fails on anything but exactly one JSON document


def test_compile_json_is_the_only_stdout(tmp_path):
    doc = _document(run_cli("compile", "example:digits", "-o", tmp_path / "d.so", "--json",
                            "--quantize", "int8", "--calib", "example:digits"))
    assert doc["artifact"].endswith("d.so") and (tmp_path / "d.so").is_file()
    assert doc["inputs"][0]["name"] == "input" and doc["outputs"][0]["name"] == "logits"
    assert doc["report"]["quantize"]["layers"] and doc["passes"]


def test_run_json_reports_outputs_latency_and_check(digits_so, tmp_path):
    x = np.random.default_rng(1).random((1, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "in.npz", input=x)
    doc = _document(run_cli("run", digits_so, "--inputs", tmp_path / "in.npz", "--repeat", "3",
                            "--check", "example:digits", "--outputs", tmp_path / "o.npz",
                            "--json"))
    assert doc["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [1, 10]}]
    assert doc["latency_ms"]["runs"] == 3
    assert doc["check"]["passed"] and doc["check"]["build"] == "float"
    model = relaycomp.load_onnx(relaycomp.frontend.examples.resolve_model_path("example:digits"))
    with np.load(tmp_path / "o.npz") as out:
        np.testing.assert_allclose(out["logits"], ort_outputs(model, {"input": x})["logits"],
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("args, key", [
    (["targets"], "targets"),
    (["passes"], "stages"),
    (["inspect", "example:digits"], "macs"),
])
def test_listing_commands_json(args, key):
    doc = _document(run_cli(*args, "--json"))
    assert doc[key]


def test_passes_json_lists_the_same_passes_as_the_text():
    doc = _document(run_cli("passes", "--json"))
    text = run_cli("passes").stdout
    for stage in doc["stages"]:
        assert f"{stage['name']}:" in text
        for entry in stage["passes"]:
            assert entry["name"] in text


def test_version_names_relaycomp_and_tvm():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("relaycomp ") and "TVM 0.27" in result.stdout


def test_debug_after_the_command_shows_the_traceback(tmp_path):
    plain = run_cli("run", tmp_path / "nope.so")
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    for args in (["--debug", "run", tmp_path / "nope.so"], ["run", tmp_path / "nope.so",
                                                             "--debug"]):
        result = run_cli(*args)
        assert result.returncode == 1
        assert "Traceback" in result.stderr and "relaycomp: error: no such artifact" in \
            result.stderr


def test_check_failure_is_one_error_line_and_rtol_loosens_it(tmp_path):
    model = mlp()
    onnx.save(model, tmp_path / "mlp.onnx")
    inputs = random_inputs(model)
    np.savez(tmp_path / "in.npz", **inputs)
    np.savez(tmp_path / "calib.npz", **{k: np.concatenate([v] * 8) for k, v in inputs.items()})
    relaycomp.compile(model, tmp_path / "q.so", quantize=relaycomp.QuantConfig(),
                      calibration=tmp_path / "calib.npz")
    strict = run_cli("run", tmp_path / "q.so", "--inputs", tmp_path / "in.npz",
                     "--check", tmp_path / "mlp.onnx", "--rtol", "1e-9")
    assert strict.returncode == 1 and "Traceback" not in strict.stderr
    errors = [line for line in strict.stderr.splitlines() if line.startswith("relaycomp: error:")]
    assert len(errors) == 1 and "more than --rtol 1e-09" in errors[0]
    default = _document(run_cli("run", tmp_path / "q.so", "--inputs", tmp_path / "in.npz",
                                "--check", tmp_path / "mlp.onnx", "--json"))
    assert default["check"]["build"] == "int8" and default["check"]["rtol"] == 0.1
    worst = max(e["max_rel"] for e in default["check"]["errors"].values())
    assert 0 < worst <= 0.1  # int8 differs from float, within the int8 default
    bad = run_cli("run", tmp_path / "q.so", "--rtol", "1e-3")
    assert bad.returncode == 1 and "--rtol needs --check MODEL" in bad.stderr


def test_pass_from_a_package_in_the_working_folder(tmp_path):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "passes.py").write_text(
        "def tag(mod):\n    print('mypkg pass ran')\n    return mod\n")
    # As the `relaycomp` script runs: the working folder is not on sys.path by itself.
    script = ("import os, sys; sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())];"
              "from relaycomp.cli.main import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", script, "compile", "example:digits", "-o",
                             "d.so", "--pass", "mypkg.passes:tag@before:fuse"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    assert "mypkg pass ran" in result.stdout and (tmp_path / "d.so").is_file()


@pytest.mark.slow
def test_tune_json_and_plot(tmp_path):
    model = mlp()
    onnx.save(model, tmp_path / "mlp.onnx")
    result = run_cli("tune", tmp_path / "mlp.onnx", "--trials", "16", "--trials-per-iter", "8",
                     "--tuning-db", tmp_path / "db", "--json", "--plot", tmp_path / "c.png")
    doc = _document(result)
    assert doc["tasks"] and doc["curve"] and doc["new_trials"] > 0
    assert (tmp_path / "c.png").stat().st_size > 1000
