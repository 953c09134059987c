r"""Training loop for score models: AdamW, warm-up, clipping, EMA, atomic checkpoints, DDP.

:class:`Trainer` minimises a loss ``loss_fn(model, batch, generator) -> scalar`` (by default
denoising score matching, :func:`scoresde.losses.dsm_loss`) over mini-batches from a
:class:`~scoresde.data.DataStream`:

- AdamW (Loshchilov & Hutter 2019) with a linear learning-rate warm-up
  :math:`\eta_i = \eta\,\min(1, (i + 1)/W)` for the ``i``-th update (0-based);
- gradient-norm clipping (global :math:`\ell_2` norm, ``torch.nn.utils.clip_grad_norm_``);
- an exponential moving average of the weights (:class:`EMA`), the model used for sampling
  (Song & Ermon 2020, "Improved techniques for training score-based generative models");
- reproducibility without global state: the trainer owns its :class:`torch.Generator` objects
  (one for the data stream, one for the loss noise), seeded from ``config.seed`` and the rank;
- checkpoints written atomically (temp file in the same folder, ``flush`` + ``fsync``,
  ``os.replace``) and loaded with ``torch.load(..., weights_only=True)`` only; resuming from
  one continues *bit-identically* to an uninterrupted run;
- multi-process data parallelism with :class:`~torch.nn.parallel.DistributedDataParallel`
  under ``torchrun`` (gloo on CPU, NCCL on CUDA): every rank draws its own batches, gradients
  are averaged, only rank 0 writes files.

Run from the command line (single process or under torchrun)::

    python -m scoresde.training --data 8gaussians --steps 2000 --out runs/8g
    torchrun --nproc_per_node=2 -m scoresde.training --data moons --steps 2000 --out runs/m
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import math
import os
import pickle
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ._checks import check_int, check_positive, derive_seed
from .data import DataStream, dataset_names, dataset_sampler, get_dataset

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
    "main",
]

#: Version of the checkpoint layout written by :class:`Trainer`.
FORMAT_VERSION = 1
_FORMAT = "scoresde.trainer"
_REQUIRED_KEYS = (
    "format",
    "format_version",
    "step",
    "model",
    "ema",
    "optimizer",
    "schedule",
    "config",
    "ranks",
    "losses",
    "world_size",
)

LossFn = Callable[[nn.Module, torch.Tensor, torch.Generator], torch.Tensor]


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (plain values; stored in every checkpoint).

    Attributes
    ----------
    steps : int
        Total number of optimiser updates of the run.
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

    def __post_init__(self):
        check_int("steps", self.steps, minimum=0)
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


# fields that must agree between a checkpoint and the trainer resuming from it
_RUN_IDENTITY = (
    "batch_size", "lr", "weight_decay", "warmup", "decay_steps", "grad_clip", "ema_decay", "seed"
)


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


# --------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------
class EMA:
    r"""Exponential moving average of a model's parameters.

    After each :meth:`update`, every floating-point parameter :math:`\bar\theta` of the copy
    :attr:`module` becomes

    .. math:: \bar\theta \leftarrow d\,\bar\theta + (1 - d)\,\theta,

    so after ``k`` updates from :math:`\bar\theta_0` it is
    :math:`d^k\bar\theta_0 + (1 - d)\sum_{j=1}^{k} d^{k-j}\theta_j`. Buffers are copied.

    Parameters
    ----------
    model : nn.Module
        The model to track (a deep copy is made, with ``requires_grad=False``, in eval mode).
    decay : float
        :math:`d \in [0, 1)`.

    Examples
    --------
    >>> import torch
    >>> from scoresde.training import EMA
    >>> lin = torch.nn.Linear(1, 1, bias=False)
    >>> _ = lin.weight.data.fill_(0.0)
    >>> ema = EMA(lin, decay=0.5)
    >>> _ = lin.weight.data.fill_(1.0); ema.update(lin); ema.update(lin)
    >>> float(ema.module.weight)     # 1 - 0.5**2
    0.75
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        decay = check_positive("decay", decay, strict=False)
        if decay >= 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay!r}")
        self.decay = decay
        self.num_updates = 0
        self.module = copy.deepcopy(model)
        self.module.eval()
        self.module.requires_grad_(False)
        self._ema_params = list(self.module.parameters())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current parameters."""
        ema_ps = self._ema_params
        ps = [p.detach() for p in model.parameters()]
        if len(ema_ps) != len(ps):
            raise ValueError(f"model has {len(ps)} parameters, the EMA copy {len(ema_ps)}")
        # one fused pass over all tensors: ema <- ema + (1 - d) (p - ema) = d ema + (1 - d) p
        torch._foreach_lerp_(ema_ps, ps, 1.0 - self.decay)
        for ema_b, b in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict:
        """``decay``, ``num_updates`` and the averaged ``module`` state."""
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "module": self.module.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`."""
        self.module.load_state_dict(state["module"])
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])


