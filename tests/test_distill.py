"""Distillation: the KD loss and its gradients, training behaviour, write-back, digits results.

Data is scikit-learn's digits with the split of tools/make_digits_example.py (the bundled
teacher never saw the 360 test images). Most tests hand distill() the teacher's logits
(computed here by onnxruntime) to skip compiling the teacher; the recovery test and the CLI
test go through the compiled-teacher path.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime
import pytest
import tvm
from helpers import run_cli
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tvm import relax

import relaycomp
from relaycomp.distill.budget import Budget
from relaycomp.distill.distiller import DistillConfig, DistillError, distill
from relaycomp.distill.loss import kd_loss_coefficients, kd_loss_function, kd_loss_reference
from relaycomp.distill.lr_find import find_lr, pick_lr
from relaycomp.distill.optim import OPTIMIZERS, SCHEDULES
from relaycomp.distill.student import student_from_onnx
from relaycomp.distill.train import Trainer, training_program
from relaycomp.frontend.examples import get_example
from relaycomp.prune.pruner import PruneConfig, prune

CLASSES = 10


# --- students --------------------------------------------------------------------------------

def _he(rng, shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _model(nodes, inits, batch, name, extra_outputs=()):
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, CLASSES])
         for out in ("logits", *extra_outputs)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def mlp_student(seed=0, hidden=64, batch="batch", activation="Relu"):
    """Flatten → Gemm → activation → Gemm: 64 → hidden → 10, He-initialized."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_he(rng, (hidden, 64), 64), "fc1.weight"),
             numpy_helper.from_array(np.zeros(hidden, np.float32), "fc1.bias"),
             numpy_helper.from_array(_he(rng, (CLASSES, hidden), hidden), "fc2.weight"),
             numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc2.bias")]
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1, name="flatten"),
             helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["h"], transB=1,
                              name="fc1"),
             helper.make_node(activation, ["h"], ["a"], name="act"),
             helper.make_node("Gemm", ["a", "fc2.weight", "fc2.bias"], ["logits"], transB=1,
                              name="fc2")]
    return _model(nodes, inits, batch, "mlp_student")


def cnn_student(seed=0, width=4, batch="batch"):
    """Two conv+BN+ReLU layers (one strided), global average pooling, a linear classifier."""
    rng = np.random.default_rng(seed)
    inits, nodes, x, cin = [], [], "input", 1
    for i, (cout, stride) in enumerate([(width, 1), (2 * width, 2)], start=1):
        inits.append(numpy_helper.from_array(_he(rng, (cout, cin, 3, 3), cin * 9),
                                             f"conv{i}.weight"))
        stats = {"weight": rng.uniform(0.5, 1.5, cout), "bias": rng.normal(0, 0.1, cout),
                 "running_mean": rng.normal(0, 0.1, cout), "running_var": rng.uniform(0.5, 1.5,
                                                                                      cout)}
        inits += [numpy_helper.from_array(v.astype(np.float32), f"bn{i}.{k}")
                  for k, v in stats.items()]
        nodes += [helper.make_node("Conv", [x, f"conv{i}.weight"], [f"c{i}"], kernel_shape=[3, 3],
                                   pads=[1] * 4, strides=[stride] * 2, name=f"conv{i}"),
                  helper.make_node("BatchNormalization", [f"c{i}"] + [f"bn{i}.{k}" for k in stats],
                                   [f"b{i}"], name=f"bn{i}"),
                  helper.make_node("Relu", [f"b{i}"], [f"r{i}"], name=f"relu{i}")]
        x, cin = f"r{i}", cout
    inits += [numpy_helper.from_array(_he(rng, (CLASSES, cin), cin), "fc.weight"),
              numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc.bias")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"),
              helper.make_node("Flatten", ["pool"], ["flat"], axis=1, name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1,
                               name="fc")]
    return _model(nodes, inits, batch, "cnn_student")


# --- data ------------------------------------------------------------------------------------

