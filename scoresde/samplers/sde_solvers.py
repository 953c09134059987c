r"""Fixed-step solvers of the reverse-time SDE (Anderson 1982; Song et al. 2021, equation 6)."""

from __future__ import annotations

from .._checks import bcast
from .._runtime import gaussian_like, time_vector
from .base import Sampler

__all__ = ["EulerMaruyama"]


class EulerMaruyama(Sampler):
    r"""Euler–Maruyama on the reverse-time SDE.

    With :math:`h = t_i - t_{i+1} > 0` and :math:`z \sim \mathcal N(0, I)`,

    .. math:: x_{i+1} = x_i - h\,[f(x_i, t_i) - g(t_i)^2 \nabla\log p_{t_i}(x_i)] + g(t_i)\sqrt{h}\, z.

    Strong order 1/2, weak order 1 (Kloeden & Platen 1992, §14.1); converges to the Itô
    solution. One score evaluation per step; noise is added at every step, including the last.
    """

    name = "euler_maruyama"
    stochastic = True
    evaluates_at_end = False

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        reverse = sde.reverse(score_fn)
        ts = times.tolist()
        for i in range(len(ts) - 1):
            t, h = ts[i], ts[i] - ts[i + 1]
            tv = time_vector(t, x)
            g = reverse.diffusion(tv)
            x = x - h * reverse.drift(x, tv) + bcast(g * h**0.5, x) * gaussian_like(x, generator)
            if callback is not None:
                callback(i, ts[i + 1], x)
        return x
