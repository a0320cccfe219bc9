"""Students with several outputs: a loss per output (kd for class scores, mse/l1 for
regression outputs such as boxes), chosen per output name, with defaults; a two-head student
(class scores + boxes) distilled from a two-head teacher gets closer to it on both outputs,
measured by onnxruntime on the written ONNX."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import tvm
from helpers import run_cli
from onnx import TensorProto, helper, numpy_helper
from test_distill import CLASSES, digits_split
from tvm import relax

from relaycomp import RelaycompError
from relaycomp.distill import distiller
from relaycomp.distill.distiller import DistillConfig, DistillError, distill
from relaycomp.distill.loss import (
    distill_loss_function,
    distill_loss_per_sample,
    kd_loss_coefficients,
)
from relaycomp.distill.outputs import (
    OutputLoss,
    choose_output_losses,
    looks_like_logits,
    match_teacher_outputs,
    parse_output_loss,
)

BOX_OFFSET = np.array([8.0, 16.0, 24.0, 32.0], np.float32)  # x1 < y1 < x2 < y2, in pixels


def two_head_model(seed: int, hidden: int, box_scale: float = 4.0) -> onnx.ModelProto:
    """Flatten → Gemm → ReLU, then two heads: ``scores`` [batch, 10] and ``boxes`` [batch, 4]
    (pixel-like coordinates: a Gemm plus a fixed offset per coordinate)."""
    rng = np.random.default_rng(seed)

    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    inits = [numpy_helper.from_array(he((hidden, 64), 64), "fc.weight"),
             numpy_helper.from_array(np.zeros(hidden, np.float32), "fc.bias"),
             numpy_helper.from_array(he((CLASSES, hidden), hidden) * 2, "cls.weight"),
             numpy_helper.from_array(np.zeros(CLASSES, np.float32), "cls.bias"),
             numpy_helper.from_array(he((4, hidden), hidden) * box_scale, "box.weight"),
             numpy_helper.from_array(BOX_OFFSET, "box.bias")]
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "cls.weight", "cls.bias"], ["scores"], transB=1),
             helper.make_node("Gemm", ["a", "box.weight", "box.bias"], ["boxes"], transB=1)]
    graph = helper.make_graph(
        nodes, f"two_head_{hidden}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", CLASSES]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def ort_outputs(model: onnx.ModelProto, images: np.ndarray) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": images})))


@pytest.fixture(scope="module")
def digits():
    return digits_split()


def ink_boxes(images: np.ndarray) -> np.ndarray:
    """[x1, y1, x2, y2] of the pixels above 0.25 per 8x8 digit, in units of 4 pixels (32x32)."""
    boxes = []
    for image in images[:, 0]:
        rows, cols = np.nonzero(image > 0.25)
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    return np.asarray(boxes, np.float32) * 4


def fitted_teacher(images: np.ndarray, labels: np.ndarray, hidden: int = 64) -> onnx.ModelProto:
    """A two-head teacher that knows the task: random ReLU features, then both heads fitted by
    least squares - class scores to scaled one-hot labels, boxes to the digits' ink boxes."""
    model = two_head_model(seed=1, hidden=hidden)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    features = np.maximum(images.reshape(len(images), -1) @ weights["fc.weight"].T, 0)
    design = np.hstack([features, np.ones((len(images), 1), np.float32)])
    fits = {"cls": np.eye(CLASSES, dtype=np.float32)[labels] * 8 - 4, "box": ink_boxes(images)}
    for head, target in fits.items():
        solution = np.linalg.lstsq(design, target, rcond=None)[0].astype(np.float32)
        weights[f"{head}.weight"], weights[f"{head}.bias"] = solution[:-1].T, solution[-1]
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(weights[init.name]),
                                              init.name))
    return model


@pytest.fixture(scope="module")
def teacher(digits):
    return fitted_teacher(digits[0], digits[2])


def test_the_fitted_teacher_classifies_and_finds_boxes(digits, teacher):
    produced = ort_outputs(teacher, digits[1])
    assert (produced["scores"].argmax(1) == digits[3]).mean() > 0.85
    assert np.abs(produced["boxes"] - ink_boxes(digits[1])).mean() < 2.5  # of 32 pixels


