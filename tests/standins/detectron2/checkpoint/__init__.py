"""Stand-in for tests, NOT detectron2: ``detectron2/checkpoint`` (commit 02b5c4e) is fvcore's
``Checkpointer`` (used here as is) with model-zoo and pickle loading that the tests do not need.
"""
from fvcore.common.checkpoint import Checkpointer, PeriodicCheckpointer  # noqa: F401

from detectron2.utils import comm


class DetectionCheckpointer(Checkpointer):
    def __init__(self, model, save_dir="", *, save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=comm.is_main_process() if save_to_disk is None else save_to_disk, **checkpointables)
