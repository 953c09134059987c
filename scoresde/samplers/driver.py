r"""The :func:`sample` driver: one loop around every sampler.

It resolves the sampler (:mod:`scoresde.samplers.registry`) and the time grid
(:mod:`scoresde.samplers.grids`), draws the prior, counts and checks score evaluations
(:class:`scoresde._runtime.CountingScore`), records trajectories, shows progress and applies the
optional final denoising step, identically for every sampler.
"""

from __future__ import annotations

import torch

from .._checks import all_finite, check_int, check_shape, check_tensor
from .._runtime import CountingScore
from ..sde import SDE
from .base import Callback, Sampler, SampleResult, ScoreFn, tweedie_denoise
from .grids import DEFAULT_STEPS
from .registry import resolve

__all__ = ["sample"]


def _times(solver: Sampler, sde: SDE, grid, steps: int | None, eps: float | None) -> torch.Tensor:
    """The grid of this run, after checking it suits the solver."""
    label = solver.name or type(solver).__name__
    if solver.owns_grid:
        if grid is not None:
            shown = f"a {type(grid).__name__}" if not isinstance(grid, str) else repr(grid)
            raise ValueError(
                f"{label} owns its time grid (built from the SDE's discrete schedule for the "
                f"given steps), so no other kind of grid can be used: grid must be None, got {shown}"
            )
        return solver.grid(sde, DEFAULT_STEPS if steps is None else steps, eps)
    times = solver.grid(sde, steps, eps, grid)
    if float(times[-1]) == 0.0:
        if solver.evaluates_at_end:
            raise ValueError(
                f"{label} evaluates the score at the last grid time, so the grid must end at "
                "t > 0 (the score of the data distribution at t = 0 may be singular); end it "
                "at a small eps instead"
            )
        if (solver.needs_linear_sde and not solver.zero_noise_end
                and not bool(torch.isfinite(sde.log_snr(times[-1:])).all())):
            raise ValueError(
                f"{label} steps in log-SNR, which is infinite at t = 0 for this SDE; end the "
                "grid at t > 0"
            )
    return times


