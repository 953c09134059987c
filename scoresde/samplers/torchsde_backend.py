r"""The reverse-time SDE integrated by :func:`torchsde.sdeint` (Li et al. 2020; Kidger et al. 2021).

torchsde integrates forward in time, so the reverse SDE (Anderson 1982) is rewritten with the
time change :math:`u = T - t`. Then :math:`y(u) = x(T - u)` solves the forward-in-:math:`u` Itô SDE

.. math:: \mathrm dy = -\big[f(y, T-u) - g(T-u)^2 \nabla_y\log p_{T-u}(y)\big]\,\mathrm du
          + g(T-u)\,\mathrm dW_u, \qquad u \in [0, T - \epsilon],

started at :math:`y(0) = x_T`. Because :math:`g` depends on time only, the noise is additive:
the Itô and Stratonovich readings coincide and the Milstein correction
:math:`\tfrac12 g\,\partial_y g\,(\Delta W^2 - \Delta u)` vanishes.
"""

from __future__ import annotations

import math
import warnings

import torch

from .._checks import check_positive
from .._runtime import time_vector
from .base import Sampler

__all__ = ["TorchSDE"]

METHODS = ("euler", "milstein", "srk")


class _TimeChanged:
    """The reverse SDE in ``u = T - t`` as a torchsde module: f(u, y) and g(u, y), y (batch, d).

    torchsde's solvers re-evaluate the drift at states they have already seen (its shape check
    evaluates ``f(t0, y0)``, SRK recomputes earlier stages, adaptive stepping restarts from the
    same point); a small cache keyed on (time, identity and version of the state tensor) makes
    each *distinct* drift evaluation cost exactly one score call. The diffusion, a function of
    time only, is likewise reused while the time does not change.
    """

    noise_type = "diagonal"
    sde_type = "ito"
    _CACHE = 8

    def __init__(self, reverse, T: float, shape: torch.Size):
        self.reverse = reverse
        self.T = T
        self.shape = shape
        self._cache: list[tuple[float, torch.Tensor, int, torch.Tensor]] = []
        self._g_time: float | None = None
        self._g: torch.Tensor | None = None

    def f(self, u, y: torch.Tensor) -> torch.Tensor:
        t = self.T - float(u)
        for tc, yc, version, out in self._cache:
            if tc == t and yc is y and yc._version == version:
                return out
        x = y.reshape(self.shape)
        out = -self.reverse.drift(x, time_vector(t, x)).reshape(y.shape)
        if len(self._cache) == self._CACHE:
            self._cache.pop(0)
        self._cache.append((t, y, y._version, out))
        return out

    def g(self, u, y: torch.Tensor) -> torch.Tensor:
        t = self.T - float(u)
        if t != self._g_time:  # g depends on t only: reuse it across calls at one time
            self._g_time = t
            self._g = self.reverse.diffusion(time_vector(t, y))[:, None]
        return self._g.expand(y.shape)


