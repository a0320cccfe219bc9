"""Augmentation of image batches for distillation: random crop with padding, horizontal flip.

    DistillConfig(augment=("crop", "flip"))        relaycomp distill ... --augment crop,flip
    DistillConfig(augment=("crop:2",))             # pad 2 pixels instead of 1/8 of the side

Each augmentation is registered in :data:`AUGMENTATIONS` as ``make(argument) -> transform``,
where ``transform(batch, rng)`` returns a new ``[N, C, H, W]`` float batch. They apply to every
4-D float input of the student, per sample, with the run's seeded generator (same seed, same
student). The teacher labels the augmented batch itself (it runs on every training batch
instead of once), which is what makes augmentation pay off in distillation: the student learns
the teacher's answers on images the labels don't cover (Beyer et al. 2022, "consistent
teaching").

* ``crop[:P]``: zero-pad P pixels on each side (default max(1, H // 8): 4 for 32x32 images,
  1 for 8x8 digits) and cut a random H x W window.
* ``flip``: mirror left-right with probability 1/2 (not for digits or text).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from relaycomp.distill.student import DistillError
from relaycomp.registry import Registry

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]
AUGMENTATIONS: Registry[Callable[[str | None], Transform]] = Registry("augmentation")


@AUGMENTATIONS.register("crop")
def random_crop(argument: str | None) -> Transform:
    """Random crop after zero padding (``crop:P`` pads P pixels)."""
    fixed = None
    if argument is not None:
        if not argument.isdigit() or int(argument) < 1:
            raise DistillError(f"augmentation crop:{argument}: the padding must be a positive "
                               f"number of pixels")
        fixed = int(argument)

    def crop(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        count, _, height, width = batch.shape
        pad = fixed or max(1, height // 8)
        padded = np.pad(batch, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        rows = rng.integers(0, 2 * pad + 1, count)
        cols = rng.integers(0, 2 * pad + 1, count)
        return np.stack([padded[i, :, r:r + height, c:c + width]
                         for i, (r, c) in enumerate(zip(rows, cols))])

    return crop


@AUGMENTATIONS.register("flip")
def horizontal_flip(argument: str | None) -> Transform:
    """Mirror left-right with probability 1/2."""
    if argument is not None:
        raise DistillError(f"augmentation flip takes no argument, got flip:{argument}")

    def flip(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        mirrored = rng.random(len(batch)) < 0.5
        out = batch.copy()
        out[mirrored] = batch[mirrored, ..., ::-1]
        return out

    return flip


def parse_augment(names: Sequence[str]) -> list[Transform]:
    """``["crop", "flip"]`` / ``["crop:2"]`` → the transforms, in order."""
    transforms = []
    for spec in names:
        name, _, argument = spec.partition(":")
        transforms.append(AUGMENTATIONS.get(name)(argument or None))
    return transforms


def augmenter(names: Sequence[str]) -> Callable[[list, np.random.Generator], list] | None:
    """``augment(inputs, rng) -> inputs`` applying ``names`` to every 4-D float input, or None
    when there is nothing to apply."""
    transforms = parse_augment(names)
    if not transforms:
        return None

    def augment(inputs: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        result = []
        for array in inputs:
            if array.ndim == 4 and np.issubdtype(array.dtype, np.floating):
                for transform in transforms:
                    array = transform(array, rng)
                array = np.ascontiguousarray(array, dtype=inputs[0].dtype)
            result.append(array)
        return result

    return augment
