"""Targets the way TVM users write them: TVM/tvmc target strings, ``--mattr``, and the user's
own presets folder (``$XDG_CONFIG_HOME/relaycomp/targets``)."""

import json

import pytest
from helpers import run_cli

from relaycomp.errors import TargetError
from relaycomp.targets import resolve, user_targets

PI4_PRESET = """description = "My Pi"
triple = "aarch64-linux-gnu"
mcpu = "cortex-a72"
num-cores = 4
"""


@pytest.mark.parametrize("text, expected", [
    ("llvm -mtriple=aarch64-linux-gnu -mattr=+neon",
     {"mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}),
    ("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76 -mattr=+neon,+dotprod -num-cores=4",
     {"mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"],
      "num-cores": 4}),
    ("llvm -mtriple=aarch64-unknown-linux-gnu", {"mtriple": "aarch64-linux-gnu"}),
    ("llvm -mtriple=aarch64-linux-android29 -mcpu=cortex-a76",
     {"mtriple": "aarch64-linux-android", "mcpu": "cortex-a76"}),
    ("raspberry-pi-4 -mattr=+crc",
     {"mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon", "+crc"],
      "num-cores": 4}),
    ("cuda -arch=sm_90", {"kind": "cuda", "arch": "sm_90"}),
])
def test_tvm_target_strings_resolve(text, expected):
    spec = resolve(text)
    assert spec.name == text
    for key, value in expected.items():
        assert spec.target[key] == value, key
    spec.tvm_target()  # TVM accepts the result


def test_bare_llvm_is_this_machines_triple_generic_cpu():
    spec = resolve("llvm")
    assert spec.triple == resolve("host").triple and "mcpu" not in spec.target


def test_mattr_override_is_added_to_a_preset():
    assert resolve("aarch64-linux-gnu", mattr=("+dotprod",)).target["mattr"] == ["+neon",
                                                                                 "+dotprod"]


@pytest.mark.parametrize("text, phrase", [
    ("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a999", "LLVM does not know mcpu 'cortex-a999'"),
    ("llvm -mtriple=aarch64-linux-gnu -mattr=+bogus", "LLVM does not know mattr +bogus"),
    ("llvm -device=arm_cpu", "unsupported flag -device"),
    ("llvm -mtriple=mips-linux-gnu", "unsupported -mtriple=mips-linux-gnu"),
    ("raspberry-pi-4 -mtriple=x86_64-linux-gnu", "-mtriple goes with llvm"),
    ("llvm mcpu=x", "'mcpu=x' is not a -flag=value"),
    ("llvm -num-cores=zero", "-num-cores must be a positive integer"),
    ("llvm -mcpu=a -mcpu=b", "-mcpu given twice"),
    ("cuda -arch=sm_x", "invalid CUDA arch 'sm_x'"),
    ("raspberry-pi-4 -arch=sm_80", "'arch' does not apply to llvm targets"),
])
def test_bad_target_strings_are_rejected_with_the_reason(text, phrase):
    with pytest.raises(TargetError, match=phrase.replace("+", r"\+")) as info:
        resolve(text)
    assert text in str(info.value) or "cortex-a999" in str(info.value)


def test_compile_for_a_tvm_target_string_with_mattr(tmp_path):
    out = tmp_path / "m.tar"  # an object archive: no cross linker needed
    result = run_cli("compile", "example:digits", "-o", out, "--json",
                     "--target", "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76",
                     "--mattr", "+dotprod")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["target"]["target"]["mattr"] == ["+neon", "+dotprod"]
    assert doc["target"]["target"]["mcpu"] == "cortex-a76"
    assert out.is_file()


def test_compile_rejects_an_unknown_feature(tmp_path):
    result = run_cli("compile", "example:digits", "-o", tmp_path / "m.tar",
                     "--target", "aarch64-linux-gnu", "--mattr", "+warp-drive")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "relaycomp: error:" in result.stderr and "+warp-drive" in result.stderr
    assert not (tmp_path / "m.tar").exists()


def test_user_presets_are_listed_and_usable(tmp_path, monkeypatch):
    folder = tmp_path / "config" / "relaycomp" / "targets"
    folder.mkdir(parents=True)
    (folder / "my-pi.toml").write_text(PI4_PRESET)
    (folder / "broken.toml").write_text('triple = "aarch64-linux-gnu"\nmcpu = "nope"\n')
    (folder / "raspberry-pi-4.toml").write_text(PI4_PRESET)  # a bundled name: shadowed
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    listed = run_cli("targets", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "my-pi" in listed.stdout and "My Pi" in listed.stdout
    warnings = [line for line in listed.stderr.splitlines() if line.startswith("relaycomp: warning:")]
    assert len(warnings) == 2
    assert any("broken.toml" in w and "nope" in w for w in warnings)
    assert any("shadowed by the bundled target 'raspberry-pi-4'" in w for w in warnings)
    as_json = json.loads(run_cli("targets", "--json", env=env).stdout)
    mine = [t for t in as_json["targets"] if t["origin"] == "user"]
    assert [t["name"] for t in mine] == ["my-pi"] and mine[0]["target"]["mcpu"] == "cortex-a72"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert resolve("my-pi -num-cores=2").target["num-cores"] == 2
    specs, problems = user_targets()
    assert [s.name for s in specs] == ["my-pi"] and len(problems) == 2


def test_an_unknown_target_names_the_target_string_form():
    with pytest.raises(TargetError) as info:
        resolve("no-such-board")
    assert "TVM target string" in info.value.hint
