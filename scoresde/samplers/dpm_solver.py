r"""Exponential-integrator solvers of the probability-flow ODE in log-SNR time.

For a linear SDE with transition :math:`\mathcal N(s(t)\,x_0, \sigma(t)^2 I)` and half log-SNR
:math:`\lambda(t) = \log(s(t)/\sigma(t))`, the probability-flow ODE has the exact solution
(Lu et al. 2022, Prop. 3.1; Lu et al. 2022b, eq. 8), for :math:`t < u` and :math:`h = \lambda_t - \lambda_u`,

.. math::

    x_t = \frac{s_t}{s_u} x_u - s_t \int_{\lambda_u}^{\lambda_t} e^{-\lambda}\,
          \hat\epsilon(x_\lambda, \lambda)\,\mathrm d\lambda
        = \frac{\sigma_t}{\sigma_u} x_u + \sigma_t \int_{\lambda_u}^{\lambda_t} e^{\lambda}\,
          \hat x_0(x_\lambda, \lambda)\,\mathrm d\lambda,

with the noise prediction :math:`\hat\epsilon = -\sigma\,\hat s` and the data prediction
(Tweedie) :math:`\hat x_0 = (x + \sigma^2 \hat s)/s`, both read off the score
:math:`\hat s = \nabla_x \log p_t(x)` (Efron 2011), or taken directly from a model that predicts
them: every solver here asks :class:`~scoresde.predict.PredictionAdapter` for the quantity its
update uses. The linear part is integrated exactly; only
the (slowly varying) prediction is approximated by a Taylor expansion in :math:`\lambda`. This
is why these solvers stay accurate at 10–20 score evaluations where Euler or Heun in ``t`` do not.

Samplers here need a :class:`~scoresde.LinearSDE` (``log_snr`` and ``t_from_log_snr``).
"""

from __future__ import annotations

import math
import warnings

import torch

from .._checks import check_int, check_linear
from ..predict import PredictionAdapter, scale_std_values
from .base import Sampler
from .grids import GRIDS, LogSNRSchedule

__all__ = ["DPMSolver", "DPMSolverPlusPlus", "UniPC"]

# below this many steps the multistep solvers drop to lower orders on the last steps
_LOWER_ORDER_FINAL_BELOW = 15


def _log_snr(sde, times) -> list[float]:
    t = torch.as_tensor(times, dtype=torch.float64).detach().cpu().reshape(-1)
    return sde.log_snr(t).tolist()


_UNSET = object()  # the removed ``time_grid`` option was not passed


def _deprecated_time_grid(sampler: Sampler, time_grid) -> None:
    """The removed ``time_grid=`` option: warn, then make it this instance's default grid."""
    if time_grid is _UNSET:
        return
    warnings.warn(
        f"{type(sampler).__name__}(time_grid=...) is deprecated and will be removed in the next "
        "release; pass grid= to scoresde.sample instead (or set the instance's default_grid)",
        DeprecationWarning,
        stacklevel=3,
    )
    if time_grid is None:  # it meant "the driver's grid", whose default was "uniform"
        time_grid = "uniform"
    if not (isinstance(time_grid, LogSNRSchedule) or (isinstance(time_grid, str) and time_grid in GRIDS)):
        raise ValueError(
            f"time_grid must be None, a LogSNRSchedule or one of {GRIDS}, got {time_grid!r}")
    sampler.default_grid = time_grid


class _LogSNRSampler(Sampler):
    """What the log-SNR solvers declare alike: deterministic, LinearSDE, ``log_snr`` grid."""

    stochastic = False
    needs_linear_sde = True
    default_grid = "log_snr"
    evaluates_at_end = False  # the score is evaluated at t_i and inside (t_{i+1}, t_i) only
    zero_noise_end = True  # a last step to sigma = 0 (lambda = inf) is taken at order 1

    @property
    def time_grid(self):
        """Deprecated alias of :attr:`~scoresde.samplers.Sampler.default_grid`."""
        warnings.warn("time_grid is deprecated; use default_grid (or sample(..., grid=...))",
                      DeprecationWarning, stacklevel=2)
        return self.default_grid

    @time_grid.setter
    def time_grid(self, value) -> None:
        _deprecated_time_grid(self, value)


