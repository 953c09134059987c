r"""Samplers from the discrete-time DDPM family: ancestral DDPM and DDIM.

DDPM (Ho et al. 2020) samples the discrete chain that the VP SDE is the limit of
(:meth:`~scoresde.VPSDE.discretize`; Song et al. 2021, App. B); DDIM (Song, Meng, Ermon 2021)
is written here for any linear SDE between arbitrary grid times and updates with the noise
prediction of :class:`~scoresde.predict.PredictionAdapter` (a model that predicts ε natively
is used as it is). A discrete ε-prediction model indexed by step plugs in through
:class:`EpsilonScore` (:math:`\hat s = -\hat\epsilon/\sigma`, :func:`scoresde.predict.convert`).
"""

from __future__ import annotations

import math

import torch

from .._checks import as_time, check_int, check_positive
from .._runtime import gaussian_like, time_vector
from ..predict import PredictionAdapter, convert, scale_std_values
from ..sde import DiscreteSchedule
from .base import Sampler

__all__ = ["DDPM", "DDIM", "EpsilonScore"]


def _discrete_schedule(sde, N: int) -> DiscreteSchedule:
    if not callable(getattr(sde, "discretize", None)):
        raise TypeError(
            "DDPM needs an SDE with a discrete DDPM chain, i.e. a discretize(N) method returning a "
            f"DiscreteSchedule (VPSDE, CosineVPSDE), got {type(sde).__name__}"
        )
    return sde.discretize(N)


class DDPM(Sampler):
    r"""Ancestral sampling of the discrete DDPM chain (Ho et al. 2020, Algorithm 2), in score form.

    On the schedule ``sde.discretize(N)`` (:math:`\beta_i`, :math:`\alpha_i = 1 - \beta_i`,
    :math:`\bar\alpha_i`, times :math:`t_i = iT/N`), starting from :math:`x_N` at :math:`t_N = T`,
    for :math:`i = N, \dots, 1`

    .. math:: x_{i-1} = \frac{1}{\sqrt{\alpha_i}}\big(x_i + \beta_i\,\nabla\log p_{t_i}(x_i)\big)
              + \sigma_i z, \qquad z \sim \mathcal N(0, I),

    with :math:`\sigma_i^2 = \beta_i` (``variance="beta"``) or the posterior variance
    :math:`\tilde\beta_i = \beta_i(1 - \bar\alpha_{i-1})/(1 - \bar\alpha_i)` (``"beta_tilde"``),
    and no noise at the last step. This is Alg. 2,

    .. math:: x_{i-1} = \frac{1}{\sqrt{\alpha_i}}\Big(x_i - \frac{\beta_i}{\sqrt{1 - \bar\alpha_i}}
              \hat\epsilon\Big) + \sigma_i z,

    with :math:`\hat\epsilon = -\sqrt{1 - \bar\alpha_i}\,\hat s` (Tweedie's formula, see
    :mod:`scoresde.predict`). It converges to the
    reverse VP SDE at weak order 1 and differs from :class:`~scoresde.samplers.ReverseDiffusion`
    by :math:`O(\beta_i^2)` per step. One score evaluation per step.

    The grid is the schedule's own: :meth:`grid` returns :math:`t_N, t_{N-1}, \dots, t_1, 0`
    (the score is evaluated at :math:`t_N..t_1`; the final state is :math:`x_0` at time 0). It
    ignores ``eps``; DDPM owns its grid (``owns_grid``), so :func:`scoresde.sample` refuses any
    ``grid`` but ``None``, and ``denoise`` (the last step already returns :math:`x_0`). Needs an SDE with a
    ``discretize`` method (:class:`~scoresde.VPSDE`, :class:`~scoresde.CosineVPSDE`).

    Parameters
    ----------
    variance : {"beta", "beta_tilde"}
        The noise variance :math:`\sigma_i^2` of each step (Ho et al. found both to work).
    """

    name = "ddpm"
    stochastic = True
    owns_grid = True
    evaluates_at_end = False  # its grid ends at t = 0, where no score is evaluated
    VARIANCES = ("beta", "beta_tilde")

    def __init__(self, variance: str = "beta"):
        if variance not in self.VARIANCES:
            raise ValueError(f"variance must be one of {self.VARIANCES}, got {variance!r}")
        self.variance = variance

    def grid(self, sde, steps, eps=None, kind=None):
        steps = check_int("steps", steps, minimum=2)
        if kind not in (None, "uniform"):
            raise ValueError(
                f"DDPM runs on its schedule's own grid; kind must be 'uniform', got {kind!r}"
            )
        sched = _discrete_schedule(sde, steps)
        return torch.cat([sched.times.flip(0), sched.times.new_zeros(1)])

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        N = len(times) - 1
        if N < 2:
            raise ValueError(
                f"times must have at least 3 entries (DDPM needs N >= 2 steps), got {N + 1}"
            )
        sched = _discrete_schedule(sde, N)
        expected = torch.cat([sched.times.flip(0), sched.times.new_zeros(1)])
        if not torch.allclose(times.detach().cpu().double(), expected, rtol=0.0, atol=1e-6 * sde.T):
            raise ValueError(
                f"times must be the DDPM grid t_N, ..., t_1, 0 with t_i = i T / N (N={N}); "
                "build it with DDPM().grid(sde, steps, eps, 'uniform') or call scoresde.sample"
            )
        var = sched.betas if self.variance == "beta" else sched.posterior_variance
        betas, alphas, var = sched.betas.tolist(), sched.alphas.tolist(), var.tolist()
        ts = times.tolist()
        for k in range(N):
            i = N - 1 - k  # 0-based index of step i = N - k
            score = score_fn(x, time_vector(ts[k], x))
            x = (x + betas[i] * score) / math.sqrt(alphas[i])
            if k < N - 1:
                x = x + math.sqrt(var[i]) * gaussian_like(x, generator)
            if callback is not None:
                callback(k, ts[k + 1], x)
        return x


