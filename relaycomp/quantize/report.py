"""The quantization report: per-layer scheme and scales, sizes, accuracy, layers kept float."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np


@dataclass
class QuantReport:
    """What quantization did: per-layer schemes, sizes before/after, accuracy, fallbacks."""

    config: dict = field(default_factory=dict)
    layers: list[dict] = field(default_factory=list)
    weight_bytes_float: int = 0
    weight_bytes_quantized: int = 0
    model_bytes_float: int = 0  # every tensor constant of the module (weights, biases, ...)
    model_bytes_quantized: int = 0
    accuracy: dict | None = None
    evaluated_on: str = ""
    samples: dict = field(default_factory=dict)

    def update(self, other: QuantReport) -> None:
        """Take every field of ``other`` (how a pass hands its report back)."""
        self.__dict__.update(other.__dict__)

    @classmethod
    def from_json(cls, data: dict) -> QuantReport:
        """Inverse of :meth:`to_json` (other keys, such as the pass's counts, are ignored)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def to_json(self) -> dict:
        """JSON form (stored in the compile manifest under ``report.quantize``)."""
        return {"config": self.config, "layers": self.layers,
                "weight_bytes_float": self.weight_bytes_float,
                "weight_bytes_quantized": self.weight_bytes_quantized,
                "model_bytes_float": self.model_bytes_float,
                "model_bytes_quantized": self.model_bytes_quantized,
                "accuracy": self.accuracy, "evaluated_on": self.evaluated_on,
                "samples": self.samples}

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        ratio = self.weight_bytes_quantized / max(self.weight_bytes_float, 1)
        quantized = [la for la in self.layers if la["mode"] != "float"]
        head = (f"quantized {len(quantized)}/{len(self.layers)} layers; layer weights "
                f"{self.weight_bytes_float / 1024:.1f} -> "
                f"{self.weight_bytes_quantized / 1024:.1f} KiB ({ratio:.1%})")
        lines = [head]
        if self.model_bytes_float:
            lines.append(f"model constants {self.model_bytes_float / 1024:.1f} -> "
                         f"{self.model_bytes_quantized / 1024:.1f} KiB "
                         f"({self.model_bytes_quantized / self.model_bytes_float:.1%})")
        if self.accuracy:
            a = self.accuracy
            text = [f"cosine {a['cosine']:.4f}", f"max error {a['max_abs_error']:.3g}"]
            if a["top1_agreement"] is not None:
                text.insert(0, f"top-1 agreement {a['top1_agreement']:.1%}")
            if a["float_accuracy"] is not None:
                text.insert(0, f"accuracy {a['float_accuracy']:.1%} float -> "
                               f"{a['quant_accuracy']:.1%} int8")
            lines.append(f"vs float on {self.evaluated_on}: " + ", ".join(text))
        for la in self.layers:
            name = la["name"]
            if la["mode"] == "float":
                lines.append(f"  {name}: float ({la['reason']})")
                continue
            if la["mode"] == "float16":
                lines.append(f"  {name}: float16 (fp32 accumulation)")
                continue
            scale = la["weight_scale"]
            bits = la.get("weight_bits", 8)
            detail = (f"int{bits} weights {la['weight_scheme']} scale "
                      f"{scale[0]:.3g}..{scale[1]:.3g}")
            if la["mode"] == "int8":
                detail += (f", input scale {la['input_scale']:.3g} zero point "
                           f"{la['input_zero_point']}")
            lines.append(f"  {name}: {la['mode']}, {detail}")
        return "\n".join(lines)


def stored_bytes(layer, plan) -> int:
    """Bytes of a layer's weight as stored: int8 (or packed int4) plus scales, or the float
    original."""
    if plan is None:
        return layer.weight.nbytes
    return plan.weight_q.nbytes * plan.weight_bits // 8 + plan.weight_scale.nbytes


def layer_entry(layer, onnx_name, plan, kept, fallback, sensitivity) -> dict:
    """One layer's line of the report: its names, kind, mode and scales, or why it is float."""
    entry = {"name": onnx_name or layer.name, "layer": layer.name, "onnx_name": onnx_name,
             "kind": layer.kind,
             "weight_shape": list(layer.weight.shape)}
    if layer.index in sensitivity:
        entry["sensitivity"] = sensitivity[layer.index]
    if plan is None:
        reason = kept.get(layer.index) or (
            "returned to float by the accuracy guard (most sensitive)"
            if layer.index in fallback else "not quantized")
        return {**entry, "mode": "float", "reason": reason}
    scale = np.atleast_1d(plan.weight_scale)
    entry.update(mode=plan.mode, weight_scheme="per-channel" if scale.size > 1 else "per-tensor",
                 weight_scale=[float(scale.min()), float(scale.max())],
                 weight_bits=plan.weight_bits)
    if plan.mode == "int8":
        entry.update(input_scale=plan.input_scale, input_zero_point=plan.input_zero_point,
                     input_dtype=plan.input_dtype)
    return entry


def constant_bytes(mod) -> int:
    """Bytes of the tensor constants in ``main``."""
    import tvm
    from tvm import relax

    sizes: list[int] = []

    def visit(expr):
        if isinstance(expr, tvm.ir.expr.Constant) and hasattr(expr.value, "numpy"):
            sizes.append(expr.value.numpy().nbytes)

    relax.analysis.post_order_visit(mod["main"], visit)
    return sum(sizes)
