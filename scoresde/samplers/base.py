r"""The sampler protocol, time grids and the :func:`sample` driver.

A sampler is an object with a ``run`` method that integrates from the first to the last time
of a *given* grid (k-diffusion style: the grid is built outside and passed in),

.. code-block:: python

    x0 = sampler.run(sde, score_fn, x_T, times, generator=g, callback=cb)

where ``times`` is a decreasing 1-D tensor from ``T`` to the end time, ``score_fn(x, t)``
is any score estimate, and ``callback(step, t, x)`` must be called after each step.
The driver :func:`sample` builds the prior draw and the grid, counts score evaluations,
stops on non-finite states, records trajectories, shows progress and applies the optional
final Tweedie denoising step, identically for every sampler.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._checks import (
    all_finite,
    as_time,
    check_end_time,
    check_int,
    check_positive,
    check_shape,
    check_tensor,
)
from .._runtime import CountingScore, NonFiniteError
from ..predict import PredictionAdapter, convert
from ..sde import SDE

__all__ = ["Sampler", "SampleResult", "sample", "time_grid", "tweedie_denoise", "GRIDS", "NonFiniteError"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, float, torch.Tensor], None]

GRIDS = ("uniform", "quadratic", "log_snr", "edm")


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
    """

    name: str = ""
    order: int | None = 1
    nfe_per_step: int = 1
    stochastic: bool = True
    adaptive: bool = False
    needs_linear_sde: bool = False
    owns_grid: bool = False

    def nfe(self, steps: int) -> int | None:
        """Score evaluations of a run over ``steps`` grid intervals (``None`` when adaptive)."""
        return None if self.adaptive else self.nfe_per_step * steps

    def grid(self, sde: SDE, steps: int, eps: float, kind: str) -> torch.Tensor:
        """The time grid this sampler integrates over; most use :func:`time_grid` unchanged."""
        return time_grid(sde, steps, eps=eps, kind=kind)

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


def time_grid(sde: SDE, steps: int, eps: float = 1e-3, kind: str = "uniform", rho: float = 7.0) -> torch.Tensor:
    r"""A decreasing float64 grid of ``steps + 1`` times from ``T`` down to ``eps``.

    Parameters
    ----------
    sde : SDE
    steps : int
        Number of intervals (>= 1).
    eps : float
        End time in ``(0, T)``. Samplers stop there rather than at 0, where the score of
        data on a low-dimensional set is singular (Song et al. 2021 use 1e-3 for sampling).
    kind : {"uniform", "quadratic", "log_snr", "edm"}
        ``uniform`` — equal steps in ``t``; ``quadratic`` — :math:`t_i = \epsilon + (T-\epsilon)(1-i/N)^2`,
        dense near the data (DDIM's quadratic spacing); ``log_snr`` — equal steps in
        :math:`\lambda = \log(s/\sigma)` (DPM-Solver); ``edm`` — Karras et al. (2022) spacing
        :math:`\sigma_i^{1/\rho}` uniform in the noise-to-signal ratio :math:`\sigma/s = e^{-\lambda}`.
        The last two need a :class:`~scoresde.LinearSDE`.
    rho : float
        Exponent of the ``edm`` grid (7 in the paper).

    Examples
    --------
    >>> import scoresde as sd
    >>> sd.samplers.time_grid(sd.VPSDE(), 4, eps=0.2)
    tensor([1.0000, 0.8000, 0.6000, 0.4000, 0.2000], dtype=torch.float64)
    """
    steps = check_int("steps", steps)
    eps = check_end_time(sde, eps)
    if kind not in GRIDS:
        raise ValueError(f"kind must be one of {GRIDS}, got {kind!r}")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)  # 0 at T, 1 at eps
    if kind == "uniform":
        times = sde.T + (eps - sde.T) * u
    elif kind == "quadratic":
        times = eps + (sde.T - eps) * (1.0 - u) ** 2
    else:
        if not hasattr(sde, "log_snr"):
            raise TypeError(f"the {kind!r} grid needs a LinearSDE (with log_snr), got {type(sde).__name__}")
        ends = torch.tensor([sde.T, eps], dtype=torch.float64)
        lam_T, lam_eps = sde.log_snr(ends).tolist()
        if kind == "log_snr":
            lam = lam_T + (lam_eps - lam_T) * u
        else:
            rho = check_positive("rho", rho)
            hi, lo = math.exp(-lam_T / rho), math.exp(-lam_eps / rho)  # (σ/s)^{1/ρ}
            lam = -rho * torch.log(hi + (lo - hi) * u)
        times = sde.t_from_log_snr(lam)
    times[0], times[-1] = sde.T, eps
    return times