class DPMSolver(_LogSNRSampler):
    r"""DPM-Solver-1, -2 and -3, singlestep, with noise prediction (Lu et al. 2022).

    One step from :math:`u = t_i` to :math:`t = t_{i+1}`, :math:`h = \lambda_t - \lambda_u > 0`,
    :math:`\hat\epsilon_u = -\sigma_u \hat s(x_u, u)`, intermediate times :math:`s_j` with
    :math:`\lambda_{s_j} = \lambda_u + r_j h` (Alg. 1 and 2 of the paper):

    - order 1 (= DDIM with :math:`\eta = 0`):

      .. math:: x_t = \frac{s_t}{s_u} x_u - \sigma_t (e^h - 1)\,\hat\epsilon_u ;

    - order 2 (:math:`r_1 = \tfrac12`), with
      :math:`x_{s_1} = \frac{s_{s_1}}{s_u} x_u - \sigma_{s_1}(e^{r_1 h} - 1)\hat\epsilon_u`,

      .. math:: x_t = \frac{s_t}{s_u} x_u - \sigma_t (e^h - 1)\,\hat\epsilon_u
                - \frac{\sigma_t}{2 r_1} (e^h - 1)\,\big(\hat\epsilon(x_{s_1}, s_1) - \hat\epsilon_u\big) ;

    - order 3 (:math:`r_1 = \tfrac13`, :math:`r_2 = \tfrac23`), with :math:`x_{s_1}` as above,
      :math:`D_1 = \hat\epsilon(x_{s_1}, s_1) - \hat\epsilon_u`,
      :math:`x_{s_2} = \frac{s_{s_2}}{s_u} x_u - \sigma_{s_2}(e^{r_2 h} - 1)\hat\epsilon_u
      - \frac{\sigma_{s_2} r_2}{r_1}\big(\frac{e^{r_2 h} - 1}{r_2 h} - 1\big) D_1` and
      :math:`D_2 = \hat\epsilon(x_{s_2}, s_2) - \hat\epsilon_u`,

      .. math:: x_t = \frac{s_t}{s_u} x_u - \sigma_t (e^h - 1)\,\hat\epsilon_u
                - \frac{\sigma_t}{r_2}\Big(\frac{e^h - 1}{h} - 1\Big) D_2 .

    Global order ``order`` in the step :math:`h` (measured in the tests). **NFE = order ×
    steps**: ``steps`` counts steps, each of which makes ``order`` score evaluations.

    Parameters
    ----------
    order : {1, 2, 3}
        Order of the solver (default 2).
    time_grid : {"log_snr", "edm", "quadratic", "uniform"}, LogSNRSchedule or None
        Deprecated (removed in the next release): sets this instance's
        :attr:`~scoresde.samplers.Sampler.default_grid` (``None``: ``"uniform"``) and warns.
        Pass ``grid=`` to :func:`scoresde.sample` instead.

    Notes
    -----
    The default grid (``grid=None`` in :func:`scoresde.sample`) is ``"log_snr"``, uniform
    steps in :math:`\lambda`, the paper's choice; any other grid passed to
    :func:`scoresde.sample` is used as given, e.g. a :class:`~scoresde.samplers.LogSNRSchedule`
    from :func:`~scoresde.samplers.optimize_schedule`, optimised for the model. See
    :class:`DPMSolverPlusPlus` for what each grid costs. The grid must end at ``t > 0`` when
    :math:`\lambda(0)` is infinite (VP, sub-VP, cosine VP, discrete VP): the intermediate stages
    of a last step to :math:`\lambda = \infty` would sit at ``t = 0`` (``zero_noise_end`` is
    ``False``); :class:`DPMSolverPlusPlus` and :class:`~scoresde.samplers.DDIM` take such a step.

    References
    ----------
    Lu, Zhou, Bao, Chen, Li & Zhu (2022), *DPM-Solver: A fast ODE solver for diffusion
    probabilistic model sampling in around 10 steps*, NeurIPS.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.zeros(2), torch.eye(2))
    >>> out = sd.sample(sde, target.score_fn(sde), (64, 2), sampler="dpm_solver", steps=5,
    ...                 order=3, generator=torch.Generator().manual_seed(0))
    >>> out.nfe
    15
    """

    name = "dpm_solver"
    zero_noise_end = False  # its intermediate stages would sit at lambda = inf, i.e. t = 0

    def __init__(self, order: int = 2, time_grid=_UNSET):
        order = check_int("order", order)
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order}")
        self.order = order
        _deprecated_time_grid(self, time_grid)

    @property
    def nfe_per_step(self) -> int:
        """A singlestep solver of order k makes k evaluations per step."""
        return self.order

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        ts_list, lam, s, sig, pred = _run_setup(self, sde, score_fn, times)
        n = len(lam) - 1
        r = {1: (), 2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}[self.order]
        # intermediate times of every step, computed at once
        lam_mid = [lam[i] + rj * (lam[i + 1] - lam[i]) for i in range(n) for rj in r]
        t_mid = sde.t_from_log_snr(torch.tensor(lam_mid, dtype=torch.float64)).tolist() if r else []
        s_mid, sig_mid = scale_std_values(sde, t_mid) if r else ([], [])

        k = len(r)
        for i in range(n):
            h = lam[i + 1] - lam[i]
            e_u = pred.eps(x, ts_list[i], s=s[i], sigma=sig[i])
            lin = (s[i + 1] / s[i]) * x
            phi1 = math.expm1(h)
            if self.order == 1:
                x = lin - sig[i + 1] * phi1 * e_u
            elif self.order == 2:
                (r1,), j = r, i * k
                x1 = (s_mid[j] / s[i]) * x - sig_mid[j] * math.expm1(r1 * h) * e_u
                d1 = pred.eps(x1, t_mid[j], s=s_mid[j], sigma=sig_mid[j]) - e_u
                x = lin - sig[i + 1] * phi1 * e_u - (sig[i + 1] / (2 * r1)) * phi1 * d1
            else:
                (r1, r2), j = r, i * k
                x1 = (s_mid[j] / s[i]) * x - sig_mid[j] * math.expm1(r1 * h) * e_u
                d1 = pred.eps(x1, t_mid[j], s=s_mid[j], sigma=sig_mid[j]) - e_u
                e2 = math.expm1(r2 * h)
                x2 = ((s_mid[j + 1] / s[i]) * x - sig_mid[j + 1] * e2 * e_u
                      - (sig_mid[j + 1] * r2 / r1) * (e2 / (r2 * h) - 1.0) * d1)
                d2 = pred.eps(x2, t_mid[j + 1], s=s_mid[j + 1], sigma=sig_mid[j + 1]) - e_u
                x = lin - sig[i + 1] * phi1 * e_u - (sig[i + 1] / r2) * (phi1 / h - 1.0) * d2
            if callback is not None:
                callback(i, ts_list[i + 1], x)
        return x


