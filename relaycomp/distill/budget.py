"""How long to train and at which rate: warm-up, then a decay schedule, ending when done.

Two budgets, one object:

* **until done** (``epochs=None``, the default): linear warm-up to the peak rate, then the peak
  rate held while the smoothed validation loss improves (warm-up / stable / decay, as in
  MiniCPM's WSD schedule). When it has not improved for ``patience`` epochs the rate decays
  to 0 over an annealing phase (``schedule``'s shape over a quarter of the epochs so far, at
  least 3) and the run ends. ``max_epochs`` caps it: annealing starts early enough to finish by
  the cap, and the report warns that the loss was still improving when the cap forced it.
* **fixed** (``epochs=N``): warm-up, then ``schedule`` over the rest of the N epochs; with
  ``patience`` the run stops early once the smoothed validation loss stalls.

The smoothed validation loss is the mean over the last 3 epochs (a moving average that, unlike
an exponential one, stops falling as soon as the loss does); an improvement is a drop of more
than 0.1 % below the best smoothed value.
"""

from __future__ import annotations

import math
from collections.abc import Callable

SMOOTHING_WINDOW = 3
MIN_IMPROVEMENT = 1e-3
ANNEAL_FRACTION, MIN_ANNEAL_EPOCHS = 0.25, 3


class Budget:
    """Per-step learning rates and the per-epoch decision to stop."""

    def __init__(self, peak_lr: float, steps_per_epoch: int, epochs: int | None,
                 max_epochs: int, patience: int, warmup_epochs: float,
                 schedule: Callable[[float, float], float], validated: bool):
        self.peak, self.steps_per_epoch, self.schedule = peak_lr, steps_per_epoch, schedule
        self.fixed = epochs is not None
        self.max_epochs = epochs if self.fixed else max_epochs
        # a fixed run without validation never stops early (its training loss keeps falling);
        # a run until done watches the training loss when nothing is held out
        self.patience = patience if validated or not self.fixed else 0
        warmup = warmup_epochs * steps_per_epoch
        if self.fixed:  # at most a quarter of a fixed run warms up
            warmup = min(warmup, 0.25 * self.max_epochs * steps_per_epoch)
        self.warmup_steps = round(warmup)
        self.anneal_start = self.max_epochs * steps_per_epoch if self.fixed else None
        self.anneal_end = self.max_epochs * steps_per_epoch
        self.recent: list[float] = []
        self.best_smoothed = math.inf
        self.stale = 0
        self.epoch = 0
        self.forced_by_cap = False
        self.still_improving = False

    def lr(self, step: int) -> float:
        """The rate at global (0-based) ``step``."""
        if step < self.warmup_steps:
            return self.peak * (step + 1) / (self.warmup_steps + 1)
        if self.fixed:
            span = max(1, self.anneal_end - self.warmup_steps)
            return self.schedule(self.peak, (step - self.warmup_steps) / span)
        if self.anneal_start is None or step < self.anneal_start:
            return self.peak
        span = max(1, self.anneal_end - self.anneal_start)
        return self.schedule(self.peak, min(1.0, (step - self.anneal_start) / span))

    @property
    def annealing(self) -> bool:
        """Whether the rate is decaying towards the end of the run."""
        return self.anneal_start is not None and (
            self.epoch * self.steps_per_epoch >= self.anneal_start)

    def end_epoch(self, val_loss: float) -> bool:
        """Record one epoch's validation loss; True when the run should stop now."""
        self.epoch += 1
        self.recent = (self.recent + [val_loss])[-SMOOTHING_WINDOW:]
        smoothed = sum(self.recent) / len(self.recent)
        improved = smoothed < self.best_smoothed * (1 - MIN_IMPROVEMENT)
        if improved:
            self.best_smoothed, self.stale = smoothed, 0
        else:
            self.stale += 1
        self.still_improving = improved
        done_steps = self.epoch * self.steps_per_epoch
        if done_steps >= self.anneal_end:
            return True
        if self.fixed:
            return bool(self.patience) and self.stale >= self.patience
        if self.anneal_start is None:
            anneal = max(MIN_ANNEAL_EPOCHS, math.ceil(ANNEAL_FRACTION * self.epoch))
            plateau = self.patience and self.stale >= self.patience
            if plateau or self.epoch + anneal >= self.max_epochs:
                self.forced_by_cap = not plateau and (self.stale < self.patience or improved)
                anneal = min(anneal, self.max_epochs - self.epoch)
                self.anneal_start = done_steps
                self.anneal_end = done_steps + anneal * self.steps_per_epoch
        return False

    def warning(self) -> str | None:
        """Why the run may have ended too soon, or None."""
        if self.forced_by_cap:
            return (f"the validation loss was still improving when the {self.max_epochs}-epoch "
                    f"cap started the final annealing; more epochs (--max-epochs) may help")
        if self.fixed and self.still_improving and self.epoch >= self.max_epochs:
            return (f"the validation loss was still improving in the last of the "
                    f"{self.max_epochs} epochs; more epochs (--epochs) may help")
        return None
