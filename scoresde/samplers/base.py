r"""The sampler protocol: :class:`Sampler` (one update rule and its declared capabilities),
:class:`SampleResult` and Tweedie's denoising step.

A sampler is an object with a ``run`` method that integrates from the first to the last time
of a *given* grid (k-diffusion style: the grid is built outside and passed in, see
:mod:`scoresde.samplers.grids`),

.. code-block:: python

    x0 = sampler.run(sde, score_fn, x_T, times, generator=g, callback=cb)

where ``times`` is a decreasing 1-D float64 CPU tensor from ``T`` to the end time (samplers read
plain floats from it), ``score_fn(x, t)`` is any score estimate, and ``callback(step, t, x)``,
when not ``None``, must be called after each step. The driver :func:`scoresde.sample`
(:mod:`scoresde.samplers.driver`) builds the prior draw and the grid, counts score evaluations,
stops on non-finite values, records trajectories, shows progress and applies the optional final
Tweedie denoising step, identically for every sampler.
"""

from __future__ import annotations

import abc
import importlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._checks import as_time, check_linear
from ..predict import PredictionAdapter, convert
from ..sde import SDE
from .grids import LogSNRSchedule, resolve_grid

__all__ = ["Sampler", "SampleResult", "tweedie_denoise"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, float, torch.Tensor], None]


@dataclass
class SampleResult:
    """What :func:`sample` returns.

    Attributes
    ----------
    samples : Tensor
        Final states, shape ``(batch, *event_shape)``.
    nfe : int
        Number of score evaluations actually made (one batched call counts once).
    trajectory : Tensor or None
        States after each step, shape ``(n_states, batch, *event_shape)``, the prior draw first
        (only with ``trajectory=True``).
    times : Tensor or None
        The time of each trajectory entry.
    """

    samples: torch.Tensor
    nfe: int
    trajectory: torch.Tensor | None = None
    times: torch.Tensor | None = None


class Sampler(abc.ABC):
    """Base class of all samplers: one update rule, driven over a decreasing time grid.

    Subclasses set ``name``, implement :meth:`run` and declare their capabilities as class
    attributes (an instance may override one through a property when it depends on options);
    the driver and the comparison harness read these declarations instead of probing:

    ``order``
        Global order of accuracy in the step size (the weak order for SDE solvers; ``None``
        where no order is defined, e.g. for Langevin dynamics).
    ``nfe_per_step``
        Score evaluations per grid interval; :meth:`nfe` gives the exact count of a run.
    ``stochastic``
        Whether ``run`` draws noise (and so consumes the generator).
    ``adaptive``
        Whether the solver picks its own steps (its NFE does not follow from ``steps``).
    ``needs_linear_sde``
        Whether it needs a :class:`~scoresde.LinearSDE` (``log_snr``, ``scale_std``).
    ``owns_grid``
        Whether it builds its own time grid (and refuses any other), as DDPM does.
    ``default_grid``
        The grid used when :func:`scoresde.sample` gets ``grid=None``: a name from
        :data:`~scoresde.samplers.GRIDS` (``"uniform"`` for most, ``"log_snr"`` for the
        log-SNR solvers) or a :class:`~scoresde.samplers.LogSNRSchedule`.
    ``evaluates_at_end``
        Whether ``run`` evaluates the score at the grid's last time (Heun's second stage,
        Langevin at each level, the FSAL stage of an adaptive pair). Such a sampler refuses a
        grid ending at ``t = 0``, where the score of data on a low-dimensional set is singular.
        The default ``True`` is the safe one; a sampler that never evaluates there declares
        ``False``.
    ``default_denoise``
        The final step :func:`scoresde.sample` takes when its ``denoise`` is not given:
        ``False`` for most, ``"tweedie"`` (Tweedie's step to ``t = 0``, one more score
        evaluation, not counted by :meth:`nfe`) for the samplers whose reference algorithm
        ends on the data prediction at zero noise — EDM's Alg. 2, DPM-Solver++ SDE and
        SA-Solver as k-diffusion and diffusers run them.
    ``zero_noise_end``
        Whether ``run`` can take its last step to a time where σ = 0 (the log-SNR
        is +∞: ``t = 0`` on the VP-type SDEs, where diffusers' loops end), landing
        on the data prediction. Consulted by the driver for samplers that need a
        :class:`~scoresde.LinearSDE` and do not evaluate the score at the end; ``False`` for a
        solver whose last step would need a finite log-SNR step (DPM-Solver's intermediate
        stages).
    """

    name: str = ""
    order: float | None = 1
    nfe_per_step: int = 1
    stochastic: bool = True
    adaptive: bool = False
    needs_linear_sde: bool = False
    owns_grid: bool = False
    default_grid: str | LogSNRSchedule = "uniform"
    evaluates_at_end: bool = True
    zero_noise_end: bool = True
    default_denoise: bool | str = False

    def nfe(self, steps: int) -> int | None:
        """Score evaluations of a run over ``steps`` grid intervals (``None`` when adaptive)."""
        return None if self.adaptive else self.nfe_per_step * steps

    def grid(self, sde: SDE, steps: int | None = None, eps: float | None = None,
             kind=None) -> torch.Tensor:
        """The time grid of a run: ``kind`` (a name, a schedule or a tensor, see
        :func:`~scoresde.samplers.grids.resolve_grid`) or, when ``None``, :attr:`default_grid`.

        A sampler that owns its grid (``owns_grid = True``) overrides this method; one that
        needs a :class:`~scoresde.LinearSDE` refuses any other SDE here, whatever the grid.
        """
        if self.needs_linear_sde:
            check_linear(sde, type(self).__name__)
        return resolve_grid(self.default_grid if kind is None else kind, sde, steps, eps)

    @abc.abstractmethod
    def run(
        self,
        sde: SDE,
        score_fn: ScoreFn,
        x: torch.Tensor,
        times: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        callback: Callback | None = None,
    ) -> torch.Tensor:
        """Integrate from ``times[0]`` to ``times[-1]`` and return the final state."""

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({opts})"




