r"""The training loop: AdamW, warm-up, clipping, EMA, atomic checkpoints, bit-identical resume, DDP.

:class:`Trainer` minimises a loss ``loss_fn(model, batch, generator) -> scalar`` (by default
denoising score matching, :func:`scoresde.losses.dsm_loss`) over mini-batches from a
:class:`~scoresde.data.DataStream`:

- AdamW (Loshchilov & Hutter 2019, https://arxiv.org/abs/1711.05101) with the learning rate
  of :func:`~scoresde.training.lr_factor` (linear warm-up, optional cosine decay);
- gradient-norm clipping (global :math:`\ell_2` norm, ``torch.nn.utils.clip_grad_norm_``);
- an exponential moving average of the weights (:class:`~scoresde.training.EMA`), the model
  used for sampling;
- class-conditional models on labelled data (batches ``(x, y)``): the default loss drops labels
  with probability ``config.label_dropout`` (:func:`scoresde.losses.drop_labels`) so that the
  model also learns the unconditional score, for classifier-free guidance (Ho & Salimans 2021);
- reproducibility without global state: the trainer owns its :class:`torch.Generator` objects
  (one for the data stream, one for the loss noise), seeded from ``config.seed`` and the rank;
- checkpoints in the format of :mod:`scoresde.training.checkpoint`; resuming from one
  continues *bit-identically* to an uninterrupted run;
- multi-process data parallelism with :class:`~torch.nn.parallel.DistributedDataParallel` when
  a process group is initialised (the entry point creates it, see
  :mod:`scoresde.training.launch`): every rank draws its own batches, gradients are averaged,
  only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from .._checks import check_int, derive_seed
from ..data import DataStream, data_source
from ._distributed import barrier, data_parallel, gather, mean_over_ranks, rank_and_world_size
from ._rundir import LossLog, claim_run_folder, run_files
from .checkpoint import (
    CheckpointError,
    check_resumable,
    checkpoint_config,
    load_checkpoint,
    one_line,
    pack_checkpoint,
    save_checkpoint,
)
from .config import TrainConfig, lr_factor
from .ema import EMA

__all__ = ["Trainer", "run_files"]

LossFn = Callable[[nn.Module, torch.Tensor, torch.Generator], torch.Tensor]


_LABELS_WITHOUT_CLASSES = ("data carry labels but model is unconditional (no null_label); build its network "
                           "with num_classes, or pass unlabelled data")
_CLASSES_WITHOUT_LABELS = ("model is class-conditional (num_classes={}) but data carry no labels; pass (x, y) "
                           "data, e.g. data_source('digits', labels=True)")


def _default_loss(sde, null_label: int | None = None, label_dropout: float = 0.0) -> LossFn:
    def dsm(model: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
        from ..losses import drop_labels, dsm_loss

        if isinstance(batch, tuple):  # labelled data (x, y): drop labels, then conditional DSM
            if null_label is None:
                raise ValueError(_LABELS_WITHOUT_CLASSES)
            x, y = batch
            y = drop_labels(y, label_dropout, null_label, generator=generator)
            return dsm_loss(model, sde, x, generator=generator, labels=y)
        if null_label is not None:
            raise ValueError(_CLASSES_WITHOUT_LABELS.format(null_label))
        return dsm_loss(model, sde, batch, generator=generator)

    return dsm


def _to_device(batch, device):
    if isinstance(batch, (tuple, list)):
        return tuple(v.to(device) for v in batch)
    return batch.to(device)


class Trainer:
    r"""Train a score model with AdamW, warm-up, clipping and EMA; checkpoint and resume.

    Parameters
    ----------
    model : nn.Module
        The model to train, already on its device (the trainer never moves it). Its forward
        is what ``loss_fn`` calls; under DDP ``loss_fn`` receives the DDP wrapper, so it must
        go through ``model(...)`` (calling other methods would skip the gradient averaging).
    data : Tensor, str, os.PathLike, callable or DataStream
        Anything :func:`scoresde.data.data_source` accepts — a tensor ``(n, *event)``
        (shuffled epochs), a name of :func:`~scoresde.data.dataset_names` or a file path
        (generated sets give fresh samples every batch), a sampling function
        ``fn(n, generator)`` — or a ready :class:`~scoresde.data.DataStream` (used as is,
        single process only).
    config : ~scoresde.TrainConfig, optional
        Hyper-parameters (default ``TrainConfig()``).
    loss_fn : callable, optional
        ``loss_fn(model, batch, generator) -> scalar``; ``generator`` is the trainer's loss
        generator (on the model's device) and must be the only source of randomness; ``batch``
        is a tensor, or a tuple ``(x, y)`` for labelled data. Default: denoising score matching
        :func:`scoresde.losses.dsm_loss` under ``sde``; on labelled data the model must be
        class-conditional (``model.null_label``, e.g. a :class:`~scoresde.nets.ScoreModel` of a
        network built with ``num_classes``): labels are dropped to the null label with
        probability ``config.label_dropout`` (drawn first from the loss generator) and the model
        is called as ``model(x_t, t, y)``.
    sde : SDE, optional
        For the default loss: default ``model.sde`` if the model has one, else ``VPSDE()``.
    out_dir : str or os.PathLike, optional
        Where ``checkpoint.pt`` and ``loss.csv`` go (rank 0 only); None writes nothing. A
        folder that already holds a run (:func:`run_files`) is only written to after
        :meth:`resume` from its checkpoint, or with ``overwrite=True``.
    progress : bool
        Show a tqdm bar with the current loss (rank 0 only).
    metadata : dict, optional
        Plain values stored in every checkpoint under ``"metadata"`` (e.g. the
        :func:`~scoresde.training.model_spec` that :func:`~scoresde.training.load_model`
        rebuilds the network from).
    overwrite : bool
        Start afresh in an ``out_dir`` that holds another run, deleting its ``checkpoint.pt``
        and ``loss.csv`` when training starts (default False: refuse with a
        ``FileExistsError``).

    Attributes
    ----------
    step : int
        Number of updates done.
    losses : list of float
        The loss of every update so far (across resumes; under DDP averaged over ranks).
    ema_model : nn.Module
        The EMA copy of the model, the one to sample with.
    resumed_step : int or None
        The step of the checkpoint this trainer resumed from (None: it started fresh).
    rank, world_size : int
        Position in the process group (0, 1 without one). The trainer reads the group, it does
        not create it.

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

    def __init__(self, model: nn.Module, data, config: TrainConfig | None = None,
                 loss_fn: LossFn | None = None, sde=None, out_dir: str | os.PathLike | None = None,
                 *, progress: bool = True, metadata: dict | None = None, overwrite: bool = False):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        config = TrainConfig() if config is None else config
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(model, batch, generator)")
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict of plain values, got {type(metadata).__name__}")
        self._params = [p for p in model.parameters() if p.requires_grad]
        if not self._params:
            raise ValueError("model has no trainable parameters")
        self.config, self.model, self.device = config, model, self._params[0].device
        self.out_dir = None if out_dir is None else os.fspath(out_dir)
        self.progress, self.metadata, self.overwrite = bool(progress), dict(metadata or {}), bool(overwrite)
        self.step, self.losses, self.last_grad_norm, self.resumed_step = 0, [], None, None
        self.rank, self.world_size = rank_and_world_size()
        if sde is None:
            sde = getattr(model, "sde", None)
        if sde is None:
            from ..sde import VPSDE

            sde = VPSDE()
        self.sde = sde
        # generators: one for the data, one for the loss noise, per rank
        self.data_generator = torch.Generator().manual_seed(derive_seed(config.seed, self.rank, 0))
        self.loss_generator = torch.Generator(device=self.device)
        self.loss_generator.manual_seed(derive_seed(config.seed, self.rank, 1))
        self.data = self._make_stream(data)
        self.loss_fn = loss_fn if loss_fn is not None else self._default_loss(model, sde)
        self._train_model = data_parallel(model, self.device) if self.world_size > 1 else model
        self.ema = EMA(model, config.ema_decay)  # after DDP's broadcast: identical on all ranks
        self.optimizer = torch.optim.AdamW(self._params, lr=config.lr, weight_decay=config.weight_decay)
        self._log = LossLog(self.out_dir if self.is_main else None)
        self._saved_step: int | None = None  # step of the checkpoint in out_dir, if current
        self._owns_out_dir = out_dir is None  # True once writing to out_dir is known to be safe

    def _default_loss(self, model: nn.Module, sde) -> LossFn:
        """DSM, conditional on labelled data; refuses a mismatch of model and data."""
        null = getattr(model, "null_label", None)
        labelled = isinstance(self.data.data, tuple) or (
            self.data.data is None and getattr(self.data.sampler, "num_classes", None) is not None)
        if labelled and null is None:
            raise ValueError(_LABELS_WITHOUT_CLASSES)
        if null is not None and self.data.data is not None and not labelled:
            raise ValueError(_CLASSES_WITHOUT_LABELS.format(null))
        return _default_loss(sde, null, self.config.label_dropout)

    def _make_stream(self, data) -> DataStream:
        bs = self.config.batch_size
        if not isinstance(data, DataStream):
            return DataStream(data_source(data), bs, self.data_generator)
        if self.world_size > 1:
            raise ValueError("data must not be a DataStream under DDP (each rank needs its own seed); "
                             "pass the tensor, name or sampling function instead")
        if data.batch_size != bs:
            raise ValueError(f"data has batch_size {data.batch_size}, config.batch_size is {bs}")
        return data

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

    def _claim_out_dir(self) -> None:
        """Before the first write: refuse a folder holding another run, or clear it if asked to."""
        if not self._owns_out_dir:
            claim_run_folder(self.out_dir, overwrite=self.overwrite, world_size=self.world_size,
                             is_main=self.is_main)
            self._owns_out_dir = True

    def _update(self) -> float:
        batch = _to_device(next(self.data), self.device)
        self.optimizer.zero_grad(set_to_none=True)
        self._train_model.train()
        loss = self.loss_fn(self._train_model, batch, self.loss_generator)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
        value = loss.detach().reshape(())
        if not bool(torch.isfinite(value)):
            raise FloatingPointError(f"loss is {float(value)} at step {self.step + 1}; lower the learning "
                                     "rate or check the data for extreme values")
        loss.backward()
        if self.config.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self._params, self.config.grad_clip)
        else:
            grads = [p.grad.detach().norm() for p in self._params if p.grad is not None]
            norm = torch.stack(grads).norm() if grads else torch.zeros(())
        self.last_grad_norm = float(norm)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        return float(mean_over_ranks(value, self.world_size))

    def train(self, steps: int | None = None, progress: bool | None = None) -> list[float]:
        """Run ``steps`` updates (default: what is left of ``config.steps``).

        Rows are appended to ``out_dir/loss.csv`` every ``config.log_every`` updates; a
        checkpoint is written every ``config.checkpoint_every`` updates and once at the end
        unless the last update was just checkpointed (when ``out_dir`` is set).

        Returns
        -------
        list of float
            The losses of the updates run by this call.
        """
        steps = check_int("steps", max(0, self.config.steps - self.step) if steps is None else steps,
                          minimum=0)
        cfg, out, bar = self.config, [], None
        self._claim_out_dir()
        if (self.progress if progress is None else bool(progress)) and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc="training", unit="step", dynamic_ncols=True, leave=False)
        try:
            for _ in range(steps):
                out.append(self._update())
                self.losses.append(out[-1])
                if self.step % cfg.log_every == 0:
                    mean = sum(self.losses[-cfg.log_every:]) / len(self.losses[-cfg.log_every:])
                    self._log.write(self.step, mean)
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean:.4g}", refresh=False)
                if bar is not None:
                    bar.update(1)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save()
            if self._saved_step != self.step:
                self.save()
        finally:
            if bar is not None:
                bar.close()
            self._log.close()
        return out

    def state_dict(self) -> dict:
        """Everything needed to resume (collective under DDP: every rank must call it)."""
        mine = {"data": self.data.state_dict(), "loss_generator": self.loss_generator.get_state()}
        return pack_checkpoint(
            step=self.step, model=self.model.state_dict(), ema=self.ema.state_dict(),
            optimizer=self.optimizer.state_dict(), config=self.config,
            ranks=gather(mine, self.world_size), losses=self.losses, world_size=self.world_size,
            metadata=self.metadata)

    def save(self, path: str | os.PathLike | None = None) -> str | None:
        """Write a checkpoint atomically (rank 0; default ``out_dir/checkpoint.pt``).

        Returns the path written, or None (no ``out_dir``, or not rank 0). Under DDP every
        rank must call it (the ranks' generator states are gathered).
        """
        if path is None and self.out_dir is None:
            return None
        if path is None:
            self._claim_out_dir()
        state, written = self.state_dict(), None
        if self.is_main:
            written = os.fspath(path) if path is not None else self.checkpoint_path
            self._log.flush()
            save_checkpoint(state, written)
        barrier(self.world_size)  # the file is complete before any rank goes on (e.g. to resume)
        if path is None:
            self._saved_step = self.step
        return written

    def resume(self, path: str | os.PathLike | None = None) -> Trainer:
        """Restore the state of a checkpoint (default ``out_dir/checkpoint.pt``) into this trainer.

        The model must have the same architecture, and the run-defining fields of the config
        and the world size must match the checkpoint's (see
        :func:`~scoresde.training.checkpoint.check_resumable`); ``steps``, ``checkpoint_every``
        and ``log_every`` may differ. Training then continues bit-identically to a run that was
        never interrupted. Resuming ``out_dir``'s own checkpoint lets the trainer write there
        again; rows of its ``loss.csv`` after the checkpoint's step are dropped.

        Raises
        ------
        ~scoresde.CheckpointError
            If the file is unusable (see :func:`load_checkpoint`) or does not fit this trainer.
        """
        if path is None:
            if self.out_dir is None:
                raise ValueError("path is required when the trainer has no out_dir")
            path = self.checkpoint_path
        path = os.fspath(path)
        ckpt = load_checkpoint(path, map_location="cpu")
        check_resumable(ckpt, self.config, self.world_size, path, data_state=self.data.state_dict(),
                        metadata=self.metadata)
        try:
            self.model.load_state_dict(ckpt["model"])
            self.ema.load_state_dict(ckpt["ema"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            rank_state = ckpt["ranks"][self.rank]
            self.data.load_state_dict(rank_state["data"])
            self.loss_generator.set_state(rank_state["loss_generator"])
            losses, step = [float(v) for v in ckpt["losses"]], int(ckpt["step"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
            raise CheckpointError(f"checkpoint {path!r}: does not fit this trainer "
                                  f"({type(err).__name__}: {one_line(err)})") from None
        if len(losses) != step:
            raise CheckpointError(f"checkpoint {path!r}: {len(losses)} losses for step {step}")
        self.step, self.losses, self.resumed_step = step, losses, step
        if self.out_dir is not None and os.path.abspath(path) == os.path.abspath(self.checkpoint_path):
            self._log.truncate(step)
            self._saved_step, self._owns_out_dir = step, True
        return self

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, model: nn.Module, data, loss_fn: LossFn | None = None,
                        sde=None, out_dir: str | os.PathLike | None = None, *, progress: bool = True,
                        overwrite: bool = False, **overrides) -> Trainer:
        """A trainer with the checkpoint's config (``overrides`` may change ``steps``,
        ``checkpoint_every``, ``log_every``), resumed from it."""
        config = checkpoint_config(load_checkpoint(path), os.fspath(path), **overrides)
        trainer = cls(model, data, config, loss_fn=loss_fn, sde=sde, out_dir=out_dir, progress=progress,
                      overwrite=overwrite)
        return trainer.resume(path)

    def close(self) -> None:
        """Close the loss log (the process group, if any, belongs to the entry point)."""
        self._log.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