def sample(
    sde: SDE,
    score_fn: ScoreFn,
    shape,
    sampler: str | Sampler = "euler_maruyama",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    *,
    eps: float | None = None,
    grid=None,
    denoise: bool | str | None = None,
    trajectory: bool = False,
    callback: Callback | None = None,
    progress: bool = False,
    check_finite: bool = True,
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
    steps : int, optional
        Number of grid intervals (default 500; adaptive samplers choose their own steps and
        use only the grid's end points). With a tensor ``grid`` its length sets the steps.
    generator : torch.Generator, optional
        Source of all randomness: the prior draw and the sampler's noise. The same seed gives
        the same samples whatever ran before.
    eps : float, optional
        End time (default ``1e-3``); see :func:`~scoresde.samplers.time_grid`. With a tensor
        ``grid`` its last time is the end time.
    grid : None, str, LogSNRSchedule or Tensor
        The time grid, for every sampler: ``None`` — the sampler's declared
        :attr:`~scoresde.samplers.Sampler.default_grid` (``"uniform"`` for most, ``"log_snr"``
        for DPM-Solver, DPM-Solver++ and UniPC); a name from
        :data:`~scoresde.samplers.GRIDS` (never overridden by the sampler); a
        :class:`~scoresde.samplers.LogSNRSchedule`; or an explicit strictly decreasing 1-D
        tensor of times in ``[0, T]`` (a ``steps`` or ``eps`` that disagrees with it raises
        ``ValueError``). A grid may end at ``t = 0`` unless the sampler evaluates the score
        there (:attr:`~scoresde.samplers.Sampler.evaluates_at_end`) or cannot step to zero
        noise (:attr:`~scoresde.samplers.Sampler.zero_noise_end`). DDPM owns its grid and
        refuses any ``grid`` but ``None``.
    denoise : bool or {"tweedie", "flow"}, optional
        A final step from the grid's end time to 0 (one more score evaluation). Default: the
        sampler's :attr:`~scoresde.samplers.Sampler.default_denoise` (``"tweedie"`` for
        ``edm``, ``dpm_solver_pp_sde`` and ``sa_solver``, whose reference algorithms end on
        the data prediction; ``False`` for every other sampler, and for a grid that ends at
        ``t = 0``). ``True`` or
        ``"tweedie"``: Tweedie's posterior mean
        :math:`x \leftarrow (x + \sigma^2 \nabla\log p_\epsilon(x))/s`, which removes the residual
        noise of scale :math:`\sigma(\epsilon)` but shrinks a data direction of variance
        :math:`v` by :math:`v/(v + \tilde\sigma^2)` — a bias of the same order. ``"flow"``: half
        that step, :math:`x \leftarrow (x + \tfrac12\sigma^2 \nabla\log p_\epsilon(x))/s`, the
        Euler step of the probability-flow ODE to :math:`t = 0` in
        :math:`\tilde\sigma^2 = \sigma^2/s^2`; for Gaussian data its variance error is
        :math:`\tilde\sigma^4 / (4 v (v + \tilde\sigma^2))`, second order. See "Choosing a
        sampler" in the docs for when either pays. Refused when the grid already ends at
        ``t = 0`` (DDPM's does: its last step returns the chain's :math:`x_0`).
    trajectory : bool
        Keep the state after every step (the denoised state, if any, at time 0).
    callback : callable, optional
        ``callback(step, t, x)`` after each step, ``step = 0 .. steps - 1``; the denoising step,
        if any, is step ``steps`` at ``t = 0``.
    progress : bool
        Show a tqdm progress bar.
    check_finite : bool
        Check every score evaluation (its input state and output) for NaN/inf and stop with
        :class:`~scoresde.samplers.NonFiniteError` naming the step and time (default). Each
        check is one host synchronisation per evaluation; on a GPU pass ``False`` to let the
        device run ahead: then only the final state is checked, once.
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
    >>> times = torch.tensor([1.0, 0.5, 0.2, 0.05])     # any decreasing grid, any sampler
    >>> sd.sample(sde, target.score_fn(sde), (512, 2), sampler="ddim", grid=times).nfe
    3
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an SDE, got {type(sde).__name__}")
    if not callable(score_fn):
        raise TypeError("score_fn must be callable as score_fn(x, t)")
    shape = check_shape("shape", shape)
    if steps is not None:
        steps = check_int("steps", steps)
    if not (denoise is None or isinstance(denoise, bool) or denoise in ("tweedie", "flow")):
        raise ValueError(f"denoise must be False, True, 'tweedie' or 'flow', got {denoise!r}")
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be a bool, got {type(check_finite).__name__}")
    solver = resolve(sampler, options)
    times = _times(solver, sde, grid, steps, eps)
    if denoise is None:  # the sampler's default final step; none when the grid ends at 0
        denoise = solver.default_denoise if float(times[-1]) > 0.0 else False
    if denoise and float(times[-1]) == 0.0:
        raise ValueError(
            "denoise must be False when the grid already ends at t = 0 (the denoising step "
            "would evaluate the score at t = 0; DDPM's last step already returns x_0)"
        )

    if x_init is None:
        x = sde.prior_sample(shape, generator=generator, device=device, dtype=dtype)
    else:
        check_tensor("x_init", x_init)
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init must have shape {shape}, got {tuple(x_init.shape)}")
        x = x_init.clone()

    label = solver.name or type(solver).__name__
    ts = times.tolist()
    n = len(ts) - 1
    counted = CountingScore(score_fn, label, check_finite=check_finite)
    states = [x.detach().clone()] if trajectory else None
    state_times = [ts[0]] if trajectory else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n + (1 if denoise else 0), desc=label, leave=False)

    def step_hook(step: int, t: float, x_now: torch.Tensor) -> None:
        counted.step = step + 1
        if states is not None:
            states.append(x_now.detach().clone())
            state_times.append(float(t))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(t=f"{float(t):.4f}", nfe=counted.calls)
        if callback is not None:
            callback(step, t, x_now)

    # contract: callback=None when nothing needs the per-step states (an adaptive solver then
    # computes no dense output at the interior grid times)
    hook = step_hook if (trajectory or callback is not None or progress) else None
    if hook is None:
        counted.times = ts  # no hook keeps `step` current: errors name the step holding t
    try:
        with torch.no_grad():
            x = solver.run(sde, counted, x, times, generator=generator, callback=hook)
            counted.times, counted.step = None, n - 1
            if not all_finite(x):
                raise counted._non_finite("state", ts[-1])
            if denoise:
                counted.step = n
                weight = 0.5 if denoise == "flow" else 1.0
                x = tweedie_denoise(sde, counted, x, ts[-1], weight=weight)
                if not all_finite(x):
                    raise counted._non_finite("denoised state", 0.0)
                if hook is not None:
                    hook(n, 0.0, x)
    finally:
        if bar is not None:
            bar.close()
    return SampleResult(
        samples=x,
        nfe=counted.calls,
        trajectory=torch.stack(states) if states is not None else None,
        times=torch.tensor(state_times, dtype=torch.float64) if states is not None else None,
    )
