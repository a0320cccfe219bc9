"""Augmentation for distillation: crop-with-padding and flip transforms, their options, and a
run where the compiled teacher labels every augmented batch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from test_distill import digits_split, small_cnn_student, test_accuracy

from relaycomp.distill.augment import augmenter, parse_augment
from relaycomp.distill.distiller import DistillConfig, DistillError, distill
from relaycomp.frontend.examples import get_example
from relaycomp.registry import RegistryError


def test_crop_shifts_each_image_within_the_padding():
    batch = np.arange(2 * 1 * 8 * 8, dtype=np.float32).reshape(2, 1, 8, 8) + 1
    (crop,) = parse_augment(["crop:2"])
    out = crop(batch, np.random.default_rng(0))
    assert out.shape == batch.shape
    for image, shifted in zip(batch, out):
        # some shift (dy, dx) in [-2, 2]^2 maps the image onto the crop; zeros fill the rest
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                padded = np.pad(image, ((0, 0), (2, 2), (2, 2)))
                window = padded[:, 2 + dy:10 + dy, 2 + dx:10 + dx]
                matches.append(np.array_equal(window, shifted))
        assert sum(matches) == 1


def test_flip_mirrors_about_half_the_images():
    batch = np.random.default_rng(1).random((200, 3, 4, 5)).astype(np.float32)
    (flip,) = parse_augment(["flip"])
    out = flip(batch, np.random.default_rng(2))
    mirrored = [np.array_equal(o, b[..., ::-1]) for o, b in zip(out, batch)]
    kept = [np.array_equal(o, b) for o, b in zip(out, batch)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 70 < sum(mirrored) < 130


def test_augmenter_leaves_non_image_inputs_alone_and_repeats_with_the_seed():
    augment = augmenter(["crop", "flip"])
    images = np.random.default_rng(3).random((4, 1, 8, 8)).astype(np.float32)
    ids = np.arange(4, dtype=np.int64)
    first = augment([images, ids], np.random.default_rng(7))
    again = augment([images, ids], np.random.default_rng(7))
    assert first[1] is ids and first[0].dtype == np.float32
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[0], images)
    assert augmenter([]) is None


@pytest.mark.parametrize("names, expected", [
    (["rotate"], RegistryError), (["crop:0"], DistillError), (["flip:3"], DistillError),
])
def test_bad_augmentations_are_refused(names, expected):
    with pytest.raises(expected):
        DistillConfig(augment=names)


def test_augmented_run_relabels_batches_with_the_teacher():
    train_x, test_x, train_y, test_y = digits_split()
    teacher = onnx.load(str(get_example("digits").model_path))
    config = DistillConfig(epochs=10, lr=3e-3, augment=("crop",))
    trained, report = distill(teacher, small_cnn_student(0), {"input": train_x[:300]},
                              config, labels=train_y[:300])
    assert report.after["loss"] < report.before["loss"]
    assert test_accuracy(trained, test_x, test_y) > 0.5
    logits = np.zeros((300, 10), np.float32)
    with pytest.raises(DistillError, match="augmentation needs the teacher as an ONNX model"):
        distill(logits, small_cnn_student(0), {"input": train_x[:300]}, config)
