"""``relaycomp benchmark``: percentiles, the kernel table, memory, MACs, bytes and an energy
estimate from the target's cited coefficients; the same numbers in text and JSON."""

import json

import numpy as np
import pytest
from helpers import ort_outputs, run_cli
from models import mlp

import relaycomp
from relaycomp.cli.benchmark import report_lines
from relaycomp.errors import RelaycompError, TargetError
from relaycomp.frontend.examples import resolve_model_path
from relaycomp.runtime.benchmark import BenchmarkConfig, benchmark, macs_per_node, percentiles
from relaycomp.runtime.profile import profile_vm
from relaycomp.targets import EnergyModel, resolve, target_energy

DIGITS_MACS = 230_720  # conv 1->16, 16->32 (stride 2), 32->32 on 8x8 / 4x4, dense 32->10


@pytest.fixture(scope="module")
def digits_so(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "digits.so"
    relaycomp.compile("example:digits", path)
    return path


def test_report_has_percentiles_kernels_memory_macs_and_energy(digits_so):
    report = benchmark(digits_so, BenchmarkConfig(seconds=0.2, profile_runs=3))
    lat = report.latency_ms
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert report.runs >= 10 and report.throughput > 0
    times = [k.ms for k in report.kernels]
    assert times == sorted(times, reverse=True)
    assert sum(k.share for k in report.kernels) == pytest.approx(1.0)
    names = {k.name for k in report.kernels}
    assert any(name.startswith("fused_conv2d") for name in names)
    assert report.macs == {"float32": DIGITS_MACS}
    # 14,618 float parameters; the kernels read them (repacked) as constants
    assert 0.9 * 14_618 * 4 <= report.memory["weight_bytes"] <= 1.1 * 14_618 * 4
    # The VM plans the 16x8x8 and 32x4x4 float activations and the 10 logits
    assert report.memory["workspace_bytes"] >= (16 * 64 + 10) * 4
    assert report.bytes_moved >= report.memory["weight_bytes"]
    energy = report.energy
    assert energy["compute_uj"] == pytest.approx(DIGITS_MACS * 4.6e-6)
    assert energy["memory_uj"] == pytest.approx(report.bytes_moved * 162.5e-6)
    assert energy["total_uj"] == pytest.approx(energy["compute_uj"] + energy["memory_uj"])
    assert "Horowitz" in energy["coefficients"]["sources"][0]


def test_text_output_shows_the_numbers_of_the_json(digits_so):
    report = benchmark(digits_so, BenchmarkConfig(seconds=0.1, profile_runs=2))
    text = "\n".join(report_lines(report))
    doc = report.to_json()
    json.dumps(doc)  # serializable as is
    for key in ("p50", "p90", "p99"):
        assert f"{key} {doc['latency_ms'][key]:.3f} ms" in text
    assert f"{doc['energy']['total_uj']:.3g} uJ" in text
    assert f"{DIGITS_MACS:,} float32" in text
    assert doc["kernels"][0]["name"] in text


def test_profiling_does_not_change_the_outputs(digits_so):
    from relaycomp import ir

    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    vm, device = ir.load_vm(str(digits_so))
    args = [ir.to_device(x, device)]
    profile = profile_vm(vm, args, runs=2)
    assert profile.weight_bytes > 0 and profile.storages >= 1
    got = ir.to_numpy(vm["main"](*args))[0]
    model = relaycomp.load_onnx(resolve_model_path("example:digits"))
    np.testing.assert_allclose(got, ort_outputs(model, {"input": x})["logits"], rtol=1e-4,
                               atol=1e-5)


def test_int8_build_counts_int8_macs(tmp_path):
    artifact = relaycomp.compile("example:digits", tmp_path / "q.so",
                                 quantize=relaycomp.QuantConfig(), calibration="example:digits")
    report = benchmark(artifact.path, BenchmarkConfig(seconds=0.05, min_runs=3, profile_runs=1))
    assert report.macs == {"int8": DIGITS_MACS}
    assert report.energy["compute_uj"] == pytest.approx(DIGITS_MACS * 0.3e-6)
    assert any("int8" in k.dtypes or "uint8" in k.dtypes for k in report.kernels)


def test_macs_per_node_matches_inspect():
    model = mlp()
    per_node = macs_per_node(model, {})
    assert sum(per_node.values()) == relaycomp.model_info(model).macs > 0


def test_cli_json_and_text(digits_so, tmp_path):
    np.savez(tmp_path / "in.npz", input=np.zeros((1, 1, 8, 8), np.float32))
    result = run_cli("benchmark", digits_so, "--seconds", "0.1", "--json", "--inputs",
                     tmp_path / "in.npz")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc["latency_ms"]) >= {"p50", "p90", "p99"}
    assert doc["kernels"] and doc["energy"]["total_uj"] > 0
    text = run_cli("benchmark", digits_so, "--seconds", "0.1", "--top", "2")
    assert text.returncode == 0, text.stderr
    assert "latency: p50" in text.stdout and "energy (estimate, not measured)" in text.stdout
    assert "more kernels" in text.stdout