class EpsilonScore:
    r"""A score function from a discrete ε-prediction model (DDPM's parameterisation).

    Turns ``eps_model(x, i)`` — ``i`` a ``(batch,)`` LongTensor of step indices ``0..N-1``
    (DDPM's :math:`t - 1`) — into ``score_fn(x, t)`` by Tweedie's formula (Efron 2011;
    :func:`scoresde.predict.convert`),

    .. math:: \nabla\log p_{t_i}(x) \approx -\frac{\epsilon_\theta(x, i)}{\sqrt{1 - \bar\alpha_i}},
              \qquad i = \operatorname{round}(tN/T) - 1,

    so that a model trained with DDPM's Alg. 1 plugs into :class:`DDPM` (and into every
    sampler whose grid stays on the schedule's times :math:`t_i = iT/N`). It stays a plain
    score function (it declares no native ε-prediction to
    :class:`~scoresde.predict.PredictionAdapter`): its :math:`\sigma_i = \sqrt{1 - \bar\alpha_i}`
    is the discrete table's, which differs slightly from :math:`\sigma(t_i)` of the continuous
    SDE a sampler uses, and the score is the quantity both agree on.

    Parameters
    ----------
    eps_model : callable
        ``eps_model(x, i) -> tensor like x``.
    schedule : DiscreteSchedule
        The schedule the model was trained on, e.g. ``sde.discretize(1000)``.

    Raises
    ------
    ValueError
        When called at a time off the schedule's grid (relative tolerance ``1e-6``), including
        ``t = 0``: a discrete model is only defined at :math:`t_1..t_N`.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sched = sd.VPSDE().discretize(100)
    >>> score = sd.samplers.EpsilonScore(lambda x, i: torch.ones_like(x), sched)
    >>> score(torch.zeros(2, 1), 1.0)   # -1 / sqrt(1 - alphabar_N)
    tensor([[-1.0000],
            [-1.0000]])
    """

    def __init__(self, eps_model, schedule: DiscreteSchedule):
        if not callable(eps_model):
            raise TypeError("eps_model must be callable as eps_model(x, i)")
        if not isinstance(schedule, DiscreteSchedule):
            raise TypeError(
                "schedule must be a DiscreteSchedule (e.g. sde.discretize(N)), got "
                f"{type(schedule).__name__}"
            )
        self.eps_model = eps_model
        self.schedule = schedule
        self._times = schedule.times.detach().cpu().double()
        abar = schedule.alphas_cumprod.detach().cpu().double()
        self._scale, self._sigma = torch.sqrt(abar), torch.sqrt(1.0 - abar)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps_model={self.eps_model!r}, N={self.schedule.N})"

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        N = self.schedule.N
        T = float(self._times[-1])
        tt = as_time(t, x.shape[0], T).detach().cpu().double()
        idx = torch.round(tt * N / T).long() - 1
        on_grid = (idx >= 0) & (idx < N)
        err = (tt - self._times[idx.clamp(0, N - 1)]).abs()
        on_grid &= err <= 1e-6 * self._times[idx.clamp(0, N - 1)]
        if not bool(on_grid.all()):
            bad = float(tt[~on_grid][0])
            raise ValueError(
                f"t={bad:g} is not on the schedule's grid t_i = i T / N (N={N}, T={T:g}); a "
                "discrete eps_model is only defined at those times"
            )
        eps = self.eps_model(x, idx.to(x.device))
        s, sigma = (v[idx].to(device=x.device, dtype=x.dtype) for v in (self._scale, self._sigma))
        return convert(eps, x, s, sigma, source="eps", target="score")


