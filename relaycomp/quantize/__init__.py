"""Post-training quantization: int8 (calibrated QDQ, accuracy guard), int4 weights, fp16."""

from relaycomp.quantize.quantizer import QuantConfig, QuantReport, quantize

__all__ = ["QuantConfig", "QuantReport", "quantize"]