def tweedie_denoise(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, t: float, *, weight: float = 1.0) -> torch.Tensor:
    r"""Tweedie's posterior mean :math:`\mathbb E[x_0 \mid x_t] = (x + \sigma(t)^2 \nabla\log p_t(x)) / s(t)`.

    (Efron 2011; the final denoising step of Jolicoeur-Martineau et al. 2021.) One model evaluation, through
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


def resolve(sampler, options: dict) -> Sampler:
    """A sampler object from a name in the table (with ``options``) or an instance."""
    from . import SAMPLERS, names

    if isinstance(sampler, Sampler):
        if options:
            raise TypeError(
                f"options {sorted(options)} are only accepted with a sampler name; set them on "
                f"the {type(sampler).__name__} object instead"
            )
        return sampler
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; valid names: {', '.join(names())}")
        return SAMPLERS[sampler](**options)
    raise TypeError(f"sampler must be a name or a Sampler instance, got {type(sampler).__name__}")


def sample(
    sde: SDE,
    score_fn: ScoreFn,
    shape,
    sampler: str | Sampler = "euler_maruyama",
    steps: int = 500,
    generator: torch.Generator | None = None,
    *,
    eps: float = 1e-3,
    grid: str = "uniform",
    denoise: bool | str = False,
    trajectory: bool = False,
    callback: Callback | None = None,
    progress: bool = False,
    x_init: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **options,
) -> SampleResult:
    r"""Draw samples by integrating a reverse-time process from the prior at ``T`` to ``eps``.

    Parameters
    ----------
    sde : SDE
        The forward process whose reverse is integrated.
    score_fn : callable
        ``score_fn(x, t) -> tensor like x`` estimating :math:`\nabla_x\log p_t(x)`; ``t`` is a
        ``(batch,)`` tensor.
    shape : tuple of int
        ``(batch, *event_shape)``.
    sampler : str or Sampler
        A name from :func:`scoresde.samplers.names` (``options`` go to its constructor) or a
        sampler object.
    steps : int
        Number of grid intervals (adaptive samplers interpret it as documented on their class).
    generator : torch.Generator, optional
        Source of all randomness: the prior draw and the sampler's noise. The same seed gives
        the same samples whatever ran before.
    eps : float
        End time (default ``1e-3``); see :func:`time_grid`.
    grid : {"uniform", "quadratic", "log_snr", "edm"}
        Spacing of the time grid.
    denoise : bool or {"tweedie", "flow"}
        A final step from ``eps`` to 0 (one more score evaluation). ``True`` or ``"tweedie"``:
        Tweedie's posterior mean :math:`x \leftarrow (x + \sigma^2 \nabla\log p_\epsilon(x))/s`,
        which removes the residual noise of scale :math:`\sigma(\epsilon)` but shrinks a data
        direction of variance :math:`v` by :math:`v/(v + \tilde\sigma^2)` — a bias of the same
        order. ``"flow"``: half that step, :math:`x \leftarrow (x + \tfrac12\sigma^2
        \nabla\log p_\epsilon(x))/s`, the Euler step of the probability-flow ODE to
        :math:`t = 0` in :math:`\tilde\sigma^2 = \sigma^2/s^2`; for Gaussian data its variance
        error is :math:`\tilde\sigma^4 / (4 v (v + \tilde\sigma^2))`, second order. See
        "Choosing a sampler" in the docs for when either pays.
    trajectory : bool
        Keep the state after every step.
    callback : callable, optional
        ``callback(step, t, x)`` after each step.
    progress : bool
        Show a tqdm progress bar.
    x_init : Tensor, optional
        Start here instead of a prior draw (shape must equal ``shape``).
    device, dtype : optional
        Of the prior draw (default: the generator's device, the default dtype).

    Returns
    -------
    SampleResult
        ``samples``, ``nfe`` and, with ``trajectory=True``, ``trajectory`` and ``times``.

    Raises
    ------
    NonFiniteError
        If any state becomes NaN or inf; the message names the step and time.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.zeros(2), torch.eye(2))
    >>> out = sd.sample(sde, target.score_fn(sde), (512, 2), sampler="euler_maruyama",
    ...                 steps=100, generator=torch.Generator().manual_seed(0))
    >>> out.samples.shape, out.nfe
    (torch.Size([512, 2]), 100)
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an SDE, got {type(sde).__name__}")
    if not callable(score_fn):
        raise TypeError("score_fn must be callable as score_fn(x, t)")
    shape = check_shape("shape", shape)
    steps = check_int("steps", steps)
    if not (isinstance(denoise, bool) or denoise in ("tweedie", "flow")):
        raise ValueError(f"denoise must be False, True, 'tweedie' or 'flow', got {denoise!r}")
    solver = resolve(sampler, options)
    times = solver.grid(sde, steps, eps, grid)

    if x_init is None:
        x = sde.prior_sample(shape, generator=generator, device=device, dtype=dtype)
    else:
        check_tensor("x_init", x_init)
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init must have shape {shape}, got {tuple(x_init.shape)}")
        x = x_init.clone()

    label = solver.name or type(solver).__name__
    counted = CountingScore(score_fn, label)
    states = [x.detach().clone()] if trajectory else None
    state_times = [float(times[0])] if trajectory else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(times) - 1, desc=label, leave=False)

    def step_hook(step: int, t: float, x_now: torch.Tensor) -> None:
        counted.step = step
        if not all_finite(x_now):
            raise counted._non_finite("state", t)
        counted.step = step + 1
        if states is not None:
            states.append(x_now.detach().clone())
            state_times.append(float(t))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(t=f"{float(t):.4f}", nfe=counted.calls)
        if callback is not None:
            callback(step, t, x_now)

    try:
        with torch.no_grad():
            x = solver.run(sde, counted, x, times.to(x.device), generator=generator, callback=step_hook)
            if denoise:
                weight = 0.5 if denoise == "flow" else 1.0
                x = tweedie_denoise(sde, counted, x, float(times[-1]), weight=weight)
                step_hook(len(times), float(times[-1]), x)
    finally:
        if bar is not None:
            bar.close()
    return SampleResult(
        samples=x,
        nfe=counted.calls,
        trajectory=torch.stack(states) if states is not None else None,
        times=torch.tensor(state_times, dtype=torch.float64) if states is not None else None,
    )