def digits_split():
    """The 1,797 digits as float32 [N,1,8,8] in [0,1]; tools/make_digits_example.py's split."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    return train_test_split(images, labels, test_size=0.2, stratify=labels, random_state=0)


def ort_logits(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, {"input": images})[0]


def test_accuracy(model: onnx.ModelProto, images, labels) -> float:
    """Held-out accuracy measured by onnxruntime."""
    return float((ort_logits(model, images).argmax(axis=1) == labels).mean())


test_accuracy.__test__ = False  # a helper, not a test


def partially_labelled(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Keep ``fraction`` of the labels (a seeded choice); the rest become -1."""
    keep = np.random.default_rng(100 + seed).permutation(len(labels))[:int(fraction *
                                                                           len(labels))]
    partial = np.full(len(labels), -1)
    partial[keep] = labels[keep]
    return partial


@pytest.fixture(scope="module")
def digits():
    return digits_split()


@pytest.fixture(scope="module")
def teacher():
    return onnx.load(str(get_example("digits").model_path))


@pytest.fixture(scope="module")
def teacher_logits(digits, teacher):
    return ort_logits(teacher, digits[0])


# --- the loss, its gradients, the optimizer ----------------------------------------------------

def test_kd_loss_matches_numpy_reference():
    batch = 6
    func = kd_loss_function(batch, CLASSES)
    vm = relax.VirtualMachine(tvm.compile(tvm.IRModule({"kd_loss": func}), "llvm"), tvm.cpu())
    rng = np.random.default_rng(0)
    student = (rng.standard_normal((batch, CLASSES)) * 3).astype(np.float32)
    teacher = (rng.standard_normal((batch, CLASSES)) * 3).astype(np.float32)
    labels = rng.integers(0, CLASSES, batch)
    cases = [(1.0, 0.5, labels, batch), (4.0, 0.7, labels, batch),
             (4.0, 0.7, np.where(np.arange(batch) % 2, labels, -1), batch),  # some unlabelled
             (2.0, 0.3, None, batch),                                         # no labels at all
             (3.0, 0.9, labels, 4)]                                           # 2 padded rows
    for temperature, alpha, case_labels, real in cases:
        onehot = np.zeros((batch, CLASSES), np.float32)
        if case_labels is not None:
            known = np.flatnonzero(case_labels >= 0)
            onehot[known, case_labels[known]] = 1.0
        weights = np.where(np.arange(batch) < real, 1.0 / real, 0.0).astype(np.float32)
        scalars = kd_loss_coefficients(temperature, alpha, case_labels is not None)
        got = vm["kd_loss"](*[tvm.runtime.tensor(a) for a in (student, teacher, onehot, weights,
                                                               *scalars)]).numpy()
        expected = kd_loss_reference(student[:real], teacher[:real],
                                     None if case_labels is None else case_labels[:real],
                                     temperature, alpha)
        assert got == pytest.approx(expected, rel=1e-5), (temperature, alpha)


def _mlp_trainer(batch=8, seed=0, temperature=2.0, alpha=0.5):
    student = student_from_onnx(mlp_student(seed, hidden=16), {"input": (1, 8, 8)}, batch)
    optimizer = OPTIMIZERS.get("sgd")()
    trainer = Trainer(training_program(student, optimizer), student.param_values, optimizer,
                      kd_loss_coefficients(temperature, alpha))
    return student, trainer


def test_gradients_match_finite_differences():
    student, trainer = _mlp_trainer()
    rng = np.random.default_rng(1)
    x = rng.random((8, 1, 8, 8)).astype(np.float32)
    teacher = (rng.standard_normal((8, CLASSES)) * 4).astype(np.float32)
    onehot = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, 8)]
    weights = np.full(8, 1 / 8, np.float32)
    _, grads = trainer.gradients([x], teacher, onehot, weights)
    values = trainer.values()
    assert [g.numpy().shape for g in grads] == [v.shape for v in values]
    step = 1e-2
    for k, grad in enumerate(g.numpy() for g in grads):
        index = np.unravel_index(np.argmax(np.abs(grad)), grad.shape)  # a well-conditioned entry
        around = []
        for sign in (1, -1):
            moved = [v.copy() for v in values]
            moved[k][index] += sign * step
            trainer.load(moved)
            around.append(trainer.gradients([x], teacher, onehot, weights)[0])
        trainer.load(values)
        numeric = (around[0] - around[1]) / (2 * step)
        assert grad[index] == pytest.approx(numeric, rel=2e-2, abs=1e-4), student.param_names[k]


