r"""Time grids optimised for one solver and one score model by trajectory matching.

A fixed grid (uniform in :math:`\lambda`, EDM, quadratic) spends its few steps where the
formula says, not where the flow of *this* model bends. At 10 score evaluations that choice
dominates the error: on the stiff 2-D mixture the best fixed grids stay 10x above the
noise floor. Like Align Your Steps (Sabour et al. 2024) and the dynamic-programming
schedules of GITS (Chen et al. 2024), :func:`optimize_schedule` instead *learns* the grid once
per (model, solver, step count), offline, and the samplers then reuse it at no extra cost.

The objective compares the end points of the ``steps``-step solve, :math:`y_j`, with those of
an accurate reference solve, :math:`y_j^\star`, started from the same prior draws
:math:`x_T^{(j)}` of a pilot batch, measured in the local metric of the model's own density at
the end time :math:`\epsilon`:

.. math:: J(\lambda_1, \dots, \lambda_{N-1}) = \log \frac1m \sum_{j=1}^m
          \Big| \big(y_j - y_j^\star\big)^{\!\top}
          \big(\hat s(y_j^\star, \epsilon) - \hat s(y_j, \epsilon)\big) \Big| .

For a Gaussian mode of covariance :math:`\Sigma` the score is linear and each term is the
Mahalanobis distance :math:`\delta^\top (\Sigma + \sigma^2 I)^{-1} \delta`, the second-order
change of :math:`\log p` caused by the displacement :math:`\delta`: a tight mode counts by its
own scale, not by its (tiny) absolute size, which a plain squared distance would ignore. It
costs one extra score call per evaluation and needs only the score model — no data and no
target density. The interior grid points are parameterised by the logarithms of the ``steps``
increments in log-SNR time (any real vector is a valid increasing grid; the end points
:math:`\lambda(T)` and :math:`\lambda(\epsilon)` stay fixed) and minimised with
Nelder–Mead. The objective has several basins, far apart in that space, so short searches
with a wide initial simplex (edge 1, i.e. increments scaled by up to :math:`e`) start from the
``log_snr``, ``uniform``, ``quadratic`` and ``edm`` grids, and the best is refined by restarts
with a narrower one (edge 0.3).

A schedule stores each grid as *fractions* :math:`f_i = (\lambda_i - \lambda_T) /
(\lambda_\epsilon - \lambda_T)`. For a step count it was not optimised for, the grid of the
nearest optimised count is interpolated linearly in :math:`i/N` (as Align Your Steps does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .._checks import check_int, check_linear
from .._runtime import CountingScore
from .base import Sampler
from .dpm_solver import UniPC
from .grids import LogSNRSchedule, _fraction_times, time_grid
from .registry import resolve

__all__ = ["optimize_schedule"]


_PROBE_SIZE, _RESTART_SIZE = 1.0, 0.3


def _exp(value: float) -> float:
    """exp of an objective value; the 1e3 of a blown-up solve reads as inf."""
    return math.exp(value) if value < 700.0 else math.inf


def _grid_from_logits(z: np.ndarray) -> torch.Tensor:
    # increments exp(z), at least e^-20 of the largest so that no step is empty
    inc = np.exp(np.maximum(z - z.max(), -20.0))
    f = np.concatenate([[0.0], np.cumsum(inc)])
    f /= f[-1]
    f[-1] = 1.0
    return torch.from_numpy(f)


def optimize_schedule(
    sde,
    score_fn,
    shape,
    sampler: str | Sampler = "unipc",
    steps: int | Sequence[int] = 10,
    *,
    eps: float = 1e-3,
    reference_steps: int = 200,
    max_evals: int = 3000,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LogSNRSchedule:
    r"""Optimise the log-SNR grid of a deterministic solver for a score model (see module notes).

    Parameters
    ----------
    sde : LinearSDE
        The forward process (it needs ``log_snr`` and ``t_from_log_snr``).
    score_fn : callable
        ``score_fn(x, t)``, the model the schedule is for.
    shape : tuple of int
        ``(m, *event_shape)`` of the pilot batch; a few hundred to a few thousand points.
    sampler : str or Sampler
        ``"unipc"``, ``"dpm_solver_pp"``, ``"dpm_solver"`` or such an instance (its
        ``run`` is called on explicit grids, so its ``default_grid`` is ignored).
    steps : int or sequence of int
        Step count(s) to optimise; each gets its own grid, optimised independently.
    eps : float
        End time of the grids (the same ``eps`` should be used when sampling).
    reference_steps : int
        Steps of the reference solve (UniPC on the uniform log-SNR grid; default 200).
    max_evals : int
        Objective evaluations per step count, about (each is one ``steps``-step solve of the
        pilot plus one score call). Half go to short Nelder–Mead searches from four starts
        (the ``log_snr``, ``uniform``, ``quadratic`` and ``edm`` grids), the rest to restarts
        from the best point while they still improve.
    generator : torch.Generator, optional
        Draws the pilot's prior samples.
    device, dtype : optional
        Of the pilot batch.

    Returns
    -------
    LogSNRSchedule
        Its ``report`` holds, per step count, the objective :math:`e^J` (mean local squared
        end-point error) of the uniform log-SNR grid and of the optimised one and the number of
        solves, and in total the score calls spent (``score_calls``, each on the whole pilot
        batch; ``reference_calls`` of them for the reference solve).

    References
    ----------
    Sabour, Fidler & Kreis (2024), *Align your steps: optimizing sampling schedules in
    diffusion models*, ICML. Chen, Zhou, Wang, Shen & Lyu (2024), *On the trajectory regularity of
    ODE-based diffusion sampling* (GITS), ICML. Nelder & Mead (1965), *A simplex method for
    function minimization*, Computer Journal 7.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> from scoresde.samplers import UniPC, optimize_schedule
    >>> sde, target = sd.VPSDE(), sd.imbalanced_2d()
    >>> sched = optimize_schedule(sde, target.score_fn(sde), (256, 2), "unipc", steps=5,
    ...                           max_evals=200, generator=torch.Generator().manual_seed(0))
    >>> r = sched.report["per_steps"][5]
    >>> r["optimized"] < r["uniform_log_snr"]
    True
    >>> out = sd.sample(sde, target.score_fn(sde), (64, 2), UniPC(), steps=5, grid=sched,
    ...                 generator=torch.Generator().manual_seed(1))
    >>> out.nfe
    5
    """
    from scipy.optimize import minimize  # scipy loads only when a schedule is optimised

    check_linear(sde, "optimize_schedule")
    solver = resolve(sampler, {})
    if solver.stochastic:
        raise ValueError(
            f"optimize_schedule needs a deterministic sampler (trajectory matching), got "
            f"{type(solver).__name__}")
    counts = [steps] if isinstance(steps, int) else list(steps)
    if not counts:
        raise ValueError("steps must be an int or a non-empty sequence of ints")
    counts = sorted({check_int("steps", k) for k in counts})
    reference_steps = check_int("reference_steps", reference_steps)
    max_evals = check_int("max_evals", max_evals)

    x_T = sde.prior_sample(shape, generator=generator, device=device, dtype=dtype)
    calls = CountingScore(score_fn, "optimize_schedule")
    with torch.no_grad():
        ref = UniPC().run(sde, calls, x_T, time_grid(sde, reference_steps, eps=eps, kind="log_snr"))
    ref_calls = calls.calls
    lam_T, lam_eps = sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64)).tolist()

    def solve(f: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return solver.run(sde, calls, x_T, _fraction_times(sde, f, eps))

    t_end = torch.full((x_T.shape[0],), float(eps), dtype=x_T.dtype, device=x_T.device)
    with torch.no_grad():
        score_ref = calls(ref, t_end)

    def objective(z: np.ndarray) -> float:
        try:
            y = solve(_grid_from_logits(z))
            with torch.no_grad():
                dscore = score_ref - calls(y, t_end)
        except FloatingPointError:  # a grid whose solve blows up is just a bad grid
            return 1e3
        err = float(((y - ref) * dscore).double().flatten(1).sum(1).abs().mean())
        # 0 is a perfect match; NaN/inf (overflow) count as a blown-up solve
        return math.log(err) if math.isfinite(err) and err > 0 else (-1e3 if err == 0 else 1e3)

    def logits(f: torch.Tensor) -> np.ndarray:
        return np.log(np.maximum(np.diff(f.numpy()), 1e-12))

    def nelder_mead(z0: np.ndarray, budget: int, size: float):
        # a simplex of edge `size` in log-increment space: the basins are far apart in it
        simplex = np.vstack([z0, z0 + size * np.eye(z0.size)])
        res = minimize(objective, z0, method="Nelder-Mead",
                       options={"maxfev": max(budget, 1), "xatol": 1e-4, "fatol": 1e-6,
                                "adaptive": z0.size > 2, "initial_simplex": simplex})
        return res.x, float(res.fun), int(res.nfev)

    fractions: dict[int, torch.Tensor] = {}
    per_steps: dict[int, dict] = {}
    for k in counts:
        # starts: the fixed grids, as log-SNR fractions. (The optimum for another step count,
        # interpolated, is not one: it tends to sit in a poor basin and take the budget.)
        starts = {}
        for kind in ("log_snr", "uniform", "quadratic", "edm"):
            lam = sde.log_snr(time_grid(sde, k, eps=eps, kind=kind))
            starts[kind] = logits((lam - lam_T) / (lam_eps - lam_T))
        f_uniform = objective(starts["log_snr"])
        used = 1
        if k == 1:  # nothing to optimise: the grid is [T, eps]
            best_z, best_f = starts["log_snr"], f_uniform
        else:
            # a short search from every start, then restarts from the best until the budget
            # is spent or a restart stops improving (the objective has several basins)
            probe = max(max_evals // (2 * len(starts)), 1)
            best_z, best_f = starts["log_snr"], f_uniform
            for z0 in starts.values():
                z, f, used_now = nelder_mead(z0, probe, _PROBE_SIZE)
                used += used_now
                if f < best_f:
                    best_z, best_f = z, f
            while used < max_evals:
                z, f, used_now = nelder_mead(best_z, min(max_evals - used, 1000), _RESTART_SIZE)
                used += used_now
                improved = f < best_f - 1e-3
                if f < best_f:
                    best_z, best_f = z, f
                if not improved:
                    break
        fractions[k] = _grid_from_logits(best_z)
        per_steps[k] = {"uniform_log_snr": _exp(f_uniform), "optimized": _exp(best_f),
                        "solves": used}
    report = {"sampler": type(solver).__name__, "pilot_shape": list(x_T.shape), "eps": eps,
              "reference_steps": reference_steps, "reference_calls": ref_calls,
              "score_calls": calls.calls, "per_steps": per_steps}
    return LogSNRSchedule(fractions, report=report)