def tweedie_denoise(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, t: float, *, weight: float = 1.0) -> torch.Tensor:
    r"""Tweedie's posterior mean :math:`\mathbb E[x_0 \mid x_t] = (x + \sigma(t)^2 \nabla\log p_t(x)) / s(t)`.

    (Efron 2011, *Tweedie's formula and selection bias*, JASA 106; the final denoising step of
    Jolicoeur-Martineau et al. 2021.) One model evaluation, through
    :class:`~scoresde.predict.PredictionAdapter` (a model that predicts x₀ natively is used as
    it is). With ``weight`` :math:`w` the step is
    :math:`(x + w\,\sigma(t)^2 \nabla\log p_t(x)) / s(t) = (x - w\,\sigma(t)\,\hat\epsilon)/s(t)`;
    :math:`w = \tfrac12` is one Euler step of the probability-flow ODE from ``t`` to 0 in the
    variable :math:`\tilde\sigma^2 = \sigma^2/s^2` (:math:`\mathrm d y / \mathrm d\tilde\sigma^2
    = -\tfrac12 \nabla_y \log p`, :math:`y = x/s`), see :func:`sample`'s ``denoise``.
    """
    weight = float(weight)
    if not (math.isfinite(weight) and weight > 0.0):
        raise ValueError(f"weight must be a positive finite number, got {weight}")
    pred = PredictionAdapter(sde, score_fn, who="tweedie_denoise")
    tt = as_time(t, x.shape[0], sde.T, like=x)
    if weight == 1.0:
        return pred.x0(x, tt)
    s, sigma = sde.scale_std(tt)
    eps = pred.eps(x, tt, s=s, sigma=sigma)
    return convert(weight * eps, x, s, sigma, source="eps", target="x0")


# Names that lived here before the grids, the registry and the driver got their own modules.
_MOVED = {
    "GRIDS": "grids",
    "time_grid": "grids",
    "resolve": "registry",
    "sample": "driver",
}


def __getattr__(name: str):
    if name in _MOVED:
        where = f"scoresde.samplers.{_MOVED[name]}"
        warnings.warn(
            f"scoresde.samplers.base.{name} moved to {where} (import it from scoresde.samplers); "
            "the old location will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(where), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
