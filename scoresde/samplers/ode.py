r"""Fixed-step torch solvers of the probability-flow ODE (Song et al. 2021, equation 13).

.. math:: \frac{\mathrm dx}{\mathrm dt} = f(x, t) - \tfrac12 g(t)^2 \nabla_x\log p_t(x),

integrated from ``T`` down to the end time; deterministic given the prior draw.
"""

from __future__ import annotations

from .._runtime import time_vector
from .base import Sampler

__all__ = ["EulerODE", "Heun"]


class EulerODE(Sampler):
    r"""Explicit Euler on the probability-flow ODE: :math:`x_{i+1} = x_i - h\,v(x_i, t_i)`.

    :math:`v = f - \tfrac12 g^2 \nabla\log p_t`, :math:`h = t_i - t_{i+1}`. Order 1; one score
    evaluation per step.
    """

    name = "euler_ode"
    order = 1
    stochastic = False
    evaluates_at_end = False

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        flow = sde.probability_flow(score_fn)
        ts = times.tolist()
        for i in range(len(ts) - 1):
            x = x - (ts[i] - ts[i + 1]) * flow.drift(x, time_vector(ts[i], x))
            if callback is not None:
                callback(i, ts[i + 1], x)
        return x


class Heun(Sampler):
    r"""Heun's method (explicit trapezoidal rule) on the probability-flow ODE, as in EDM.

    .. math::
        \tilde x = x_i - h\,v(x_i, t_i), \qquad
        x_{i+1} = x_i - \tfrac h2\,[v(x_i, t_i) + v(\tilde x, t_{i+1})].

    Order 2 (Karras et al. 2022, Alg. 1); two score evaluations per step, or one on the last
    step when ``euler_last=True`` (EDM's choice when the grid ends at 0).
    """

    name = "heun"
    order = 2
    nfe_per_step = 2
    stochastic = False

    def __init__(self, euler_last: bool = False):
        self.euler_last = bool(euler_last)

    def nfe(self, steps: int) -> int:
        return 2 * steps - (1 if self.euler_last else 0)

    @property
    def evaluates_at_end(self) -> bool:
        """The second stage of the last step is at the last grid time, unless ``euler_last``."""
        return not self.euler_last

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        flow = sde.probability_flow(score_fn)
        ts = times.tolist()
        n = len(ts) - 1
        for i in range(n):
            h = ts[i] - ts[i + 1]
            d1 = flow.drift(x, time_vector(ts[i], x))
            x_euler = x - h * d1
            if self.euler_last and i == n - 1:
                x = x_euler
            else:
                d2 = flow.drift(x_euler, time_vector(ts[i + 1], x))
                x = x - 0.5 * h * (d1 + d2)
            if callback is not None:
                callback(i, ts[i + 1], x)
        return x
