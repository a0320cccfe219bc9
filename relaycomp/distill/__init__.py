"""Knowledge distillation: train a smaller or pruned student from a teacher."""

from relaycomp.distill.distiller import DistillConfig, DistillReport, distill

__all__ = ["DistillConfig", "DistillReport", "distill"]
