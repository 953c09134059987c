"""Samplers: interchangeable solvers of the reverse-time SDE and the probability-flow ODE.

Every sampler is a class with a :meth:`~scoresde.samplers.Sampler.run` method, declared
capabilities (:class:`Sampler`) and a name in :data:`SAMPLERS`, a plain ``name -> class`` table
(:mod:`scoresde.samplers.registry`); :func:`scoresde.sample` accepts either. The time grid is a
value the caller passes (:mod:`scoresde.samplers.grids`): a name, a :class:`LogSNRSchedule` or
a tensor of times.
"""

from .._runtime import NonFiniteError
from .adaptive import AdaptiveODE, AdaptiveSDE
from .base import Sampler, SampleResult, tweedie_denoise
from .discrete import DDIM, DDPM, EpsilonScore
from .dpm_solver import DPMSolver, DPMSolverPlusPlus, UniPC
from .driver import sample
from .edm import EDM, DPMSolverPlusPlus2SAncestral, EulerAncestral
from .gits import gits_schedule
from .grids import GRIDS, LogSNRSchedule, resolve_grid, time_grid
from .multistep import DEIS, IPNDM, LMS
from .ode import EulerODE, Heun
from .optimize import optimize_schedule
from .pc import AnnealedLangevin, Corrector, LangevinCorrector, PredictorCorrector, ReverseDiffusion
from .registry import SAMPLERS, names, resolve
from .scipy_ode import ProbabilityFlowODE
from .sde_multistep import DPMSolverPlusPlusSDE, SASolver
from .sde_solvers import EulerMaruyama
from .torchsde_backend import TorchSDE

__all__ = [
    "SAMPLERS",
    "names",
    "resolve",
    "sample",
    "time_grid",
    "resolve_grid",
    "tweedie_denoise",
    "GRIDS",
    "Sampler",
    "SampleResult",
    "NonFiniteError",
    "EulerMaruyama",
    "EulerODE",
    "Heun",
    "ReverseDiffusion",
    "Corrector",
    "LangevinCorrector",
    "AnnealedLangevin",
    "PredictorCorrector",
    "DDPM",
    "DDIM",
    "EpsilonScore",
    "ProbabilityFlowODE",
    "TorchSDE",
    "DPMSolver",
    "DPMSolverPlusPlus",
    "AdaptiveSDE",
    "AdaptiveODE",
    "UniPC",
    "LogSNRSchedule",
    "optimize_schedule",
    "IPNDM",
    "DEIS",
    "LMS",
    "gits_schedule",
    "EDM",
    "EulerAncestral",
    "DPMSolverPlusPlus2SAncestral",
    "DPMSolverPlusPlusSDE",
    "SASolver",
]
