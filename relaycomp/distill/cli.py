"""``relaycomp distill``: the command-line side of distillation.

    relaycomp distill --teacher t.onnx --student s.onnx --data train.npz [--labels y.npy]
                      [--temperature 4 --alpha 0.7 --epochs N --max-epochs 60 --lr LR
                       --batch-size 32 --val-split 0.1 --seed 0 --optimizer adam
                       --schedule cosine --warmup 1 --weight-decay 0 --patience 5
                       --hint TEACHER_TENSOR:STUDENT_TENSOR ... --hint-loss mse
                       --hint-weight 1 --augment crop,flip
                       --output-loss NAME:kd|mse|l1[:WEIGHT] ...] -o student.onnx
                      [--json] [--quiet]

Without ``--lr`` a learning-rate range test picks the rate; without ``--epochs`` training runs
until the smoothed validation loss stops improving (at most ``--max-epochs``). Each epoch is a
tqdm bar on stderr when it is a terminal (``--quiet`` hides them); the summary goes to stdout
(or the report as JSON with ``--json``) and the report's warnings are ``relaycomp: warning:``
lines on stderr.

The distill feature's command-line part (see :mod:`relaycomp.cli.main` for the protocol);
imports nothing heavy at module level.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path


def add_commands(sub) -> dict:
    """Add the ``distill`` sub-command to the CLI's sub-parsers; its handler by name."""
    from relaycomp.distill.distiller import DistillConfig

    defaults = DistillConfig()
    distill = sub.add_parser("distill", help="retrain a student ONNX model from a teacher's "
                                             "outputs (on TVM); write the new student")
    distill.add_argument("--teacher", required=True, help="teacher ONNX file or example:NAME")
    distill.add_argument("--student", required=True, help="student ONNX file or example:NAME")
    distill.add_argument("--data", required=True,
                         help=".npz keyed by the student's input names, first axis = samples")
    distill.add_argument("--labels", help=".npy of integer classes, one per sample (-1: none)")
    distill.add_argument("-o", "--output", required=True, help="the trained student (.onnx)")
    options = [("--temperature", float, "softmax temperature T"),
               ("--alpha", float, "weight of the soft-target term (1-alpha: labels)"),
               ("--epochs", int, ("a fixed number of passes over the training data "
                                  "(default: until the validation loss stops improving)")),
               ("--max-epochs", int, "the cap when training until done"),
               ("--lr", float, "peak learning rate (default: found by a range test)"),
               ("--batch-size", int, "samples per step (when the batch dim is symbolic)"),
               ("--val-split", float, "fraction held out for validation / early stopping"),
               ("--seed", int, "shuffling and split seed"),
               ("--optimizer", str, "adam or sgd (momentum 0.9)"),
               ("--schedule", str, "the decay: cosine, step or constant"),
               ("--warmup", float, "epochs of linear warm-up"),
               ("--weight-decay", float, "L2 weight decay"),
               ("--patience", int, "epochs without improvement before stopping (0: never)"),
               ("--hint-loss", str, ("distance of hinted tensors: mse, standardized, "
                                     "cosine or attention")),
               ("--hint-weight", float, "weight of the hint terms")]
    for flag, kind, text in options:
        default = getattr(defaults, flag[2:].replace("-", "_"))
        shown = "" if default is None or "default:" in text else f" (default {default})"
        distill.add_argument(flag, type=kind, default=default, help=text + shown)
    distill.add_argument("--hint", action="append", default=[],
                         metavar="TEACHER_TENSOR:STUDENT_TENSOR",
                         help="match an intermediate tensor of the teacher (FitNets hint; "
                              "repeatable; a 1x1 adapter bridges differing channel counts)")
    distill.add_argument("--output-loss", action="append", default=[],
                         metavar="NAME:LOSS[:WEIGHT]",
                         help="the loss of a student output: kd (class scores), mse or l1 "
                              "(regression, e.g. boxes); repeatable (default: kd for outputs "
                              "that look like class scores, mse otherwise)")
    distill.add_argument("--augment", default="",
                         help="image augmentations, comma-separated: crop[:PIXELS], flip")
    distill.add_argument("--json", action="store_true", help="print the report as JSON")
    distill.add_argument("--quiet", action="store_true", help="no epoch progress bars")
    return {"distill": run_distill}


def run_distill(args) -> int:
    """``relaycomp distill``."""
    import onnx

    from relaycomp.compiler.manifest import write_atomically
    from relaycomp.distill.distiller import DistillConfig, DistillError, distill
    from relaycomp.distill.hints import parse_hint
    from relaycomp.distill.outputs import parse_output_loss
    from relaycomp.distill.session import EpochBars

    output = Path(args.output)
    if output.suffix != ".onnx":
        raise DistillError(f"-o {output}: the student is written as ONNX; use a .onnx name")
    if not output.parent.is_dir():
        raise DistillError(f"-o {output}: no such directory {output.parent}")
    config = DistillConfig(temperature=args.temperature, alpha=args.alpha, epochs=args.epochs,
                           max_epochs=args.max_epochs, lr=args.lr, batch_size=args.batch_size,
                           val_split=args.val_split, seed=args.seed, optimizer=args.optimizer,
                           schedule=args.schedule, warmup=args.warmup,
                           weight_decay=args.weight_decay, patience=args.patience,
                           hints=tuple(parse_hint(text) for text in args.hint),
                           hint_loss=args.hint_loss, hint_weight=args.hint_weight,
                           augment=tuple(name for name in args.augment.split(",") if name),
                           output_losses=tuple(parse_output_loss(text)
                                               for text in args.output_loss))
    student, report = distill(args.teacher, args.student, args.data, config,
                              labels=args.labels, progress=EpochBars(enabled=not args.quiet))
    onnx.checker.check_model(student)
    write_atomically(output, student.SerializeToString())
    for text in report.warnings:  # the CLI shows a Python warning as `relaycomp: warning:`
        warnings.warn(text, UserWarning, stacklevel=1)
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        print()
    else:
        print(report.summary())
        print(f"wrote {output}")
    return 0