def test_padding_rows_do_not_change_the_gradient():
    _, trainer = _mlp_trainer()
    rng = np.random.default_rng(2)
    x = rng.random((8, 1, 8, 8)).astype(np.float32)
    teacher = rng.standard_normal((8, CLASSES)).astype(np.float32)
    onehot = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, 8)]
    weights = np.where(np.arange(8) < 5, 1 / 5, 0).astype(np.float32)
    loss, grads = trainer.gradients([x], teacher, onehot, weights)
    x2, teacher2 = x.copy(), teacher.copy()
    x2[5:], teacher2[5:] = rng.random((3, 1, 8, 8)), rng.standard_normal((3, CLASSES))
    loss2, grads2 = trainer.gradients([x2], teacher2, onehot, weights)
    assert loss == loss2
    for a, b in zip(grads, grads2):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_adam_matches_numpy():
    param = relax.Var("p", relax.TensorType((5,), "float32"))
    adam = OPTIMIZERS.get("adam")(weight_decay=0.01)
    vm = relax.VirtualMachine(tvm.compile(tvm.IRModule({"optimizer": adam.function([param])}),
                                          "llvm"), tvm.cpu())
    rng = np.random.default_rng(3)
    p = rng.standard_normal(5).astype(np.float32)
    params, state = [tvm.runtime.tensor(p)], [tvm.runtime.tensor(s)
                                              for s in adam.initial_state([p])]
    m = v = np.zeros(5)
    expected = p.astype(np.float64)
    for t in range(1, 4):
        g = rng.standard_normal(5).astype(np.float32)
        rate = tvm.runtime.tensor(np.float32(adam.step_lr(0.1, t)))
        new_params, state = vm["optimizer"](params, [tvm.runtime.tensor(g)], state, rate)
        params = list(new_params)
        g = g + 0.01 * expected
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        expected = expected - 0.1 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(params[0].numpy(), expected, rtol=1e-4, atol=1e-5)


# --- the learning rate and the budget -----------------------------------------------------------

def test_range_test_picks_the_steepest_descent_below_the_minimum():
    lrs = np.logspace(-6, 0, 200)
    # the loss falls fastest around 1e-4 and is lowest near 3e-2, then diverges
    log_lr = np.log10(lrs)
    loss = 2.0 - 1.5 / (1 + np.exp(-3 * (log_lr + 4))) + np.maximum(0, log_lr + 1.5) ** 2 * 4
    picked, steepest, minimum, reason = pick_lr(lrs, loss)
    assert steepest == pytest.approx(1e-4, rel=0.3)
    assert 1e-2 < minimum < 1e-1
    assert picked == steepest and "steepest descent" in reason
    # a curve whose minimum is right next to its steepest point: a tenth of the minimum
    late = 2.0 - 1.5 / (1 + np.exp(-6 * (log_lr + 1.2))) + np.maximum(0, log_lr + 1) ** 2 * 40
    picked, steepest, minimum, _ = pick_lr(lrs, late)
    assert picked == pytest.approx(minimum / 10) and steepest > picked