# --- the loss -----------------------------------------------------------------------------------

@pytest.mark.parametrize("box_loss", ["mse", "l1"])
def test_two_output_loss_matches_numpy_reference(box_loss):
    batch = 4
    outputs = [OutputLoss("scores", (batch, CLASSES), "kd"),
               OutputLoss("boxes", (batch, 4), box_loss, weight=0.5, scale=3.0)]
    func = distill_loss_function(batch, outputs)
    vm = relax.VirtualMachine(tvm.compile(tvm.IRModule({"kd_loss": func}), "llvm"), tvm.cpu())
    rng = np.random.default_rng(0)
    s, t = (rng.standard_normal((batch, CLASSES)).astype(np.float32) for _ in range(2))
    sb, tb = (rng.standard_normal((batch, 4)).astype(np.float32) * 5 for _ in range(2))
    labels = rng.integers(0, CLASSES, batch)
    onehot = np.eye(CLASSES, dtype=np.float32)[labels]
    weights = np.full(batch, 1 / batch, np.float32)
    args = [s, sb, t, tb, onehot, weights, *kd_loss_coefficients(4.0, 0.7)]
    got = vm["kd_loss"](*[tvm.runtime.tensor(a) for a in args]).numpy()
    expected = distill_loss_per_sample([s, sb], [t, tb], labels, 4.0, 0.7, outputs).mean()
    assert got == pytest.approx(expected, rel=1e-5)
    difference = sb.astype(np.float64) - tb
    box_term = (difference**2 if box_loss == "mse" else np.abs(difference)).mean() * 0.5 / 3.0
    assert expected > box_term > 0  # the box term is in it, weighted and scaled


# --- choosing the losses ------------------------------------------------------------------------

def test_defaults_pick_kd_for_class_scores_and_mse_for_boxes(digits, teacher):
    produced = ort_outputs(teacher, digits[0][:300])
    assert looks_like_logits(produced["scores"]) and not looks_like_logits(produced["boxes"])
    losses = choose_output_losses(["scores", "boxes"], [(32, CLASSES), (32, 4)],
                                  [produced["scores"], produced["boxes"]], ())
    assert [(o.kind, o.weight) for o in losses] == [("kd", 1.0), ("mse", 1.0)]
    assert losses[1].scale == pytest.approx(float(np.var(produced["boxes"])), rel=1e-5)
    given = choose_output_losses(["scores", "boxes"], [(32, CLASSES), (32, 4)],
                                 [produced["scores"], produced["boxes"]],
                                 [("boxes", "l1", 2.0)])
    assert [(o.kind, o.weight) for o in given] == [("kd", 1.0), ("l1", 2.0)]


def test_teacher_outputs_are_matched_by_name_else_by_position():
    assert match_teacher_outputs(["scores", "boxes"], ["boxes", "scores"]) == [1, 0]
    assert match_teacher_outputs(["scores", "boxes"], ["logits", "bbox", "extra"]) == [0, 1]
    with pytest.raises(DistillError, match="the student has 2 outputs"):
        match_teacher_outputs(["scores", "boxes"], ["logits"])


def test_parse_output_loss():
    assert parse_output_loss("boxes:l1") == ("boxes", "l1", 1.0)
    assert parse_output_loss("boxes:mse:0.25") == ("boxes", "mse", 0.25)
    assert parse_output_loss("a:b:mse") == ("a:b", "mse", 1.0)
    with pytest.raises(DistillError, match="NAME:LOSS"):
        parse_output_loss("boxes")


@pytest.mark.parametrize("given, expected", [
    ((("nope", "mse", 1.0),), "the student has no output 'nope'"),
    ((("boxes", "huber", 1.0),), "huber"),
    ((("scores", "mse", 1.0), ("boxes", "mse", 1.0)), "no student output is trained as class"),
])
def test_bad_output_losses_are_named(digits, teacher, given, expected):
    produced = ort_outputs(teacher, digits[0][:50])
    with pytest.raises(RelaycompError, match=expected):
        choose_output_losses(["scores", "boxes"], [(32, CLASSES), (32, 4)],
                             [produced["scores"], produced["boxes"]], given)


