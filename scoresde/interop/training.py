r"""Image-scale networks from diffusers as scoresde score networks: train, checkpoint, rebuild.

A diffusers ``UNet2DModel`` (von Platen et al. 2022, the U-Net of Ho et al. 2020 with the
options of later work) is called as ``unet(x, timestep).sample``; scoresde's networks are called
as ``net(x, t)``. :class:`DiffusersUNet` is the one-line bridge, with a documented time scaling

.. math:: \text{timestep} = a\,t + b, \qquad a = \texttt{time\_scale},\ b = \texttt{time\_shift},

where :math:`t` is what :class:`~scoresde.nets.ScoreModel` passes (:math:`t/T \in [0, 1]` by
default). The default :math:`a = 999, b = 0` maps :math:`[0, 1]` onto the integer range
:math:`0 \dots 999` that diffusers' sinusoidal timestep embedding was designed for (the same
labels as the continuous VP models of Song et al. 2021, ``labels = t * 999``); fractional
timesteps are fine, the embedding is continuous in its input. For a network pretrained on a
1000-step discrete table, whose timestep :math:`\tau` sits at :math:`t_\tau = (\tau + 1)/N`
(:class:`scoresde.DiscreteVPSDE`), use :math:`a = N, b = -1`.

Wrapped in :class:`~scoresde.nets.ScoreModel` it takes any parameterisation (ε, x₀, v, score),
trains with :class:`~scoresde.training.Trainer` and samples with every sampler. Its *model spec*
(:func:`diffusers_model_spec`) records the diffusers class and its ``config`` as a plain dict,
so that :func:`scoresde.training.load_model` and ``scoresde sample`` rebuild the network from a
checkpoint loaded with ``torch.load(weights_only=True)``; nothing but tensors and plain values
is stored. diffusers is an optional dependency (``pip install scoresde[diffusers]``), imported
when a function here first needs it. The small built-in :class:`~scoresde.nets.UNet` stays the
network for CPU work.

Examples
--------
>>> import torch
>>> from diffusers import UNet2DModel
>>> from scoresde.interop.training import diffusers_score_model
>>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
...                    layers_per_block=1, norm_num_groups=8,
...                    down_block_types=("DownBlock2D", "DownBlock2D"),
...                    up_block_types=("UpBlock2D", "UpBlock2D"))
>>> model, spec = diffusers_score_model(unet, "vp", parameterization="eps")
>>> model(torch.randn(2, 1, 8, 8), 0.5).shape
torch.Size([2, 1, 8, 8])
>>> spec["kind"], spec["event_shape"], spec["diffusers_class"], spec["time_scale"]
('diffusers_unet', [1, 8, 8], 'UNet2DModel', 999.0)

References
----------
Ho, Jain & Abbeel (2020), *Denoising diffusion probabilistic models*, NeurIPS.
von Platen et al. (2022), *Diffusers: state-of-the-art diffusion models*,
https://github.com/huggingface/diffusers. Song et al. (2021), *Score-based generative modeling
through stochastic differential equations*, ICLR.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import check_positive

__all__ = [
    "DIFFUSERS_EXTRA",
    "DiffusersUNet",
    "diffusers_model_spec",
    "diffusers_score_model",
    "build_diffusers_net",
    "import_diffusers",
    "LocalModel",
    "load_local_model",
]

#: The pip extra that installs diffusers.
DIFFUSERS_EXTRA = "pip install scoresde[diffusers]"

# default time scaling: t in [0, 1] -> timestep in [0, 999] (Song et al. 2021, labels = 999 t)
_TIME_SCALE = 999.0


def import_diffusers(purpose: str = "this"):
    """The ``diffusers`` module, or an ``ImportError`` naming the extra that installs it."""
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - the test extra installs diffusers
        raise ImportError(f"diffusers is needed for {purpose}: {DIFFUSERS_EXTRA} ({err})") from None
    return diffusers


def _config_of(unet) -> dict | None:
    config = getattr(unet, "config", None)
    if config is None:
        return None
    try:
        return dict(config)
    except (TypeError, ValueError):
        return None


class DiffusersUNet(nn.Module):
    r"""A diffusers ``UNet2DModel`` called as a scoresde network ``net(x, t)``.

    .. math:: \text{net}(x, t) = \text{unet}\big(x,\ a\,t + b\big)\texttt{.sample},

    with :math:`a` = ``time_scale`` and :math:`b` = ``time_shift`` (see
    :mod:`scoresde.interop.training` for the choice of the default :math:`a = 999, b = 0`).
    The wrapper adds one multiply-add on a ``(batch,)`` vector per call; the network's
    parameters are the U-Net's (registered as the sub-module ``unet``), so ``state_dict`` keys
    are ``unet.<diffusers key>``.

    Parameters
    ----------
    unet : nn.Module
        Called as ``unet(x, timestep)`` with ``timestep`` a ``(batch,)`` float tensor, returning
        an object with a ``.sample`` tensor (diffusers) or the tensor itself, shaped like ``x``.
        A diffusers ``config`` is checked: ``out_channels`` must equal ``in_channels`` (a
        learned-variance network's extra channels are not trained by denoising score
        matching; sample such a model through :func:`scoresde.interop.from_diffusers`) and the
        network must not be class-conditional.
    time_scale : float
        :math:`a` (> 0).
    time_shift : float
        :math:`b`.

    Examples
    --------
    >>> import torch
    >>> from scoresde.interop.training import DiffusersUNet
    >>> class Probe(torch.nn.Module):           # any (x, timestep) network
    ...     def forward(self, x, timestep):
    ...         return x * 0 + timestep[:, None, None, None]
    >>> DiffusersUNet(Probe())(torch.zeros(2, 1, 2, 2), torch.tensor([0.0, 1.0]))[:, 0, 0, 0]
    tensor([  0., 999.])
    """

    def __init__(self, unet: nn.Module, time_scale: float = _TIME_SCALE, time_shift: float = 0.0):
        super().__init__()
        if not isinstance(unet, nn.Module):
            raise TypeError(f"unet must be an nn.Module called as unet(x, timestep), got {type(unet).__name__}")
        config = _config_of(unet)
        if config is not None:
            cin, cout = config.get("in_channels"), config.get("out_channels")
            if cin is not None and cout is not None and cin != cout:
                raise ValueError(
                    f"unet must have out_channels == in_channels, got {cout} and {cin} (a learned-variance "
                    "network is sampled through scoresde.interop.from_diffusers, not trained here)")
            if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
                raise ValueError("unet must not be class-conditional (class_embed_type and num_class_embeds "
                                 "must be None): scoresde's score networks take (x, t) only")
        self.unet = unet
        self.time_scale = check_positive("time_scale", time_scale)
        if not isinstance(time_shift, (int, float)) or isinstance(time_shift, bool) \
                or not math.isfinite(time_shift):
            raise ValueError(f"time_shift must be a finite float, got {time_shift!r}")
        self.time_shift = float(time_shift)

    def extra_repr(self) -> str:
        return f"timestep = {self.time_scale:g} * t + {self.time_shift:g}"

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        r"""The diffusers timestep :math:`a\,t + b` of the network time ``t``."""
        return t * self.time_scale + self.time_shift

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """``unet(x, timestep(t)).sample`` for images ``x`` and times ``t`` (float or ``(batch,)``)."""
        if not isinstance(t, torch.Tensor) or t.ndim == 0:
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        out = self.unet(x, self.timestep(t))
        out = getattr(out, "sample", out)
        return out[0] if isinstance(out, tuple) else out


# -- model specs -----------------------------------------------------------------------------


def _plain(value, key: str):
    """A config value as plain JSON-like data (tuples become lists); refuses anything else."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, key) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, key) for k, v in value.items()}
    raise ValueError(f"unet.config[{key!r}] must be a plain value (None, bool, number, str, list), "
                     f"got {type(value).__name__}")