class DPMSolverPlusPlus(_LogSNRSampler):
    r"""DPM-Solver++(2M) and (3M): multistep, data prediction (Lu et al. 2022b).

    With :math:`\hat x_0^{(i)} = (x_i + \sigma_i^2 \hat s(x_i, t_i))/s_i`,
    :math:`h_i = \lambda_{i+1} - \lambda_i`, :math:`\varphi_1 = e^{-h_i} - 1`,
    :math:`\varphi_2 = \varphi_1/h_i + 1`, :math:`\varphi_3 = \varphi_2/h_i - \tfrac12`, step
    :math:`i \to i+1` is

    .. math::

        x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} x_i - s_{i+1}\varphi_1\,\hat x_0^{(i)}
                  \;\underbrace{-\ \tfrac12 s_{i+1}\varphi_1 D_1}_{\text{2M}}
                  \qquad\text{or}\qquad
        x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} x_i - s_{i+1}\varphi_1\,\hat x_0^{(i)}
                  + s_{i+1}\varphi_2 D_1 - 2 s_{i+1}\varphi_3 D_2 \quad\text{(3M)},

    with :math:`r_0 = h_{i-1}/h_i`, :math:`r_1 = h_{i-2}/h_i`,
    :math:`D_{1,0} = (\hat x_0^{(i)} - \hat x_0^{(i-1)})/r_0`,
    :math:`D_{1,1} = (\hat x_0^{(i-1)} - \hat x_0^{(i-2)})/r_1`; 2M uses :math:`D_1 = D_{1,0}`,
    3M :math:`D_1 = D_{1,0} + \frac{r_0}{r_0 + r_1}(D_{1,0} - D_{1,1})` and
    :math:`D_2 = (D_{1,0} - D_{1,1})/(r_0 + r_1)`. The first steps, which lack history, use
    the lower orders (order 1 is DDIM). Global order 2 (2M) or 3 (3M); **NFE = steps** (one
    score evaluation per step, the earlier ones are reused).

    With ``lower_order_final=True`` (the paper's and diffusers' default) and fewer than 15
    steps, the last steps drop order as well: 3M takes its last step at order 1 and the one
    before at order 2, 2M its last step at order 1. Near :math:`t = \epsilon` the steps in
    :math:`\lambda` are long relative to how fast :math:`\hat x_0` still moves on tight modes, and
    the lower-order final steps are more stable there.

    Grids, passed as ``grid=`` to :func:`scoresde.sample` (measured with
    ``benchmarks/bench_fast_samplers.py`` at eps = 1e-3, n = 2000, one seed: combined error of
    :func:`scoresde.metrics.evaluate`, noise floor 0.16 on ``imbalanced_2d``, 0.38 on
    ``anisotropic_64d``; the current table is on the "Choosing a sampler" page). Every grid
    costs the same (times are computed once, in closed form for VP/VE/sub-VP); what differs
    is where the steps go:

    - ``"log_snr"`` (the default grid): equal steps in :math:`\lambda`, the variable the solver
      expands in. The only fixed grid that is good on *both* stiff targets at 20–50 NFE
      (2M: 0.29/0.17 and 1.49/0.95 at 20/50 NFE; 3M: 0.34/0.12 and 1.24/0.69).
    - ``"quadratic"`` (dense near the data in ``t``): on par at 20+ NFE on the 2-D target and
      the best 3M grid at 10 NFE on the 64-D one (0.44), but worse at 20 there (1.02).
    - ``"edm"`` (:math:`\rho = 7`): puts too few steps at intermediate noise, where the
      modes separate; 2–4× worse than ``log_snr`` at 10–20 NFE on both targets.
    - ``"uniform"`` (in ``t``): good on the 2-D target at 10 NFE (0.44) but unstable on the
      64-D one (errors 7–44 at 10–20 NFE): its last step jumps
      :math:`\Delta\lambda \approx 3` across the scales of the tight directions.
    - a :class:`~scoresde.samplers.LogSNRSchedule` from
      :func:`~scoresde.samplers.optimize_schedule`: optimised once for the model, it wins at
      5–20 NFE on both targets (the "Choosing a sampler" page has the numbers). Use it with
      ``lower_order_final=False``: the optimiser places the last steps itself.

    End time and final step. The residual noise at ``eps`` inflates a data direction of
    variance :math:`v` by :math:`\tilde\sigma^2(\epsilon)/v`; at ``eps = 1e-3`` on the VP SDE
    (:math:`\tilde\sigma^2 \approx 10^{-4}`) that alone puts exact samples of
    :math:`p_\epsilon` 0.3 above the noise floor on ``anisotropic_64d`` (smallest variance
    1.6e-3). Tweedie's step (``denoise=True``) overshoots by the same order in the other
    direction; ``denoise="flow"`` (half of it, the flow ODE's Euler step to 0) or an ``eps``
    whose :math:`\tilde\sigma^2` is below 1% of the smallest variance that matters (1e-4
    here) removes the bias.

    A grid ending at zero noise (``t = 0`` on VP, :math:`\lambda = +\infty`, as in diffusers'
    ``final_sigmas_type="zero"``) is accepted: that last step is taken at order 1 whatever
    ``lower_order_final`` says, :math:`x_{i+1} = s_{i+1}\hat x_0^{(i)}` (the multistep
    correction grows like :math:`h_i/h_{i-1}` and has no limit), as diffusers does.

    Warm-up. The paper starts with lower orders (``warmup="lower_order"``): the first step is
    order 1, whose local error :math:`O(h^2)` is not averaged away; but its constant is
    negligible, since :math:`\hat x_0` hardly moves at high noise (the tests measure order 3
    or more for 3M with this default). ``warmup="singlestep"`` makes the first step a
    DPM-Solver++(2S) step (Lu et al. 2022b, Alg. 1, :math:`r = \tfrac12`): with
    :math:`\lambda_m = \lambda_0 + h/2`,
    :math:`x_m = \frac{\sigma_m}{\sigma_0} x_0 - s_m (e^{-h/2} - 1)\hat x_0^{(0)}` and

    .. math:: x_1 = \frac{\sigma_1}{\sigma_0} x_0 - s_1 (e^{-h} - 1)\,\hat x_0(x_m, t_m),

    local error :math:`O(h^3)` for one extra score evaluation (**NFE = steps + 1**); it did
    not pay in the benchmark.

    Parameters
    ----------
    order : {2, 3}
        Multistep order (default 2). ``1`` is accepted and is DDIM.
    lower_order_final : bool
        Lower orders on the last steps when there are fewer than 15 steps (default True).
    warmup : {"lower_order", "singlestep"}
        How the first step is taken (see above; default ``"lower_order"``, the paper's).
    time_grid : {"log_snr", "edm", "quadratic", "uniform"}, LogSNRSchedule or None
        Deprecated, as for :class:`DPMSolver`; pass ``grid=`` to :func:`scoresde.sample`.

    References
    ----------
    Lu, Zhou, Bao, Chen, Li & Zhu (2022b), *DPM-Solver++: Fast solver for guided sampling of
    diffusion probabilistic models*, arXiv:2211.01095, Alg. 2 and App. B.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.zeros(2), torch.eye(2))
    >>> out = sd.sample(sde, target.score_fn(sde), (64, 2), sampler="dpm_solver_pp", steps=10,
    ...                 order=3, generator=torch.Generator().manual_seed(0))
    >>> out.nfe
    10
    """

    name = "dpm_solver_pp"

    WARMUPS = ("lower_order", "singlestep")

    def __init__(self, order: int = 2, lower_order_final: bool = True,
                 time_grid=_UNSET, warmup: str = "lower_order"):
        order = check_int("order", order)
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order}")
        if not isinstance(lower_order_final, bool):
            raise TypeError(f"lower_order_final must be a bool, got {type(lower_order_final).__name__}")
        self.order = order
        self.lower_order_final = lower_order_final
        if warmup not in self.WARMUPS:
            raise ValueError(f"warmup must be one of {self.WARMUPS}, got {warmup!r}")
        self.warmup = warmup
        _deprecated_time_grid(self, time_grid)

    def step_orders(self, steps: int) -> list[int]:
        """The order used at each of ``steps`` steps (warm-up and, optionally, final steps)."""
        orders = [min(self.order, i + 1) for i in range(steps)]
        if self.lower_order_final and steps < _LOWER_ORDER_FINAL_BELOW:
            orders = [min(o, steps - i) for i, o in enumerate(orders)]
        return orders

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        ts_list, lam, s, sig, pred = _run_setup(self, sde, score_fn, times)
        n = len(ts_list) - 1
        hist: list[torch.Tensor] = []  # data predictions, newest last
        hs: list[float] = []  # step lengths in lambda, newest last
        for i, order in enumerate(self.step_orders(n)):
            hist.append(pred.x0(x, ts_list[i], s=s[i], sigma=sig[i]))
            del hist[:-3]
            h = lam[i + 1] - lam[i]
            phi1 = math.expm1(-h)
            m0 = hist[-1]
            x_next = (sig[i + 1] / sig[i]) * x - (s[i + 1] * phi1) * m0
            if math.isinf(h):  # a last step to sigma = 0 is order 1: x_next = s_{i+1} x0-hat
                if i == 0 and self.warmup == "singlestep" and self.order > 1:
                    raise ValueError(
                        "warmup='singlestep' needs a first step that ends at finite log-SNR; "
                        "this grid has a single step, to sigma = 0")
            elif i == 0 and self.warmup == "singlestep" and self.order > 1:
                lam_m = lam[0] + 0.5 * h
                t_m = float(sde.t_from_log_snr(torch.tensor(lam_m, dtype=torch.float64)))
                (s_m,), (sig_m,) = scale_std_values(sde, [t_m])
                x_m = (sig_m / sig[0]) * x - (s_m * math.expm1(-0.5 * h)) * m0
                m_mid = pred.x0(x_m, t_m, s=s_m, sigma=sig_m)
                x_next = (sig[1] / sig[0]) * x - (s[1] * phi1) * m_mid
            elif order >= 2:
                r0 = hs[-1] / h
                d10 = (m0 - hist[-2]) / r0
                if order == 2:
                    x_next = x_next - (0.5 * s[i + 1] * phi1) * d10
                else:
                    r1 = hs[-2] / h
                    d11 = (hist[-2] - hist[-3]) / r1
                    d1 = d10 + (r0 / (r0 + r1)) * (d10 - d11)
                    d2 = (d10 - d11) / (r0 + r1)
                    phi2 = phi1 / h + 1.0
                    phi3 = phi2 / h - 0.5
                    x_next = x_next + (s[i + 1] * phi2) * d1 - (2.0 * s[i + 1] * phi3) * d2
            x = x_next
            hs.append(h)
            if callback is not None:
                callback(i, ts_list[i + 1], x)
        return x


