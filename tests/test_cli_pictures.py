"""Pictures and the accuracy guard's warning: the int8 sensitivity chart, the tuning curve
(``--plot``), and one ``relaycomp: warning:`` line when the guard returns layers to float."""

import warnings

import matplotlib
import numpy as np
import onnx
import pytest
from helpers import run_cli
from models import mlp

from relaycomp import QuantConfig, quantize
from relaycomp.quantize.plot import plot_sensitivity

matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: the test reads the labels


def random_samples(count: int, shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)


def _guarded_report():
    calib = {"x": random_samples(16, (4, 64))}
    held_out = {"x": random_samples(50, (4, 64), seed=3)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, report = quantize(mlp(), QuantConfig(max_accuracy_drop=0.0), calib=calib,
                             eval_data=held_out)
    return report, [str(w.message) for w in caught]


def test_guard_warns_how_many_layers_went_back_to_float_and_why():
    report, caught = _guarded_report()
    fallen = [la for la in report.layers if la["mode"] == "float"]
    messages = [m for m in caught if "accuracy guard returned" in m]
    assert len(messages) == 1 and fallen
    assert f"returned {len(fallen)} of {len(report.layers)} int8 layers to float" in messages[0]
    assert "more than --max-accuracy-drop 0" in messages[0]


def test_sensitivity_chart_has_every_measured_layer_sorted(tmp_path):
    report, _ = _guarded_report()
    path = plot_sensitivity(report.to_json(), tmp_path / "layers.svg")
    svg = path.read_text()
    assert "int8 per-layer sensitivity" in svg and "most sensitive first" in svg
    names = [la["name"] for la in report.layers]
    assert all(name[:24] in svg for name in names)
    recovered = sorted((la["sensitivity"]["drop_recovered"], la["name"]) for la in report.layers)
    top = recovered[-1][1]
    assert svg.index(top[:24]) == min(svg.index(name[:24]) for name in names)
    png = plot_sensitivity(report.to_json(), tmp_path / "layers.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sensitivity_chart_without_sensitivity_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="no per-layer sensitivity to plot"):
        plot_sensitivity({"layers": [{"name": "a", "mode": "int8"}]}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cli_sensitivity_plot_and_warning(tmp_path):
    model = mlp()
    onnx.save(model, tmp_path / "mlp.onnx")
    np.savez(tmp_path / "calib.npz", x=random_samples(16, (4, 64)))
    np.savez(tmp_path / "eval.npz", x=random_samples(50, (4, 64), seed=3))
    result = run_cli("compile", tmp_path / "mlp.onnx", "-o", tmp_path / "m.so", "--quantize",
                     "int8", "--calib", tmp_path / "calib.npz", "--eval", tmp_path / "eval.npz",
                     "--max-accuracy-drop", "0", "--plot-sensitivity", tmp_path / "s.png")
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "accuracy guard returned" in line]
    assert len(warned) == 1 and warned[0].startswith("relaycomp: warning:")
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_a_sensitivity_plot_with_nothing_measured_warns_and_keeps_the_build(tmp_path):
    """A budget the all-int8 build meets: the guard measures no layer, so there is no chart;
    the compile still succeeds (its artifact is good) and says why there is none."""
    model = mlp()
    onnx.save(model, tmp_path / "mlp.onnx")
    np.savez(tmp_path / "calib.npz", x=random_samples(16, (4, 64)))
    result = run_cli("compile", tmp_path / "mlp.onnx", "-o", tmp_path / "m.so", "--quantize",
                     "int8", "--calib", tmp_path / "calib.npz", "--eval", tmp_path / "calib.npz",
                     "--max-accuracy-drop", "0.99", "--plot-sensitivity", tmp_path / "s.png")
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "no chart written" in line]
    assert len(warned) == 1 and warned[0].startswith("relaycomp: warning:")
    assert not (tmp_path / "s.png").exists() and (tmp_path / "m.so").exists()


@pytest.mark.parametrize("args, phrase", [
    (["--plot-sensitivity", "s.png"], "needs --max-accuracy-drop"),
    (["--max-accuracy-drop", "0", "--plot-sensitivity", "s.txt"], "name a .png"),
])
def test_bad_plot_options_fail_before_compiling(tmp_path, args, phrase):
    result = run_cli("compile", "example:digits", "-o", tmp_path / "d.so", "--quantize", "int8",
                     "--calib", "example:digits", *args, cwd=tmp_path)
    assert result.returncode == 1 and phrase in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "d.so").exists()


@pytest.mark.slow  # ~30 s: a real tuning session
def test_tuning_curve_from_a_real_session(tmp_path):
    from relaycomp import TuneConfig, tune
    from relaycomp.tune.plot import plot_tuning_curve

    report = tune(mlp(), TuneConfig(trials=16, trials_per_iter=8, tuning_db=tmp_path / "db",
                                    seed=0, progress=False))
    assert report.curve and report.curve[-1]["trials"] == report.new_trials
    tasks = {t.name: t for t in report.tasks}
    for point in report.curve:  # the bar's numbers are the table's "search best" column
        if point["best_ms"] is not None:
            assert point["best_ms"] >= tasks[point["task"]].search_ms - 1e-12
    path = plot_tuning_curve(report, tmp_path / "curve.svg")
    svg = path.read_text()
    assert "trials" in svg and "best kernel latency" in svg and "model latency" in svg
    assert any(t.name[:40] in svg for t in report.tasks if t.new_trials)
