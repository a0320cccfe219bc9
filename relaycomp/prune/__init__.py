"""Structured pruning: a channel dependency graph underneath, a Pruner on top."""

from relaycomp.prune.pruner import PruneConfig, PruneReport, prune

__all__ = ["PruneConfig", "PruneReport", "prune"]
