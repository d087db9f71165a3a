"""Where metrics live: storage, history buffers, writers, log readers and plotting.

The TensorBoard and W&B writers are resolved lazily so that ``import events`` never pays for
tensorboardX (which imports torch) or wandb.
"""
from events.history_buffer import HistoryBuffer
from events.storage import EventStorage, get_event_storage, has_event_storage
from events.writers import CommonMetricPrinter, EventWriter, JSONWriter

_LAZY = {
    "TensorboardXWriter": "events.tensorboard_writer",
    "WandbWriter": "events.wandb_writer",
}

__all__ = [
    "HistoryBuffer",
    "EventStorage",
    "get_event_storage",
    "has_event_storage",
    "EventWriter",
    "JSONWriter",
    "CommonMetricPrinter",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'events' has no attribute {name!r}")
