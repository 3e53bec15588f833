"""Streaming per-layer activation statistics (the engine behind AVSS and EAVSS)."""

from eavss.stats.accumulators import FIELDS, VARIANCE_DEFINITIONS, LayerStatistics
from eavss.stats.collector import ActivationStatsCollector, collect_statistics
from eavss.stats.reduce import SparsityRule, reduce_activations
from eavss.stats.sites import SITES, register_site

__all__ = [
    "FIELDS", "VARIANCE_DEFINITIONS", "LayerStatistics", "ActivationStatsCollector", "collect_statistics",
    "SparsityRule", "reduce_activations", "SITES", "register_site",
]