# --------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------
class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, unsafe or not a scoresde trainer checkpoint."""


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:  # weights_only refusals carry the useful detail on a late line
        if ln.startswith("Unsupported") or "GLOBAL" in ln:
            return ln
    return lines[0][:200] if lines else type(err).__name__


def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """Write ``obj`` with :func:`torch.save` atomically.

    The bytes go to a temporary file in the same folder, which is flushed and ``fsync``-ed and
    then renamed over ``path`` with :func:`os.replace` (atomic on POSIX and Windows); the
    folder is ``fsync``-ed too where the platform allows. A crash at any moment leaves either
    the old file or the new one, never a torn one.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - folders cannot be opened on Windows
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(dfd)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load and validate a :class:`Trainer` checkpoint with ``torch.load(weights_only=True)``.

    Only tensors and plain containers are unpickled: a file that carries code (a pickle with
    ``GLOBAL``/``REDUCE`` of an arbitrary callable) is refused before anything in it runs.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.
    map_location : optional
        Passed to :func:`torch.load` (default ``"cpu"``).

    Returns
    -------
    dict
        The checkpoint (keys ``step``, ``model``, ``ema``, ``optimizer``, ``schedule``,
        ``config``, ``ranks``, ``losses``, ``world_size``, ``format``, ``format_version``).

    Raises
    ------
    CheckpointError
        With a one-line message naming the file and the problem: missing, empty, truncated or
        corrupt, refused by the safe loader, not a scoresde checkpoint, missing keys, or an
        unsupported ``format_version``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r}: file does not exist")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r}: not a regular file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path!r}: file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path!r}: refused by the safe loader (torch.load weights_only=True; the "
            f"file holds code or objects other than tensors and containers): {_one_line(err)}"
        ) from None
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError/EOFError/... for torn files
        raise CheckpointError(
            f"checkpoint {path!r}: truncated or corrupt ({type(err).__name__}: {_one_line(err)})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != _FORMAT:
        what = f"a dict without format={_FORMAT!r}" if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"checkpoint {path!r}: not a scoresde trainer checkpoint (got {what})"
        )
    if obj.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path!r}: unsupported format_version {obj.get('format_version')!r} "
            f"(this scoresde reads version {FORMAT_VERSION})"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint {path!r}: missing keys {missing}")
    return obj


