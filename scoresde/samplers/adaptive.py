r"""Adaptive-step samplers: error-controlled solvers of the reverse SDE and the flow ODE, in torch.

Both choose their own steps from an embedded error estimate, so ``steps`` (and the grid kind)
given to :func:`scoresde.sample` are **ignored**: only the first and last times of the grid
(``T`` and ``eps``) are used. The cost is set by the tolerances ``rtol`` and ``atol``, which
:func:`scoresde.compare.run_comparison` sweeps (``rtol = atol``) to meet an NFE budget; the
option ``max_steps`` caps the number of attempted steps (a ``RuntimeError`` names it).

The error of a step is measured, as in Hairer, Nørsett & Wanner (1993, §II.4) and in
:func:`scipy.integrate.solve_ivp`, as the root mean square over every entry of the batch of
:math:`(\hat x - \tilde x)/(\mathrm{atol} + \mathrm{rtol}\max(|x_{\rm old}|, |x_{\rm new}|))`
(``norm="rms"``), or as the largest per-sample RMS (``norm="max"``, stricter: every sample
gets the tolerance). A step is accepted when this error is at most 1.

A trial step that is not finite (a NaN or an infinity in a stage, e.g. a score evaluated far
from where it was trained, or a :class:`~scoresde.samplers.NonFiniteError` raised by the
driver's check of a trial evaluation) is **rejected** and retried with a smaller step; the
solvers raise :class:`~scoresde.samplers.NonFiniteError`, naming the step and the time, only
when the step cannot shrink further or ``max_steps`` is reached. The error norm, the step
controller and the accept/reject loop are those of :mod:`scoresde.stepping`.
"""

from __future__ import annotations

import math

from .._checks import all_finite, bcast, check_int, check_positive
from .._runtime import NonFiniteError, gaussian_like, time_vector
from ..stepping import (
    BS3,
    DOPRI5,
    NORMS,
    ButcherTableau,
    PIController,
    RKStep,
    error_ratio,
    initial_step,
    integrate_adaptive,
)
from .base import Sampler

__all__ = ["AdaptiveODE", "AdaptiveSDE"]


def _drift(field, x, t):
    """``field.drift(x, t)``; a non-finite (trial) state raises :class:`NonFiniteError`.

    The public drift rejects a non-finite ``x`` with a ``ValueError`` (bad input); inside a
    solver such a state is a failed trial, which the step controller rejects and retries. The
    happy path costs nothing extra.
    """
    try:
        return field.drift(x, t)
    except ValueError:
        if all_finite(x):
            raise
        raise NonFiniteError("non-finite trial state") from None


def _check_common(rtol, atol, norm, max_steps):
    rtol = check_positive("rtol", rtol)
    atol = check_positive("atol", atol)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    max_steps = check_int("max_steps", max_steps)
    return rtol, atol, norm, max_steps


