r"""Adaptive solution of the probability-flow ODE with :func:`scipy.integrate.solve_ivp`.

.. math:: \frac{\mathrm dx}{\mathrm dt} = f(x, t) - \tfrac12 g(t)^2 \nabla_x\log p_t(x),

integrated from ``T`` down to the end time by an error-controlled Runge–Kutta, Radau, BDF or
LSODA solver, as in the likelihood and sampling code of Song et al. (2021, §4.3, which used
``RK45`` at ``rtol = atol = 1e-5``). Deterministic given the prior draw.
"""

from __future__ import annotations

import torch

from .._checks import check_positive
from .._runtime import time_vector
from ..stepping import SCIPY_METHODS, scipy_solve
from .base import Sampler

__all__ = ["ProbabilityFlowODE"]

METHODS = SCIPY_METHODS


class ProbabilityFlowODE(Sampler):
    r"""The probability-flow ODE solved to a tolerance by :func:`scipy.integrate.solve_ivp`.

    .. math:: x_{\epsilon} = x_T - \int_{\epsilon}^{T} \big[f(x_t, t) - \tfrac12 g(t)^2
              \nabla_x\log p_t(x_t)\big]\,\mathrm dt,

    (Song et al. 2021, eq. 13 and §4.3), solved from ``T`` down to ``eps`` with adaptive steps
    whose local error is kept below ``atol + rtol·|x|`` per coordinate. The order is the
    method's: ``RK23`` 3(2), ``RK45`` 5(4) (Dormand–Prince, the default), ``DOP853`` 8(5,3),
    ``Radau`` 5 (implicit), ``BDF`` 1–5 (implicit, variable order) and ``LSODA`` (switches
    between Adams and BDF on stiffness detection).

    The whole batch is flattened into one system whose state is kept in **float64** NumPy
    arrays; every right-hand-side call converts the state once to the dtype and device of the
    prior draw and makes exactly one (batched) score evaluation, whose result is converted
    back once. Samples are independent, so the Jacobian of the system is block diagonal with
    dense ``d × d`` blocks: ``Radau`` and ``BDF`` receive that sparsity pattern and ``LSODA``
    the band width ``d - 1``, so a finite-difference Jacobian costs about ``d`` score calls
    rather than ``batch · d``.

    Parameters
    ----------
    method : {"RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA"}
        The :func:`~scipy.integrate.solve_ivp` method (default ``"RK45"``).
    rtol, atol : float
        Relative and absolute tolerances (> 0), default ``1e-5`` each, as Song et al.

    Notes
    -----
    - ``steps`` (and the grid) given to :func:`scoresde.sample` do **not** set the step size:
      the solver chooses its own steps, and only the first and last grid times are used. When
      the states along the grid are wanted (a ``callback``, i.e. ``trajectory=True``, a user
      callback or a progress bar), the dense solution is evaluated at the grid times
      (``t_eval``) and handed to ``callback`` after the solve (held in memory until then,
      ``(steps + 1) · batch · d`` float64 numbers). Without a callback
      (``run(..., callback=None)``) only the end point is computed, so the cost does not
      depend on ``steps`` at all.
    - The NFE reported by :func:`scoresde.sample` counts every score call: it equals scipy's
      ``nfev`` for the explicit methods, plus the finite-difference Jacobian evaluations for
      ``Radau`` and ``BDF`` (``d`` per Jacobian, up to ``2d`` when scipy refines a column);
      LSODA's ``nfev`` already includes its Jacobian evaluations. It grows as the tolerances
      shrink and with the stiffness of the score near ``t = 0`` (tight modes).
    - A non-finite drift stops the solve at once with :class:`~scoresde.samplers.NonFiniteError`
      naming the time; a solve that fails (e.g. the step size underflows) raises
      ``RuntimeError`` with scipy's message.

    References
    ----------
    Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), *Score-based generative modeling
    through stochastic differential equations*, ICLR. Dormand & Prince (1980), *A family of
    embedded Runge–Kutta formulae*, J. Comput. Appl. Math. 6(1). Hairer & Wanner (1996),
    *Solving Ordinary Differential Equations II* (Radau IIA, BDF).

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.zeros(2), torch.eye(2))
    >>> out = sd.sample(sde, target.score_fn(sde), (256, 2), sampler="ode", steps=1,
    ...                 generator=torch.Generator().manual_seed(0))
    >>> out.samples.shape, out.nfe > 10
    (torch.Size([256, 2]), True)
    """

    name = "ode"
    stochastic = False
    adaptive = True
    order = 5

    def __init__(self, method: str = "RK45", rtol: float = 1e-5, atol: float = 1e-5):
        if not isinstance(method, str) or method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.rtol = check_positive("rtol", rtol)
        self.atol = check_positive("atol", atol)

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        flow = sde.probability_flow(score_fn)
        ts = times.detach().to("cpu", torch.float64).tolist()
        # the (batch,) time tensor is reused while the solver stays at one time (finite-difference
        # Jacobian columns) and never written in place, so score_fn may keep a reference to it
        last: dict = {"t": None, "tv": None}

        def v(xt: torch.Tensor, t: float) -> torch.Tensor:
            if t != last["t"]:
                last["t"], last["tv"] = t, time_vector(t, xt)
            return flow.drift(xt, last["tv"])

        sol = scipy_solve(
            v, x, (ts[0], ts[-1]), method=self.method, rtol=self.rtol, atol=self.atol,
            t_eval=None if callback is None else ts, label=self.name, what="drift",
            hint="check score_fn or try a less stiff SDE / larger end time",
        )
        if callback is not None:  # dense output at the grid times, only when someone looks
            for i in range(1, len(sol)):
                callback(i - 1, ts[i], sol[i])
        return sol.final
