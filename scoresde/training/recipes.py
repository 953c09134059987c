r"""The training recipe: the score model a data set gets, its defaults, training it, rebuilding it.

:func:`train_model` is what ``scoresde train`` and ``python -m scoresde.training`` run, with the
one set of defaults :data:`TRAIN_DEFAULTS` (:func:`train_config`). The model is described by a
plain-dict *model spec* (:func:`model_spec`), stored in the checkpoint, from which
:func:`build_model` and :func:`load_model` rebuild the network. Vector data are standardised
per coordinate (:func:`to_model_space`, :func:`from_model_space`), so that data of any scale
meet the unit-scale prior, as recommended by Song & Ermon 2020 ("Improved techniques for
training score-based generative models", https://arxiv.org/abs/2006.09011). With
``conditional=True`` the recipe trains a class-conditional model on labelled data (the digits
and their digit, a reference target and its component; :func:`scoresde.data.data_source`) with
label dropout, for classifier-free guidance (Ho & Salimans 2021, "Classifier-free diffusion
guidance", https://arxiv.org/abs/2207.12598).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .._checks import check_int
from ..data import data_source
from .checkpoint import CheckpointError, load_checkpoint, one_line
from .config import TrainConfig
from .launch import resolve_device
from .trainer import Trainer

__all__ = [
    "TRAIN_DEFAULTS",
    "train_config",
    "model_spec",
    "build_model",
    "load_model",
    "train_model",
    "to_model_space",
    "from_model_space",
]

#: Defaults of the training recipe (``scoresde train``, ``python -m scoresde.training``,
#: :func:`train_model`): a good model of a 2-D data set in about 2 minutes on 2 CPU cores (see
#: benchmarks/bench_training.py for the measured quality). The learning rate decays by a cosine
#: over the steps after the warm-up (:func:`train_config`); ``sde`` and ``hidden`` (the width of
#: the :class:`~scoresde.nets.ScoreMLP`) choose the model (:func:`model_spec`).
TRAIN_DEFAULTS = {
    "steps": 12_000,
    "batch_size": 512,
    "lr": 2e-3,
    "warmup": 100,
    "ema_decay": 0.999,
    "checkpoint_every": 1000,
    "sde": "vp",
    "hidden": 128,
}

#: Points drawn to compute the standardisation of a generated data set in :func:`train_model`.
DEFAULT_STATS_N = 10_000


def train_config(
    steps: int = TRAIN_DEFAULTS["steps"],
    *,
    seed: int = 0,
    checkpoint_every: int = TRAIN_DEFAULTS["checkpoint_every"],
    batch_size: int | None = None,
    lr: float | None = None,
    warmup: int | None = None,
    ema_decay: float | None = None,
    label_dropout: float | None = None,
) -> TrainConfig:
    r"""The :class:`TrainConfig` of the training recipe: :data:`TRAIN_DEFAULTS` for what is not given.

    The learning rate warms up linearly over ``warmup`` updates and then decays by a cosine to
    0 at the last step (``decay_steps = steps - warmup``; see :func:`lr_factor`).

    Examples
    --------
    >>> from scoresde.training import train_config
    >>> cfg = train_config(1000)
    >>> cfg.steps, cfg.batch_size, cfg.warmup, cfg.decay_steps
    (1000, 512, 100, 900)
    """
    d = TRAIN_DEFAULTS
    warmup = d["warmup"] if warmup is None else warmup
    extra = {} if label_dropout is None else {"label_dropout": label_dropout}
    return TrainConfig(steps=steps, batch_size=d["batch_size"] if batch_size is None else batch_size,
                       lr=d["lr"] if lr is None else lr, warmup=warmup,
                       decay_steps=max(steps - warmup, 1),
                       ema_decay=d["ema_decay"] if ema_decay is None else ema_decay, seed=seed,
                       checkpoint_every=checkpoint_every, **extra)


def model_spec(
    data: torch.Tensor,
    sde: str = TRAIN_DEFAULTS["sde"],
    *,
    parameterization: str | None = None,
    hidden: int = TRAIN_DEFAULTS["hidden"],
    n_blocks: int = 3,
    base_channels: int = 32,
    num_classes: int | None = None,
) -> dict:
    r"""A plain-dict description of the score model for data shaped like ``data``.

    Vector data ``(n, d)`` get a :class:`~scoresde.nets.ScoreMLP` and are standardised per
    coordinate (``shift`` = mean, ``scale`` = standard deviation of ``data``), so a user's
    file of any scale meets the unit-scale prior; images ``(n, C, H, W)`` (already in
    ``[-1, 1]``) get a :class:`~scoresde.nets.UNet` and no rescaling. ``num_classes`` (None:
    unconditional) makes the network class-conditional (``num_classes`` labels plus the null
    label). Stored in checkpoints as ``metadata["model"]``; :func:`build_model` and
    :func:`load_model` read it back.

    ``parameterization`` (see :class:`~scoresde.nets.ScoreModel`) defaults to ``"v"`` for
    vectors and ``"eps"`` for images. An ε-network's output is bounded where it saw no
    training data, but far from the data the true :math:`\hat\epsilon \approx x/\sigma` grows
    linearly in :math:`x`; the probability-flow ODE, whose restoring drift is half that of the
    reverse SDE, then carries prior draws from the tails (:math:`|x_T| > 3`) out to :math:`|x| \approx 10`.
    v-prediction contains that linear term exactly (:math:`\hat\epsilon = \sigma x + s\hat v`
    for VP). Measured on moons after 2000 steps: with ``"eps"`` 0.6–1 % of ``heun``, ``ode``,
    ``ddim`` and ``dpm_solver_pp`` samples land at :math:`|x| > 5` (up to 11), none of the SDE
    samplers' do; with ``"v"`` none of either (see "Choosing a sampler" in the docs).

    Examples
    --------
    >>> import torch
    >>> from scoresde.training import model_spec
    >>> spec = model_spec(torch.tensor([[0.0, 10.0], [2.0, 30.0]]), hidden=16)
    >>> spec["kind"], spec["event_shape"], spec["shift"], [round(s, 3) for s in spec["scale"]]
    ('mlp', [2], [1.0, 20.0], [1.414, 14.142])
    """
    from ..sde import SDE_NAMES

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
        "parameterization": parameterization or ("v" if kind == "mlp" else "eps"),
        "hidden": check_int("hidden", hidden),
        "n_blocks": check_int("n_blocks", n_blocks, minimum=0),
        "base_channels": check_int("base_channels", base_channels),
        "shift": shift,
        "scale": scale,
        "num_classes": None if num_classes is None else check_int("num_classes", num_classes),
    }


def _affine(spec: dict, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shift = torch.tensor(spec["shift"], dtype=like.dtype, device=like.device)
    scale = torch.tensor(spec["scale"], dtype=like.dtype, device=like.device)
    if spec["kind"] == "unet":
        return shift.reshape(1), scale.reshape(1)
    return shift, scale


def to_model_space(x: torch.Tensor, spec: dict) -> torch.Tensor:
    r"""Map data to the space the model is trained in: :math:`(x - \text{shift}) / \text{scale}`."""
    shift, scale = _affine(spec, x)
    return (x - shift) / scale


def from_model_space(x: torch.Tensor, spec: dict) -> torch.Tensor:
    r"""Map model samples back to data space: :math:`x \cdot \text{scale} + \text{shift}`."""
    shift, scale = _affine(spec, x)
    return x * scale + shift


def build_model(spec: dict, generator: torch.Generator | None = None) -> nn.Module:
    """The :class:`~scoresde.nets.ScoreModel` described by ``spec`` (see :func:`model_spec`).

    Besides the kinds of :func:`model_spec` (``"mlp"``, ``"unet"``), a ``"diffusers_unet"`` spec
    (:func:`scoresde.interop.training.diffusers_model_spec`) rebuilds a diffusers network from
    its recorded class and config (needs ``pip install scoresde[diffusers]``).
    """
    from ..nets import ScoreMLP, ScoreModel, UNet
    from ..sde import make_sde

    try:
        k = spec.get("num_classes")  # absent in specs written before conditional models
        if spec["kind"] == "mlp":
            net = ScoreMLP(spec["event_shape"][0], hidden=spec["hidden"], n_blocks=spec["n_blocks"],
                           generator=generator, num_classes=k)
        elif spec["kind"] == "unet":
            net = UNet(spec["event_shape"][0], base_channels=spec["base_channels"], generator=generator,
                       num_classes=k)
        elif spec["kind"] == "diffusers_unet":  # a diffusers UNet2DModel (scoresde.interop.training)
            from ..interop.training import build_diffusers_net

            net = build_diffusers_net(spec, generator=generator)
        else:
            raise ValueError(f"unknown model kind {spec['kind']!r}")
        return ScoreModel(net, make_sde(spec["sde"]), parameterization=spec["parameterization"])
    except (KeyError, TypeError, IndexError, AttributeError) as err:
        raise ValueError(f"spec is not a model spec ({type(err).__name__}: {err})") from None


def load_model(path: str | os.PathLike, ema: bool = True) -> tuple[nn.Module, dict]:
    """Rebuild the trained score model of a checkpoint written with a model spec.

    Returns the :class:`~scoresde.nets.ScoreModel` (its EMA weights by default, the ones to
    sample with) in evaluation mode, and the spec (for :func:`from_model_space`).

    Raises
    ------
    ~scoresde.CheckpointError
        If the file is unusable (see :func:`load_checkpoint`), carries no model spec, or its
        weights do not fit the spec.
    """
    ckpt = load_checkpoint(path)
    spec = (ckpt.get("metadata") or {}).get("model")
    if not isinstance(spec, dict):
        raise CheckpointError(f"checkpoint {os.fspath(path)!r}: no model spec in its metadata")
    try:
        model = build_model(spec)
        model.load_state_dict(ckpt["ema"]["module"] if ema else ckpt["model"])
    except (ValueError, RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint {os.fspath(path)!r}: weights do not fit its model spec "
            f"({type(err).__name__}: {one_line(err)})"
        ) from None
    return model.eval(), spec


def _in_model_space(source, spec: dict):
    """A data source (tensor, labelled tuple or sampling function) mapped by :func:`to_model_space`."""
    if isinstance(source, torch.Tensor):
        return to_model_space(source, spec)
    if isinstance(source, tuple):  # labelled (x, y): only x moves
        return to_model_space(source[0], spec), source[1]

    def draw(n, generator=None):
        out = source(n, generator=generator)
        if isinstance(out, tuple):
            return to_model_space(out[0], spec), out[1]
        return to_model_space(out, spec)

    if getattr(source, "num_classes", None) is not None:
        draw.num_classes = source.num_classes  # a labelled sampling function stays recognisable
    return draw


def _num_classes(source, probe_labels: torch.Tensor) -> int:
    """The classes of labelled data: a sampler's ``num_classes``, else the largest label + 1."""
    declared = getattr(source, "num_classes", None)
    return int(declared) if declared is not None else int(probe_labels.max()) + 1


