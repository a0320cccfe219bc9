"""User passes from a file, a module, the decorator and an installed plugin's entry point."""

import json
import os
import textwrap

import pytest
import tvm
from helpers import run_cli
from models import conv_net

import relaycomp
from relaycomp.compiler.build import CompileConfig, compile_model
from relaycomp.compiler.manifest import manifest_path
from relaycomp.compiler.plugins import PluginError, load_pass_spec
from relaycomp.errors import PassError
from relaycomp.registry import register_pass

USER_PASSES = textwrap.dedent('''
    import tvm

    def tag_main(mod: tvm.IRModule) -> tvm.IRModule:
        """Mark main so the test can see the pass ran."""
        mod = tvm.IRModule(dict(mod.functions_items()))
        mod["main"] = mod["main"].with_attr("user_tag", "seen")
        return mod

    def explode(mod):
        raise ValueError("user pass exploded")

    def not_a_module(mod):
        return 42

    def two_args(mod, extra):
        return mod
''')


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "user_passes.py"
    path.write_text(USER_PASSES)
    return path


def test_decorated_function_runs_at_its_stage_and_shows_in_the_manifest(tmp_path,
                                                                        scoped_passes):
    seen = []

    @register_pass("record_kernels", stage="fuse", position="start")
    def record_kernels(mod: tvm.IRModule) -> tvm.IRModule:
        seen.append(len(mod.functions))
        return mod

    config = CompileConfig(extra_passes=(load_pass_spec("record_kernels"),))
    artifact = compile_model(conv_net(), tmp_path / "m.so", config)
    assert seen, "the pass must run"
    fuse = [p for p in artifact.manifest.passes if p.startswith("fuse/")]
    assert fuse[0] == "fuse/record_kernels"


def test_file_pass_with_placement_runs_where_asked(user_file, tmp_path, scoped_passes):
    placement = load_pass_spec(f"{user_file}:tag_main@after:legalize")
    config = CompileConfig(extra_passes=(placement,), dump_ir=tmp_path / "ir")
    artifact = compile_model(conv_net(), tmp_path / "m.so", config)
    legalize = [p for p in artifact.manifest.passes if p.startswith("legalize/")]
    assert legalize[-1] == "legalize/tag_main"
    dumped = sorted((tmp_path / "ir").glob("*_legalize_tag_main.py"))
    assert dumped and '"user_tag": "seen"' in dumped[0].read_text()


def test_cli_adds_a_file_pass_and_times_passes(user_file, tmp_path):
    onnx_path = tmp_path / "conv.onnx"
    import onnx

    onnx.save(conv_net(), onnx_path)
    result = run_cli("compile", onnx_path, "-o", tmp_path / "m.so", "--time-passes",
                     "--pass", f"{user_file}:tag_main@before:fuse")
    assert result.returncode == 0, result.stderr
    assert "tag_main" in result.stdout and "fold_batchnorm" in result.stdout
    passes = json.loads(manifest_path(tmp_path / "m.so").read_text())["passes"]
    assert "fuse/tag_main" in passes


def _install_plugin(folder, entry_points: str) -> dict[str, str]:
    """A package ``acme-passes`` in ``folder`` with these ``relaycomp.passes`` entry points;
    the environment that sees it installed."""
    (folder / "acme_passes.py").write_text(USER_PASSES)
    dist = folder / "acme_passes-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-passes\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[relaycomp.passes]\n{entry_points}")
    return {**os.environ, "PYTHONPATH": str(folder)}


