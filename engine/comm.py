"""Helpers around ``torch.distributed`` that also work without a process group.

Every function answers for the default process group (or ``group`` where it takes one). When
``torch.distributed`` is unavailable or not initialized, the process is treated as the only rank
of a world of size 1: the helpers return at once, with no communication and no allocation.

Names and behaviour follow detectron2's ``detectron2/utils/comm.py`` so trainer code written for
it runs unchanged.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch
import torch.distributed as dist

__all__ = [
    "is_distributed",
    "get_world_size",
    "get_rank",
    "get_local_rank",
    "is_main_process",
    "synchronize",
    "all_gather",
    "gather",
    "collective_device",
]


# Fixed by the torch build; asked once (the metrics writer asks is_distributed() every step).
_DISTRIBUTED_BUILD = dist.is_available()


def is_distributed() -> bool:
    """True when a default process group exists (``torch.distributed`` is initialized)."""
    return _DISTRIBUTED_BUILD and dist.is_initialized()


def get_world_size() -> int:
    """Number of ranks in the default process group; 1 without one."""
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    """This process's rank in the default process group; 0 without one."""
    return dist.get_rank() if is_distributed() else 0


def get_local_rank() -> int:
    """This process's rank among the processes of its machine.

    Read from ``LOCAL_RANK`` (set by ``torchrun`` and ``torch.distributed.launch``). Without that
    variable the job is taken to run on a single machine, so the local rank is the global rank.
    """
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None:
        return int(local_rank)
    return get_rank()


def is_main_process() -> bool:
    """True on rank 0 (and in a non-distributed run)."""
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all ranks; a no-op without a process group or with a single rank."""
    if get_world_size() == 1:
        return
    if dist.get_backend() == dist.Backend.NCCL:
        # Without device_ids NCCL guesses a device from the rank, which is wrong when ranks
        # do not map 1:1 onto devices; name the current one explicitly.
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_gather(data: Any, group: Optional[dist.ProcessGroup] = None) -> list[Any]:
    """Gather one picklable object from every rank onto every rank.

    Returns:
        ``[data_from_rank_0, data_from_rank_1, ...]`` (``[data]`` without a process group).
    """
    world_size = get_world_size() if group is None else dist.get_world_size(group)
    if world_size == 1:
        return [data]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, data, group=group)
    return gathered


def gather(data: Any, dst: int = 0, group: Optional[dist.ProcessGroup] = None) -> list[Any]:
    """Gather one picklable object from every rank onto rank ``dst`` (a global rank).

    Returns:
        On ``dst``: ``[data_from_rank_0, ...]``; on every other rank: ``[]``.
        Without a process group: ``[data]``.
    """
    world_size = get_world_size() if group is None else dist.get_world_size(group)
    if world_size == 1:
        return [data]
    if dist.get_rank() == dst:
        gathered: list[Any] = [None] * world_size
        dist.gather_object(data, gathered, dst=dst, group=group)
        return gathered
    dist.gather_object(data, None, dst=dst, group=group)
    return []


def collective_device(group: Optional[dist.ProcessGroup] = None) -> torch.device:
    """The device that tensors must live on for collectives of ``group``'s backend.

    NCCL communicates CUDA tensors (the current CUDA device); gloo, and a run without a process
    group, use host memory.
    """
    if is_distributed() and dist.get_backend(group) == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