@pytest.mark.parametrize("given, expected", [
    ((("nope", "mse", 1.0),), "the student has no output 'nope'"),
    ((("boxes", "huber", 1.0),), "huber"),
])
def test_a_bad_output_loss_is_refused_before_the_teacher_runs(digits, monkeypatch, given,
                                                              expected):
    def teacher_outputs(*args, **kwargs):
        raise AssertionError("the teacher ran")

    monkeypatch.setattr(distiller, "teacher_outputs", teacher_outputs)
    student = two_head_model(seed=7, hidden=16)
    with pytest.raises(RelaycompError, match=expected):
        distill(student, student, {"input": digits[0][:40]},
                DistillConfig(epochs=1, lr=1e-2, output_losses=given))


def test_kd_needs_class_scores():
    with pytest.raises(DistillError, match="kd loss needs class scores"):
        choose_output_losses(["boxes"], [(32, 4, 2)], [np.zeros((5, 4, 2), np.float32)],
                             [("boxes", "kd", 1.0)])


# --- a two-head student ----------------------------------------------------------------------------

def _teacher_distance(model: onnx.ModelProto, teacher: dict, images: np.ndarray) -> dict:
    produced = ort_outputs(model, images)
    return {"box_mse": float(((produced["boxes"] - teacher["boxes"]) ** 2).mean()),
            "agreement": float((produced["scores"].argmax(1) ==
                                teacher["scores"].argmax(1)).mean())}


def test_two_head_student_gets_closer_to_the_teacher_on_both_outputs(digits, teacher):
    train_x, test_x, _, _ = digits
    images = train_x[:400]
    student = two_head_model(seed=7, hidden=24)
    targets = ort_outputs(teacher, images)  # precomputed, keyed by output name
    trained, report = distill(targets, student, {"input": images},
                              DistillConfig(epochs=12, lr=1e-2, patience=0))
    assert [(o["name"], o["loss"]) for o in report.outputs] == [("scores", "kd"),
                                                                ("boxes", "mse")]
    assert report.after["loss"] < 0.5 * report.before["loss"]
    assert report.after["outputs"]["boxes"] < report.before["outputs"]["boxes"]
    saved = onnx.load_from_string(trained.SerializeToString())
    assert [o.name for o in saved.graph.output] == ["scores", "boxes"]
    held_out = ort_outputs(teacher, test_x)
    before = _teacher_distance(student, held_out, test_x)
    after = _teacher_distance(saved, held_out, test_x)
    assert after["box_mse"] < 0.5 * before["box_mse"]
    assert after["agreement"] > before["agreement"] + 0.2


def test_cli_distills_a_two_head_student_with_an_output_loss(tmp_path, digits, teacher):
    onnx.save(teacher, str(tmp_path / "teacher.onnx"))
    student = two_head_model(seed=7, hidden=16)
    onnx.save(student, str(tmp_path / "student.onnx"))
    np.savez(tmp_path / "train.npz", input=digits[0][:200])
    out = tmp_path / "trained.onnx"
    common = ["distill", "--teacher", tmp_path / "teacher.onnx", "--student",
              tmp_path / "student.onnx", "--data", tmp_path / "train.npz", "--epochs", "3",
              "--lr", "1e-2"]
    result = run_cli(*common, "--output-loss", "boxes:l1:0.5", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "outputs: scores kd, boxes l1 x0.5" in result.stdout
    held_out = ort_outputs(teacher, digits[1])
    before = _teacher_distance(student, held_out, digits[1])
    after = _teacher_distance(onnx.load(str(out)), held_out, digits[1])
    assert after["box_mse"] < before["box_mse"]

    bad = run_cli(*common, "--output-loss", "nope:mse", "-o", out)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("relaycomp: error: --output-loss nope: the student has no "
                                 "output 'nope'")