def test_range_test_leaves_the_trainer_as_it_found_it(digits, teacher_logits):
    _, trainer = _mlp_trainer()
    before = trainer.values()
    x, t = digits[0][:8], teacher_logits[:8]
    onehot = np.eye(CLASSES, dtype=np.float32)[digits[2][:8]]
    weights = np.full(8, 1 / 8, np.float32)
    finding = find_lr(trainer, lambda lr: trainer.step([x], t, onehot, weights, lr), steps=60)
    assert 1e-6 <= finding.lr <= 1.0 and finding.steps == len(finding.losses) <= 60
    assert trainer.steps == 0
    for value, again in zip(before, trainer.values()):
        np.testing.assert_array_equal(value, again)


def _budget(epochs=None, max_epochs=30, patience=3, warmup=1.0):
    return Budget(1e-2, 10, epochs, max_epochs, patience, warmup, SCHEDULES.get("cosine"),
                  validated=True)


def _epochs_until_stop(budget, losses):
    for epoch, loss in enumerate(losses, start=1):
        if budget.end_epoch(loss):
            return epoch
    raise AssertionError("never stopped")


def test_budget_warms_up_holds_then_anneals_after_a_plateau():
    budget = _budget()
    assert budget.lr(0) < budget.lr(5) < budget.lr(9) < 1e-2 == budget.lr(10) == budget.lr(60)
    losses = [1.0, 0.5, 0.3, 0.2] + [0.2] * 26
    stopped = _epochs_until_stop(budget, losses)
    # smoothed loss stops improving at epoch 6; after 3 stale epochs, anneal 3 epochs, stop
    assert stopped == budget.epoch and 9 <= stopped <= 14
    assert budget.lr(budget.anneal_start) == pytest.approx(1e-2)
    assert budget.lr(stopped * 10 - 1) < 1e-4  # decayed to ~0 by the end
    assert budget.warning() is None


def test_budget_warns_when_the_cap_ends_an_improving_run():
    budget = _budget(max_epochs=12)
    assert _epochs_until_stop(budget, [1.0 / k for k in range(1, 30)]) == 12
    assert "still improving" in budget.warning() and "12-epoch cap" in budget.warning()
    fixed = _budget(epochs=6)
    assert _epochs_until_stop(fixed, [1.0 / k for k in range(1, 30)]) == 6
    assert "last of the 6 epochs" in fixed.warning()
    stalled = _budget(epochs=20)
    assert _epochs_until_stop(stalled, [1.0, 0.5] + [0.5] * 20) < 20  # patience stops it
    assert stalled.warning() is None


# --- training behaviour ------------------------------------------------------------------------

def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def test_same_seed_same_student(digits, teacher_logits):
    images, labels = digits[0][:600], digits[2][:600]
    student = mlp_student(0)

    def run(seed):
        config = DistillConfig(epochs=2, seed=seed, lr=3e-3)
        model, _ = distill(teacher_logits[:600], student, {"input": images}, config,
                           labels=labels)
        return _initializers(model)

    first, again, other = run(0), run(0), run(1)
    for name, value in first.items():
        np.testing.assert_array_equal(value, again[name], err_msg=name)
    assert any(not np.array_equal(value, other[name]) for name, value in first.items())


def assert_tvm_forward_matches_onnxruntime(trained: onnx.ModelProto, batch: np.ndarray) -> None:
    """TVM's training-time forward pass on the written-back weights == onnxruntime's run."""
    reloaded = student_from_onnx(trained, {"input": batch.shape[1:]}, len(batch))
    optimizer = OPTIMIZERS.get("adam")()
    trainer = Trainer(training_program(reloaded, optimizer), reloaded.param_values, optimizer,
                      kd_loss_coefficients(4.0, 0.7))
    np.testing.assert_allclose(trainer.predict([batch]), ort_logits(trained, batch),
                               rtol=1e-4, atol=1e-4)