class AdaptiveODE(Sampler):
    r"""Embedded Runge–Kutta on the probability-flow ODE with a PI step-size controller, in torch.

    Solves :math:`\mathrm dx/\mathrm dt = v(x, t) = f(x, t) - \tfrac12 g(t)^2\nabla\log p_t(x)`
    from ``T`` down to ``eps`` with an explicit pair :math:`(b, \hat b)` of orders
    :math:`(p, p-1)`:

    .. math:: k_j = v\Big(x_n + h\sum_{l<j} a_{jl} k_l,\ t_n + c_j h\Big), \quad
              x_{n+1} = x_n + h\sum_j b_j k_j, \quad
              \mathrm{err} = \Big\lVert \frac{h\sum_j (b_j - \hat b_j) k_j}
              {\mathrm{atol} + \mathrm{rtol}\max(|x_n|, |x_{n+1}|)} \Big\rVert ,

    (:math:`h < 0`), accepted when :math:`\mathrm{err} \le 1` (local extrapolation: the
    order-:math:`p` solution is kept). The next step is the PI controller of Gustafsson (1991)
    and Hairer & Wanner (1996, §IV.2),

    .. math:: h_{n+1} = h_n \cdot \min\!\big(f_{\max}, \max\big(0.2,\ 0.9\,
              \mathrm{err}_n^{-0.7/p}\,\mathrm{err}_{n-1}^{0.4/p}\big)\big),

    with :math:`f_{\max} = 10` (1 right after a rejection, where the plain
    :math:`0.9\,\mathrm{err}^{-1/p}` is used; :class:`~scoresde.stepping.PIController`), and a
    non-finite trial is retried with :math:`0.2 h`. The first step is Hairer's initial-step heuristic
    (Hairer, Nørsett & Wanner 1993, §II.4), which costs one extra evaluation. Both pairs are
    FSAL (first same as last), so an accepted step costs ``stages - 1`` score evaluations:
    ``"bs3"`` Bogacki–Shampine 3(2) (3 per step), ``"dopri5"`` Dormand–Prince 5(4) (6 per
    step, the pair of scipy's ``RK45``). Deterministic given the prior draw.

    Compared with :class:`~scoresde.samplers.ProbabilityFlowODE` (scipy), the state stays a
    torch tensor on its device in its dtype (no NumPy round trip per evaluation).

    Parameters
    ----------
    rtol, atol : float
        Relative and absolute tolerances (> 0); defaults ``1e-3``, ``1e-3``.
    method : {"bs3", "dopri5"} or ButcherTableau
        The embedded pair (default ``"bs3"``, cheaper at the loose tolerances that low NFE needs),
        or any embedded :class:`~scoresde.stepping.ButcherTableau` (the controller then uses its
        ``order``).
    norm : {"rms", "max"}
        How the error is reduced over the batch (see the module docstring).
    max_steps : int
        Cap on the attempted steps (default 10000).

    Notes
    -----
    ``steps`` and the grid kind are ignored (see the module docstring); ``callback`` is called
    after every accepted step.

    References
    ----------
    Bogacki & Shampine (1989), *A 3(2) pair of Runge–Kutta formulas*, Appl. Math. Lett. 2(4).
    Dormand & Prince (1980), *A family of embedded Runge–Kutta formulae*, J. Comput. Appl.
    Math. 6(1). Hairer & Wanner (1996), *Solving Ordinary Differential Equations II*, §IV.2.
    Song et al. (2021), ICLR (the probability-flow ODE).

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.zeros(2), torch.eye(2))
    >>> def run(steps):
    ...     return sd.sample(sde, target.score_fn(sde), (64, 2), sampler="adaptive_ode",
    ...                      steps=steps, generator=torch.Generator().manual_seed(0))
    >>> run(1).samples.shape, run(1).nfe == run(500).nfe   # the grid's steps do not matter
    (torch.Size([64, 2]), True)
    """

    name = "adaptive_ode"
    adaptive = True
    stochastic = False
    METHODS = ("bs3", "dopri5")
    _PAIRS = {"bs3": BS3, "dopri5": DOPRI5}

    @property
    def order(self) -> int:
        """Order of the kept solution of the Runge–Kutta pair."""
        return self._tableau.order

    def __init__(self, rtol: float = 1e-3, atol: float = 1e-3,
                 method: str | ButcherTableau = "bs3", norm: str = "rms", max_steps: int = 10000):
        if isinstance(method, ButcherTableau):
            if not method.embedded:
                raise ValueError(
                    f"method must be an embedded pair (a ButcherTableau with b_hat), got the "
                    f"tableau {method.name!r} without one"
                )
            self._tableau = method
        elif isinstance(method, str) and method in self.METHODS:
            self._tableau = self._PAIRS[method]
        else:
            raise ValueError(
                f"method must be one of {self.METHODS} or an embedded ButcherTableau, got {method!r}"
            )
        self.rtol, self.atol, self.norm, self.max_steps = _check_common(rtol, atol, norm, max_steps)
        self.method = method

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        flow = sde.probability_flow(score_fn)
        tableau = self._tableau
        t0, t_end = float(times[0]), float(times[-1])

        def v(y, t):
            return _drift(flow, y, time_vector(t, y))

        def propose(state: RKStep, t: float, t_next: float, h: float):
            trial = tableau.step(v, state.x, t, h, k0=state.k_last)
            err = error_ratio(trial.error, state.x, trial.x, rtol=self.rtol, atol=self.atol,
                              norm=self.norm)
            return err, trial

        k0 = v(x, t0)
        h = initial_step(v, x, t0, k0, t_end, tableau.order, self.rtol, self.atol, label=self.name)
        final = integrate_adaptive(
            propose, RKStep(x, k0, None), t0=t0, t_end=t_end, h=h,
            controller=PIController(order=tableau.order), max_steps=self.max_steps,
            label=self.name,
            on_accept=None if callback is None else (lambda i, t, s: callback(i, t, s.x)),
        )
        return final.x


# Jolicoeur-Martineau et al. (2021), Alg. 1: h <- 0.9 h E^{-0.9}, no factor limits
_GGF = PIController(order=1, alpha=0.9, beta=0.0, reject_alpha=0.9, fac_min=0.0,
                    fac_max=math.inf, fac_max_after_reject=math.inf)


