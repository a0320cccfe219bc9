"""Optimizers (as Relax functions) and learning-rate schedules for distillation.

TVM's own ``relax.training.optimizer`` bakes the learning rate into the function as a constant
(no schedule possible without a rebuild) and its Adam fails under numpy 2. These optimizers
take the learning rate as a scalar tensor argument instead::

    optimizer(params: Tuple, grads: Tuple, state: Tuple, lr: Tensor[()]) -> (params', state')

An optimizer is a two-method object registered in :data:`OPTIMIZERS`: ``function(param_vars)``
builds that Relax function, ``initial_state(values)`` the numpy arrays of its state, and
``step_lr(lr, step)`` maps the scheduled rate to the one passed at step ``step`` (1-based; Adam
folds its bias correction in here). A schedule in :data:`SCHEDULES` maps
``(base_lr, progress in [0, 1))`` to a rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from tvm import relax
from tvm.relax import op as R

from relaycomp.registry import Registry

OPTIMIZERS: Registry[Callable[..., object]] = Registry("optimizer")
SCHEDULES: Registry[Callable[[float, float], float]] = Registry("learning-rate schedule")


def _const(value: float) -> relax.Constant:
    return relax.const(value, "float32")


def _tuple_var(name: str, types: Sequence[relax.TensorType]) -> relax.Var:
    return relax.Var(name, relax.TupleType(list(types)))


class _RelaxOptimizer:
    """Shared plumbing: builds ``optimizer(params, grads, state, lr)`` from :meth:`_update`."""

    state_per_param = 1

    def __init__(self, weight_decay: float = 0.0, momentum: float = 0.9):
        self.weight_decay = weight_decay
        self.momentum = momentum

    def initial_state(self, values: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Zeros for every state slot (``state_per_param`` slots per parameter)."""
        return [np.zeros_like(v) for _ in range(self.state_per_param) for v in values]

    def step_lr(self, lr: float, step: int) -> float:
        """The rate passed to the function at 1-based ``step``."""
        return lr

    def function(self, param_vars: Sequence[relax.Var]) -> relax.Function:
        """The Relax update function for parameters shaped like ``param_vars``."""
        types = [p.ty for p in param_vars]
        params, grads = _tuple_var("params", types), _tuple_var("grads", types)
        state = _tuple_var("state", types * self.state_per_param)
        lr = relax.Var("lr", relax.TensorType((), "float32"))
        bb = relax.BlockBuilder()
        with bb.function("optimizer", [params, grads, state, lr]):
            with bb.dataflow():
                count = len(types)
                new_params, new_state = [], [None] * (count * self.state_per_param)
                for i in range(count):
                    param = bb.emit(relax.TupleGetItem(params, i))
                    grad = bb.emit(relax.TupleGetItem(grads, i))
                    if self.weight_decay:
                        grad = bb.emit(R.add(grad, R.multiply(param, _const(self.weight_decay))))
                    slots = [bb.emit(relax.TupleGetItem(state, i + k * count))
                             for k in range(self.state_per_param)]
                    new_param, new_slots = self._update(bb, param, grad, slots, lr)
                    new_params.append(new_param)
                    for k, slot in enumerate(new_slots):
                        new_state[i + k * count] = slot
                result = bb.emit_output(relax.Tuple([relax.Tuple(new_params),
                                                     relax.Tuple(new_state)]))
            bb.emit_func_output(result)
        return bb.get()["optimizer"]

    def _update(self, bb, param, grad, slots, lr):
        raise NotImplementedError


@OPTIMIZERS.register("sgd")
class MomentumSGD(_RelaxOptimizer):
    """SGD with (heavy-ball) momentum: ``v = μ·v + g; p = p − lr·v``."""

    def _update(self, bb, param, grad, slots, lr):
        velocity = bb.emit(R.add(R.multiply(slots[0], _const(self.momentum)), grad))
        return bb.emit(R.subtract(param, R.multiply(velocity, lr))), [velocity]


@OPTIMIZERS.register("adam")
class Adam(_RelaxOptimizer):
    """Adam (β1 0.9, β2 0.999, ε 1e-8); weight decay as an L2 term on the gradient."""

    state_per_param = 2
    beta1, beta2, epsilon = 0.9, 0.999, 1e-8

    def step_lr(self, lr: float, step: int) -> float:
        """Bias correction folded into the rate: lr·√(1−β2ᵗ)/(1−β1ᵗ)."""
        return lr * math.sqrt(1.0 - self.beta2**step) / (1.0 - self.beta1**step)

    def _update(self, bb, param, grad, slots, lr):
        b1, b2 = self.beta1, self.beta2
        first = bb.emit(R.add(R.multiply(slots[0], _const(b1)), R.multiply(grad, _const(1 - b1))))
        second = bb.emit(R.add(R.multiply(slots[1], _const(b2)),
                               R.multiply(R.multiply(grad, grad), _const(1 - b2))))
        # ε is added after the bias correction in the textbook form; here the corrected rate
        # carries the correction, so ε sits on the raw √v — the difference is far below ε's role.
        denominator = bb.emit(R.add(R.sqrt(second), _const(self.epsilon)))
        step = bb.emit(R.multiply(R.divide(first, denominator), lr))
        return bb.emit(R.subtract(param, step)), [first, second]


@SCHEDULES.register("cosine")
def cosine(base_lr: float, progress: float) -> float:
    """Cosine decay from ``base_lr`` to 0 over the run."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@SCHEDULES.register("step")
def step(base_lr: float, progress: float) -> float:
    """×0.1 at half and again at three quarters of the run."""
    return base_lr * (0.1 ** ((progress >= 0.5) + (progress >= 0.75)))


@SCHEDULES.register("constant")
def constant(base_lr: float, progress: float) -> float:
    """The same rate throughout."""
    return base_lr