def test_written_back_onnx_is_the_same_graph_and_matches_onnxruntime(digits, teacher_logits):
    student = cnn_student(0)
    trained, report = distill(teacher_logits[:400], student, {"input": digits[0][:400]},
                              DistillConfig(epochs=2, lr=1e-2), labels=digits[2][:400])
    assert [(n.op_type, n.name, list(n.input), list(n.output)) for n in trained.graph.node] == \
        [(n.op_type, n.name, list(n.input), list(n.output)) for n in student.graph.node]
    assert trained.graph.input == student.graph.input
    assert trained.graph.output == student.graph.output
    before, after = _initializers(student), _initializers(trained)
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
    for frozen in ("bn1.running_mean", "bn1.running_var", "bn2.running_mean", "bn2.running_var"):
        np.testing.assert_array_equal(before[frozen], after[frozen])
    assert sorted(report.trained["names"]) == sorted(
        ["conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.weight", "bn2.bias",
         "fc.weight", "fc.bias"])
    for name in report.trained["names"]:
        assert not np.array_equal(before[name], after[name]), name
    assert_tvm_forward_matches_onnxruntime(trained, digits[1][:32])


def test_fixed_batch_student_trains_at_its_own_batch(digits, teacher_logits):
    _, report = distill(teacher_logits[:100], mlp_student(0, batch=32), {"input": digits[0][:100]},
                        DistillConfig(epochs=1, batch_size=16, val_split=0.0),
                        labels=digits[2][:100])
    assert report.batch == 32
    assert report.samples == {"train": 100, "val": 0}


def test_unlabelled_data_learns_the_teacher(digits, teacher_logits):
    _, report = distill(teacher_logits[:600], mlp_student(0), {"input": digits[0][:600]},
                        DistillConfig(epochs=3, lr=3e-3))
    assert report.metric == "teacher_agreement"
    assert report.after["metric"] > report.before["metric"] + 0.3
    assert report.after["loss"] < report.before["loss"]


def test_relax_student_comes_back_as_relax(digits, teacher_logits):
    student = mlp_student(0)
    imported = relaycomp.import_onnx(student, {"input": (32, 1, 8, 8)})
    config = DistillConfig(epochs=1, lr=3e-3)
    data = {"input": digits[0][:300]}
    trained, report = distill(teacher_logits[:300], imported, data, config,
                              labels=digits[2][:300])
    assert isinstance(trained, relaycomp.ImportedModel)
    assert report.trained["tensors"] == 4
    vm = relax.VirtualMachine(tvm.compile(trained.mod, "llvm"), tvm.cpu())
    batch = digits[1][:32]
    got = vm["main"](tvm.runtime.tensor(batch)).numpy()
    as_onnx, _ = distill(teacher_logits[:300], student, data, config, labels=digits[2][:300])
    np.testing.assert_allclose(got, ort_logits(as_onnx, batch), rtol=1e-3, atol=1e-3)
    assert not np.allclose(got, ort_logits(student, batch), atol=1e-2)


# --- the digits results ------------------------------------------------------------------------

def _pruned_recovery(digits, teacher, config=None):
    """The bundled digits CNN pruned by half, distilled back (defaults unless ``config``)."""
    train_x, test_x, train_y, test_y = digits
    pruned, _ = prune(teacher, PruneConfig(ratio=0.5))
    recovered, report = distill(teacher, pruned, {"input": train_x}, config or DistillConfig(),
                                labels=train_y)
    accuracies = [test_accuracy(m, test_x, test_y) for m in (teacher, pruned, recovered)]
    return accuracies, report, recovered


@pytest.fixture(scope="module")
def recovery(digits, teacher):
    return _pruned_recovery(digits, teacher)


def test_pruned_digits_cnn_recovers_within_one_point_with_defaults(recovery):
    (unpruned, pruned, recovered), report, _ = recovery
    assert pruned < 0.5  # halving every layer without retraining wrecks the model ...
    assert recovered >= unpruned - 0.01  # ... and distillation with defaults brings it back
    assert report.teacher == 1.0  # the compiled teacher's logits reached the report
    assert report.lr["found"] and 1e-4 < report.lr["value"] < 1e-1
    assert report.history[-1]["annealing"] and not report.warnings  # it ended when done


