"""scoresde: continuous-time score-based generative modelling with SDEs, verified against exact scores.

The public surface (see the API reference):

- forward SDEs: :class:`OU`, :class:`VPSDE`, :class:`SubVPSDE`, :class:`VESDE`, :class:`CosineVPSDE`
  on the bases :class:`SDE` / :class:`LinearSDE`, and :class:`DiscreteSchedule` (DDPM);
- reference targets with exact scores: :class:`GaussianMixture`, :class:`Gaussian` and the named
  ones built by :func:`make_target`;
- samplers behind :func:`sample` (see :mod:`scoresde.samplers`);
- exact log-likelihoods through the probability-flow ODE: :func:`log_likelihood`, :func:`bits_per_dim`;
- sample-quality metrics in :mod:`scoresde.metrics`.
"""

from . import metrics, samplers
from .sde import OU, SDE, VESDE, VPSDE, CosineVPSDE, DiscreteSchedule, LinearSDE, ReverseSDE, SubVPSDE
from .likelihood import bits_per_dim, log_likelihood
from .samplers import SampleResult, sample
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

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "LinearSDE",
    "OU",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "CosineVPSDE",
    "ReverseSDE",
    "DiscreteSchedule",
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
    "log_likelihood",
    "bits_per_dim",
]
