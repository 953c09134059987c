"""Training score models: configuration, EMA, checkpoints, the trainer, the recipes, the entry point.

One idea per module:

- :mod:`scoresde.training.config`: :class:`TrainConfig` and the learning-rate factors
  (:func:`warmup_factor`, :func:`lr_factor`);
- :mod:`scoresde.training.ema`: :class:`EMA`, the weight average to sample with;
- :mod:`scoresde.training.checkpoint`: the checkpoint format (:func:`save_checkpoint` atomic,
  :func:`load_checkpoint` with ``weights_only=True``, :class:`CheckpointError`, the resume
  compatibility check);
- :mod:`scoresde.training.trainer`: :class:`Trainer`, the loop (AdamW, warm-up, clipping, EMA,
  checkpoints, bit-identical resume, DDP when a process group exists);
- :mod:`scoresde.training.recipes`: the default model of a data set and its defaults
  (:data:`TRAIN_DEFAULTS`, :func:`train_config`, :func:`model_spec`, :func:`build_model`,
  :func:`load_model`, :func:`train_model`, :func:`to_model_space`, :func:`from_model_space`);
- :mod:`scoresde.training.launch`: ``python -m scoresde.training`` (:func:`main`), which under
  ``torchrun`` creates the process group the trainer reads.

Data of every kind (names, files, tensors, sampling functions) are resolved by
:func:`scoresde.data.data_source`.

Run from the command line (single process or under torchrun; the same as ``scoresde train``)::

    python -m scoresde.training --data 8gaussians --steps 2000 --out runs/8g
    torchrun --nproc_per_node=2 -m scoresde.training --data moons --steps 2000 --out runs/m
"""

from .checkpoint import FORMAT_VERSION as FORMAT_VERSION
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig, lr_factor, warmup_factor
from .ema import EMA
from .launch import main
from .recipes import DEFAULT_STATS_N as DEFAULT_STATS_N
from .recipes import (
    TRAIN_DEFAULTS,
    build_model,
    from_model_space,
    load_model,
    model_spec,
    to_model_space,
    train_config,
    train_model,
)
from .trainer import Trainer

__all__ = [
    "TrainConfig",
    "Trainer",
    "EMA",
    "CheckpointError",
    "load_checkpoint",
    "save_checkpoint",
    "warmup_factor",
    "lr_factor",
    "model_spec",
    "build_model",
    "load_model",
    "train_model",
    "to_model_space",
    "from_model_space",
    "train_config",
    "TRAIN_DEFAULTS",
    "main",
]
