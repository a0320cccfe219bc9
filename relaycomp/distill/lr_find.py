"""The learning-rate range test (Smith 2017; fastai's and PyTorch Lightning's ``lr_find``).

    finding = find_lr(trainer, lambda lr: trainer.step(*next_batch(), lr), steps=200)
    print(finding.reason)          # "steepest descent of the smoothed loss at 3.2e-03 ..."

From the student's initial weights, train for up to ``steps`` mini-batches while the learning
rate grows exponentially from ``start`` to ``end``; record the loss, smoothed by an exponential
moving average with bias correction (fastai's β = 0.98 scaled to the sweep length), and stop
once the smoothed loss passes ``divergence`` × its minimum. The pick is the learning rate of
the steepest descent of the smoothed loss (the most negative slope against log lr, before the
minimum), capped at a tenth of the rate at the minimum (fastai's ``lr_min / 10``): the loss
still falls fast there and a warm-up + decay schedule stays clear of the divergence edge.
The trainer is restored to its initial weights and a fresh optimizer state afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from relaycomp.distill.student import DistillError


@dataclass
class LearningRateFinding:
    """What the range test saw and picked (``lrs``/``losses``: the sweep, smoothed losses)."""

    lr: float
    reason: str
    steepest: float
    minimum: float
    steps: int
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        """JSON form for reports."""
        return asdict(self)


def _smooth(losses: list[float], beta: float) -> np.ndarray:
    average, smoothed = 0.0, []
    for i, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        smoothed.append(average / (1 - beta**i))
    return np.asarray(smoothed)


def pick_lr(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float, float, float, str]:
    """``(picked, steepest, minimum, reason)`` from a sweep's rates and smoothed losses."""
    lowest = int(np.argmin(smoothed))
    minimum = float(lrs[lowest])
    # skip the first tenth: the average there still mostly reflects the first batches
    skip = max(1, len(lrs) // 10)
    if lowest - skip < 2:
        picked = minimum / 10
        reason = (f"the loss fell only at the start of the sweep; minimum at {minimum:.2e}, "
                  f"picked a tenth of it")
        return picked, picked, minimum, reason
    slopes = np.gradient(smoothed[:lowest + 1], np.log(lrs[:lowest + 1]))
    steepest_index = skip + int(np.argmin(slopes[skip:lowest]))
    steepest = float(lrs[steepest_index])
    cap = minimum / 10
    if steepest <= cap:
        reason = (f"steepest descent of the smoothed loss at {steepest:.2e} (loss minimum at "
                  f"{minimum:.2e})")
        return steepest, steepest, minimum, reason
    reason = (f"steepest descent at {steepest:.2e} lies close to the loss minimum at "
              f"{minimum:.2e}; picked a tenth of the minimum")
    return cap, steepest, minimum, reason


def find_lr(trainer, train_step: Callable[[float], float], start: float = 1e-6,
            end: float = 1.0, steps: int = 200, divergence: float = 4.0) -> LearningRateFinding:
    """Run the range test on ``trainer`` (a :class:`~relaycomp.distill.train.Trainer`);
    ``train_step(lr)`` runs one step of it on the next batch and returns the loss."""
    if not 0 < start < end or steps < 10:
        raise DistillError(f"learning-rate sweep needs 0 < start < end and >= 10 steps, got "
                           f"{start}, {end}, {steps}")
    initial = trainer.values()
    beta = 1 - 4 / steps  # an averaging window of about steps/4 batches (0.98 at 200)
    growth = (end / start) ** (1 / (steps - 1))
    lrs, raw = [], []
    best = math.inf
    for step in range(steps):
        lr = start * growth**step
        loss = train_step(lr)
        if not math.isfinite(loss):
            break
        lrs.append(lr)
        raw.append(loss)
        smoothed = _smooth(raw, beta)[-1]
        best = min(best, smoothed)
        if step > steps // 10 and smoothed > divergence * best:
            break
    trainer.reset(initial)
    if len(lrs) < 10:
        raise DistillError(f"the learning-rate sweep diverged within {len(lrs)} steps from "
                           f"{start:.0e}", hint="give --lr explicitly")
    lrs_array, smoothed = np.asarray(lrs), _smooth(raw, beta)
    picked, steepest, minimum, reason = pick_lr(lrs_array, smoothed)
    return LearningRateFinding(float(picked), reason, steepest, minimum, len(lrs),
                               [float(x) for x in lrs_array], [float(x) for x in smoothed])
