r"""Stochastic multistep exponential integrators with data prediction.

For a linear SDE with transition :math:`\mathcal N(s(t)\,x_0, \sigma(t)^2 I)`, half log-SNR
:math:`\lambda = \log(s/\sigma)` and data prediction :math:`\hat x_0` (Tweedie, from
:class:`~scoresde.predict.PredictionAdapter`), the family of reverse-time SDEs

.. math:: \mathrm dx = \Big[f(x, t) - \frac{1 + \tau^2}{2}\,g(t)^2\,\nabla\log p_t(x)\Big]\mathrm dt
          + \tau\,g(t)\,\mathrm d\bar W

has the marginals :math:`p_t` for every :math:`\tau \ge 0` (:math:`\tau = 0`: the
probability-flow ODE; :math:`\tau = 1`: Anderson's reverse SDE). Over one step
:math:`t_i \to t_{i+1}`, :math:`h = \lambda_{i+1} - \lambda_i > 0`, with :math:`\tau` constant, the
linear part and the noise integrate exactly (Lu et al. 2022b, eq. for SDE-DPM-Solver++; Xue et
al. 2023, eq. 13):

.. math:: x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} e^{-\tau^2 h} x_i
          + s_{i+1}(1 + \tau^2)\int_{\lambda_i}^{\lambda_{i+1}} e^{-(1 + \tau^2)(\lambda_{i+1} - \lambda)}\,
            \hat x_0(x_\lambda, \lambda)\,\mathrm d\lambda
          + \sigma_{i+1}\sqrt{1 - e^{-2\tau^2 h}}\;z, \qquad z \sim \mathcal N(0, I),

and only :math:`\hat x_0` along the path is approximated, by a polynomial in :math:`\lambda`
through the data predictions of earlier steps (one evaluation per step). DPM-Solver++'s SDE
variants write :math:`\eta = \tau^2`. All noise is drawn through
:func:`scoresde._runtime.gaussian_like` (``generator`` may be a
:class:`~scoresde.noise.PerSampleGenerator`).

- :class:`DPMSolverPlusPlusSDE` — DPM-Solver++(2M) SDE and (3M) SDE;
- :class:`SASolver` — SA-Solver's stochastic Adams predictor and corrector, any orders.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._checks import check_int, check_positive
from .._runtime import gaussian_like
from .base import Sampler
from .dpm_solver import _LOWER_ORDER_FINAL_BELOW, _run_setup

__all__ = ["DPMSolverPlusPlusSDE", "SASolver"]


def _lower_orders(order: int, steps: int, lower_order_final: bool) -> list[int]:
    """Warm-up orders (as many earlier predictions as exist) and, optionally, lower final orders."""
    orders = [min(order, i + 1) for i in range(steps)]
    if lower_order_final and steps < _LOWER_ORDER_FINAL_BELOW:
        orders = [min(o, steps - i) for i, o in enumerate(orders)]
    return orders


class DPMSolverPlusPlusSDE(Sampler):
    r"""DPM-Solver++(2M) SDE and (3M) SDE (Lu et al. 2022b; k-diffusion's 3M SDE).

    With :math:`\eta \ge 0`, :math:`H = (1 + \eta)h`, :math:`m_j = \hat x_0(x_j, t_j)`,
    :math:`\varphi_1 = 1 - e^{-H}`, :math:`\varphi_2 = (e^{-H} - 1)/H + 1`,
    :math:`\varphi_3 = \varphi_2/H - \tfrac12`, step :math:`i \to i+1` is

    .. math:: x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i}e^{-\eta h}x_i + s_{i+1}\varphi_1 m_i
              + s_{i+1} C_i + \sigma_{i+1}\sqrt{1 - e^{-2\eta h}}\;S_{\rm noise}\,z,

    the exact step of the module's SDE with :math:`\tau^2 = \eta` for a data prediction that is
    a polynomial in :math:`\lambda` through the last ``order`` predictions. With
    :math:`r_0 = h_{i-1}/h`, :math:`r_1 = h_{i-2}/h`,
    :math:`D_{1,0} = (m_i - m_{i-1})/r_0`, :math:`D_{1,1} = (m_{i-1} - m_{i-2})/r_1`:

    - order 2: :math:`C_i = \tfrac12\varphi_1 D_{1,0}` (``solver_type="midpoint"``, Lu et al.'s
      and diffusers' ``sde-dpmsolver++``) or :math:`C_i = \varphi_2 D_{1,0}` (``"heun"``, the
      exact integral of the linear interpolant);
    - order 3: :math:`C_i = \varphi_2 D_1 - 2\varphi_3 D_2` with
      :math:`D_1 = D_{1,0} + \frac{r_0}{r_0 + r_1}(D_{1,0} - D_{1,1})`,
      :math:`D_2 = (D_{1,0} - D_{1,1})/(r_0 + r_1)`, the exact integral of the quadratic
      interpolant (with :math:`\eta = 0` exactly DPM-Solver++(3M),
      :class:`~scoresde.samplers.DPMSolverPlusPlus`). k-diffusion's ``sample_dpmpp_3m_sde``
      writes :math:`-\varphi_3 D_2`, half the curvature term, which with :math:`\eta = 0` is not
      third order.

    The first steps lack history and use lower orders; with ``lower_order_final`` and fewer
    than 15 steps the last ones do too (as :class:`~scoresde.samplers.DPMSolverPlusPlus`).
    :math:`\eta = 1` (default) is the reverse SDE; :math:`\eta = 0` the deterministic solver.
    Weak order ``order`` for the deterministic part and at least 1 with noise (measured in the
    tests, on Gaussian data where the weak error is known in closed form). **NFE = steps.**
    Default grid ``"log_snr"``, as for the deterministic DPM-Solver++.

    Parameters
    ----------
    order : {2, 3}
        Multistep order (default 2).
    eta : float
        :math:`\eta = \tau^2 \ge 0`, the amount of noise (1: the reverse SDE).
    s_noise : float
        Scale (> 0) of the added noise.
    solver_type : {"midpoint", "heun"}
        Second-order correction (order 2 only; see above).
    lower_order_final : bool
        Lower orders on the last steps when there are fewer than 15 steps (default True).

    References
    ----------
    Lu, Zhou, Bao, Chen, Li & Zhu (2022b), *DPM-Solver++: Fast solver for guided sampling of
    diffusion probabilistic models*, arXiv:2211.01095, App. (SDE-DPM-Solver++(2M)).
    Crowson, k-diffusion (2022), ``sample_dpmpp_2m_sde`` and ``sample_dpmpp_3m_sde``.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.zeros(2), torch.eye(2))
    >>> out = sd.sample(sde, target.score_fn(sde), (64, 2), sampler="dpm_solver_pp_sde", steps=20,
    ...                 order=3, generator=torch.Generator().manual_seed(0))
    >>> out.nfe  # 20 steps and the default final (Tweedie) step to t = 0
    21
    """

    name = "dpm_solver_pp_sde"
    needs_linear_sde = True
    default_grid = "log_snr"
    evaluates_at_end = False
    default_denoise = "tweedie"
    SOLVER_TYPES = ("midpoint", "heun")

    def __init__(self, order: int = 2, eta: float = 1.0, s_noise: float = 1.0,
                 solver_type: str = "midpoint", lower_order_final: bool = True):
        order = check_int("order", order)
        if order not in (2, 3):
            raise ValueError(f"order must be 2 or 3, got {order}")
        if solver_type not in self.SOLVER_TYPES:
            raise ValueError(f"solver_type must be one of {self.SOLVER_TYPES}, got {solver_type!r}")
        if not isinstance(lower_order_final, bool):
            raise TypeError(f"lower_order_final must be a bool, got {type(lower_order_final).__name__}")
        self.order = order
        self.eta = check_positive("eta", eta, strict=False)
        self.s_noise = check_positive("s_noise", s_noise)
        self.solver_type = solver_type
        self.lower_order_final = lower_order_final

    @property
    def stochastic(self) -> bool:
        """Whether noise is drawn: ``eta > 0``."""
        return self.eta > 0

    def step_orders(self, steps: int) -> list[int]:
        """The order used at each of ``steps`` steps."""
        return _lower_orders(self.order, steps, self.lower_order_final)

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        ts, lam, s, sig, pred = _run_setup(self, sde, score_fn, times)
        hist: list[torch.Tensor] = []
        hs: list[float] = []
        for i, order in enumerate(self.step_orders(len(ts) - 1)):
            hist.append(pred.x0(x, ts[i], s=s[i], sigma=sig[i]))
            del hist[:-3]
            h = lam[i + 1] - lam[i]
            H = (1.0 + self.eta) * h
            phi1 = -math.expm1(-H)
            x_next = (sig[i + 1] / sig[i] * math.exp(-self.eta * h)) * x + (s[i + 1] * phi1) * hist[-1]
            if order >= 2:
                phi2 = math.expm1(-H) / H + 1.0
                d10 = (hist[-1] - hist[-2]) * (h / hs[-1])
                if order == 2:
                    c = 0.5 * phi1 if self.solver_type == "midpoint" else phi2
                    x_next = x_next + (s[i + 1] * c) * d10
                else:
                    r0, r1 = hs[-1] / h, hs[-2] / h
                    d11 = (hist[-2] - hist[-3]) / r1
                    d1 = d10 + (r0 / (r0 + r1)) * (d10 - d11)
                    d2 = (d10 - d11) / (r0 + r1)
                    phi3 = phi2 / H - 0.5
                    x_next = x_next + (s[i + 1] * phi2) * d1 - (2.0 * s[i + 1] * phi3) * d2
            if self.eta > 0:
                amp = sig[i + 1] * math.sqrt(-math.expm1(-2.0 * self.eta * h)) * self.s_noise
                x_next = x_next + amp * gaussian_like(x, generator)
            x = x_next
            hs.append(h)
            if callback is not None:
                callback(i, ts[i + 1], x)
        return x


def _exp_moments(a: float, k_max: int) -> list[float]:
    r""":math:`I_k(a) = \int_{-1}^0 e^{a w} w^k\,\mathrm dw` for ``k = 0..k_max``, without cancellation.

    A power series for :math:`a \le 1`, the (then stable) recursion
    :math:`I_k = (-(-1)^k e^{-a} - k I_{k-1})/a`, :math:`I_0 = (1 - e^{-a})/a`, above.
    """
    if a <= 1.0:
        out = []
        for k in range(k_max + 1):
            total, term = 0.0, 1.0  # term = a^n / n!
            for n in range(40):
                total += term * (-1) ** (n + k) / (n + k + 1)
                term *= a / (n + 1)
            out.append(total)
        return out
    out = [-math.expm1(-a) / a]
    for k in range(1, k_max + 1):
        out.append((-((-1) ** k) * math.exp(-a) - k * out[-1]) / a)
    return out


def _adams_weights(nodes: list[float], a: float) -> list[float]:
    r"""Weights :math:`\beta_j = \int_{-1}^0 e^{a w}\,\ell_j(w)\,\mathrm dw` of the Lagrange basis
    :math:`\ell_j` on ``nodes`` (in units of the step, 0 = the step's end)."""
    moments = np.array(_exp_moments(a, len(nodes) - 1))
    weights = []
    for j, wj in enumerate(nodes):
        others = [w for m, w in enumerate(nodes) if m != j]
        coeffs = np.poly(others)[::-1] if others else np.ones(1)  # ascending powers
        denom = float(np.prod([wj - w for w in others])) if others else 1.0
        weights.append(float(coeffs @ moments[: len(coeffs)]) / denom)
    return weights


class SASolver(Sampler):
    r"""SA-Solver: stochastic Adams predictor and corrector (Xue et al. 2023).

    Each step solves the module's SDE exactly in its linear part and noise, with the data
    prediction replaced by its Lagrange interpolant in :math:`\lambda`; with
    :math:`c = 1 + \tau^2`, :math:`w = (\lambda - \lambda_{i+1})/h` and the Lagrange basis
    :math:`\ell_j` on the nodes :math:`w_j`,

    .. math:: x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i}e^{-\tau^2 h}x_i
              + s_{i+1}\,c\,h\sum_j \beta_j\,m_j + \sigma_{i+1}\sqrt{1 - e^{-2\tau^2 h}}\;\xi_i,
              \qquad \beta_j = \int_{-1}^0 e^{c h w}\,\ell_j(w)\,\mathrm dw,

    computed in closed form. The **predictor** interpolates the last ``predictor_order`` data
    predictions :math:`m_i, m_{i-1}, \dots` (an exponential Adams–Bashforth step); the
    **corrector** redoes the step once :math:`m_{i+1} = \hat x_0(x_{i+1}^{\rm pred}, t_{i+1})`
    is known, interpolating :math:`m_{i+1}, m_i, \dots` (``corrector_order`` points, an
    exponential Adams–Moulton step) with the *same* noise :math:`\xi_i`. As in SA-Solver (and
    UniPC), the corrected state continues the integration while :math:`m_{i+1}` is kept, so
    each step costs one evaluation (**NFE = steps**); the last step is not corrected.

    :math:`\tau = 0` gives a deterministic exponential multistep solver of order
    ``predictor_order`` (``min(corrector_order, predictor_order + 1)`` with the corrector);
    :math:`\tau > 0` a stochastic one of weak order at least 1 (measured in the tests).
    Defaults: predictor order 3 and corrector order 3 (the paper's
    recommendation for few steps is 3/4 at :math:`\tau = 1` on images; lower orders are more
    robust at very few steps) on the ``"log_snr"`` grid.

    Parameters
    ----------
    predictor_order : {1, 2, 3, 4}
        Points of the predictor's interpolant (default 3).
    corrector_order : {0, 1, 2, 3, 4}
        Points of the corrector's interpolant, including the new one; 0 turns the corrector off.
    tau : float
        Noise scale :math:`\tau \ge 0` (1: the reverse SDE; 0: the probability-flow ODE).
    lower_order_final : bool
        Lower predictor orders on the last steps when there are fewer than 15 steps.

    References
    ----------
    Xue, Yi, Wu, Liu, Li & Sun (2023), *SA-Solver: Stochastic Adams solver for fast sampling of
    diffusion models*, NeurIPS, Alg. 1 and eq. 13–16.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.zeros(2), torch.eye(2))
    >>> out = sd.sample(sde, target.score_fn(sde), (64, 2), sampler="sa_solver", steps=20,
    ...                 generator=torch.Generator().manual_seed(0))
    >>> out.nfe  # 20 steps and the default final (Tweedie) step to t = 0
    21
    """

    name = "sa_solver"
    needs_linear_sde = True
    default_grid = "log_snr"
    zero_noise_end = False  # its steps need a finite log-SNR at the end of the grid
    evaluates_at_end = False
    default_denoise = "tweedie"

    def __init__(self, predictor_order: int = 3, corrector_order: int = 3, tau: float = 1.0,
                 lower_order_final: bool = True):
        self.predictor_order = check_int("predictor_order", predictor_order)
        if self.predictor_order > 4:
            raise ValueError(f"predictor_order must be 1, 2, 3 or 4, got {predictor_order}")
        self.corrector_order = check_int("corrector_order", corrector_order, minimum=0)
        if self.corrector_order > 4:
            raise ValueError(f"corrector_order must be 0, 1, 2, 3 or 4, got {corrector_order}")
        self.tau = check_positive("tau", tau, strict=False)
        if not isinstance(lower_order_final, bool):
            raise TypeError(f"lower_order_final must be a bool, got {type(lower_order_final).__name__}")
        self.lower_order_final = lower_order_final

    @property
    def stochastic(self) -> bool:
        """Whether noise is drawn: ``tau > 0``."""
        return self.tau > 0

    @property
    def order(self) -> int:
        """The deterministic order: the predictor's, raised by the corrector to at most one more."""
        p, c = self.predictor_order, self.corrector_order
        return p if c == 0 else min(c, p + 1)

    def _step(self, x, m: list[torch.Tensor], lams: list[float], i: int, lam, s, sig, xi):
        """One step i -> i+1 from ``x`` with data predictions ``m`` at ``lams`` (newest last)."""
        h = lam[i + 1] - lam[i]
        tau2 = self.tau**2
        c = 1.0 + tau2
        nodes = [(lj - lam[i + 1]) / h for lj in lams]
        beta = _adams_weights(nodes, c * h)
        out = (sig[i + 1] / sig[i] * math.exp(-tau2 * h)) * x
        for bj, mj in zip(beta, m):
            out = out + (s[i + 1] * c * h * bj) * mj
        if xi is not None:
            out = out + (sig[i + 1] * math.sqrt(-math.expm1(-2.0 * tau2 * h))) * xi
        return out

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        ts, lam, s, sig, pred = _run_setup(self, sde, score_fn, times)
        n = len(ts) - 1
        orders = _lower_orders(self.predictor_order, n, self.lower_order_final)
        ms: list[torch.Tensor] = []  # data predictions, newest last
        prev = None  # (state before the previous step, its noise)
        for i in range(n):
            ms.append(pred.x0(x, ts[i], s=s[i], sigma=sig[i]))
            del ms[:-5]
            if prev is not None and self.corrector_order > 0:
                k = min(self.corrector_order, len(ms))
                x_prev, xi_prev = prev
                x = self._step(x_prev, ms[-k:], lam[i + 1 - k: i + 1], i - 1, lam, s, sig, xi_prev)
            k = orders[i]
            xi = gaussian_like(x, generator) if self.tau > 0 else None
            x_next = self._step(x, ms[-k:], lam[i + 1 - k: i + 1], i, lam, s, sig, xi)
            prev = (x, xi)
            x = x_next
            if callback is not None:
                callback(i, ts[i + 1], x)
        return x