class DDIM(Sampler):
    r"""Denoising diffusion implicit models (Song, Meng, Ermon 2021, equation 12), for any linear SDE.

    Between grid times :math:`t > t'`, with the noise prediction :math:`\hat\epsilon` at
    :math:`(x, t)` (:math:`= -\sigma_t \hat s` for a score :math:`\hat s = \nabla\log p_t(x)`)
    and Tweedie's :math:`\hat x_0 = (x - \sigma_t\hat\epsilon)/s_t`,

    .. math:: x' = s_{t'}\,\hat x_0 + \sqrt{\sigma_{t'}^2 - c^2}\;\hat\epsilon + c\,z
              = \frac{s_{t'}}{s_t} x + \Big(\sqrt{\sigma_{t'}^2 - c^2}
              - \frac{s_{t'}}{s_t}\sigma_t\Big)\hat\epsilon + c\,z, \qquad
              c = \eta\,\frac{\sigma_{t'}}{\sigma_t}\sqrt{\sigma_t^2 - r^2\sigma_{t'}^2},
              \quad r = \frac{s_t}{s_{t'}},

    :math:`z \sim \mathcal N(0, I)`; :math:`\hat\epsilon` comes from
    :class:`~scoresde.predict.PredictionAdapter` (an ε-predicting model's own output). For VP,
    :math:`c` is DDIM's :math:`\sigma_t(\eta)`. With
    :math:`\eta = 0` (deterministic) it is the first-order exponential-integrator solver of the
    probability-flow ODE, i.e. DPM-Solver-1 (Lu et al. 2022): order 1, exact when the score is
    that of a Gaussian whose :math:`\hat x_0` is constant along the path. With :math:`\eta = 1`,
    :math:`c^2` is the posterior variance of :math:`q(x_{t'} \mid x_t, x_0)` and the step is
    DDPM's ancestral step with :math:`\tilde\beta` (Song et al. 2021b, §4.1). Uses the driver's
    grid (any kind); one model evaluation per step. Needs a :class:`~scoresde.LinearSDE`.

    Parameters
    ----------
    eta : float
        Stochasticity :math:`\eta \ge 0`; values above 1 are accepted while
        :math:`c \le \sigma_{t'}` on every step of the grid.
    """

    name = "ddim"
    evaluates_at_end = False
    needs_linear_sde = True

    def __init__(self, eta: float = 0.0):
        self.eta = check_positive("eta", eta, strict=False)

    @property
    def stochastic(self) -> bool:
        """Whether noise is drawn: ``eta > 0``."""
        return self.eta > 0

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        pred = PredictionAdapter(sde, score_fn, who="DDIM")
        ts = times.tolist()
        s, sig = scale_std_values(sde, times, who="DDIM")
        coeffs = []
        for i in range(len(ts) - 1):
            r = s[i] / s[i + 1]
            g2 = max(sig[i] ** 2 - r * r * sig[i + 1] ** 2, 0.0)
            c = self.eta * sig[i + 1] * math.sqrt(g2) / sig[i]
            rest = sig[i + 1] ** 2 - c * c
            if rest < -1e-12 * max(sig[i + 1] ** 2, 1e-300):
                raise ValueError(
                    f"eta={self.eta:g} is too large for step {i} "
                    f"(t={ts[i]:.6g} -> {ts[i + 1]:.6g}): the noise exceeds sigma(t'); use "
                    "eta <= 1 or a finer grid"
                )
            a = s[i + 1] / s[i]
            coeffs.append((a, math.sqrt(max(rest, 0.0)) - a * sig[i], c))
        for i, (a, b, c) in enumerate(coeffs):
            eps = pred.eps(x, ts[i], s=s[i], sigma=sig[i])
            x = a * x + b * eps
            if self.eta > 0:
                x = x + c * gaussian_like(x, generator)
            if callback is not None:
                callback(i, ts[i + 1], x)
        return x