def train_model(
    data,
    out_dir: str | os.PathLike,
    *,
    sde: str = TRAIN_DEFAULTS["sde"],
    config: TrainConfig | None = None,
    hidden: int = TRAIN_DEFAULTS["hidden"],
    resume: bool = False,
    progress: bool = True,
    device: torch.device | str = "cpu",
    data_name: str | None = None,
    overwrite: bool = False,
    conditional: bool = False,
    spec: dict | None = None,
) -> Trainer:
    """Train the default score model of a data set (the recipe behind ``scoresde train``).

    ``data`` is anything :func:`scoresde.data.data_source` accepts, usually a name of
    :func:`~scoresde.data.dataset_names` or a file path. Generated sets give fresh samples
    every batch (standardised with the statistics of a fixed draw of
    ``DEFAULT_STATS_N = 10000`` points); fixed sets (digits, files, tensors) are shuffled
    epochs. The model (:func:`model_spec`) trains with denoising score matching under the
    named SDE; ``out_dir/checkpoint.pt`` holds the spec, so :func:`load_model` rebuilds it.

    Parameters
    ----------
    data : str, os.PathLike, Tensor or callable
        The training data.
    out_dir : str or os.PathLike
        The run folder (``checkpoint.pt``, ``loss.csv``).
    sde : str
        A name of :data:`scoresde.SDE_NAMES`.
    config : ~scoresde.TrainConfig, optional
        Default :func:`train_config` ``()``, the recipe's defaults.
    hidden : int
        Width of the :class:`~scoresde.nets.ScoreMLP` (vector data).
    resume : bool
        Continue ``out_dir/checkpoint.pt`` if it exists (a run that is already complete is
        left as it is).
    progress : bool
        Show a progress bar.
    device : str or torch.device
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"`` (see
        :func:`~scoresde.training.launch.resolve_device`).
    data_name : str, optional
        Recorded in the checkpoint's metadata as ``"data"`` (default: ``data`` when it is a
        name or a path).
    overwrite : bool
        Start afresh when ``out_dir`` holds another run, deleting its checkpoint and log
        (default False: a ``FileExistsError`` unless ``resume`` continues it).
    conditional : bool
        Train a class-conditional model on labelled data (``data`` resolved with
        ``labels=True``: the digits, a reference target's components, or a tuple ``(x, y)``),
        dropping labels with probability ``config.label_dropout`` for classifier-free
        guidance. The number of classes (recorded as the spec's ``num_classes``) is a labelled
        sampler's ``num_classes``, else the largest label + 1 (of all the labels of a fixed
        set, of the statistics draw of a generated one).
    spec : dict, optional
        The model spec to train instead of the data set's default :func:`model_spec` (e.g. a
        diffusers ``UNet2DModel`` from
        :func:`scoresde.interop.training.diffusers_model_spec`); its ``event_shape`` must be
        the data's, and ``sde`` and ``hidden`` are then taken from it (not with ``conditional``).

    Returns
    -------
    Trainer
        The trainer, closed, after its final checkpoint.
    """
    config = train_config() if config is None else config
    device = resolve_device(device)
    source = data_source(data, labels=conditional)
    if isinstance(source, (torch.Tensor, tuple)):  # a fixed set: statistics of all of it
        probe = source
    else:  # a generated set: statistics of a fixed draw
        probe = source(DEFAULT_STATS_N, generator=torch.Generator().manual_seed(0))
    if isinstance(probe, tuple) != bool(conditional):
        raise ValueError("conditional=True needs labelled data (x, y)" if conditional else
                         "data carry labels (x, y): pass conditional=True to train a class-conditional model")
    if spec is None:
        num_classes = _num_classes(source, probe[1]) if conditional else None
        spec = model_spec(probe[0] if conditional else probe, sde, hidden=hidden, num_classes=num_classes)
    elif conditional:
        raise ValueError("spec and conditional=True exclude each other: a given spec is trained unconditionally")
    elif not isinstance(spec, dict) or list(spec.get("event_shape") or ()) != list(probe.shape[1:]):
        got = spec.get("event_shape") if isinstance(spec, dict) else type(spec).__name__
        raise ValueError(f"spec must be a model spec with the data's event_shape {list(probe.shape[1:])}, "
                         f"got {got!r}")
    init = torch.Generator().manual_seed(config.seed)  # same initial weights on every rank
    model = build_model(spec, generator=init).to(device)
    if data_name is None and isinstance(data, (str, os.PathLike)):
        data_name = os.fspath(data)
    trainer = Trainer(model, _in_model_space(source, spec), config, sde=model.sde, out_dir=out_dir,
                      progress=progress, metadata={"model": spec, "data": data_name}, overwrite=overwrite)
    try:
        if resume and os.path.exists(trainer.checkpoint_path):
            trainer.resume()
        trainer.train()  # ends with a checkpoint
    finally:
        trainer.close()
    return trainer
