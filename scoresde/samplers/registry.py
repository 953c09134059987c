"""The one name table of the samplers and the one place a name becomes a sampler object.

:data:`SAMPLERS` is a plain ``name -> class`` dict (no registration decorators, no mutable
module state to patch); :func:`resolve` is what :func:`scoresde.sample`, the predictor–corrector
sampler, :func:`~scoresde.samplers.optimize_schedule` and the comparison harness call.
"""

from __future__ import annotations

from .adaptive import AdaptiveODE, AdaptiveSDE
from .base import Sampler
from .discrete import DDIM, DDPM
from .dpm_solver import DPMSolver, DPMSolverPlusPlus, UniPC
from .edm import EDM, DPMSolverPlusPlus2SAncestral, EulerAncestral
from .multistep import DEIS, IPNDM, LMS
from .ode import EulerODE, Heun
from .pc import AnnealedLangevin, LangevinCorrector, PredictorCorrector, ReverseDiffusion
from .scipy_ode import ProbabilityFlowODE
from .sde_multistep import DPMSolverPlusPlusSDE, SASolver
from .sde_solvers import EulerMaruyama
from .torchsde_backend import TorchSDE

__all__ = ["SAMPLERS", "names", "resolve"]

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
    "ipndm": IPNDM,
    "deis": DEIS,
    "lms": LMS,
    "edm": EDM,
    "euler_ancestral": EulerAncestral,
    "dpm_solver_pp_2s_ancestral": DPMSolverPlusPlus2SAncestral,
    "dpm_solver_pp_sde": DPMSolverPlusPlusSDE,
    "sa_solver": SASolver,
}
"""Every sampler name accepted by :func:`scoresde.sample`, mapped to its class."""


def names() -> list[str]:
    """Every registered sampler name, sorted.

    Examples
    --------
    >>> from scoresde.samplers import names
    >>> names()[:3]
    ['adaptive_ode', 'adaptive_sde', 'annealed_langevin']
    """
    return sorted(SAMPLERS)


def resolve(sampler, options: dict | None = None, *, role: str = "sampler") -> Sampler:
    """A sampler object from a name in :data:`SAMPLERS` (built with ``options``) or an instance.

    Parameters
    ----------
    sampler : str or Sampler
        A registered name or a sampler object (then ``options`` must be empty).
    options : dict, optional
        Keyword arguments of the class constructor, only with a name.
    role : str
        How the argument is called in error messages (``"sampler"``, ``"predictor"``).

    Examples
    --------
    >>> from scoresde.samplers import resolve
    >>> resolve("heun", {"euler_last": True})
    Heun(euler_last=True)
    """
    options = {} if options is None else options
    if isinstance(sampler, Sampler):
        if options:
            raise TypeError(
                f"options {sorted(options)} are only accepted with a {role} name; set them on "
                f"the {type(sampler).__name__} object instead"
            )
        return sampler
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown {role} {sampler!r}; valid names: {', '.join(names())}")
        return SAMPLERS[sampler](**options)
    raise TypeError(f"{role} must be a name or a Sampler instance, got {type(sampler).__name__}")
