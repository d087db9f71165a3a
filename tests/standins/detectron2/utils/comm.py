"""Stand-in for tests, NOT detectron2: the part of ``detectron2/utils/comm.py`` (commit 02b5c4e)
that the trainer loop uses. ``gather`` pickles one object per rank to rank 0, as detectron2's does.
"""
import torch.distributed as dist


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    if get_world_size() > 1:
        dist.barrier()


def gather(data, dst=0):
    if get_world_size() == 1:
        return [data]
    if get_rank() == dst:
        output = [None] * get_world_size()
        dist.gather_object(data, output, dst=dst)
        return output
    dist.gather_object(data, None, dst=dst)
    return []