# --------------------------------------------------------------------------------------
# distributed helpers
# --------------------------------------------------------------------------------------
def _dist_env() -> tuple[int, int]:
    """(rank, world_size) from an initialised process group or torchrun's env variables."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _default_loss(sde) -> LossFn:
    def dsm(model: nn.Module, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        from .losses import dsm_loss

        return dsm_loss(model, sde, batch, generator=generator)

    return dsm


# --------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------
class Trainer:
    r"""Train a score model with AdamW, warm-up, clipping and EMA; checkpoint and resume.

    Parameters
    ----------
    model : nn.Module
        The model to train, already on its device (the trainer never moves it). Its forward
        is what ``loss_fn`` calls; under DDP ``loss_fn`` receives the DDP wrapper, so it must
        go through ``model(...)`` (calling other methods would skip the gradient averaging).
    data : Tensor, str, os.PathLike, callable or DataStream
        A tensor ``(n, *event)`` (shuffled epochs), a name of
        :func:`~scoresde.data.dataset_names` or a file path (generated sets give fresh samples
        every batch), a sampling function ``fn(n, generator)``, or a ready
        :class:`~scoresde.data.DataStream` (used as is, single process only).
    config : TrainConfig, optional
        Hyper-parameters (default ``TrainConfig()``).
    loss_fn : callable, optional
        ``loss_fn(model, batch, generator) -> scalar``; ``generator`` is the trainer's loss
        generator (on the model's device) and must be the only source of randomness. Default:
        denoising score matching :func:`scoresde.losses.dsm_loss` under ``sde``.
    sde : SDE, optional
        For the default loss: default ``model.sde`` if the model has one, else ``VPSDE()``.
    out_dir : str or os.PathLike, optional
        Where ``checkpoint.pt`` and ``loss.csv`` go (rank 0 only); None writes nothing.
    progress : bool
        Show a tqdm bar with the current loss (rank 0 only).
    metadata : dict, optional
        Plain values stored in every checkpoint under ``"metadata"`` (e.g. the
        :func:`model_spec` that :func:`load_model` rebuilds the network from).

    Attributes
    ----------
    step : int
        Number of updates done.
    losses : list of float
        The loss of every update so far (across resumes; under DDP averaged over ranks).
    ema_model : nn.Module
        The EMA copy of the model, the one to sample with.
    rank, world_size : int
        Position in the process group (0, 1 without DDP).

    Examples
    --------
    >>> import torch
    >>> from scoresde.training import Trainer, TrainConfig
    >>> model = torch.nn.Linear(2, 2)
    >>> def loss_fn(model, batch, generator):      # a toy regression loss
    ...     return (model(batch) - 2 * batch).square().mean()
    >>> tr = Trainer(model, "8gaussians", TrainConfig(steps=200, batch_size=64, lr=0.05,
    ...              ema_decay=0.9), loss_fn=loss_fn, progress=False)
    >>> losses = tr.train()
    >>> len(losses), losses[-1] < 0.01 * losses[0]
    (200, True)
    """

    def __init__(
        self,
        model: nn.Module,
        data,
        config: TrainConfig | None = None,
        loss_fn: LossFn | None = None,
        sde=None,
        out_dir: str | os.PathLike | None = None,
        *,
        progress: bool = True,
        metadata: dict | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if config is None:
            config = TrainConfig()
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(model, batch, generator)")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters")
        self.config = config
        self.model = model
        self.device = params[0].device
        self.out_dir = None if out_dir is None else os.fspath(out_dir)
        self.progress = bool(progress)
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict of plain values, got {type(metadata).__name__}")
        self.metadata = dict(metadata or {})
        self.step = 0
        self.losses: list[float] = []
        self.last_grad_norm: float | None = None

        self._init_distributed()
        if sde is None:
            sde = getattr(model, "sde", None)
            if sde is None:
                from .sde import VPSDE

                sde = VPSDE()
        self.sde = sde
        self.loss_fn = loss_fn if loss_fn is not None else _default_loss(sde)

        # generators: one for the data, one for the loss noise, per rank
        self.data_generator = torch.Generator()
        self.data_generator.manual_seed(derive_seed(config.seed, self.rank, 0))
        self.loss_generator = torch.Generator(device=self.device)
        self.loss_generator.manual_seed(derive_seed(config.seed, self.rank, 1))
        self.data = self._make_stream(data)

        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._train_model: nn.Module = DDP(model, device_ids=ids)
        else:
            self._train_model = model
        self.ema = EMA(model, config.ema_decay)  # after DDP's broadcast: identical on all ranks
        self._params = params
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self._log_file = None

    # -- set-up ---------------------------------------------------------------------------
    def _init_distributed(self) -> None:
        rank, world = _dist_env()
        self._owns_group = False
        if world > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
            self._owns_group = True
            rank, world = dist.get_rank(), dist.get_world_size()
        self.rank, self.world_size = rank, world

    def _make_stream(self, data) -> DataStream:
        bs = self.config.batch_size
        if isinstance(data, DataStream):
            if self.world_size > 1:
                raise ValueError(
                    "data must not be a DataStream under DDP (each rank needs its own seed); "
                    "pass the tensor, name or sampling function instead"
                )
            if data.batch_size != bs:
                raise ValueError(
                    f"data has batch_size {data.batch_size}, config.batch_size is {bs}"
                )
            return data
        if isinstance(data, str) and data in dataset_names() and data != "digits":
            return DataStream(dataset_sampler(data), bs, self.data_generator)
        if isinstance(data, (str, os.PathLike)):
            data = get_dataset(data)
        if isinstance(data, torch.Tensor) or callable(data):
            return DataStream(data, bs, self.data_generator)
        raise TypeError(
            "data must be a tensor, a data set name or path, a sampling function fn(n, generator) "
            f"or a DataStream, got {type(data).__name__}"
        )

    # -- properties -------------------------------------------------------------------------
    @property
    def ema_model(self) -> nn.Module:
        """The EMA copy of the model (eval mode, no gradients): sample with this."""
        return self.ema.module

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    @property
    def checkpoint_path(self) -> str | None:
        """``out_dir/checkpoint.pt`` (None without ``out_dir``)."""
        return None if self.out_dir is None else os.path.join(self.out_dir, "checkpoint.pt")

    def learning_rate(self, step: int | None = None) -> float:
        """Learning rate of the ``step``-th update (default: the next one)."""
        step = self.step if step is None else step
        return self.config.lr * lr_factor(step, self.config.warmup, self.config.decay_steps)

    # -- one update -----------------------------------------------------------------------
    def _update(self) -> float:
        cfg = self.config
        batch = next(self.data).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        self._train_model.train()
        loss = self.loss_fn(self._train_model, batch, self.loss_generator)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
        value = loss.detach().reshape(())
        if not bool(torch.isfinite(value)):
            raise FloatingPointError(
                f"loss is {float(value)} at step {self.step + 1}; lower the learning rate or "
                "check the data for extreme values"
            )
        loss.backward()
        params = self._params
        if cfg.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        else:
            grads = [p.grad.detach().norm() for p in params if p.grad is not None]
            norm = torch.stack(grads).norm() if grads else torch.zeros(())
        self.last_grad_norm = float(norm)
        lr = self.learning_rate(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value)
            value = value / self.world_size
        return float(value)

    # -- the loop -------------------------------------------------------------------------
    def train(self, steps: int | None = None, progress: bool | None = None) -> list[float]:
        """Run ``steps`` updates (default: what is left of ``config.steps``).

        A checkpoint is written every ``config.checkpoint_every`` updates and at the end
        (when ``out_dir`` is set), and rows are appended to ``out_dir/loss.csv``.

        Returns
        -------
        list of float
            The losses of the updates run by this call.
        """
        if steps is None:
            steps = max(0, self.config.steps - self.step)
        steps = check_int("steps", steps, minimum=0)
        show = (self.progress if progress is None else bool(progress)) and self.is_main
        cfg = self.config
        out: list[float] = []
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc="training", unit="step", dynamic_ncols=True, leave=False)
        try:
            for _ in range(steps):
                v = self._update()
                out.append(v)
                self.losses.append(v)
                if self.step % cfg.log_every == 0:
                    window = self.losses[-cfg.log_every :]
                    mean = sum(window) / len(window)
                    self._log_row(self.step, mean)
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean:.4g}", refresh=False)
                if bar is not None:
                    bar.update(1)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save()
            if not (cfg.checkpoint_every and steps and self.step % cfg.checkpoint_every == 0):
                self.save()
        finally:
            if bar is not None:
                bar.close()
            self._close_log()
        return out

    # -- loss.csv ---------------------------------------------------------------------------
    def _log_row(self, step: int, loss: float) -> None:
        if self.out_dir is None or not self.is_main:
            return
        if self._log_file is None:
            os.makedirs(self.out_dir, exist_ok=True)
            path = os.path.join(self.out_dir, "loss.csv")
            new = not os.path.exists(path) or os.path.getsize(path) == 0
            self._log_file = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115
            if new:
                self._log_file.write("step,loss\n")
        self._log_file.write(f"{step},{loss!r}\n")

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _truncate_log(self) -> None:
        """Drop rows of ``loss.csv`` written after the checkpoint being resumed."""
        if self.out_dir is None or not self.is_main:
            return
        path = os.path.join(self.out_dir, "loss.csv")
        if not os.path.exists(path):
            return
        keep = []
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.reader(f):
                try:
                    if len(row) == 2 and int(row[0]) <= self.step:
                        float(row[1])
                        keep.append(row)
                except ValueError:
                    continue  # header, or a line torn by a crash
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write("step,loss\n")
            for s, v in keep:
                f.write(f"{s},{v}\n")
        os.replace(tmp, path)

    # -- checkpoints -------------------------------------------------------------------------
    def _rank_state(self) -> dict:
        return {"data": self.data.state_dict(), "loss_generator": self.loss_generator.get_state()}

    def state_dict(self) -> dict:
        """Everything needed to resume (collective under DDP: every rank must call it)."""
        ranks = [self._rank_state()]
        if self.world_size > 1:
            gathered: list = [None] * self.world_size
            dist.all_gather_object(gathered, ranks[0])
            ranks = gathered
        return {
            "format": _FORMAT,
            "format_version": FORMAT_VERSION,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": {
                "kind": "linear_warmup_cosine" if self.config.decay_steps else "linear_warmup",
                "warmup": self.config.warmup,
                "decay_steps": self.config.decay_steps,
                "lr": self.config.lr,
            },
            "config": self.config.to_dict(),
            "ranks": ranks,
            "losses": torch.tensor(self.losses, dtype=torch.float64),
            "world_size": self.world_size,
            "torch_version": str(torch.__version__),
            "metadata": self.metadata,
        }

    def save(self, path: str | os.PathLike | None = None) -> str | None:
        """Write a checkpoint atomically (rank 0; default ``out_dir/checkpoint.pt``).

        Returns the path written, or None (no ``out_dir``, or not rank 0). Under DDP every
        rank must call it (the ranks' generator states are gathered).
        """
        if path is None and self.out_dir is None:
            return None
        state = self.state_dict()
        written = None
        if self.is_main:
            written = os.fspath(path) if path is not None else self.checkpoint_path
            if self._log_file is not None:
                self._log_file.flush()
            save_checkpoint(state, written)
        if self.world_size > 1:
            dist.barrier()  # the file is complete before any rank goes on (e.g. to resume)
        return written

    def resume(self, path: str | os.PathLike | None = None) -> Trainer:
        """Restore the state of a checkpoint (default ``out_dir/checkpoint.pt``) into this trainer.

        The model must have the same architecture and the run-defining fields of the config
        (``batch_size``, ``lr``, ``weight_decay``, ``warmup``, ``grad_clip``, ``ema_decay``,
        ``seed``) and the world size must match the checkpoint's; ``steps``,
        ``checkpoint_every`` and ``log_every`` may differ. Training then continues
        bit-identically to a run that was never interrupted. Rows of ``loss.csv`` after the
        checkpoint's step are dropped.

        Raises
        ------
        CheckpointError
            If the file is unusable (see :func:`load_checkpoint`) or does not fit this trainer.
        """
        if path is None:
            if self.out_dir is None:
                raise ValueError("path is required when the trainer has no out_dir")
            path = self.checkpoint_path
        path = os.fspath(path)
        ckpt = load_checkpoint(path, map_location="cpu")
        try:
            cfg = TrainConfig.from_dict(ckpt["config"])
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint {path!r}: invalid config ({err})") from None
        diff = [k for k in _RUN_IDENTITY if getattr(cfg, k) != getattr(self.config, k)]
        if diff:
            pairs = ", ".join(
                f"{k}={getattr(cfg, k)!r} vs {getattr(self.config, k)!r}" for k in diff
            )
            raise CheckpointError(
                f"checkpoint {path!r}: config differs from this trainer's ({pairs})"
            )
        if ckpt["world_size"] != self.world_size or len(ckpt["ranks"]) != self.world_size:
            raise CheckpointError(
                f"checkpoint {path!r}: written by {ckpt['world_size']} process(es), resumed by "
                f"{self.world_size}"
            )
        try:
            self.model.load_state_dict(ckpt["model"])
            self.ema.load_state_dict(ckpt["ema"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            rank_state = ckpt["ranks"][self.rank]
            self.data.load_state_dict(rank_state["data"])
            self.loss_generator.set_state(rank_state["loss_generator"])
            losses = [float(v) for v in ckpt["losses"]]
            step = int(ckpt["step"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
            raise CheckpointError(
                f"checkpoint {path!r}: does not fit this trainer "
                f"({type(err).__name__}: {_one_line(err)})"
            ) from None
        if len(losses) != step:
            raise CheckpointError(f"checkpoint {path!r}: {len(losses)} losses for step {step}")
        self.step, self.losses = step, losses
        self._truncate_log()
        return self

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        model: nn.Module,
        data,
        loss_fn: LossFn | None = None,
        sde=None,
        out_dir: str | os.PathLike | None = None,
        *,
        progress: bool = True,
        **overrides,
    ) -> Trainer:
        """A trainer with the checkpoint's config (``overrides`` may change ``steps``,
        ``checkpoint_every``, ``log_every``), resumed from it."""
        ckpt = load_checkpoint(path)
        try:
            cfg = TrainConfig.from_dict({**ckpt["config"], **overrides})
        except (TypeError, ValueError) as err:
            raise CheckpointError(
                f"checkpoint {os.fspath(path)!r}: invalid config ({err})"
            ) from None
        trainer = cls(
            model, data, cfg, loss_fn=loss_fn, sde=sde, out_dir=out_dir, progress=progress
        )
        return trainer.resume(path)

    def close(self) -> None:
        """Close the log and, if this trainer created the process group, destroy it."""
        self._close_log()
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------
# command line / torchrun entry point
# --------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------
# recipes: the score model a data set gets, trained and rebuilt from its checkpoint
# --------------------------------------------------------------------------------------
def model_spec(
    data: torch.Tensor,
    sde: str = "vp",
    *,
    parameterization: str = "eps",
    hidden: int = 128,
    n_blocks: int = 3,
    base_channels: int = 32,
) -> dict:
    """A plain-dict description of the score model for data shaped like ``data``.

    Vector data ``(n, d)`` get a :class:`~scoresde.nets.ScoreMLP` and are standardised per
    coordinate (``shift`` = mean, ``scale`` = standard deviation of ``data``), so a user's
    file of any scale meets the unit-scale prior; images ``(n, C, H, W)`` (already in
    ``[-1, 1]``) get a :class:`~scoresde.nets.UNet` and no rescaling. Stored in checkpoints
    as ``metadata["model"]``; :func:`build_model` and :func:`load_model` read it back.
    """
    from .sde import SDE_NAMES

    if not isinstance(data, torch.Tensor) or data.ndim not in (2, 4) or data.shape[0] < 2:
        got = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise ValueError(f"data must be vectors (n, d) or images (n, C, H, W) with n >= 2, got {got}")
    if sde not in SDE_NAMES:
        raise ValueError(f"sde must be one of {', '.join(SDE_NAMES)}, got {sde!r}")
    event = list(data.shape[1:])
    if data.ndim == 2:
        flat = data.double()
        shift, scale = flat.mean(0).tolist(), flat.std(0).clamp_min(1e-6).tolist()
        kind = "mlp"
    else:
        shift, scale, kind = [0.0], [1.0], "unet"
    return {
        "kind": kind,
        "event_shape": event,
        "sde": sde,
        "parameterization": parameterization,
        "hidden": check_int("hidden", hidden),
        "n_blocks": check_int("n_blocks", n_blocks, minimum=0),
        "base_channels": check_int("base_channels", base_channels),
        "shift": shift,
        "scale": scale,
    }


def _affine(spec: dict, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shift = torch.tensor(spec["shift"], dtype=like.dtype, device=like.device)
    scale = torch.tensor(spec["scale"], dtype=like.dtype, device=like.device)
    if spec["kind"] == "unet":
        return shift.reshape(1), scale.reshape(1)
    return shift, scale


def to_model_space(x: torch.Tensor, spec: dict) -> torch.Tensor:
    """Map data to the space the model is trained in: ``(x − shift) / scale``."""
    shift, scale = _affine(spec, x)
    return (x - shift) / scale


def from_model_space(x: torch.Tensor, spec: dict) -> torch.Tensor:
    """Map model samples back to data space: ``x · scale + shift``."""
    shift, scale = _affine(spec, x)
    return x * scale + shift


def build_model(spec: dict, generator: torch.Generator | None = None) -> nn.Module:
    """The :class:`~scoresde.nets.ScoreModel` described by ``spec`` (see :func:`model_spec`)."""
    from .nets import ScoreMLP, ScoreModel, UNet
    from .sde import make_sde

    try:
        if spec["kind"] == "mlp":
            net = ScoreMLP(spec["event_shape"][0], hidden=spec["hidden"], n_blocks=spec["n_blocks"],
                           generator=generator)
        elif spec["kind"] == "unet":
            net = UNet(spec["event_shape"][0], base_channels=spec["base_channels"], generator=generator)
        else:
            raise ValueError(f"unknown model kind {spec['kind']!r}")
        return ScoreModel(net, make_sde(spec["sde"]), parameterization=spec["parameterization"])
    except (KeyError, TypeError, IndexError) as err:
        raise ValueError(f"spec is not a model spec ({type(err).__name__}: {err})") from None


def load_model(path: str | os.PathLike, ema: bool = True) -> tuple[nn.Module, dict]:
    """Rebuild the trained score model of a checkpoint written with a model spec.

    Returns the :class:`~scoresde.nets.ScoreModel` (its EMA weights by default, the ones to
    sample with) in evaluation mode, and the spec (for :func:`from_model_space`).

    Raises
    ------
    CheckpointError
        If the file is unusable (see :func:`load_checkpoint`), carries no model spec, or its
        weights do not fit the spec.
    """
    ckpt = load_checkpoint(path)
    spec = (ckpt.get("metadata") or {}).get("model")
    if not isinstance(spec, dict):
        raise CheckpointError(f"checkpoint {os.fspath(path)!r}: no model spec in its metadata")
    try:
        model = build_model(spec)
        weights = ckpt["ema"]["module"] if ema else ckpt["model"]
        model.load_state_dict(weights)
    except (ValueError, RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint {os.fspath(path)!r}: weights do not fit its model spec "
            f"({type(err).__name__}: {_one_line(err)})"
        ) from None
    return model.eval(), spec


def train_model(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    sde: str = "vp",
    config: TrainConfig | None = None,
    hidden: int = 128,
    resume: bool = False,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> Trainer:
    """Train the default score model of a data set (the recipe behind ``scoresde train``).

    ``data`` is a name of :func:`~scoresde.data.dataset_names` or a file path. Generated sets
    give fresh samples every batch; fixed sets (digits, files) are shuffled epochs. The model
    (:func:`model_spec`, standardised data) trains with denoising score matching under the
    named SDE; ``out_dir/checkpoint.pt`` holds the spec, so :func:`load_model` rebuilds it.
    With ``resume=True`` an existing checkpoint is continued. Returns the closed trainer.
    """
    config = config or TrainConfig()
    try:
        sampler = dataset_sampler(data) if isinstance(data, str) else None
    except ValueError:
        sampler = None
    if sampler is not None:  # a generated set: statistics from a fixed draw, fresh batches
        probe = sampler(DEFAULT_STATS_N, generator=torch.Generator().manual_seed(0))
    else:  # a fixed set (digits, a file): statistics of all of it, shuffled epochs
        probe = get_dataset(data)
    spec = model_spec(probe, sde, hidden=hidden)
    init = torch.Generator().manual_seed(config.seed)  # same initial weights on every rank
    model = build_model(spec, generator=init).to(device)
    if sampler is not None:
        def stream(n, generator=None):
            return to_model_space(sampler(n, generator=generator), spec)
    else:
        stream = to_model_space(probe, spec)
    trainer = Trainer(model, stream, config, sde=model.sde, out_dir=out_dir, progress=progress,
                      metadata={"model": spec, "data": os.fspath(data)})
    try:
        if resume and os.path.exists(trainer.checkpoint_path):
            trainer.resume()
        trainer.train()
        if trainer.step == 0 or config.checkpoint_every == 0 or trainer.step % config.checkpoint_every:
            trainer.save()
    finally:
        trainer.close()
    return trainer


#: Points drawn to compute the standardisation of a data set in :func:`train_model`.
DEFAULT_STATS_N = 10_000


def _parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m scoresde.training",
        description="Train the default score model of a data set with DSM (works under torchrun).",
    )
    p.add_argument(
        "--data", required=True, help=f"a name ({', '.join(dataset_names())}) or a file path"
    )
    p.add_argument("--out", required=True, help="output folder (checkpoint.pt, loss.csv)")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--warmup", type=int, default=TrainConfig.warmup)
    p.add_argument("--ema-decay", type=float, default=TrainConfig.ema_decay)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--sde", choices=("vp", "subvp", "ve"), default="vp")
    p.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda'")
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoint.pt if present"
    )
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m scoresde.training`` (also under ``torchrun``)."""
    args = _parse(argv)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
    if device.type == "cuda":  # pragma: no cover - no GPU in the test suite
        torch.cuda.set_device(device)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        ema_decay=args.ema_decay,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    trainer = train_model(args.data, args.out, sde=args.sde, config=cfg, hidden=args.hidden,
                          resume=args.resume, progress=not args.no_progress, device=device)
    if trainer.is_main and trainer.losses:
        print(f"step {trainer.step}: loss {trainer.losses[-1]:.5g}; saved {trainer.checkpoint_path}")
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses
    sys.exit(main())