def small_cnn_student(seed=0, width=8):
    """conv 3x3 → ReLU → strided conv 3x3 → ReLU → flatten → linear: 8x8 → 10 classes."""
    rng = np.random.default_rng(seed)
    flat = 2 * width * 16
    inits = [numpy_helper.from_array(_he(rng, (width, 1, 3, 3), 9), "conv1.weight"),
             numpy_helper.from_array(np.zeros(width, np.float32), "conv1.bias"),
             numpy_helper.from_array(_he(rng, (2 * width, width, 3, 3), 9 * width),
                                     "conv2.weight"),
             numpy_helper.from_array(np.zeros(2 * width, np.float32), "conv2.bias"),
             numpy_helper.from_array(_he(rng, (CLASSES, flat), flat), "fc.weight"),
             numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc.bias")]
    nodes = [helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"],
                              kernel_shape=[3, 3], pads=[1] * 4, name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"],
                              kernel_shape=[3, 3], pads=[1] * 4, strides=[2, 2], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Flatten", ["r2"], ["flat"], axis=1, name="flatten"),
             helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1,
                              name="fc")]
    return _model(nodes, inits, "batch", "small_cnn_student")


def under_trained_student(digits, teacher_logits, seed=0):
    """A small CNN after two epochs of supervised training at a timid rate (~70% held out)."""
    student, _ = distill(teacher_logits, small_cnn_student(seed), {"input": digits[0]},
                         DistillConfig(epochs=2, lr=1e-3, alpha=0.0, warmup=0, seed=seed),
                         labels=digits[2])
    return student


def test_under_trained_cnn_reaches_95_percent_with_defaults(digits, teacher, teacher_logits):
    train_x, test_x, train_y, test_y = digits
    student = under_trained_student(digits, teacher_logits)
    assert test_accuracy(teacher, test_x, test_y) >= 0.99
    assert 0.5 < test_accuracy(student, test_x, test_y) < 0.8
    distilled, report = distill(teacher_logits, student, {"input": train_x}, labels=train_y)
    assert test_accuracy(distilled, test_x, test_y) >= 0.95
    assert report.lr["found"] and "range test" in report.lr["reason"]


def test_teacher_prune_distill_int8_compile_run(recovery, digits, tmp_path):
    """The whole chain in one process; accuracy after every step (shown with -s)."""
    from relaycomp.compiler.build import CompileConfig, compile_model
    from relaycomp.quantize.quantizer import QuantConfig

    (unpruned, pruned, recovered), _, student = recovery
    train_x, test_x, _, test_y = digits
    config = CompileConfig(input_shapes={"input": test_x.shape}, features=(QuantConfig(),),
                           calibration={"input": train_x[:len(test_x)]})  # compiled batch
    artifact = compile_model(student, tmp_path / "student_int8.so", config)
    logits = relaycomp.load(artifact.path).run({"input": test_x})["logits"]
    int8 = float((logits.argmax(axis=1) == test_y).mean())
    print(f"teacher {unpruned:.2%} -> pruned 50% {pruned:.2%} -> distilled {recovered:.2%} "
          f"-> int8 compiled {int8:.2%}")
    assert artifact.manifest.report["quantize"]
    assert int8 >= recovered - 0.01


def _distilled_and_scratch(digits, teacher_logits, seed, epochs, fraction=0.1):
    """Same student, same labels, same number of steps: scratch sees only the labelled
    samples (epochs scaled up to match), distillation also the unlabelled ones."""
    train_x, test_x, train_y, test_y = digits
    partial = partially_labelled(train_y, fraction, seed)
    known = partial >= 0
    student = mlp_student(seed)
    scratch, _ = distill(teacher_logits[known], student, {"input": train_x[known]},
                         DistillConfig(epochs=round(epochs / fraction), alpha=0.0, lr=3e-3,
                                       seed=seed, patience=0), labels=train_y[known])
    distilled, _ = distill(teacher_logits, student, {"input": train_x},
                           DistillConfig(epochs=epochs, lr=3e-3, seed=seed, patience=0),
                           labels=partial)
    return test_accuracy(distilled, test_x, test_y), test_accuracy(scratch, test_x, test_y)


