"""The entry point of ``python -m scoresde.training`` (also under ``torchrun``): device and process group.

``python -m scoresde.training ARGS`` is ``scoresde train ARGS``: the same options, defaults
(:data:`~scoresde.training.TRAIN_DEFAULTS`) and recipe (:func:`~scoresde.training.train_model`).
Launched by ``torchrun`` (which sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``, see
https://pytorch.org/docs/stable/elastic/run.html), the command creates the process group
(:func:`process_group`: gloo on CPU, NCCL on CUDA) before training and destroys it at the end;
the :class:`~scoresde.training.Trainer` only reads it.

.. code-block:: bash

    python -m scoresde.training --data 8gaussians --steps 2000 --out runs/8g
    torchrun --nproc_per_node=2 -m scoresde.training --data moons --steps 2000 --out runs/m
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import torch

__all__ = ["main", "process_group", "resolve_device"]


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """The training device named by ``device``, checked to exist in this torch build.

    ``"auto"`` is CUDA when available, else the CPU; ``"cuda"`` without an index is the GPU of
    this process's ``LOCAL_RANK`` (0 outside ``torchrun``).

    Raises
    ------
    ValueError
        For a name torch does not know, or a device this machine or torch build lacks.

    Examples
    --------
    >>> from scoresde.training.launch import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device == "auto":
        return torch.device(f"cuda:{_local_rank()}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto', got {device!r}"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} is not available: this torch build has no CUDA support or "
                "no GPU is visible (torch.cuda.is_available() is False); use device 'cpu'"
            )
        if dev.index is None:
            dev = torch.device("cuda", _local_rank())
        if dev.index >= torch.cuda.device_count():  # pragma: no cover - needs a GPU
            raise ValueError(f"device {device!r} is not available: {torch.cuda.device_count()} GPU(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} is not available on this machine; use device 'cpu'")
    elif dev.type not in ("cpu", "mps"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto', got {device!r}")
    return dev


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Create the ``torch.distributed`` process group when launched by ``torchrun``; destroy it after.

    Does nothing in a single process (``WORLD_SIZE`` unset or 1) or when a group already exists
    (its creator destroys it). The backend is NCCL for a CUDA ``device``, else gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield
        return
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    if device.type == "cuda":  # pragma: no cover - no GPU in the test suite
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m scoresde.training``: ``scoresde train`` with the same arguments.

    Parameters
    ----------
    argv : list of str, optional
        The arguments of ``scoresde train`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status (0 on success, 2 on bad input, 1 on a failure while running).
    """
    from ..cli import run_train

    return run_train(argv, prog="python -m scoresde.training")
