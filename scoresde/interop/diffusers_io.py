r"""Pretrained diffusers models (``UNet2DModel`` + a DDPM-family scheduler) as an SDE and a score.

:func:`from_diffusers` reads what a diffusers scheduler knows about the model — the training
table :math:`\bar\alpha_\tau` (``alphas_cumprod``, or ``num_train_timesteps`` with
``beta_schedule``/``trained_betas``), ``prediction_type`` and ``variance_type`` — and returns
the :class:`~scoresde.DiscreteVPSDE` of that table with a :class:`~scoresde.interop.ModelWrapper`
around the network. diffusers is an optional dependency (``pip install scoresde[diffusers]``),
imported only when a directory has to be loaded; objects that already exist are read through
their attributes. Nothing is ever downloaded: directories are read with ``local_files_only``.

References
----------
von Platen et al. (2022), *Diffusers: State-of-the-art diffusion models*,
https://github.com/huggingface/diffusers.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..sde import DiscreteVPSDE
from .adapters import ModelWrapper

__all__ = ["from_diffusers", "DIFFUSERS_PREDICTIONS"]

#: diffusers' ``prediction_type`` values and the :class:`ModelWrapper` prediction each is.
DIFFUSERS_PREDICTIONS: tuple[str, ...] = ("epsilon", "v_prediction", "sample")

_LEARNED = ("learned", "learned_range")


def _diffusers():
    try:
        return importlib.import_module("diffusers")
    except ImportError:  # pragma: no cover - the test extra installs diffusers
        raise ImportError(
            "loading a diffusers directory needs the diffusers package: pip install "
            "'scoresde[diffusers]'") from None


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _diffusers_class(name, what: str, path: Path):
    cls = getattr(_diffusers(), str(name), None) if name else None
    if cls is None or not callable(getattr(cls, "from_pretrained", None)):
        raise ValueError(f"{what} in {path} names class {name!r}, which diffusers does not provide")
    return cls


def _load_scheduler_dir(path: Path):
    """A scheduler from a directory holding ``scheduler_config.json`` (or its ``scheduler/``)."""
    for folder in (path, path / "scheduler"):
        cfg_file = folder / "scheduler_config.json"
        if cfg_file.is_file():
            cls = _diffusers_class(_read_json(cfg_file).get("_class_name"), "scheduler_config.json", folder)
            return cls.from_pretrained(str(folder), local_files_only=True)
    raise ValueError(f"scheduler directory {path} holds no scheduler_config.json")


def _load_dir(path: Path, scheduler):
    """(model, scheduler) saved with ``save_pretrained`` in ``path``: a pipeline or a model."""
    if not path.is_dir():
        raise ValueError(f"model directory {path} does not exist")
    index_file = path / "model_index.json"
    if index_file.is_file():
        index = _read_json(index_file)
        entry = index.get("unet")
        if not (isinstance(entry, list) and len(entry) == 2):
            raise ValueError(f"the pipeline in {path} has no unet component (model_index.json)")
        model = _diffusers_class(entry[1], "model_index.json", path).from_pretrained(
            str(path), subfolder="unet", local_files_only=True)
        if scheduler is None:
            if not (path / "scheduler").is_dir():
                raise ValueError(f"the pipeline in {path} has no scheduler component; pass scheduler=")
            scheduler = _load_scheduler_dir(path / "scheduler")
        return model, scheduler
    config_file = path / "config.json"
    if config_file.is_file():
        model = _diffusers_class(_read_json(config_file).get("_class_name"), "config.json", path).from_pretrained(
            str(path), local_files_only=True)
        if scheduler is None and (path / "scheduler_config.json").is_file():
            scheduler = _load_scheduler_dir(path)
        return model, scheduler
    raise ValueError(
        f"{path} holds no diffusers model: expected model_index.json (a pipeline) or config.json "
        "(a model) written by save_pretrained")


def _scheduler_config(scheduler) -> Mapping:
    config = scheduler if isinstance(scheduler, Mapping) else getattr(scheduler, "config", None)
    if not isinstance(config, Mapping):
        raise TypeError(
            "scheduler must be a diffusers scheduler (with .config), its config dict or a directory, "
            f"got {type(scheduler).__name__}")
    return config


def _table(scheduler, config: Mapping) -> DiscreteVPSDE:
    if config.get("rescale_betas_zero_snr"):
        raise ValueError(
            "zero-terminal-SNR schedules (rescale_betas_zero_snr=True) are not supported: the "
            "log-SNR at the last timestep is -inf (see DiscreteVPSDE)")
    N = int(config.get("num_train_timesteps", 1000))
    abar = getattr(scheduler, "alphas_cumprod", None)
    if isinstance(abar, torch.Tensor):
        sde = DiscreteVPSDE(abar)
    elif config.get("trained_betas") is not None:
        sde = DiscreteVPSDE.from_betas(config["trained_betas"])
    else:
        name = config.get("beta_schedule", "linear")
        if name not in DiscreteVPSDE.BETA_SCHEDULES:
            raise ValueError(
                f"beta_schedule must be one of {DiscreteVPSDE.BETA_SCHEDULES} (or trained_betas given), "
                f"got {name!r}")
        sde = DiscreteVPSDE.from_schedule(name, N=N, beta_start=float(config.get("beta_start", 1e-4)),
                                          beta_end=float(config.get("beta_end", 0.02)))
    if sde.N != N:
        raise ValueError(f"the scheduler's table has {sde.N} entries but num_train_timesteps={N}")
    return sde


def _check_model(model, learned: bool) -> None:
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, timestep), got {type(model).__name__}")
    config = getattr(model, "config", None)
    if not isinstance(config, Mapping):
        return
    for key in ("num_class_embeds", "class_embed_type", "cross_attention_dim", "encoder_hid_dim"):
        if config.get(key) is not None:
            raise ValueError(
                f"conditional models are not supported (the model's config sets {key}); wrap it "
                "in a callable net(x, timestep) that supplies the condition")
    c_in, c_out = config.get("in_channels"), config.get("out_channels")
    if isinstance(c_in, int) and isinstance(c_out, int) and c_out != c_in * (2 if learned else 1):
        kind = "a learned variance: 2 x in_channels" if learned else "in_channels"
        raise ValueError(
            f"the model's output shape must equal its input shape: out_channels={c_out} must be "
            f"{kind} ({c_in * (2 if learned else 1)})")


def from_diffusers(model, scheduler=None, *, time_input: str = "fractional"):
    r"""An SDE and a score function from a diffusers model and its scheduler.

    .. code-block:: python

        sde, score_fn = sd.interop.from_diffusers(unet, scheduler)   # or a pipeline, or a directory
        times = torch.cat([sde.timestep_to_time(scheduler.timesteps), torch.zeros(1)])
        out = sd.sample(sde, score_fn, shape, sampler="ddim", grid=times, x_init=x_T)

    The SDE is the :class:`~scoresde.DiscreteVPSDE` of the scheduler's table
    :math:`\bar\alpha_\tau` (its ``alphas_cumprod`` as diffusers computes it, or else
    ``trained_betas`` / ``beta_schedule`` with ``beta_start``, ``beta_end`` and
    ``num_train_timesteps``), on which timestep :math:`\tau` is time :math:`(\tau + 1)/N`. The
    score function is a :class:`~scoresde.interop.ModelWrapper` reading the network's output as
    ``prediction_type`` (``"epsilon"``, ``"v_prediction"`` or ``"sample"``) and dropping the
    variance channels of ``variance_type`` ``"learned"``/``"learned_range"``; it predicts
    natively, so DDIM and DPM-Solver++ use :math:`\hat\epsilon`/:math:`\hat x_0` from one
    network call. Sampling-time options of diffusers' loops (``clip_sample``, ``thresholding``,
    the timestep spacing) are not part of the model and are not read: pass the grid you want.

    Parameters
    ----------
    model : nn.Module, pipeline or path
        A ``UNet2DModel``-like module (``model(x, timestep)`` returning ``.sample`` or a
        tensor), a pipeline object (its ``.unet`` and ``.scheduler`` are used), or a local
        directory written by ``save_pretrained`` — a pipeline (``model_index.json``; its
        ``unet/`` and ``scheduler/``) or a model (``config.json``, with a
        ``scheduler_config.json`` beside it or ``scheduler=``). Read with
        ``local_files_only=True``: nothing is downloaded.
    scheduler : scheduler, dict or path, optional
        A diffusers scheduler (``DDPMScheduler``, ``DDIMScheduler``,
        ``DPMSolverMultistepScheduler``, …), its config dict, or a directory holding its
        ``scheduler_config.json``. Required with a bare model; overrides a pipeline's.
    time_input : {"fractional", "integer", "continuous"}
        What the network is fed (see :class:`~scoresde.interop.ModelWrapper`); diffusers' U-Nets
        accept fractional timesteps.

    Returns
    -------
    sde : DiscreteVPSDE
    score_fn : ModelWrapper

    Raises
    ------
    ValueError
        One line naming what cannot be represented: an unknown ``prediction_type`` or
        ``beta_schedule``, a zero-terminal-SNR or non-monotone table, a model whose output
        shape differs from its input shape, a conditional model, a directory without a model.
    TypeError
        When the model is not callable or no scheduler is given with a bare model.
    ImportError
        When a directory is given and diffusers is not installed.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> config = {"num_train_timesteps": 1000, "beta_schedule": "linear",
    ...           "prediction_type": "v_prediction"}
    >>> sde, score_fn = sd.interop.from_diffusers(lambda x, tau: torch.zeros_like(x), config)
    >>> sde.N, score_fn.parameterization
    (1000, 'v')
    """
    if isinstance(model, (str, os.PathLike)):
        if isinstance(scheduler, (str, os.PathLike)):
            scheduler = _load_scheduler_dir(Path(scheduler))
        model, scheduler = _load_dir(Path(model), scheduler)
    elif hasattr(model, "unet") and hasattr(model, "scheduler") and not isinstance(model, torch.nn.Module):
        scheduler = model.scheduler if scheduler is None else scheduler
        model = model.unet
    if isinstance(scheduler, (str, os.PathLike)):
        scheduler = _load_scheduler_dir(Path(scheduler))
    if scheduler is None:
        raise TypeError("scheduler is required with a bare model (a diffusers scheduler, its config or a directory)")
    config = _scheduler_config(scheduler)
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in DIFFUSERS_PREDICTIONS:
        raise ValueError(f"prediction_type must be one of {DIFFUSERS_PREDICTIONS}, got {prediction!r}")
    learned = config.get("variance_type") in _LEARNED
    _check_model(model, learned)
    sde = _table(scheduler, config)
    return sde, ModelWrapper(model, sde, prediction=prediction, time_input=time_input,
                             learned_variance=learned)