def _event_shape(config: dict) -> list[int]:
    size = config.get("sample_size")
    channels = config.get("in_channels")
    if isinstance(size, int):
        size = [size, size]
    if not (isinstance(channels, int) and isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(s, int) and s > 0 for s in size)):
        raise ValueError(f"unet.config must give in_channels and sample_size (an int or a pair), got "
                         f"in_channels={channels!r}, sample_size={config.get('sample_size')!r}")
    return [channels, *size]


def diffusers_model_spec(
    unet: nn.Module,
    sde: str = "vp",
    *,
    parameterization: str = "eps",
    time_scale: float = _TIME_SCALE,
    time_shift: float = 0.0,
) -> dict:
    """The plain-dict model spec (``kind="diffusers_unet"``) of a diffusers network.

    Stored in a checkpoint as ``metadata["model"]`` (as :class:`~scoresde.training.Trainer`'s
    ``metadata``), it lets :func:`scoresde.training.build_model` and
    :func:`~scoresde.training.load_model` rebuild the model: ``diffusers_class`` (e.g.
    ``"UNet2DModel"``) and ``diffusers_config`` (``unet.config`` as a plain dict, without
    diffusers' private ``_`` keys), ``event_shape`` ``[C, H, W]`` from ``in_channels`` and
    ``sample_size``, the SDE name, the parameterisation, the time scaling of
    :class:`DiffusersUNet`, and ``shift``/``scale`` ``[0.0]``/``[1.0]`` (images are used in
    ``[-1, 1]`` as they are).

    Parameters
    ----------
    unet : nn.Module
        A diffusers model with a ``config`` (``UNet2DModel``).
    sde : str
        A name of :data:`scoresde.SDE_NAMES`.
    parameterization : {"eps", "score", "x0", "v"}
        How :class:`~scoresde.nets.ScoreModel` reads the output.
    time_scale, time_shift : float
        Of :class:`DiffusersUNet`.
    """
    from ..nets import PARAMETERIZATIONS
    from ..sde import SDE_NAMES

    config = _config_of(unet)
    if config is None:
        raise TypeError(f"unet must be a diffusers model with a config, got {type(unet).__name__}")
    if sde not in SDE_NAMES:
        raise ValueError(f"sde must be one of {', '.join(SDE_NAMES)}, got {sde!r}")
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
    DiffusersUNet(unet, time_scale, time_shift)  # the same checks as the network it describes
    plain = {k: _plain(v, k) for k, v in config.items() if not str(k).startswith("_")}
    return {
        "kind": "diffusers_unet",
        "event_shape": _event_shape(plain),
        "sde": sde,
        "parameterization": parameterization,
        "diffusers_class": type(unet).__name__,
        "diffusers_config": plain,
        "time_scale": float(time_scale),
        "time_shift": float(time_shift),
        "shift": [0.0],
        "scale": [1.0],
    }


