"""scoresde: continuous-time score-based generative modelling with SDEs, verified against exact scores.

The public surface (see the API reference):

- forward SDEs: :class:`OU`, :class:`VPSDE`, :class:`SubVPSDE`, :class:`VESDE`, :class:`CosineVPSDE`
  on the bases :class:`SDE` / :class:`LinearSDE`, and :class:`DiscreteSchedule` (DDPM);
- reference targets with exact scores: :class:`GaussianMixture`, :class:`Gaussian` and the named
  ones built by :func:`make_target`;
- samplers behind :func:`sample` (see :mod:`scoresde.samplers`);
- exact log-likelihoods through the probability-flow ODE: :func:`log_likelihood`, :func:`bits_per_dim`;
- score networks (:class:`ScoreMLP`, :class:`UNet`, :class:`ScoreModel`) and score-matching
  losses (:func:`dsm_loss` and friends), trained by :class:`Trainer` on :mod:`scoresde.data`;
- sample-quality metrics in :mod:`scoresde.metrics` and the sampler comparison harness in
  :mod:`scoresde.compare` (figures in :mod:`scoresde.plotting`).
"""

import importlib

from . import data, interop, losses, metrics, nets, noise, predict, samplers, stepping
from . import sde as _sde_module
from ._runtime import NonFiniteError
from .binomial import BinomialDiffusion
from .elbo import ELBOResult, ddpm_elbo, elbo
from .likelihood import LikelihoodResult, bits_per_dim, flow_likelihood, log_likelihood
from .losses import (
    ddpm_loss,
    dsm_loss,
    edm_loss,
    explicit_score_matching_loss,
    implicit_score_matching_loss,
    sliced_score_matching_loss,
)
from .nets import GaussianFourierEmbedding, ScoreMLP, ScoreModel, UNet
from .noise import PerSampleGenerator
from .samplers import SampleResult, sample
from .sde import (
    EDMSDE,
    OU,
    SDE,
    VESDE,
    VPSDE,
    CosineVPSDE,
    DiscreteSchedule,
    DiscreteVPSDE,
    LinearSDE,
    ReverseSDE,
    SubVPSDE,
    make_sde,
)
from .targets import (
    Gaussian,
    GaussianMixture,
    anisotropic_64d,
    correlated_gaussian,
    imbalanced_2d,
    make_target,
    ring8,
    target_names,
)

#: Short names of the built-in SDEs, accepted by :func:`make_sde` and by ``--sde`` on the command line.
SDE_NAMES: tuple[str, ...] = _sde_module.SDE_NAMES

# Heavy parts load on first use (PEP 562), so that ``import scoresde; sd.sample(...)`` imports
# neither matplotlib nor the comparison harness nor the trainer (and its torch.distributed use).
_LAZY_MODULES = ("compare", "plotting", "training")
_LAZY_NAMES = {
    "Trainer": "training",
    "TrainConfig": "training",
    "CheckpointError": "training",
    "load_checkpoint": "training",
}


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        module = importlib.import_module(f".{name}", __name__)
    elif name in _LAZY_NAMES:
        module = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = module  # later look-ups skip this function
    return module


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = [
    "SDE",
    "LinearSDE",
    "OU",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "CosineVPSDE",
    "DiscreteVPSDE",
    "EDMSDE",
    "ReverseSDE",
    "DiscreteSchedule",
    "SDE_NAMES",
    "make_sde",
    "GaussianMixture",
    "Gaussian",
    "ring8",
    "imbalanced_2d",
    "anisotropic_64d",
    "correlated_gaussian",
    "make_target",
    "target_names",
    "metrics",
    "samplers",
    "sample",
    "SampleResult",
    "NonFiniteError",
    "log_likelihood",
    "flow_likelihood",
    "LikelihoodResult",
    "bits_per_dim",
    "elbo",
    "ddpm_elbo",
    "ELBOResult",
    "BinomialDiffusion",
    "ScoreMLP",
    "UNet",
    "ScoreModel",
    "GaussianFourierEmbedding",
    "dsm_loss",
    "ddpm_loss",
    "edm_loss",
    "sliced_score_matching_loss",
    "implicit_score_matching_loss",
    "explicit_score_matching_loss",
    "Trainer",
    "TrainConfig",
    "CheckpointError",
    "load_checkpoint",
    "compare",
    "data",
    "interop",
    "losses",
    "nets",
    "noise",
    "PerSampleGenerator",
    "plotting",
    "predict",
    "stepping",
    "training",
]
