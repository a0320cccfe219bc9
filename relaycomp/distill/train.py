"""The training program: student + KD loss + gradients + optimizer, compiled into one TVM VM.

Built with ``tvm.relax.training``'s pieces: BatchNorm is decomposed into its inference form
(``DecomposeOpsForInference``: the running statistics stay fixed, scale and bias train),
ops without a gradient are rewritten into ones with (:mod:`relaycomp.distill.grad`),
``AppendLoss`` attaches the KD loss of :mod:`relaycomp.distill.loss`, ``Gradient`` derives
``backbone_loss_adjoint``, and the optimizer of :mod:`relaycomp.distill.optim` is added as
``optimizer``. Everything runs in TVM; the host only feeds batches and the learning rate.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence

import numpy as np
import tvm
from tvm import relax
from tvm.relax.training.utils import AppendLoss

from relaycomp.distill.grad import make_differentiable
from relaycomp.distill.loss import kd_loss_function
from relaycomp.distill.student import DistillError, Student
from relaycomp.errors import last_line
from relaycomp.ir import structural_key

BACKBONE, LOSS, ADJOINT, OPTIMIZER = ("backbone", "backbone_loss", "backbone_loss_adjoint",
                                      "optimizer")


def _vars_in(expr) -> list[relax.Var]:
    found = []

    def visit(node):
        if isinstance(node, relax.Var):
            found.append(node)

    relax.analysis.post_order_visit(expr, visit)
    return found


def ops_without_gradient(func: relax.Function, trainable: Sequence[relax.Var]) -> Counter:
    """Relax ops on the path from a trainable parameter to the output that have no gradient."""
    live = {var.name for var in trainable}  # names are unique within one imported function
    missing: Counter = Counter()
    for block in func.body.blocks:
        for binding in block.bindings:
            if not any(v.name in live for v in _vars_in(binding.value)):
                continue
            live.add(binding.var.name)
            value = binding.value
            if (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
                    and value.op.get_attr("FPrimalGradient") is None):
                missing[value.op.name] += 1
    return missing


class TrainingProgram:
    """``backbone`` (predict), ``backbone_loss_adjoint`` (loss and gradients) and ``optimizer``,
    compiled for this CPU. Temperature and α are not part of it (runtime scalars)."""

    def __init__(self, student: Student, optimizer):
        self.student = student
        self.inputs = len(student.inputs)
        backbone = make_differentiable(student.backbone).with_attr("global_symbol", BACKBONE)
        mod = relax.transform.DecomposeOpsForInference(BACKBONE)(tvm.IRModule({BACKBONE:
                                                                              backbone}))
        params = list(mod[BACKBONE].params[self.inputs:])
        missing = ops_without_gradient(mod[BACKBONE], params)
        if missing:
            listed = ", ".join(f"{op.removeprefix('relax.')} (x{n})" for op, n in missing.items())
            raise DistillError(f"the student uses op(s) TVM cannot differentiate: {listed}",
                               hint="replace them in the student (e.g. Clip → Relu, Pad → "
                                    "Conv padding) or train it elsewhere")
        loss = kd_loss_function(student.batch, student.classes)
        try:
            mod = AppendLoss(BACKBONE, loss, 1, LOSS)(mod)
            params = list(mod[LOSS].params[self.inputs:self.inputs + len(params)])
            mod = relax.transform.Gradient(LOSS, require_grads=params, target_index=0)(mod)
        except Exception as err:  # TVM raises its own error types; the reason is the last line
            raise DistillError(f"TVM cannot differentiate the student: {last_line(err)}") from err
        mod[OPTIMIZER] = optimizer.function(params).with_attr("global_symbol", OPTIMIZER)
        self.mod = mod
        # LLVM at -O1: a third less compile time than -O3, the same step time on these kernels
        target = tvm.target.Target({"kind": "llvm", "opt-level": 1})
        self.vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())


_PROGRAMS: OrderedDict[tuple, TrainingProgram] = OrderedDict()
_CACHED_PROGRAMS = 4


def training_program(student: Student, optimizer) -> TrainingProgram:
    """The compiled program for this student structure and optimizer, reused within a process
    (seed sweeps and scratch baselines recompile nothing). :func:`clear_programs` empties it."""
    key = (structural_key(tvm.IRModule({"main": student.backbone})), type(optimizer).__name__,
           optimizer.weight_decay, optimizer.momentum)
    if key in _PROGRAMS:
        _PROGRAMS.move_to_end(key)
        return _PROGRAMS[key]
    program = TrainingProgram(student, optimizer)
    _PROGRAMS[key] = program
    while len(_PROGRAMS) > _CACHED_PROGRAMS:
        _PROGRAMS.popitem(last=False)
    return program


def clear_programs() -> None:
    """Forget every cached training program."""
    _PROGRAMS.clear()


class Trainer:
    """Holds parameters and optimizer state on the device; one :meth:`step` per batch.

    ``coefficients``: the loss's runtime scalars (:func:`~relaycomp.distill.loss.
    kd_loss_coefficients`)."""

    def __init__(self, program: TrainingProgram, values: Sequence[np.ndarray], optimizer,
                 coefficients: Sequence[np.ndarray]):
        self.program = program
        self.optimizer = optimizer
        self.coefficients = [tvm.runtime.tensor(c) for c in coefficients]
        self.steps = 0
        self.load(values)
        self.state = [tvm.runtime.tensor(s) for s in optimizer.initial_state(values)]

    def load(self, values: Sequence[np.ndarray]) -> None:
        """Set the parameters (numpy arrays, in the student's ``param_names`` order)."""
        self.params = [tvm.runtime.tensor(np.ascontiguousarray(v, np.float32)) for v in values]

    def values(self) -> list[np.ndarray]:
        """The current parameters as numpy arrays."""
        return [p.numpy() for p in self.params]

    def gradients(self, inputs: Sequence[np.ndarray], teacher: np.ndarray, onehot: np.ndarray,
                  weights: np.ndarray):
        """(loss, gradients as TVM tensors) of one batch at the current parameters."""
        feed = [tvm.runtime.tensor(a) for a in inputs]
        targets = [tvm.runtime.tensor(a) for a in (teacher, onehot, weights)]
        loss, grads = self.program.vm[ADJOINT](*feed, *self.params, *targets, *self.coefficients)
        return float(loss.numpy()), grads

    def step(self, inputs: Sequence[np.ndarray], teacher: np.ndarray, onehot: np.ndarray,
             weights: np.ndarray, lr: float) -> float:
        """One gradient step on one batch; returns the batch loss (before the update)."""
        loss, grads = self.gradients(inputs, teacher, onehot, weights)
        self.steps += 1
        rate = tvm.runtime.tensor(np.float32(self.optimizer.step_lr(lr, self.steps)))
        new_params, new_state = self.program.vm[OPTIMIZER](self.params, grads, self.state, rate)
        self.params, self.state = list(new_params), list(new_state)
        return loss

    def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Student logits for one batch."""
        feed = [tvm.runtime.tensor(a) for a in inputs]
        return self.program.vm[BACKBONE](*feed, *self.params).numpy()