def build_diffusers_net(spec: dict, generator: torch.Generator | None = None) -> DiffusersUNet:
    """The :class:`DiffusersUNet` of a ``"diffusers_unet"`` model spec (:func:`diffusers_model_spec`).

    The class is looked up in diffusers and must be a diffusers ``ModelMixin``; it is built with
    ``from_config`` (no file, nothing downloaded). diffusers initialises the weights from
    torch's global random stream: they are drawn inside :func:`torch.random.fork_rng` from a
    seed taken from ``generator`` (0 without one), so the same generator gives the same
    network and the caller's global random state is left as it was.
    """
    diffusers = import_diffusers("a diffusers_unet model")
    name = spec["diffusers_class"]
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise ValueError(f"spec['diffusers_class'] must name a diffusers model class (e.g. 'UNet2DModel'), "
                         f"got {name!r}")
    config = spec["diffusers_config"]
    if not isinstance(config, dict):
        raise ValueError(f"spec['diffusers_config'] must be a dict, got {type(config).__name__}")
    seed = 0 if generator is None else int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = cls.from_config(config)
    return DiffusersUNet(unet, spec["time_scale"], spec["time_shift"])


def diffusers_score_model(
    unet: nn.Module,
    sde: str = "vp",
    *,
    parameterization: str = "eps",
    time_scale: float = _TIME_SCALE,
    time_shift: float = 0.0,
):
    r"""A :class:`~scoresde.nets.ScoreModel` around a diffusers network, and its model spec.

    ``ScoreModel(DiffusersUNet(unet, time_scale, time_shift), make_sde(sde), parameterization)``
    (the network sees :math:`a\,t/T + b`) together with :func:`diffusers_model_spec` of the same
    settings: pass the spec as ``metadata={"model": spec}`` to
    :class:`~scoresde.training.Trainer` (or use :func:`scoresde.training.train_model` with
    ``spec=``) and :func:`~scoresde.training.load_model` rebuilds the trained model.

    Returns
    -------
    model : ScoreModel
    spec : dict
    """
    from ..nets import ScoreModel
    from ..sde import make_sde

    spec = diffusers_model_spec(unet, sde, parameterization=parameterization, time_scale=time_scale,
                                time_shift=time_shift)
    net = DiffusersUNet(unet, time_scale, time_shift)
    return ScoreModel(net, make_sde(sde), parameterization=parameterization), spec