class TorchSDE(Sampler):
    r"""The reverse-time SDE solved by :func:`torchsde.sdeint` on the time-changed problem.

    .. math:: \mathrm dy = -\big[f - g^2 \nabla\log p\big](y, T-u)\,\mathrm du
              + g(T-u)\,\mathrm dW_u, \qquad y(u) = x(T - u),

    integrated over :math:`u \in [0, T-\epsilon]` (see the module docstring). Methods, all
    converging to the Itô solution:

    - ``"euler"`` — Euler–Maruyama, strong order 1 for this additive noise, weak order 1; one
      score evaluation per step (the same update as
      :class:`~scoresde.samplers.EulerMaruyama`, on torchsde's Brownian motion);
    - ``"milstein"`` — Milstein (Kloeden & Platen 1992, §10.3); the correction term is zero for
      additive noise, so it reduces to Euler–Maruyama: same samples, same cost;
    - ``"srk"`` — the stochastic Runge–Kutta scheme SRID2 of Rößler (2010), strong order 1.5,
      four score evaluations per step; uses the space-time Lévy area.

    Parameters
    ----------
    method : {"euler", "milstein", "srk"}
        torchsde method (default ``"euler"``).
    adaptive : bool
        Step-doubling error control (torchsde's): each attempted step of size ``h`` costs one
        full and two half steps. Default ``False``.
    rtol, atol : float, optional
        Tolerances of the adaptive controller (> 0, default ``1e-3`` each); only valid with
        ``adaptive=True``.
    dt : float, optional
        Fixed step: the largest step size; each interval of the time grid is split into
        ``ceil(h / dt)`` equal steps. Default: one step per grid interval, so ``steps`` and
        ``grid`` of :func:`scoresde.sample` set the steps exactly as for the other fixed-step
        samplers. Adaptive: the initial step (default the first grid interval).

    Notes
    -----
    - Randomness: the Brownian motion is a :class:`torchsde.BrownianInterval` whose ``entropy``
      is one integer drawn from ``generator``, so the same seed gives the same samples.
    - ``callback`` sees every grid time. With fixed steps it is called as the integration
      proceeds; with ``adaptive=True`` torchsde integrates the whole grid in one call and
      returns the grid states (linearly interpolated between its own steps), which are handed
      to ``callback`` afterwards; the final state is an exact solver step.
    - NFE: one per step (``euler``, ``milstein``), four per step (``srk``), about two per
      attempted adaptive step with ``euler`` (the full step and first half step share their
      drift evaluation).

    References
    ----------
    Li, Wong, Chen & Duvenaud (2020), *Scalable gradients for stochastic differential
    equations*, AISTATS. Kidger, Foster, Li & Lyons (2021), *Efficient and accurate gradients
    for neural SDEs*, NeurIPS (the Brownian Interval). Rößler (2010), *Runge–Kutta methods for
    the strong approximation of solutions of stochastic differential equations*, SIAM J.
    Numer. Anal. 48(3).

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.zeros(2), torch.eye(2))
    >>> out = sd.sample(sde, target.score_fn(sde), (256, 2), sampler="torchsde", steps=50,
    ...                 generator=torch.Generator().manual_seed(0))
    >>> out.samples.shape, out.nfe
    (torch.Size([256, 2]), 50)
    """

    name = "torchsde"
    stochastic = True
    # ``adaptive`` is set per instance; with ``dt`` the NFE follows dt, not ``steps``
    ORDERS = {"euler": 1, "milstein": 1, "srk": 1.5}  # weak orders, as torchsde declares them
    NFE_PER_STEP = {"euler": 1, "milstein": 1, "srk": 4}

    @property
    def order(self) -> float:
        """Weak order of the method (torchsde's ``weak_order``): 1, 1 and 1.5 for ``srk``."""
        return self.ORDERS[self.method]

    @property
    def nfe_per_step(self) -> int:
        """Drift (score) evaluations per step: 1 (``euler``, ``milstein``) or 4 (``srk``)."""
        return self.NFE_PER_STEP[self.method]

    @property
    def evaluates_at_end(self) -> bool:
        """``srk`` evaluates the drift at the end of each step (its stage ``c = 1``); so may the
        adaptive controller; Euler and Milstein steps evaluate it only at their start."""
        return self.adaptive or self.method == "srk"

    def __init__(
        self,
        method: str = "euler",
        adaptive: bool = False,
        rtol: float | None = None,
        atol: float | None = None,
        dt: float | None = None,
    ):
        if not isinstance(method, str) or method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not isinstance(adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {type(adaptive).__name__}")
        if not adaptive and (rtol is not None or atol is not None):
            raise ValueError(
                "rtol and atol only apply with adaptive=True (with fixed steps set dt or steps)"
            )
        self.method = method
        self.adaptive = adaptive
        self.rtol = check_positive("rtol", 1e-3 if rtol is None else rtol) if adaptive else None
        self.atol = check_positive("atol", 1e-3 if atol is None else atol) if adaptive else None
        self.dt = None if dt is None else check_positive("dt", dt)

    def nfe(self, steps: int) -> int | None:
        if self.adaptive or self.dt is not None:
            return None
        return self.nfe_per_step * steps

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        import torchsde

        T = float(times[0])
        # u = T - t, increasing; float64 on the CPU (torchsde reads times as Python floats)
        us = (T - times.detach().to("cpu", torch.float64)).contiguous()
        if not bool((us[1:] > us[:-1]).all()):
            raise ValueError("times must be strictly decreasing")
        batch, d = x.shape[0], x[0].numel()
        n = len(us) - 1
        steps_per = [1] * n
        if self.dt is not None and not self.adaptive:
            # ceil(h / dt), not fooled by rounding when dt divides h
            steps_per = [max(1, math.ceil(float(us[i + 1] - us[i]) / self.dt * (1 - 1e-12)))
                         for i in range(n)]

        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                "TorchSDE draws one Brownian motion for the whole batch from a torch.Generator; "
                f"generator must be a torch.Generator or None, got {type(generator).__name__} "
                "(per-sample noise sources are not supported by this backend)"
            )
        entropy = int(
            torch.randint(0, 2**31 - 1, (1,), generator=generator,
                          device=generator.device if generator is not None else "cpu")
        )
        bm = torchsde.BrownianInterval(
            t0=0.0,
            t1=float(us[-1]),
            size=(batch, d),
            dtype=x.dtype,
            device=x.device,
            entropy=entropy,
            dt=None if self.adaptive else float(us[-1]) / sum(steps_per),
            levy_area_approximation="space-time" if self.method == "srk" else "none",
        )
        module = _TimeChanged(sde.reverse(score_fn), T, x.shape)
        y = x.reshape(batch, d)

        if self.adaptive:
            dt0 = self.dt if self.dt is not None else float(us[1] - us[0])
            with warnings.catch_warnings():
                # torchsde warns that adaptive Euler need not converge for non-additive noise;
                # declared "diagonal", this noise is additive (g depends on t only).
                warnings.filterwarnings("ignore", message="Numerical solution is not guaranteed")
                ys = torchsde.sdeint(module, y, us, bm=bm, method=self.method, dt=dt0,
                                     adaptive=True, rtol=self.rtol, atol=self.atol)
            if callback is not None:
                for i in range(n):
                    callback(i, float(times[i + 1]), ys[i + 1].reshape(x.shape))
            return ys[-1].reshape(x.shape)

        for i in range(n):
            # the step is nudged up by 1e-9 (relative) so that rounding in torchsde's
            # `t + dt` never leaves a sliver of a step before the interval's end
            h = float(us[i + 1] - us[i]) / steps_per[i] * (1 + 1e-9)
            y = torchsde.sdeint(module, y, us[i : i + 2], bm=bm, method=self.method, dt=h)[-1]
            if callback is not None:
                callback(i, float(times[i + 1]), y.reshape(x.shape))
        return y.reshape(x.shape)
