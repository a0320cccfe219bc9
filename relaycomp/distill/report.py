"""What a distillation run reports: :class:`DistillReport` (JSON form and the CLI's summary)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class DistillReport:
    """What distillation did: data, parameters trained, per-epoch history, before/after metrics.

    ``metric`` is ``accuracy`` (against labels) or ``teacher_agreement`` (argmax equal to the
    teacher's) without labels, on the class-score output; ``before``/``after``/``teacher``
    are measured on the validation split (on the training data when there is none). With
    several outputs, ``before``/``after`` also hold ``outputs``: per output the teacher
    agreement (``kd``) or the mean weighted, scaled distance to the teacher (``mse``/``l1``),
    and ``outputs`` lists each output's loss, weight and scale. ``lr``: the peak rate, whether the range
    test found it, and why that value (with the sweep). ``warnings``: e.g. that the run ended
    while the validation loss was still improving.
    """

    config: dict
    metric: str
    samples: dict
    batch: int
    trained: dict
    teacher: float
    before: dict
    after: dict
    best_epoch: int
    stopped_early: bool
    lr: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    samples_per_second: float = 0.0
    seconds: float = 0.0

    def to_json(self) -> dict:
        """JSON form."""
        return asdict(self)

    def summary(self) -> str:
        """Human-readable lines for the CLI (``warnings`` not included: the CLI prints them as
        ``relaycomp: warning:`` lines on stderr)."""
        where = "validation" if self.samples["val"] else "training data"
        lines = [
            f"learning rate {self.lr['value']:.2e}: {self.lr['reason']}",
            f"trained {self.trained['tensors']} tensors ({self.trained['params']:,} params) on "
            f"{self.samples['train']} samples, batch {self.batch}; "
            f"{len(self.history)} epoch(s), best {self.best_epoch}"
            + (" (stopped early)" if self.stopped_early else ""),
            (f"{self.metric} on {where}: teacher {self.teacher:.2%}, student "
             f"{self.before['metric']:.2%} -> {self.after['metric']:.2%}"),
            (f"loss {self.before['loss']:.4f} -> {self.after['loss']:.4f}; "
             f"{self.samples_per_second:,.0f} training samples/s, {self.seconds:.1f} s")]
        if len(self.outputs) > 1:
            lines.append("outputs: " + ", ".join(
                f"{o['name']} {o['loss']}" + (f" x{o['weight']:g}" if o["weight"] != 1 else "")
                for o in self.outputs))
            lines += [f"  {name}: {_output_measure(self.before, name)} -> "
                      f"{_output_measure(self.after, name)}"
                      for name in self.after.get("outputs", {})]
        return "\n".join(lines)


def _output_measure(result: dict, name: str) -> str:
    value = result.get("outputs", {}).get(name, float("nan"))
    return f"{value:.4g}"