def test_distilled_student_beats_scratch_reduced_budget(digits, teacher_logits):
    distilled, scratch = _distilled_and_scratch(digits, teacher_logits, seed=0, epochs=4)
    assert distilled > scratch + 0.02


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distilled_student_beats_scratch(digits, teacher_logits, seed):
    distilled, scratch = _distilled_and_scratch(digits, teacher_logits, seed, epochs=10)
    assert distilled > scratch + 0.02


# --- errors ------------------------------------------------------------------------------------

def _error(teacher_logits, student, data, labels=None, config=None) -> str:
    with pytest.raises(DistillError) as caught:
        distill(teacher_logits, student, data, config or DistillConfig(epochs=1), labels=labels)
    return str(caught.value)


def test_teacher_and_student_class_counts_must_match(digits):
    message = _error(np.zeros((50, 7), np.float32), mlp_student(0), {"input": digits[0][:50]})
    assert "7 classes" in message and "10" in message


def test_ops_without_gradient_are_named(digits, teacher_logits):
    message = _error(teacher_logits[:50], mlp_student(0, activation="Erf"),
                     {"input": digits[0][:50]})
    assert "cannot differentiate: erf (x1)" in message


def test_leaky_relu_is_rewritten_into_differentiable_ops(digits, teacher_logits):
    student = mlp_student(0, hidden=16, activation="LeakyRelu")
    trained, report = distill(teacher_logits[:200], student, {"input": digits[0][:200]},
                              DistillConfig(epochs=2, lr=3e-3), labels=digits[2][:200])
    assert report.after["loss"] < report.before["loss"]
    assert_tvm_forward_matches_onnxruntime(trained, digits[1][:32])


@pytest.mark.parametrize("data, labels, expected", [
    ({"image": np.zeros((50, 1, 8, 8), np.float32)}, None, "lacks input(s) ['input']"),
    ({"input": np.zeros((50, 1, 8, 9), np.float32)}, None, "dim 3 is 9"),
    ({"input": np.zeros((50, 64), np.float32)}, None, "shape [50, 64]"),
    ({"input": np.full((50, 1, 8, 8), np.nan, np.float32)}, None, "NaN"),
    ({"input": np.zeros((50, 1, 8, 8), np.float32)}, np.full(50, 10), "range over [10, 10]"),
    ({"input": np.zeros((50, 1, 8, 8), np.float32)}, np.zeros(49, int), "expected [50]"),
    ({"input": np.zeros((50, 1, 8, 8), np.float32)}, np.full(50, 0.5), "integer classes"),
])
def test_bad_data_is_named(teacher_logits, data, labels, expected):
    assert expected in _error(teacher_logits[:50], mlp_student(0), data, labels)


def test_student_with_two_outputs_needs_as_many_teacher_outputs(digits, teacher_logits):
    student = mlp_student(0)
    student.graph.node.append(helper.make_node("Identity", ["logits"], ["copy"], name="copy"))
    student.graph.output.append(helper.make_tensor_value_info("copy", TensorProto.FLOAT,
                                                              ["batch", CLASSES]))
    message = _error(teacher_logits[:50], student, {"input": digits[0][:50]})
    assert "1 precomputed teacher output(s) for a student with 2" in message


@pytest.mark.parametrize("options, expected", [
    ({"alpha": 1.5}, "alpha must be in [0, 1]"), ({"temperature": 0}, "temperature"),
    ({"val_split": 1.0}, "val_split"), ({"epochs": 0}, "epochs"),
])
def test_bad_options_are_refused(options, expected):
    with pytest.raises(DistillError, match=expected.replace("[", r"\[")):
        DistillConfig(**options)


def test_unknown_optimizer_lists_the_known_ones():
    with pytest.raises(relaycomp.RelaycompError) as caught:
        DistillConfig(optimizer="lion")
    assert "adam" in caught.value.hint and "sgd" in caught.value.hint