@pytest.mark.parametrize("args, phrase", [
    (["--seconds", "0"], "--seconds must be positive"),
    (["--rpc", "127.0.0.1:9"], "--rpc HOST:PORT and --key KEY go together"),
    (["--threads", "0"], "--threads must be at least 1"),
])
def test_bad_options_fail_cleanly(digits_so, args, phrase):
    result = run_cli("benchmark", digits_so, *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "relaycomp: error:" in result.stderr and phrase in result.stderr


def test_missing_artifact_fails_cleanly(tmp_path):
    result = run_cli("benchmark", tmp_path / "nope.so")
    assert result.returncode == 1 and "relaycomp: error: no such artifact" in result.stderr


def test_macs_need_the_source_model(digits_so, tmp_path):
    manifest = json.loads((digits_so.parent / "digits.so.json").read_text())
    manifest["source"]["file"] = str(tmp_path / "gone.onnx")
    moved = tmp_path / "moved.so"
    moved.write_bytes(digits_so.read_bytes())
    (tmp_path / "moved.so.json").write_text(json.dumps(manifest))
    report = benchmark(moved, BenchmarkConfig(seconds=0.05, min_runs=2, profile_runs=1))
    assert report.macs is None and "pass --model" in report.notes[0]
    assert report.energy["compute_uj"] == 0 and not report.energy["macs_counted"]
    given = benchmark(moved, BenchmarkConfig(seconds=0.05, min_runs=2, profile_runs=1),
                      model_file=resolve_model_path("example:digits"))
    assert given.macs == {"float32": DIGITS_MACS}


def test_energy_coefficients_come_from_presets_with_sources():
    pi = target_energy("raspberry-pi-4", "llvm")
    assert pi.origin.endswith("raspberry-pi-4.toml") and pi.sources
    hbm = target_energy("a100", "cuda")
    assert hbm.pj_per_dram_byte < pi.pj_per_dram_byte and "MICRO 2017" in hbm.sources[1]
    assert target_energy("host", "llvm").origin == "energy.toml [llvm]"
    assert resolve("raspberry-pi-4 -mattr=+crc").kind == "llvm"
    assert target_energy("raspberry-pi-4 -mattr=+crc", "llvm") == pi


@pytest.mark.parametrize("table, phrase", [
    ({"pj-per-mac": {"float32": 1.0, "int8": 0.1}, "pj-per-dram-byte": 1.0, "sources": ["x"]},
     "missing float16"),
    ({"pj-per-mac": {"float32": 1, "float16": 1, "int8": 1}, "pj-per-dram-byte": -1,
      "sources": ["x"]}, "must be a positive number"),
    ({"pj-per-mac": {"float32": 1, "float16": 1, "int8": 1}, "pj-per-dram-byte": 1},
     "must name its 'sources'"),
    ({"pj-per-mac": {"float32": 1, "float16": 1, "int8": 1}, "pj-per-dram-byte": 1,
      "sources": ["x"], "watts": 3}, "unknown key 'energy.watts'"),
])
def test_energy_tables_are_validated(table, phrase):
    with pytest.raises(TargetError, match=phrase):
        EnergyModel.from_table(table, "board.toml")


def test_percentiles_and_estimate():
    stats = percentiles([1.0] * 98 + [5.0, 9.0])
    assert stats["p50"] == 1.0 and stats["max"] == 9.0 and stats["p99"] > stats["p90"]
    model = EnergyModel({"float32": 4.6, "float16": 1.5, "int8": 0.3}, 100.0, ("s",))
    assert model.estimate({"int8": 1_000_000}, 0)["total_uj"] == pytest.approx(0.3)
    with pytest.raises(RelaycompError, match="bfloat16"):
        model.estimate({"bfloat16": 1}, 0)
