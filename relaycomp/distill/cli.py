"""``relaycomp distill``: the command-line side of distillation.

    relaycomp distill --teacher t.onnx --student s.onnx --data train.npz [--labels y.npy]
                      [--temperature 4 --alpha 0.7 --epochs 20 --lr 1e-3 --batch-size 32
                       --val-split 0.1 --seed 0 --optimizer adam --schedule cosine
                       --weight-decay 0 --patience 5] -o student.onnx [--json]

The distill feature's command-line part (see :mod:`relaycomp.cli.main` for the protocol);
imports nothing heavy at module level.
"""

from __future__ import annotations

import json
import sys
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
               ("--epochs", int, "passes over the training data"),
               ("--lr", float, "peak learning rate"),
               ("--batch-size", int, "samples per step (when the batch dim is symbolic)"),
               ("--val-split", float, "fraction held out for validation / early stopping"),
               ("--seed", int, "shuffling and split seed"),
               ("--optimizer", str, "adam or sgd (momentum 0.9)"),
               ("--schedule", str, "cosine, step or constant"),
               ("--weight-decay", float, "L2 weight decay"),
               ("--patience", int, "epochs without improvement before stopping (0: never)")]
    for flag, kind, text in options:
        default = getattr(defaults, flag[2:].replace("-", "_"))
        distill.add_argument(flag, type=kind, default=default, help=f"{text} (default {default})")
    distill.add_argument("--json", action="store_true", help="print the report as JSON")
    return {"distill": run_distill}


def run_distill(args) -> int:
    """``relaycomp distill``."""
    import onnx

    from relaycomp.compiler.manifest import write_atomically
    from relaycomp.distill.distiller import DistillConfig, DistillError, distill

    output = Path(args.output)
    if output.suffix != ".onnx":
        raise DistillError(f"-o {output}: the student is written as ONNX; use a .onnx name")
    if not output.parent.is_dir():
        raise DistillError(f"-o {output}: no such directory {output.parent}")
    config = DistillConfig(temperature=args.temperature, alpha=args.alpha, epochs=args.epochs,
                           lr=args.lr, batch_size=args.batch_size, val_split=args.val_split,
                           seed=args.seed, optimizer=args.optimizer, schedule=args.schedule,
                           weight_decay=args.weight_decay, patience=args.patience)
    progress = None if args.json else (lambda line: print(line, flush=True))
    student, report = distill(args.teacher, args.student, args.data, config,
                              labels=args.labels, progress=progress)
    onnx.checker.check_model(student)
    write_atomically(output, student.SerializeToString())
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        print()
    else:
        print(report.summary())
        print(f"wrote {output}")
    return 0