class AdaptiveSDE(Sampler):
    r"""Adaptive reverse-SDE solver "Gotta Go Fast" (Jolicoeur-Martineau et al. 2021, Algorithm 1).

    From :math:`t` to :math:`t - h`, with the reverse drift
    :math:`\bar f(x, t) = f(x, t) - g(t)^2\nabla\log p_t(x)` and one draw
    :math:`z \sim \mathcal N(0, I)` shared by both stages,

    .. math::

        x' = x - h\,\bar f(x, t) + \sqrt h\, g(t)\, z, \qquad
        \tilde x = x - h\,\bar f(x', t - h) + \sqrt h\, g(t - h)\, z, \qquad
        x'' = \tfrac12 (x' + \tilde x),

    i.e. Euler–Maruyama :math:`x'` and the stochastic improved Euler (Heun) step :math:`x''`
    (Roberts 2012). The error is
    :math:`E = \lVert (x' - x'')/\delta\rVert` with the mixed tolerance
    :math:`\delta = \max(\mathrm{atol}, \mathrm{rtol}\max(|x'|, |x_{\rm prev}|))` (the paper's
    choice; :math:`x_{\rm prev}` the last accepted state); the step is accepted when
    :math:`E \le 1`, keeping the higher-order :math:`x''` (extrapolation), and the next step is

    .. math:: h \leftarrow \min\big(t - \epsilon,\ \theta\, h\, E^{-r}\big), \qquad
              \theta = 0.9,\ r = 0.9 .

    A rejected step is retried with the smaller :math:`h` and a fresh :math:`z` (with
    :math:`0.2 h` after a non-finite trial). Two score
    evaluations per attempted step. Weak order 1 (strong order 1/2 for the EM stage); the
    accepted Heun step converges to the Itô solution for additive noise, which the reverse SDE
    of every linear SDE has.

    Parameters
    ----------
    rtol, atol : float
        Relative and absolute tolerances (> 0); defaults ``0.05`` and ``0.0078`` are the
        paper's for images in [-1, 1] (``atol`` ~ half a pixel bin). The cost grows quickly
        as they shrink: on ``imbalanced_2d`` (VP, n = 2000) ``rtol = atol = 0.01`` takes
        about 230 score evaluations and ``1e-3`` about 1100.
    h_init : float
        First step in ``t`` (default 0.01, the paper's), clipped to the interval.
    norm : {"rms", "max"}
        How the error is reduced over the batch (see the module docstring).
    max_steps : int
        Cap on the attempted steps (default 10000).

    Notes
    -----
    ``steps`` and the grid kind are ignored (see the module docstring). The paper ends with a
    Tweedie denoising step; here that is the driver's ``denoise=True``.

    References
    ----------
    Jolicoeur-Martineau, Li, Piché-Taillefer, Kachman & Mitliagkas (2021), *Gotta go fast when
    generating data with score-based models*, arXiv:2105.14080. Roberts (2012), *Modify the
    improved Euler scheme to integrate stochastic differential equations*, arXiv:1210.0933.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.zeros(2), torch.eye(2))
    >>> out = sd.sample(sde, target.score_fn(sde), (64, 2), sampler="adaptive_sde", steps=1,
    ...                 generator=torch.Generator().manual_seed(0))
    >>> out.samples.shape
    torch.Size([64, 2])
    """

    name = "adaptive_sde"
    adaptive = True
    stochastic = True

    def __init__(self, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.01,
                 norm: str = "rms", max_steps: int = 10000):
        self.rtol, self.atol, self.norm, self.max_steps = _check_common(rtol, atol, norm, max_steps)
        self.h_init = check_positive("h_init", h_init)

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        reverse = sde.reverse(score_fn)
        t0, t_end = float(times[0]), float(times[-1])

        def propose(x, t: float, t_next: float, h: float):
            hh = t - t_next
            tv, tv_next = time_vector(t, x), time_vector(t_next, x)
            noise = math.sqrt(hh) * gaussian_like(x, generator)
            g, g_next = reverse.diffusion(tv), reverse.diffusion(tv_next)
            x1 = x - hh * reverse.drift(x, tv) + bcast(g.to(x), x) * noise
            x_tilde = x - hh * _drift(reverse, x1, tv_next) + bcast(g_next.to(x), x) * noise
            x2 = 0.5 * (x1 + x_tilde)
            err = error_ratio(x1 - x2, x, x1, rtol=self.rtol, atol=self.atol, norm=self.norm,
                              mixed="max")
            return err, x2

        return integrate_adaptive(
            propose, x, t0=t0, t_end=t_end, h=min(self.h_init, abs(t0 - t_end)),
            controller=_GGF, max_steps=self.max_steps, label=self.name, on_accept=callback,
        )
