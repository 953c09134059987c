r"""The hyper-parameters of a training run and its learning-rate schedule.

:class:`TrainConfig` holds plain values (stored in every checkpoint); :func:`lr_factor` is the
learning-rate multiplier of each update: a linear warm-up (Goyal et al. 2017, "Accurate, large
minibatch SGD", https://arxiv.org/abs/1706.02677) followed by an optional cosine decay
(Loshchilov & Hutter 2017, "SGDR", https://arxiv.org/abs/1608.03983, without restarts).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .._checks import check_int, check_positive

__all__ = ["TrainConfig", "warmup_factor", "lr_factor"]


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (plain values; stored in every checkpoint).

    Attributes
    ----------
    steps : int
        Total number of optimiser updates of the run (>= 1).
    batch_size : int
        Samples per update *per process* (the effective batch under DDP is
        ``batch_size * world_size``).
    lr : float
        Peak learning rate of AdamW.
    weight_decay : float
        Decoupled weight decay of AdamW.
    warmup : int
        Linear warm-up length in updates (0: none); see :func:`warmup_factor`.
    decay_steps : int
        Cosine learning-rate decay to 0 over this many updates after the warm-up (0: constant
        after the warm-up); see :func:`lr_factor`. Part of the run's identity: a resumed run
        keeps it, and updates beyond it use a learning rate of 0.
    grad_clip : float or None
        Maximal global gradient norm; ``None`` or ``0`` disables clipping.
    ema_decay : float
        Decay :math:`d \\in [0, 1)` of the weight average (0: the EMA model equals the model).
    seed : int
        Seed of the trainer's generators (data and loss noise, offset by the rank).
    checkpoint_every : int
        Write a checkpoint every this many updates (0: only at the end of :meth:`Trainer.train`).
    log_every : int
        Write a row to ``loss.csv`` (the mean loss of the last ``log_every`` updates) and
        refresh the progress bar every this many updates.
    label_dropout : float
        Probability in ``[0, 1]`` that the default loss replaces a label by the null label
        (classifier-free guidance training, Ho & Salimans 2021; see
        :func:`scoresde.losses.drop_labels`). Used only on labelled data (``(x, y)``
        batches); default 0.1. Part of the run's identity.

    Examples
    --------
    >>> from scoresde.training import TrainConfig
    >>> cfg = TrainConfig(steps=100, lr=2e-3)
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 0
    decay_steps: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 0
    log_every: int = 10
    label_dropout: float = 0.1

    def __post_init__(self):
        check_int("steps", self.steps, minimum=0)
        if self.steps == 0:
            raise ValueError("steps must be >= 1 (a run of 0 steps would only write an untrained model), got 0")
        check_int("batch_size", self.batch_size)
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, strict=False)
        check_int("warmup", self.warmup, minimum=0)
        check_int("decay_steps", self.decay_steps, minimum=0)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip, strict=False)
        d = check_positive("ema_decay", self.ema_decay, strict=False)
        if d >= 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        check_int("seed", self.seed, minimum=0)
        check_int("checkpoint_every", self.checkpoint_every, minimum=0)
        check_int("log_every", self.log_every)
        p = check_positive("label_dropout", self.label_dropout, strict=False)
        if p > 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1], got {self.label_dropout!r}")

    def to_dict(self) -> dict:
        """The fields as a plain ``dict`` (safe for ``weights_only`` checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from :meth:`to_dict` output; unknown keys raise a ``ValueError``."""
        if not isinstance(d, dict):
            raise TypeError(f"d must be a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; valid: {sorted(names)}")
        return cls(**d)


def warmup_factor(step: int, warmup: int) -> float:
    r"""Learning-rate multiplier of the ``step``-th update (0-based): :math:`\min(1, (i + 1)/W)`.

    Examples
    --------
    >>> from scoresde.training import warmup_factor
    >>> [warmup_factor(i, 4) for i in range(6)]
    [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    """
    if warmup <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup)


def lr_factor(step: int, warmup: int, decay_steps: int = 0) -> float:
    r"""Learning-rate multiplier of the ``step``-th update: warm-up, then optional cosine decay.

    :math:`\min(1, (i+1)/W)` during the warm-up; then, with ``decay_steps = D > 0``,
    :math:`\tfrac12(1 + \cos(\pi \min(j, D)/D))` for the ``j``-th update after the warm-up
    (Loshchilov & Hutter 2017, without restarts), reaching 0 at ``j = D``.

    Examples
    --------
    >>> from scoresde.training import lr_factor
    >>> [round(lr_factor(i, 2, 4), 3) for i in range(7)]
    [0.5, 1.0, 1.0, 0.854, 0.5, 0.146, 0.0]
    """
    if step < warmup or decay_steps <= 0:
        return warmup_factor(step, warmup)
    j = min(step - warmup, decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * j / decay_steps))
