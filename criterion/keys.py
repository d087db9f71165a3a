"""How loss-dict keys are named: aux-layer suffixes, split groups, sample counts, k_log."""
from __future__ import annotations

__all__ = ["NUM_SAMPLES_SUFFIX", "aux_key", "split_key", "count_key", "k_log_key"]

# A key K accompanied by K + NUM_SAMPLES_SUFFIX is a group statistic: engine.metrics averages it
# across ranks weighted by that count and never adds it to total_loss. engine.metrics defines the
# same string (engine.metrics.NUM_SAMPLES_SUFFIX); criterion does not import engine to keep the
# data flow one-directional.
NUM_SAMPLES_SUFFIX = "__num_samples"


def aux_key(name: str, aux_index: int) -> str:
    """Key of ``name`` for auxiliary decoder layer ``aux_index`` (0 = first decoder layer)."""
    return f"{name}_{aux_index}"


def split_key(name: str, group: str) -> str:
    """Key of the per-group statistic of loss ``name``, e.g. ``loss_relation_real``."""
    return f"{name}_{group}"


def count_key(key: str) -> str:
    """Key holding the number of samples behind ``key``."""
    return key + NUM_SAMPLES_SUFFIX


def k_log_key(layer_number: int) -> str:
    """Key of the mean matches per target of decoder layer ``layer_number`` (1 = first)."""
    return f"k_log_layer{layer_number}"