# -- any local model -------------------------------------------------------------------------


@dataclass
class LocalModel:
    """A model read from disk, ready for :func:`scoresde.sample` and the reference comparison.

    Attributes
    ----------
    sde : SDE
        Its forward process.
    score_fn : callable
        ``score_fn(x, t)`` (a :class:`~scoresde.nets.ScoreModel`, or the adapter of
        :func:`scoresde.interop.from_diffusers`).
    event_shape : tuple of int
        The shape of one sample.
    to_data : callable
        Maps model-space samples to data space (the de-standardisation of a scoresde
        checkpoint; the identity for diffusers models, whose images live in ``[-1, 1]``).
    eps : float
        The end time to sample to: ``1e-3`` for scoresde's SDEs, the time of timestep 0
        (:math:`t_0 = 1/N`) for a discrete-time diffusers model.
    kind : {"scoresde", "diffusers"}
    path : str
        The file or directory it was read from.
    """

    sde: object
    score_fn: Callable
    event_shape: tuple
    to_data: Callable
    eps: float
    kind: str
    path: str


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _diffusers_unet_config(folder: str) -> dict | None:
    """The UNet config of a ``save_pretrained`` folder: a pipeline's ``unet/`` or the model's own."""
    for sub in ("unet", ""):
        config = _read_json(os.path.join(folder, sub, "config.json"))
        if config is not None and "in_channels" in config:
            return config
    return None


def load_local_model(path: str | os.PathLike, device: torch.device | str | None = None) -> LocalModel:
    """Read a local model: a scoresde checkpoint (or run folder) or a diffusers ``save_pretrained`` folder.

    - a file, or a folder holding ``checkpoint.pt``: :func:`scoresde.training.load_model` (EMA
      weights, ``torch.load(weights_only=True)``);
    - a folder with ``model_index.json`` (a pipeline) or a model ``config.json``:
      :func:`scoresde.interop.from_diffusers` on the folder (read with ``local_files_only``;
      nothing is downloaded); the sample shape comes from the UNet's ``in_channels`` and
      ``sample_size``.

    This is what ``scoresde sample --model`` and ``scoresde compare --model`` read.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If it is neither kind of model.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path {path!r} does not exist")
    checkpoint = os.path.join(path, "checkpoint.pt") if os.path.isdir(path) else path
    if os.path.isfile(checkpoint):
        from ..training import from_model_space, load_model

        model, spec = load_model(checkpoint)
        if device is not None:
            model = model.to(device)

        def to_data(x, spec=spec):
            return from_model_space(x, spec)

        return LocalModel(model.sde, model, tuple(spec["event_shape"]), to_data, 1e-3, "scoresde", checkpoint)
    config = _diffusers_unet_config(path)
    if config is None:
        raise ValueError(f"model path {path!r} is neither a scoresde checkpoint (or a run folder with "
                         "checkpoint.pt) nor a diffusers save_pretrained folder (model_index.json or "
                         "config.json)")
    try:
        from . import from_diffusers
    except ImportError:  # pragma: no cover - from_diffusers is issue 13 part A
        raise ImportError("reading a diffusers folder needs scoresde.interop.from_diffusers") from None
    sde, score_fn = from_diffusers(path)
    if device is not None and isinstance(score_fn, nn.Module):
        score_fn = score_fn.to(device)
    event = tuple(_event_shape(config))
    eps = float(torch.as_tensor(sde.timestep_to_time(torch.zeros(1))).reshape(-1)[0]) \
        if hasattr(sde, "timestep_to_time") else 1e-3
    return LocalModel(sde, score_fn, event, _identity, eps, "diffusers", path)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x