class UniPC(DPMSolverPlusPlus):
    r"""DPM-Solver++ multistep predictor with a UniC-style corrector at no extra cost (Zhao et al. 2023).

    After the predictor (:class:`DPMSolverPlusPlus` of order ``order``) has produced
    :math:`\tilde x_{i+1}` and the next step has evaluated
    :math:`\tilde m_{i+1} = \hat x_0(\tilde x_{i+1}, t_{i+1})` (which it needs anyway), the
    step :math:`i \to i+1` is redone with the exponential integrator whose data prediction is
    the polynomial in :math:`\lambda` through :math:`\tilde m_{i+1}, m_i` (and :math:`m_{i-1}`
    for ``order=2``). Writing :math:`A = \tilde m_{i+1} - m_i`, :math:`B = m_{i-1} - m_i`,
    :math:`r = h_{i-1}/h_i`, the Taylor coefficients are
    :math:`h^2 m'' \approx 2(rA + B)/(r(1+r))` (0 for ``order=1``) and
    :math:`h m' \approx A - \tfrac12 h^2 m''`, and with :math:`\varphi_{1,2,3}` as in
    :class:`DPMSolverPlusPlus`

    .. math:: x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} x_i - s_{i+1}\varphi_1 m_i
              + s_{i+1}\varphi_2\, h m' - s_{i+1}\varphi_3\, h^2 m'' ,

    the exact integral of that polynomial (an exponential Adams–Moulton step). The corrected
    state continues the integration while :math:`\tilde m_{i+1}` is kept as :math:`m_{i+1}`
    (as in UniPC), so **NFE = steps**; the last step is not corrected (that would cost one more
    evaluation). Order ``order + 1``.

    Parameters
    ----------
    order : {1, 2}
        Predictor order (default 2); the corrector adds one.
    lower_order_final
        As for :class:`DPMSolverPlusPlus` (it applies to the predictor).
    time_grid
        Deprecated, as for :class:`DPMSolver`; pass ``grid=`` to :func:`scoresde.sample`.

    References
    ----------
    Zhao, Bai, Rao, Zhou & Lu (2023), *UniPC: A unified predictor-corrector framework for fast
    sampling of diffusion models*, NeurIPS. Lu et al. (2022b), DPM-Solver++.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.zeros(2), torch.eye(2))
    >>> out = sd.sample(sde, target.score_fn(sde), (64, 2), sampler="unipc", steps=10,
    ...                 generator=torch.Generator().manual_seed(0))
    >>> out.nfe
    10
    """

    name = "unipc"

    def __init__(self, order: int = 2, lower_order_final: bool = True, time_grid=_UNSET):
        order = check_int("order", order)
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order}")
        super().__init__(order=order, lower_order_final=lower_order_final)
        _deprecated_time_grid(self, time_grid)

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        ts_list, lam, s, sig, pred = _run_setup(self, sde, score_fn, times)
        n = len(ts_list) - 1
        hist: list[torch.Tensor] = []
        hs: list[float] = []
        x_prev = None
        for i, order in enumerate(self.step_orders(n)):
            hist.append(pred.x0(x, ts_list[i], s=s[i], sigma=sig[i]))
            del hist[:-3]
            if i > 0:  # correct the previous step with the new data prediction
                h = hs[-1]
                phi1 = math.expm1(-h)
                phi2 = phi1 / h + 1.0
                phi3 = phi2 / h - 0.5
                m_new, m_old = hist[-1], hist[-2]
                a = m_new - m_old
                if self.order >= 2 and len(hist) >= 3:
                    r = hs[-2] / h
                    b2 = 2.0 * (r * a + (hist[-3] - m_old)) / (r * (1.0 + r))
                    hm1 = a - 0.5 * b2
                    corr = (s[i] * phi2) * hm1 - (s[i] * phi3) * b2
                else:
                    corr = (s[i] * phi2) * a
                x = (sig[i] / sig[i - 1]) * x_prev - (s[i] * phi1) * m_old + corr
            h = lam[i + 1] - lam[i]
            phi1 = math.expm1(-h)
            m0 = hist[-1]
            x_next = (sig[i + 1] / sig[i]) * x - (s[i + 1] * phi1) * m0
            if order >= 2 and not math.isinf(h):  # to sigma = 0 the step is order 1: x0-hat
                d10 = (m0 - hist[-2]) * (h / hs[-1])
                x_next = x_next - (0.5 * s[i + 1] * phi1) * d10
            x_prev, x = x, x_next
            hs.append(h)
            if callback is not None:
                callback(i, ts_list[i + 1], x)
        return x


def _run_setup(solver, sde, score_fn, times):
    """What every ``run`` here starts with: the grid times, λ, s and σ on them as float64
    floats (computed once), and the prediction adapter the update asks for ε̂ or x̂₀."""
    who = type(solver).__name__
    check_linear(sde, who)
    ts = times.detach().cpu().double()
    s, sig = scale_std_values(sde, ts, who=who)
    return ts.tolist(), _log_snr(sde, ts), s, sig, PredictionAdapter(sde, score_fn, who=who)