def test_installed_plugin_is_found_through_its_entry_point(tmp_path):
    env = _install_plugin(tmp_path, "acme_tag = acme_passes:tag_main\n")
    import subprocess
    import sys

    listed = subprocess.run([sys.executable, "-m", "relaycomp.cli", "passes"], env=env,
                            capture_output=True, text=True, check=False)
    assert "acme_tag" in listed.stdout, listed.stderr
    onnx_path = tmp_path / "conv.onnx"
    import onnx

    onnx.save(conv_net(), onnx_path)
    built = subprocess.run([sys.executable, "-m", "relaycomp.cli", "compile", str(onnx_path),
                            "-o", str(tmp_path / "m.so"), "--pass", "acme_tag@fuse"],
                           env=env, capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    assert "fuse/acme_tag" in json.loads(manifest_path(tmp_path / "m.so").read_text())["passes"]


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:thing", "cannot import pass source 'no_such_module_xyz'"),
    ("./absent_passes.py:thing", "does not exist"),
    ("never_registered", "unknown pass 'never_registered'"),
    ("{file}:missing", "has no pass named 'missing'"),
    ("{file}:two_args", "takes 2 arguments"),
    ("{file}:tag_main@sideways:fuse", "bad pass placement"),
])
def test_bad_pass_specs_are_named(spec, message, user_file, scoped_passes):
    with pytest.raises(PluginError, match=message):
        load_pass_spec(spec.format(file=user_file))


@pytest.mark.parametrize("name, message", [
    ("explode", "pass 'explode' \\(stage 'simplify'\\) failed: user pass exploded"),
    ("not_a_module", "returned int, not an IRModule"),
])
def test_failing_user_passes_are_named(name, message, user_file, tmp_path, scoped_passes):
    config = CompileConfig(extra_passes=(load_pass_spec(f"{user_file}:{name}"),))
    with pytest.raises(PassError, match=message):
        compile_model(conv_net(), tmp_path / "m.so", config)
    assert not (tmp_path / "m.so").exists()


def test_placement_in_an_unknown_stage_lists_the_stages(user_file, tmp_path, scoped_passes):
    config = CompileConfig(extra_passes=(load_pass_spec(f"{user_file}:tag_main@nowhere"),))
    with pytest.raises(PassError, match="no such stage") as info:
        relaycomp.compile_model(conv_net(), tmp_path / "m.so", config)
    assert "simplify" in info.value.hint


def test_the_shipped_example_pass_runs_from_the_cli(tmp_path):
    from pathlib import Path

    example = Path(__file__).parents[1] / "examples" / "my_pass.py"
    model_path = tmp_path / "mobilenet.onnx"
    import onnx
    from models import mobilenet_style_net

    from relaycomp.frontend.onnx_import import import_onnx
    from relaycomp.ir import op_counts

    onnx.save(mobilenet_style_net(), model_path)
    result = run_cli("compile", model_path, "-o", tmp_path / "m.so", "--dump-ir", tmp_path / "ir",
                     "--pass", f"{example}:count_convs@simplify")
    assert result.returncode == 0, result.stderr
    convs = op_counts(import_onnx(mobilenet_style_net()).mod)["nn.conv2d"]
    dumped = next((tmp_path / "ir").glob("*_simplify_count_convs.py")).read_text()
    assert f'"conv_count": {convs}' in dumped


def test_a_broken_plugin_is_loaded_only_when_asked_for_and_breaks_nothing_else(tmp_path):
    env = _install_plugin(tmp_path, "acme_tag = acme_passes:tag_main\n"
                                    "acme_broken = no_such_mod:x\n")
    import onnx

    onnx.save(conv_net(), tmp_path / "conv.onnx")
    plain = run_cli("compile", tmp_path / "conv.onnx", "-o", tmp_path / "m.so", env=env)
    assert plain.returncode == 0 and "acme_broken" not in plain.stderr, plain.stderr
    listed = run_cli("passes", env=env)
    assert listed.returncode == 0 and "acme_tag" in listed.stdout
    assert "relaycomp: warning: plugin 'acme_broken' (no_such_mod:x): No module named" in listed.stderr
    tagged = run_cli("compile", tmp_path / "conv.onnx", "-o", tmp_path / "t.so",
                     "--pass", "acme_tag@fuse", env=env)
    assert tagged.returncode == 0, tagged.stderr
    broken = run_cli("compile", tmp_path / "conv.onnx", "-o", tmp_path / "b.so",
                     "--pass", "acme_broken", env=env)
    assert broken.returncode == 1
    assert "unknown pass 'acme_broken'" in broken.stderr and "no_such_mod" in broken.stderr
