"""Samplers: interchangeable solvers of the reverse-time SDE and the probability-flow ODE.

Every sampler is a class with a :meth:`~scoresde.samplers.Sampler.run` method and a name in
:data:`SAMPLERS`, a plain ``name -> class`` table; :func:`scoresde.sample` accepts either.
"""

from .._runtime import NonFiniteError
from .adaptive import AdaptiveODE, AdaptiveSDE
from .base import GRIDS, Sampler, SampleResult, sample, time_grid, tweedie_denoise
from .discrete import DDIM, DDPM, EpsilonScore
from .dpm_solver import DPMSolver, DPMSolverPlusPlus, UniPC
from .ode import EulerODE, Heun
from .pc import AnnealedLangevin, LangevinCorrector, PredictorCorrector, ReverseDiffusion
from .schedule import LogSNRSchedule, optimize_schedule
from .scipy_ode import ProbabilityFlowODE
from .sde_solvers import EulerMaruyama
from .torchsde_backend import TorchSDE

SAMPLERS: dict[str, type[Sampler]] = {
    "euler_maruyama": EulerMaruyama,
    "euler_ode": EulerODE,
    "heun": Heun,
    "reverse_diffusion": ReverseDiffusion,
    "langevin": LangevinCorrector,
    "pc": PredictorCorrector,
    "annealed_langevin": AnnealedLangevin,
    "ddpm": DDPM,
    "ddim": DDIM,
    "ode": ProbabilityFlowODE,
    "torchsde": TorchSDE,
    "dpm_solver": DPMSolver,
    "dpm_solver_pp": DPMSolverPlusPlus,
    "adaptive_sde": AdaptiveSDE,
    "adaptive_ode": AdaptiveODE,
    "unipc": UniPC,
}


def names() -> list[str]:
    """Every registered sampler name, sorted."""
    return sorted(SAMPLERS)


__all__ = [
    "SAMPLERS",
    "names",
    "sample",
    "time_grid",
    "tweedie_denoise",
    "GRIDS",
    "Sampler",
    "SampleResult",
    "NonFiniteError",
    "EulerMaruyama",
    "EulerODE",
    "Heun",
    "ReverseDiffusion",
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
]
