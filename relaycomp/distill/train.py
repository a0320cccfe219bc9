"""The training program: student + KD loss + gradients + optimizer, compiled into one TVM VM.

Built with ``tvm.relax.training``'s pieces: BatchNorm is decomposed into its inference form
(``DecomposeOpsForInference``: the running statistics stay fixed, scale and bias train),
ops without a gradient are rewritten into ones with (:mod:`relaycomp.distill.grad`),
``AppendLoss`` attaches the KD loss of :mod:`relaycomp.distill.loss`, ``Gradient`` derives
``backbone_loss_adjoint``, and the optimizer of :mod:`relaycomp.distill.optim` is added as
``optimizer``. Everything runs in TVM; the host only feeds batches and the learning rate.
The kernels of all three go through relaycomp's CPU schedules (``schedule_cpu_loops``), like
an inference build's.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence

import numpy as np
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu
from tvm.relax.training.utils import AppendLoss

from relaycomp import ir
from relaycomp.distill.grad import make_differentiable
from relaycomp.distill.hints import HintShape
from relaycomp.distill.loss import distill_loss_function
from relaycomp.distill.outputs import OutputLoss, label_output
from relaycomp.distill.student import DistillError, Student
from relaycomp.errors import last_line
from relaycomp.ir import structural_key
from relaycomp.passes.schedule_cpu_loops import schedule_cpu_loops, schedule_report
from relaycomp.targets import resolve

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


def _return_tuple_literally(func: relax.Function) -> relax.Function:
    """``func`` returning ``(a, b, ...)`` as a literal tuple of non-dataflow variables (what
    ``AppendLoss`` counts as several backbone outputs) instead of one tuple-valued variable."""
    body = func.body
    block = body.blocks[-1]
    bindings = list(block.bindings)
    found = [i for i, b in enumerate(bindings) if b.var.same_as(body.body)]
    if not found or not isinstance(bindings[found[0]].value, relax.Tuple):
        return func
    index = found[0]
    outputs, fields = [], []
    for k, field in enumerate(bindings[index].value.fields):
        out = relax.Var(f"output_{k}", field.ty)
        outputs.append(relax.VarBinding(out, field))
        fields.append(out)
    bindings[index:index + 1] = outputs
    kind = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
    blocks = list(body.blocks[:-1]) + [kind(bindings)]
    return relax.Function(func.params, relax.SeqExpr(blocks, relax.Tuple(fields)), func.ret_ty,
                          func.is_pure, func.attrs)


def default_outputs(student: Student) -> list[OutputLoss]:
    """``kd`` on every output (the single-output classifier case)."""
    return [OutputLoss(name, shape, "kd")
            for name, shape in zip(student.output_names, student.output_shapes)]


class TrainingProgram:
    """``backbone`` (predict), ``backbone_loss_adjoint`` (loss and gradients) and ``optimizer``,
    compiled for this CPU. Temperature and α are not part of it (runtime scalars).
    ``outputs``: the loss of each student output (default: ``kd`` on each). With ``hints``
    the backbone also returns the hinted tensors and the trainable parameters end with the
    hints' adapters (``adapters`` of them)."""

    def __init__(self, student: Student, optimizer, hints: Sequence[HintShape] = (),
                 outputs: Sequence[OutputLoss] | None = None):
        self.student = student
        self.inputs = len(student.inputs)
        self.hints = len(hints)
        self.adapters = sum(h.adapter is not None for h in hints)
        self.outputs = list(outputs) if outputs is not None else default_outputs(student)
        self.label = label_output(self.outputs)
        backbone = make_differentiable(student.backbone).with_attr("global_symbol", BACKBONE)
        if hints or len(self.outputs) > 1:
            backbone = _return_tuple_literally(backbone)
        mod = relax.transform.DecomposeOpsForInference(BACKBONE)(tvm.IRModule({BACKBONE:
                                                                              backbone}))
        params = list(mod[BACKBONE].params[self.inputs:])
        missing = ops_without_gradient(mod[BACKBONE], params)
        if missing:
            listed = ", ".join(f"{op.removeprefix('relax.')} (x{n})" for op, n in missing.items())
            raise DistillError(f"the student uses op(s) TVM cannot differentiate: {listed}",
                               hint="replace them in the student (e.g. Clip → Relu, Pad → "
                                    "Conv padding) or train it elsewhere")
        loss = distill_loss_function(student.batch, self.outputs, hints)
        try:
            mod = AppendLoss(BACKBONE, loss, len(self.outputs) + len(hints), LOSS)(mod)
            loss_params = list(mod[LOSS].params)
            params = loss_params[self.inputs:self.inputs + len(params)]
            params += loss_params[len(loss_params) - self.adapters:] if self.adapters else []
            mod = relax.transform.Gradient(LOSS, require_grads=params, target_index=0)(mod)
        except Exception as err:  # TVM raises its own error types; the reason is the last line
            raise DistillError(f"TVM cannot differentiate the student: {last_line(err)}") from err
        mod[OPTIMIZER] = optimizer.function(params).with_attr("global_symbol", OPTIMIZER)
        self.mod = mod
        self.vm, self.schedule = _compile(mod)


