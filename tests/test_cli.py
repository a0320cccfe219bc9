"""The command line as a user meets it: every bad input gives one clear line and exit 1."""

import re

import numpy as np
import onnx
import pytest
from helpers import ort_outputs, run_cli
from models import conv_net, dynamic_reshape_net, multi_io_net, random_inputs


def assert_clean_failure(result, *phrases):
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "relaycomp: error:" in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "multi.onnx"
    onnx.save(multi_io_net(), path)
    return path


def test_compile_run_writes_outputs_keyed_by_onnx_names(model_file, tmp_path):
    inputs = random_inputs(multi_io_net())
    np.savez(tmp_path / "in.npz", **inputs)
    compiled = run_cli("compile", model_file, "-o", tmp_path / "m.so")
    assert compiled.returncode == 0, compiled.stderr
    ran = run_cli("run", tmp_path / "m.so", "--inputs", tmp_path / "in.npz",
                  "--outputs", tmp_path / "out.npz", "--check", model_file)
    assert ran.returncode == 0, ran.stderr
    assert "check vs onnxruntime" in ran.stdout
    expected = ort_outputs(multi_io_net(), inputs)
    with np.load(tmp_path / "out.npz") as out:
        assert sorted(out.files) == sorted(expected)
        for name, value in expected.items():
            np.testing.assert_allclose(out[name], value, rtol=1e-3, atol=1e-4)


def test_input_flag_pins_a_dynamic_batch(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(dynamic_reshape_net(), path)
    result = run_cli("compile", path, "--input", "x:4,3,16,16", "-o", tmp_path / "d.so")
    assert result.returncode == 0, result.stderr
    assert "x:float32[4, 3, 16, 16]" in result.stdout


def test_inspect_reports_ops_params_and_macs(model_file):
    result = run_cli("inspect", model_file)
    assert result.returncode == 0, result.stderr
    assert "MACs" in result.stdout and "Conv" in result.stdout
    assert "unsupported: none" in result.stdout


def test_targets_lists_triples_and_presets():
    result = run_cli("targets")
    assert result.returncode == 0
    for name in ("x86_64-linux-gnu", "aarch64-linux-gnu", "armv7a-linux-gnueabihf",
                 "aarch64-linux-android", "jetson-orin", "raspberry-pi-4"):
        assert name in result.stdout


def test_corrupt_model_fails_cleanly(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(conv_net().SerializeToString()[:100])
    assert_clean_failure(run_cli("compile", path, "-o", tmp_path / "m.so"), "bad.onnx")
    assert not (tmp_path / "m.so").exists()


def test_bad_input_syntax_fails_cleanly(model_file, tmp_path):
    assert_clean_failure(run_cli("compile", model_file, "--input", "x=1,2"), "NAME:DIMS")


def test_wrong_input_rank_fails_cleanly(tmp_path):
    path = tmp_path / "conv.onnx"
    onnx.save(conv_net(), path)
    assert_clean_failure(run_cli("compile", path, "--input", "x:1,3,32"), "rank")


def test_unknown_target_lists_known_ones(model_file):
    result = run_cli("compile", model_file, "--target", "pdp11")
    assert_clean_failure(result, "pdp11", "aarch64-linux-gnu")


def test_missing_cross_compiler_says_what_to_install(model_file, tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    result = run_cli("compile", model_file, "--target", "aarch64-linux-gnu",
                     "-o", tmp_path / "m.so")
    assert_clean_failure(result, "apt-get install gcc-aarch64-linux-gnu")
    assert not (tmp_path / "m.so").exists()


def test_unwritable_output_fails_cleanly(model_file, tmp_path):
    assert_clean_failure(run_cli("compile", model_file, "-o", tmp_path / "no" / "m.so"),
                         "does not exist")


def test_missing_input_in_npz_fails_cleanly(model_file, tmp_path):
    assert run_cli("compile", model_file, "-o", tmp_path / "m.so").returncode == 0
    np.savez(tmp_path / "in.npz", other=np.zeros(3))
    assert_clean_failure(run_cli("run", tmp_path / "m.so", "--inputs", tmp_path / "in.npz"),
                         "lacks input")


def test_debug_flag_shows_the_traceback(tmp_path):
    result = run_cli("--debug", "compile", tmp_path / "absent.onnx")
    assert result.returncode == 1
    assert "Traceback" in result.stderr


def test_inspect_names_unsupported_ops_and_fails(tmp_path):
    from models import unsupported_op_net

    path = tmp_path / "dft.onnx"
    onnx.save(unsupported_op_net(), path)
    result = run_cli("inspect", path)
    assert result.returncode == 1
    assert "DFT (node 'spectrum_dft')" in result.stdout


def test_demo_compiles_and_checks_the_bundled_example(tmp_path):
    result = run_cli("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    accuracy = float(re.search(r"held-out accuracy: ([\d.]+)%", result.stdout).group(1))
    assert accuracy >= 97.0, "the bundled CNN scores 99% on held-out digits"
    assert (tmp_path / "relaycomp-demo" / "digits.so").is_file()


def test_warnings_are_one_relaycomp_warning_line(tmp_path, monkeypatch, capsys):
    """The CLI's own warnings (a broken user preset) and the library's Python warnings (raised
    while a command runs) print in the errors' form: ``relaycomp: warning: ...``."""
    import warnings

    from relaycomp.cli import main as cli_main

    presets = tmp_path / "relaycomp" / "targets"
    presets.mkdir(parents=True)
    (presets / "broken.toml").write_text("triple = [not toml")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert cli_main.main(["targets"]) == 0
    [line] = [line for line in capsys.readouterr().err.splitlines() if "broken.toml" in line]
    assert line.startswith("relaycomp: warning: ")

    def warns(args):
        warnings.warn("the first line\nand a second one", stacklevel=1)
        return 0

    monkeypatch.setitem(cli_main.COMMANDS, "passes", warns)
    assert cli_main.main(["passes"]) == 0
    assert capsys.readouterr().err == "relaycomp: warning: the first line\n"
