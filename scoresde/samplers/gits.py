r"""A cheap learned grid: GITS's dynamic programming over a fine grid (Chen et al. 2024).

:func:`~scoresde.samplers.optimize_schedule` searches the grid with thousands of solves of a
pilot batch. GITS ("geometry-inspired time scheduling") exploits that the sampling
trajectories of the flow ODE are nearly straight and alike, so one accurate *teacher* solve of
a pilot batch on a fine grid determines a good coarse grid:

1. solve the flow ODE for the pilot batch on a fine grid :math:`t_0 = T > t_1 > \dots > t_M`
   (uniform in :math:`\lambda`), keeping the states :math:`x^\star_a` and the noise predictions
   :math:`\hat\epsilon_a = \hat\epsilon(x^\star_a, t_a)` the solve evaluated anyway;
2. for every pair :math:`a < b` the cost of jumping from :math:`t_a` to :math:`t_b` in one cheap
   step is its local truncation error against the teacher, for the DDIM (first-order
   exponential-integrator) step in :math:`\tilde x = x/s`, :math:`\tilde\sigma = \sigma/s`,

   .. math:: C_{ab} = \frac1m \sum_{j=1}^m \Big\lVert \tilde x^\star_a{}^{(j)}
             + (\tilde\sigma_b - \tilde\sigma_a)\,\hat\epsilon_a^{(j)}
             - \tilde x^\star_b{}^{(j)} \Big\rVert^2 ,

   which costs no score evaluation;
3. the grid of ``steps`` steps is the path :math:`0 = a_0 < a_1 < \dots < a_N = M` that minimises
   :math:`\sum_k C_{a_{k-1} a_k}`, found exactly by dynamic programming in
   :math:`O(N M^2)`.

The whole search costs the teacher's ``fine_steps`` batched score calls on the pilot — two to
three orders of magnitude less than :func:`~scoresde.samplers.optimize_schedule` — and the grid
is used with any solver (GITS found the DDIM-optimal grid to transfer to higher-order
multistep solvers).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .._checks import check_int, check_linear
from .._runtime import CountingScore
from ..predict import convert, scale_std_values
from .dpm_solver import DPMSolverPlusPlus
from .grids import LogSNRSchedule, time_grid

__all__ = ["gits_schedule"]


def _dp_path(cost: np.ndarray, steps: int) -> tuple[list[int], float]:
    """The cheapest path 0 -> M with exactly ``steps`` jumps through the cost matrix."""
    m = cost.shape[0] - 1
    best = np.full(m + 1, np.inf)
    best[0] = 0.0
    back = []
    for _ in range(steps):
        total = best[:, None] + cost  # from a (rows) to b (columns)
        arg = np.argmin(total, axis=0)
        best = total[arg, np.arange(m + 1)]
        back.append(arg)
    path = [m]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    return path[::-1], float(best[m])


def gits_schedule(
    sde,
    score_fn,
    shape,
    steps: int | Sequence[int] = 10,
    *,
    eps: float = 1e-3,
    fine_steps: int = 100,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LogSNRSchedule:
    r"""A time grid by GITS's dynamic programming on one pilot batch (see the module notes).

    Parameters
    ----------
    sde : LinearSDE
        The forward process.
    score_fn : callable
        ``score_fn(x, t)``, the model the grid is for.
    shape : tuple of int
        ``(m, *event_shape)`` of the pilot batch (a few hundred points suffice).
    steps : int or sequence of int
        Step count(s) of the grids (each ``<= fine_steps``); all come from the same teacher solve.
    eps : float
        End time of the grids (use the same ``eps`` when sampling).
    fine_steps : int
        Intervals of the fine grid, uniform in log-SNR; the teacher (DPM-Solver++(3M)) makes
        exactly this many score calls, the whole cost of the search.
    generator : torch.Generator, optional
        Draws the pilot's prior samples.
    device, dtype : optional
        Of the pilot batch.

    Returns
    -------
    LogSNRSchedule
        Grids as fractions of the log-SNR range (every point a point of the fine grid). Its
        ``report`` holds ``score_calls`` (batched calls on the pilot), ``fine_steps``, the
        pilot shape and, per step count, the optimal total cost and that of the uniform
        log-SNR grid (``per_steps``).

    References
    ----------
    Chen, Zhou, Wang, Shen & Lyu (2024), *On the trajectory regularity of ODE-based diffusion
    sampling*, ICML (GITS).

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> from scoresde.samplers import gits_schedule
    >>> sde, target = sd.VPSDE(), sd.imbalanced_2d()
    >>> sched = gits_schedule(sde, target.score_fn(sde), (256, 2), steps=[5, 10],
    ...                       generator=torch.Generator().manual_seed(0))
    >>> sched.report["score_calls"]
    100
    >>> r = sched.report["per_steps"][10]
    >>> r["optimized"] <= r["uniform_log_snr"]
    True
    >>> sd.sample(sde, target.score_fn(sde), (64, 2), "ipndm", steps=10, grid=sched).nfe
    10
    """
    check_linear(sde, "gits_schedule")
    counts = [steps] if isinstance(steps, int) else list(steps)
    if not counts:
        raise ValueError("steps must be an int or a non-empty sequence of ints")
    fine_steps = check_int("fine_steps", fine_steps, minimum=2)
    counts = sorted({check_int("steps", k) for k in counts})
    if counts[-1] > fine_steps:
        raise ValueError(f"steps must be at most fine_steps={fine_steps}, got {counts[-1]}")

    x = sde.prior_sample(shape, generator=generator, device=device, dtype=dtype)
    times = time_grid(sde, fine_steps, eps=eps, kind="log_snr")
    s, sig = scale_std_values(sde, times, who="gits_schedule")
    calls = CountingScore(score_fn, "gits_schedule")
    scores: list[torch.Tensor] = []

    def recording(xx, tt):
        out = calls(xx, tt)
        scores.append(out)
        return out

    states = [x]
    with torch.no_grad():
        DPMSolverPlusPlus(order=3, lower_order_final=False).run(
            sde, recording, x, times, callback=lambda i, t, xx: states.append(xx))
    # states in x~ = x/s and the noise predictions at the teacher's own evaluations
    xt = torch.stack([st / a for st, a in zip(states, s)]).flatten(2).double()
    eps_hat = torch.stack([convert(sc, st, a, g, source="score", target="eps")
                           for sc, st, a, g in zip(scores, states, s, sig)]).flatten(2).double()
    st = torch.tensor([g / a for g, a in zip(sig, s)], dtype=torch.float64, device=xt.device)
    m = fine_steps
    cost = np.full((m + 1, m + 1), np.inf)
    for a in range(m):
        jump = xt[a] + (st[a + 1:] - st[a])[:, None, None] * eps_hat[a]
        err = ((jump - xt[a + 1:]) ** 2).sum(-1).mean(-1) / st[a + 1:] ** 2
        cost[a, a + 1:] = err.cpu().numpy()

    fractions, per_steps = {}, {}
    for k in counts:
        path, total = _dp_path(cost, k)
        uniform = np.round(np.linspace(0, m, k + 1)).astype(int)
        per_steps[k] = {"optimized": total,
                        "uniform_log_snr": float(sum(cost[a, b] for a, b in zip(uniform[:-1], uniform[1:])))}
        fractions[k] = [p / m for p in path]
    report = {"method": "gits", "pilot_shape": list(x.shape), "eps": eps, "fine_steps": m,
              "score_calls": calls.calls, "per_steps": per_steps}
    return LogSNRSchedule(fractions, report=report)
