"""What the trainer needs of a process group: rank, world size and three collectives.

The trainer only *reads* the process group; creating it (and destroying it at the end) is the
job of the entry point that ``torchrun`` launches (:func:`scoresde.training.launch.process_group`).
Multi-process training follows PyTorch's DistributedDataParallel
(https://pytorch.org/docs/stable/notes/ddp.html): every rank draws its own batches, gradients
are averaged across ranks, and only rank 0 writes files. ``torch.distributed`` is imported
inside the functions that use it.
"""

from __future__ import annotations

import os

import torch
from torch import nn

__all__: list[str] = []


def _group():
    """``torch.distributed`` when a process group is initialised, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, or ``(0, 1)`` without one.

    Raises
    ------
    RuntimeError
        If the environment says several processes were launched (``WORLD_SIZE > 1``, as under
        ``torchrun``) but no process group has been initialised: the processes would train
        separate models into the same folder.
    """
    dist = _group()
    if dist is not None:
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        raise RuntimeError(
            f"WORLD_SIZE is {world} but no torch.distributed process group is initialised; call "
            "torch.distributed.init_process_group() before creating the Trainer (python -m "
            "scoresde.training and scoresde train do this under torchrun)"
        )
    return 0, 1


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (broadcasts rank 0's weights)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def mean_over_ranks(value: torch.Tensor, world_size: int) -> torch.Tensor:
    """The average of ``value`` over all ranks (``value`` itself in a single process)."""
    if world_size == 1:
        return value
    import torch.distributed as dist

    value = value.clone()
    dist.all_reduce(value)
    return value / world_size


def gather(obj, world_size: int) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    if world_size == 1:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(world_size: int) -> None:
    """Wait until every rank gets here (nothing in a single process)."""
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
