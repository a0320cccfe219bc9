"""Feature distillation (hints): the hint distances against numpy, gradients through the
adapters, hinted tensors from a compiled teacher, errors; and (slow) that attention-transfer
hints beat logits-only distillation on a small data budget (three seeds)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from test_distill import CLASSES, digits_split, ort_logits, small_cnn_student, test_accuracy
from tvm import relax

from relaycomp.distill.distiller import DistillConfig, DistillError, distill
from relaycomp.distill.hints import HintShape, hint_reference, parse_hint
from relaycomp.distill.loss import kd_loss_coefficients, kd_loss_function, kd_loss_reference
from relaycomp.distill.optim import OPTIMIZERS
from relaycomp.distill.student import student_from_onnx
from relaycomp.distill.train import Trainer, training_program
from relaycomp.frontend.examples import get_example

TEACHER_TENSOR, STUDENT_TENSOR = "/relu2/Relu_output_0", "r2"  # [32, 4, 4] and [16, 4, 4]


@pytest.fixture(scope="module")
def digits():
    return digits_split()


@pytest.fixture(scope="module")
def teacher():
    return onnx.load(str(get_example("digits").model_path))


@pytest.mark.parametrize("loss", ["mse", "cosine", "attention", "standardized"])
@pytest.mark.parametrize("student_channels", [16, 32])  # with and without an adapter
def test_hint_loss_matches_numpy_reference(loss, student_channels):
    batch = 4
    hint = HintShape((batch, student_channels, 4, 4), (batch, 32, 4, 4), loss)
    func = kd_loss_function(batch, CLASSES, [hint])
    vm = relax.VirtualMachine(tvm.compile(tvm.IRModule({"kd_loss": func}), "llvm"), tvm.cpu())
    rng = np.random.default_rng(0)
    s, t = (rng.standard_normal((batch, CLASSES)).astype(np.float32) for _ in range(2))
    feature = rng.standard_normal(hint.student).astype(np.float32)
    target = rng.standard_normal(hint.teacher).astype(np.float32)
    adapter = rng.standard_normal(hint.adapter).astype(np.float32) if hint.adapter else None
    labels = rng.integers(0, CLASSES, batch)
    onehot = np.eye(CLASSES, dtype=np.float32)[labels]
    weights = np.full(batch, 1 / batch, np.float32)
    scalars = [*kd_loss_coefficients(4.0, 0.7), np.array(0.5, np.float32)]
    args = [s, feature, t, onehot, weights, *scalars, target] + ([adapter] if hint.adapter
                                                                 else [])
    got = vm["kd_loss"](*[tvm.runtime.tensor(a) for a in args]).numpy()
    expected = kd_loss_reference(s, t, labels, 4.0, 0.7) + 0.5 * hint_reference(
        feature, target, adapter, loss).mean()
    assert got == pytest.approx(expected, rel=1e-5)


def test_adapter_gradients_match_finite_differences():
    batch = 4
    student = student_from_onnx(small_cnn_student(0), {"input": (1, 8, 8)}, batch,
                                [STUDENT_TENSOR])
    assert student.feature_shapes == [(batch, 16, 4, 4)]
    hint = HintShape(student.feature_shapes[0], (batch, 32, 4, 4), "mse")
    rng = np.random.default_rng(1)
    adapter = (rng.standard_normal(hint.adapter) * 0.3).astype(np.float32)
    optimizer = OPTIMIZERS.get("sgd")()
    coefficients = [*kd_loss_coefficients(2.0, 0.5), np.array(1.0, np.float32)]
    trainer = Trainer(training_program(student, optimizer, [hint]),
                      student.param_values + [adapter], optimizer, coefficients)
    x = rng.random((batch, 1, 8, 8)).astype(np.float32)
    teacher = rng.standard_normal((batch, CLASSES)).astype(np.float32)
    onehot = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, batch)]
    weights = np.full(batch, 1 / batch, np.float32)
    target = [np.abs(rng.standard_normal(hint.teacher)).astype(np.float32)]
    _, grads = trainer.gradients([x], teacher, onehot, weights, target)
    values = trainer.values()
    assert len(grads) == len(values) == len(student.param_values) + 1
    step = 1e-2
    for k in (0, len(values) - 1):  # the first conv (through the hint and logits), the adapter
        grad = grads[k].numpy()
        index = np.unravel_index(np.argmax(np.abs(grad)), grad.shape)
        around = []
        for sign in (1, -1):
            moved = [v.copy() for v in values]
            moved[k][index] += sign * step
            trainer.load(moved)
            around.append(trainer.gradients([x], teacher, onehot, weights, target)[0])
        trainer.load(values)
        assert grad[index] == pytest.approx((around[0] - around[1]) / (2 * step), rel=2e-2)


def test_hinted_run_writes_back_the_student_only(digits, teacher):
    train_x, test_x, train_y, _ = digits
    student = small_cnn_student(0)
    trained, report = distill(teacher, student, {"input": train_x[:200]},
                              DistillConfig(epochs=2, lr=3e-3,
                                            hints=[(TEACHER_TENSOR, STUDENT_TENSOR)]),
                              labels=train_y[:200])
    assert report.trained["adapters"] == 1
    assert report.trained["hints"] == [[TEACHER_TENSOR, STUDENT_TENSOR]]
    assert [o.name for o in trained.graph.output] == ["logits"]
    assert {i.name for i in trained.graph.initializer} == {
        i.name for i in student.graph.initializer}
    assert ort_logits(trained, test_x[:4]).shape == (4, CLASSES)


@pytest.mark.parametrize("hint, expected", [
    (("/nope", STUDENT_TENSOR), "the teacher has no tensor named '/nope'"),
    ((TEACHER_TENSOR, "nope"), "the student has no tensor named 'nope'"),
    (("/relu1/Relu_output_0", STUDENT_TENSOR), "differ beyond the channel axis"),
])
def test_bad_hints_are_named(digits, teacher, hint, expected):
    with pytest.raises(DistillError, match=expected):
        distill(teacher, small_cnn_student(0), {"input": digits[0][:50]},
                DistillConfig(epochs=1, lr=1e-3, hints=[hint]), labels=digits[2][:50])


def test_hints_need_an_onnx_teacher(digits, teacher):
    logits = ort_logits(teacher, digits[0][:50])
    with pytest.raises(DistillError, match="hints need the teacher as an ONNX model"):
        distill(logits, small_cnn_student(0), {"input": digits[0][:50]},
                DistillConfig(epochs=1, lr=1e-3, hints=[(TEACHER_TENSOR, STUDENT_TENSOR)]))


def test_parse_hint():
    assert parse_hint("/a/b:0:x") == ("/a/b:0", "x")
    with pytest.raises(DistillError, match="TEACHER_TENSOR:STUDENT_TENSOR"):
        parse_hint("no-colon")


# --- hints against logits only -----------------------------------------------------------------

def hints_versus_logits(digits, teacher, seed: int, hints, *, samples: int, epochs: int,
                        hint_loss: str = "mse", hint_weight: float = 10.0,
                        student: str = "small_cnn") -> tuple[float, float]:
    """Held-out accuracy of logits-only distillation and of distillation with ``hints``, same
    student initialization, data (a seeded subset of ``samples`` images), rate and epochs."""
    from relaycomp.prune.pruner import PruneConfig, prune

    train_x, test_x, train_y, test_y = digits
    subset = np.random.default_rng(seed).permutation(len(train_x))[:samples]
    model = small_cnn_student(seed) if student == "small_cnn" else prune(
        teacher, PruneConfig(ratio=0.5))[0]
    accuracies = []
    for pairs in ((), hints):
        config = DistillConfig(epochs=epochs, lr=3e-3, seed=seed, patience=0, val_split=0,
                               hints=pairs, hint_loss=hint_loss, hint_weight=hint_weight)
        trained, _ = distill(teacher, model, {"input": train_x[subset]}, config,
                             labels=train_y[subset])
        accuracies.append(test_accuracy(trained, test_x, test_y))
    return accuracies[0], accuracies[1]


ATTENTION_HINTS = (("/relu1/Relu_output_0", "r1"), (TEACHER_TENSOR, STUDENT_TENSOR))


@pytest.mark.slow
def test_attention_hints_beat_logits_only_on_every_seed(digits, teacher):
    """Attention transfer at both conv stages vs logits-only, same budget (100 images, 30
    epochs, lr 3e-3), three seeds. Measured: logits 82.50/81.11/85.00%, attention
    84.17/81.94/85.56% held out (+1.0 points on average). The win is narrow: at 50 images
    (40 epochs), 200 images (20 epochs), 100 images for 60 epochs, and on the 50%-pruned
    digits CNN (attention at relu1-3), hints were within ±0.4 points of logits-only, and with
    the default budget (rate found, until done) they lost 0.6-1.6 points."""
    results = [hints_versus_logits(digits, teacher, seed, ATTENTION_HINTS, samples=100,
                                   epochs=30, hint_loss="attention", hint_weight=1.0)
               for seed in (0, 1, 2)]
    assert all(hinted > logits for logits, hinted in results), results
    gains = [hinted - logits for logits, hinted in results]
    assert np.mean(gains) >= 0.005, results