def _compile(mod: tvm.IRModule) -> tuple[relax.VirtualMachine, dict]:
    """Build every function of ``mod`` the way relaycomp builds inference kernels for this CPU:
    TVM's CPU legalization and fusion, then ``schedule_cpu_loops`` (parallel, vectorized,
    register-tiled kernels), then the VM lowering, whose ``StaticPlanBlockMemory`` plans each
    function's activations once at compile time (the VM's pooled allocator reuses the blocks
    from step to step). Returns the VM and the schedule report (kernels per rule)."""
    spec = resolve("host")
    target = spec.tvm_target()
    ir.request_threads(int(target.attrs.get("num-cores") or ir.usable_cpus()))
    with target:
        mod = tvm.transform.Sequential(cpu.library_dispatch_passes(target)
                                       + cpu.legalize_passes(target)
                                       + [schedule_cpu_loops(target)])(mod)
        report = schedule_report(mod)
        mod = tvm.transform.Sequential(cpu.dataflow_lower_passes(target)
                                       + cpu.finalize_passes(target))(mod)
    return relax.VirtualMachine(ir.build_executable(mod, target), tvm.cpu()), report


_PROGRAMS: OrderedDict[tuple, TrainingProgram] = OrderedDict()
_CACHED_PROGRAMS = 4


def training_program(student: Student, optimizer, hints: Sequence[HintShape] = (),
                     outputs: Sequence[OutputLoss] | None = None) -> TrainingProgram:
    """The compiled program for this student structure, optimizer, hints and output losses,
    reused within a process (seed sweeps and scratch baselines recompile nothing).
    :func:`clear_programs` empties it."""
    outputs = list(outputs) if outputs is not None else default_outputs(student)
    key = (structural_key(tvm.IRModule({"main": student.backbone})), type(optimizer).__name__,
           optimizer.weight_decay, optimizer.momentum, tuple(hints), tuple(outputs))
    if key in _PROGRAMS:
        _PROGRAMS.move_to_end(key)
        return _PROGRAMS[key]
    program = TrainingProgram(student, optimizer, hints, outputs)
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
    kd_loss_coefficients`, then the hint weight when the program has hints). ``values``: the
    student's parameters, then the hints' adapters."""

    def __init__(self, program: TrainingProgram, values: Sequence[np.ndarray], optimizer,
                 coefficients: Sequence[np.ndarray]):
        self.program = program
        self.optimizer = optimizer
        self.coefficients = [tvm.runtime.tensor(c) for c in coefficients]
        self.steps = 0
        self.load(values)
        self.state = [tvm.runtime.tensor(s) for s in optimizer.initial_state(values)]

    def reset(self, values: Sequence[np.ndarray]) -> None:
        """Set the parameters and start the optimizer afresh (zero state, step 0)."""
        self.load(values)
        self.state = [tvm.runtime.tensor(s) for s in self.optimizer.initial_state(values)]
        self.steps = 0

    def load(self, values: Sequence[np.ndarray]) -> None:
        """Set the parameters (numpy arrays, in the student's ``param_names`` order)."""
        self.params = [tvm.runtime.tensor(np.ascontiguousarray(v, np.float32)) for v in values]

    def values(self) -> list[np.ndarray]:
        """The current parameters as numpy arrays."""
        return [p.numpy() for p in self.params]

    def gradients(self, inputs: Sequence[np.ndarray], teacher, onehot: np.ndarray,
                  weights: np.ndarray, features: Sequence[np.ndarray] = ()):
        """(loss, gradients as TVM tensors) of one batch at the current parameters.
        ``teacher``: the teacher's outputs for the batch (an array, or one per output);
        ``features``: the teacher's hinted tensors for the batch."""
        teachers = [teacher] if isinstance(teacher, np.ndarray) else list(teacher)
        feed = [tvm.runtime.tensor(a) for a in inputs]
        targets = [tvm.runtime.tensor(np.ascontiguousarray(a))
                   for a in (*teachers, onehot, weights)]
        hinted = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in features]
        split = len(self.params) - self.program.adapters
        loss, grads = self.program.vm[ADJOINT](*feed, *self.params[:split], *targets,
                                               *self.coefficients, *hinted,
                                               *self.params[split:])
        return float(loss.numpy()), grads

    def step(self, inputs: Sequence[np.ndarray], teacher, onehot: np.ndarray,
             weights: np.ndarray, lr: float, features: Sequence[np.ndarray] = ()) -> float:
        """One gradient step on one batch; returns the batch loss (before the update)."""
        loss, grads = self.gradients(inputs, teacher, onehot, weights, features)
        self.steps += 1
        rate = tvm.runtime.tensor(np.float32(self.optimizer.step_lr(lr, self.steps)))
        new_params, new_state = self.program.vm[OPTIMIZER](self.params, grads, self.state, rate)
        self.params, self.state = list(new_params), list(new_state)
        return loss

    def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Student logits (its class-score output) for one batch."""
        return self.predict_outputs(inputs)[self.program.label]

    def predict_outputs(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Every student output for one batch."""
        feed = [tvm.runtime.tensor(a) for a in inputs]
        split = len(self.params) - self.program.adapters
        out = self.program.vm[BACKBONE](*feed, *self.params[:split])
        if not (self.program.hints or len(self.program.outputs) > 1):
            return [out.numpy()]
        return [out[i].numpy() for i in range(len(self.program.outputs))]