# --- the command line --------------------------------------------------------------------------

def test_cli_distills_and_writes_onnx(tmp_path, digits):
    teacher = tmp_path / "teacher.onnx"
    onnx.save(mlp_student(5, hidden=32), str(teacher))
    student = tmp_path / "student.onnx"
    onnx.save(mlp_student(0, hidden=16), str(student))
    np.savez(tmp_path / "train.npz", input=digits[0][:200])
    np.save(tmp_path / "labels.npy", digits[2][:200])
    out = tmp_path / "trained.onnx"
    result = run_cli("distill", "--teacher", teacher, "--student", student, "--data",
                     tmp_path / "train.npz", "--labels", tmp_path / "labels.npy", "--epochs", "2",
                     "--seed", "3", "--hint", "h:h", "--augment", "crop", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "2 epoch(s)" in result.stdout and f"wrote {out}" in result.stdout
    assert "learning rate" in result.stdout and "range test" in result.stdout
    # stderr is not a terminal: no progress bar, and no per-epoch lines on stdout either
    assert "%|" not in result.stderr and "epoch 1/2" not in result.stderr + result.stdout
    trained = onnx.load(str(out))
    onnx.checker.check_model(trained, full_check=True)
    assert _initializers(trained).keys() == _initializers(onnx.load(str(student))).keys()
    assert ort_logits(trained, digits[1][:4]).shape == (4, CLASSES)

    bad = run_cli("distill", "--teacher", teacher, "--student", student, "--data",
                  tmp_path / "train.npz", "--labels", tmp_path / "missing.npy", "-o", out)
    assert bad.returncode == 1
    assert bad.stderr.startswith("relaycomp: error: cannot read labels")
    assert "Traceback" not in bad.stderr
    bad_hint = run_cli("distill", "--teacher", teacher, "--student", student, "--data",
                       tmp_path / "train.npz", "--hint", "no-colon", "-o", out)
    assert bad_hint.returncode == 1 and "TEACHER_TENSOR:STUDENT_TENSOR" in bad_hint.stderr


def test_cli_shows_a_bar_per_epoch_on_a_terminal_and_warns_on_stderr(tmp_path, digits):
    from test_cli_progress import run_with_terminal_stderr

    teacher, student = tmp_path / "teacher.onnx", tmp_path / "student.onnx"
    onnx.save(mlp_student(5, hidden=32), str(teacher))
    onnx.save(mlp_student(0, hidden=16), str(student))
    np.savez(tmp_path / "train.npz", input=digits[0][:200])
    args = ["distill", "--teacher", teacher, "--student", student, "--data",
            tmp_path / "train.npz", "--lr", "0.01", "--batch-size", "32", "--epochs", "2",
            "--patience", "0", "-o", tmp_path / "out.onnx"]
    code, stdout, terminal = run_with_terminal_stderr(*args)
    assert code == 0, terminal
    # 180 training samples (10% held out) in batches of 32: 6 steps per epoch, each counted
    for epoch in (1, 2):
        counts = {int(n) for n in re.findall(rf"epoch {epoch}/2: +\d+%\|[^|]*\| *(\d)/6",
                                              terminal)}
        assert counts == set(range(7)), terminal[-2000:]
    assert "val teacher_agreement" in terminal  # the epoch's numbers stay beside its bar
    assert "2 epoch(s)" in stdout and "%|" not in stdout
    # a fixed run still improving in its last epoch warns, on stderr in the CLI's form only
    assert "relaycomp: warning: the validation loss was still improving in the last of the 2 " \
           "epochs" in terminal, terminal[-2000:]
    assert "warning" not in stdout

    code, stdout, terminal = run_with_terminal_stderr(*args, "--quiet")
    assert code == 0, terminal
    assert "epoch 1/2" not in terminal and "epoch 2/2" not in terminal  # (the teacher's
    # compile keeps its own bar: compile has no --quiet)
    assert "relaycomp: warning: the validation loss was still improving" in terminal
