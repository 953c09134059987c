r"""Forward SDEs with closed-form Gaussian transitions.

Every SDE here is linear in the state,

.. math:: \mathrm{d}x = a(t)\,x\,\mathrm{d}t + g(t)\,\mathrm{d}W, \qquad t \in [0, T],

so that :math:`x_t \mid x_0 \sim \mathcal N(s(t)\,x_0, \sigma(t)^2 I)` with
:math:`s(t) = \exp\int_0^t a` and :math:`\sigma(t)^2 = s(t)^2 \int_0^t g(u)^2 / s(u)^2\,\mathrm{d}u`
(Särkkä & Solin 2019, §6.1). Data live at :math:`t = 0`, the prior at :math:`t = T`.

Conventions: ``x`` has shape ``(batch, *event_shape)``; ``t`` is a float or a ``(batch,)``
tensor inside ``[0, T]``; coefficient functions return tensors shaped like ``t``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._checks import as_time, bcast, check_int, check_positive, check_shape, check_tensor
from ._runtime import standard_normal

__all__ = [
    "SDE",
    "LinearSDE",
    "OU",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "CosineVPSDE",
    "DiscreteVPSDE",
    "EDMSDE",
    "ReverseSDE",
    "DiscreteSchedule",
    "SDE_NAMES",
    "make_sde",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SDE(abc.ABC):
    r"""Forward SDE :math:`\mathrm{d}x = f(x, t)\,\mathrm{d}t + g(t)\,\mathrm{d}W` on ``[0, T]``.

    Subclasses implement :meth:`_drift`, :meth:`_diffusion`, :meth:`_marginal` and
    :attr:`prior_std` on already-validated tensors; the public methods check their inputs.
    Samplers and the likelihood use an SDE only through these public methods.

    Parameters
    ----------
    T : float
        Time horizon (> 0).
    """

    def __init__(self, T: float):
        self.T = check_positive("T", T)

    # -- to implement -------------------------------------------------------------------
    @abc.abstractmethod
    def _drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def _diffusion(self, t: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def _marginal(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior :math:`p_T`."""

    # -- public, validated ------------------------------------------------------------------
    def _time(self, t, x: torch.Tensor | None = None, name: str = "t") -> torch.Tensor:
        return as_time(t, None if x is None else x.shape[0], self.T, like=x, name=name)

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""Drift :math:`f(x, t)`, shaped like ``x``."""
        check_tensor("x", x)
        return self._drift(x, self._time(t, x))

    def diffusion(self, t) -> torch.Tensor:
        r"""Diffusion coefficient :math:`g(t)`, shaped like ``t`` (``(batch,)``)."""
        return self._diffusion(self._time(t))

    def marginal(self, x0: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Mean and standard deviation of :math:`p_t(x \mid x_0) = \mathcal N(\text{mean}, \text{std}^2 I)`.

        Returns
        -------
        mean : Tensor
            Shaped like ``x0``.
        std : Tensor
            Shaped ``(batch,)``.
        """
        check_tensor("x0", x0)
        return self._marginal(x0, self._time(t, x0))

    def prior_sample(
        self,
        shape,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        r"""Draw ``x_T ~ N(0, prior_std² I)`` of shape ``(batch, *event_shape)``.

        ``generator`` is ``None``, a :class:`torch.Generator` (the draw is made on its device
        unless ``device`` is given) or a noise source such as
        :class:`~scoresde.noise.PerSampleGenerator` (batch-independent draws).
        """
        shape = check_shape("shape", shape)
        return standard_normal(shape, generator, device=device, dtype=dtype) * self.prior_std

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r"""Log-density of the prior, :math:`\log \mathcal N(x; 0, \sigma_T^2 I)`, shaped ``(batch,)``."""
        check_tensor("x", x)
        d = x[0].numel()
        var = self.prior_std**2
        sq = x.reshape(x.shape[0], -1).pow(2).sum(-1)
        return -0.5 * sq / var - 0.5 * d * math.log(2 * math.pi * var)

    def reverse(self, score_fn: ScoreFn) -> ReverseSDE:
        r"""The reverse-time SDE (Anderson 1982), :math:`f - g^2 \nabla\log p_t` with noise :math:`g`."""
        return ReverseSDE(self, score_fn, probability_flow=False)

    def probability_flow(self, score_fn: ScoreFn) -> ReverseSDE:
        r"""The probability-flow ODE (Song et al. 2021), drift :math:`f - \tfrac12 g^2 \nabla\log p_t`."""
        return ReverseSDE(self, score_fn, probability_flow=True)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v:g}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"

    def _params(self) -> dict[str, float]:
        return {"T": self.T}


class ReverseSDE:
    r"""Reverse-time dynamics of a forward SDE, expressed in forward time ``t``.

    With ``probability_flow=False`` this is Anderson's reverse SDE

    .. math:: \mathrm{d}x = [f(x,t) - g(t)^2 \nabla_x \log p_t(x)]\,\mathrm{d}t + g(t)\,\mathrm{d}\bar W,

    integrated from ``t = T`` down to ``0``; with ``probability_flow=True`` it is the
    probability-flow ODE :math:`\mathrm{d}x/\mathrm{d}t = f - \tfrac12 g^2 \nabla\log p_t` whose
    marginals equal those of the SDE (Song et al. 2021, §4.3). Each :meth:`drift` call makes
    exactly one score evaluation.

    Parameters
    ----------
    sde : SDE
        The forward process.
    score_fn : callable
        ``score_fn(x, t) -> tensor like x``, an estimate of :math:`\nabla_x \log p_t(x)`.
    probability_flow : bool
        Return the ODE instead of the SDE.
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        if not callable(score_fn):
            raise TypeError("score_fn must be callable as score_fn(x, t)")
        self.sde = sde
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)
        self.T = sde.T

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        """Reverse drift, shaped like ``x``."""
        check_tensor("x", x)
        t = as_time(t, x.shape[0], self.T, like=x)  # validated once; the SDE's internals follow
        f = self.sde._drift(x, t)
        g2 = self.sde._diffusion(t) ** 2
        scale = 0.5 if self.probability_flow else 1.0
        return f - bcast(scale * g2, x) * self.score_fn(x, t)

    def diffusion(self, t) -> torch.Tensor:
        """Reverse diffusion: :math:`g(t)`, or zero for the probability flow."""
        g = self.sde._diffusion(as_time(t, None, self.T))
        return torch.zeros_like(g) if self.probability_flow else g


class LinearSDE(SDE):
    r"""An SDE with linear drift :math:`f(x, t) = a(t)\,x` and closed-form marginals.

    Subclasses implement :meth:`_a`, :meth:`_g2`, :meth:`_log_mean_coeff`, :meth:`_var` on
    tensors. Optionally :meth:`_t_from_log_snr` in closed form (the default bisects, since
    :math:`\lambda(t)` is strictly decreasing for every forward SDE that noises its data).
    """

    @abc.abstractmethod
    def _a(self, t: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def _g2(self, t: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def _log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def _var(self, t: torch.Tensor) -> torch.Tensor: ...

    def _log_snr(self, t: torch.Tensor) -> torch.Tensor:
        return self._log_mean_coeff(t) - 0.5 * torch.log(self._var(t))

    def _t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.T)
        for _ in range(64 if lam.dtype == torch.float64 else 40):
            mid = 0.5 * (lo + hi)
            above = self._log_snr(mid) > lam  # λ decreasing: still too early
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    # SDE interface
    def _drift(self, x, t):
        return bcast(self._a(t), x) * x

    def _diffusion(self, t):
        return torch.sqrt(self._g2(t))

    def _scale_std(self, t):
        return torch.exp(self._log_mean_coeff(t)), torch.sqrt(self._var(t))

    def _marginal(self, x0, t):
        s, std = self._scale_std(t)
        return bcast(s, x0) * x0, std

    # coefficient functions (validated)
    def scale_std(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Signal scale :math:`s(t)` and noise scale :math:`\sigma(t)` of the transition.

        .. math:: x_t \mid x_0 \sim \mathcal N\big(s(t)\,x_0,\ \sigma(t)^2 I\big), \qquad
                  s(t) = e^{\int_0^t a(u)\,\mathrm du}, \qquad
                  \sigma(t)^2 = s(t)^2 \int_0^t \frac{g(u)^2}{s(u)^2}\,\mathrm du

        (Särkkä & Solin 2019, §6.1; Song et al. 2021, App. B). The one way the package reads
        :math:`s` and :math:`\sigma`: :meth:`marginal`, the samplers, the prediction
        conversions of :mod:`scoresde.predict` and :class:`~scoresde.ScoreModel` all use it.

        Parameters
        ----------
        t : float or Tensor
            A float or a 1-D tensor of times in ``[0, T]`` (e.g. ``(batch,)``, or a time grid).

        Returns
        -------
        s, sigma : Tensor
            Both shaped like ``t`` (``(batch,)``; ``(1,)`` for a float), in ``t``'s dtype
            (the default dtype for a float).

        Examples
        --------
        >>> import torch, scoresde as sd
        >>> s, sigma = sd.VPSDE().scale_std(torch.tensor([0.0, 1.0], dtype=torch.float64))
        >>> [round(v, 4) for v in s.tolist()], [round(v, 4) for v in sigma.tolist()]
        ([1.0, 0.0066], [0.0, 1.0])
        """
        return self._scale_std(self._time(t))

    def a(self, t) -> torch.Tensor:
        r"""Drift coefficient :math:`a(t)` in :math:`f(x, t) = a(t) x`."""
        return self._a(self._time(t))

    def g2(self, t) -> torch.Tensor:
        r"""Squared diffusion :math:`g(t)^2`."""
        return self._g2(self._time(t))

    def mean_coeff(self, t) -> torch.Tensor:
        r"""Signal scale :math:`s(t) = \exp\int_0^t a(u)\,\mathrm{d}u`."""
        return torch.exp(self._log_mean_coeff(self._time(t)))

    def std(self, t) -> torch.Tensor:
        r"""Noise scale :math:`\sigma(t)` of the transition :math:`p_t(x \mid x_0)`."""
        return torch.sqrt(self._var(self._time(t)))

    def log_snr(self, t) -> torch.Tensor:
        r"""Half log signal-to-noise ratio :math:`\lambda(t) = \log(s(t) / \sigma(t))`.

        Strictly decreasing from :math:`+\infty` at ``t = 0``; the exponential-integrator
        samplers (Lu et al. 2022) step uniformly in it.
        """
        return self._log_snr(self._time(t))

    def t_from_log_snr(self, lam) -> torch.Tensor:
        r"""Inverse of :meth:`log_snr`: the time :math:`t \in [0, T]` with :math:`\lambda(t) = \text{lam}`.

        Values of ``lam`` below :math:`\lambda(T)` map to ``T``.
        """
        if not isinstance(lam, torch.Tensor):
            lam = torch.tensor(float(lam), dtype=torch.get_default_dtype())
        if torch.isnan(lam).any():
            raise ValueError("lam contains NaN")
        return self._t_from_log_snr(lam).clamp(0.0, self.T)


def _check_beta(beta_min: float, beta_max: float) -> tuple[float, float]:
    beta_min = check_positive("beta_min", beta_min)
    beta_max = check_positive("beta_max", beta_max)
    if beta_min > beta_max:
        raise ValueError(f"beta_min must be <= beta_max, got beta_min={beta_min}, beta_max={beta_max}")
    return beta_min, beta_max


class OU(LinearSDE):
    r"""Ornstein–Uhlenbeck process :math:`\mathrm{d}x = \alpha x\,\mathrm{d}t + \sigma\,\mathrm{d}W`, α < 0.

    The classical mean-reverting linear SDE (Uhlenbeck & Ornstein 1930; Särkkä & Solin 2019,
    ch. 6): :math:`s(t) = e^{\alpha t}` and :math:`\sigma(t)^2 = \sigma^2 (e^{2\alpha t} - 1)/(2\alpha)`.
    Its stationary law, used as the prior, is :math:`\mathcal N(0, -\sigma^2/(2\alpha) I)`.

    Parameters
    ----------
    alpha : float
        Mean-reversion rate, strictly negative.
    sigma : float
        Noise scale (> 0).
    T : float, optional
        Horizon. Default :math:`\ln(10^3)/|\alpha|`, where :math:`s(T) = 10^{-3}` and the
        variance is within :math:`10^{-6}` (relative) of the stationary one.

    Examples
    --------
    >>> import scoresde as sd
    >>> sde = sd.OU(alpha=-1.0)
    >>> round(sde.T, 3), round(float(sde.mean_coeff(sde.T)), 6)
    (6.908, 0.001)
    """

    def __init__(self, alpha: float = -1.0, sigma: float = 1.0, T: float | None = None):
        try:
            alpha = float(alpha)
        except (TypeError, ValueError):
            raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}") from None
        if not (math.isfinite(alpha) and alpha < 0):
            raise ValueError(f"alpha must be finite and < 0 (a mean-reverting OU process), got {alpha}")
        self.alpha = alpha
        self.sigma = check_positive("sigma", sigma)
        super().__init__(math.log(1e3) / -alpha if T is None else T)

    def _params(self):
        return {"alpha": self.alpha, "sigma": self.sigma, "T": self.T}

    @property
    def prior_std(self) -> float:
        return self.sigma / math.sqrt(-2.0 * self.alpha)

    def _a(self, t):
        return torch.full_like(t, self.alpha)

    def _g2(self, t):
        return torch.full_like(t, self.sigma**2)

    def _log_mean_coeff(self, t):
        return self.alpha * t

    def _var(self, t):
        return self.sigma**2 * torch.expm1(2 * self.alpha * t) / (2 * self.alpha)

    def _t_from_log_snr(self, lam):
        log_k = 2 * lam + math.log(self.sigma**2 / (-2 * self.alpha))
        return F.softplus(-log_k) / (-2 * self.alpha)


class _LinearBetaSDE(LinearSDE):
    """Shared pieces of the VP and sub-VP SDEs: the linear rate β(t) and its integral B(t)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0):
        self.beta_min, self.beta_max = _check_beta(beta_min, beta_max)
        super().__init__(T)

    def _params(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "T": self.T}

    @property
    def prior_std(self) -> float:
        return 1.0

    def _beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min) / self.T

    def _int_beta(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) / self.T * t**2

    def _t_from_int_beta(self, B):
        # solve beta_min t + (Δ/2T) t² = B for t >= 0, written without cancellation
        c = (self.beta_max - self.beta_min) / self.T
        return 2 * B / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * c * B))

    def _a(self, t):
        return -0.5 * self._beta(t)

    def _log_mean_coeff(self, t):
        return -0.5 * self._int_beta(t)


class VPSDE(_LinearBetaSDE):
    r"""Variance-preserving SDE, the continuous limit of DDPM (equation 11 of Song et al. 2021).

    .. math:: \mathrm{d}x = -\tfrac12 \beta(t) x\,\mathrm{d}t + \sqrt{\beta(t)}\,\mathrm{d}W,
              \qquad \beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})/T,

    with :math:`\log s(t) = -\tfrac12 B(t)`, :math:`B(t) = \int_0^t \beta`, and
    :math:`\sigma(t)^2 = 1 - s(t)^2`. Prior :math:`\mathcal N(0, I)`.

    Parameters
    ----------
    beta_min, beta_max : float
        Noise rates at ``t = 0`` and ``t = T``; ``0 < beta_min <= beta_max``.
    T : float
        Horizon (default 1).

    Examples
    --------
    >>> import scoresde as sd
    >>> sde = sd.VPSDE()
    >>> sched = sde.discretize(1000)
    >>> float(sched.betas[0]), float(sched.betas[-1])
    (0.0001, 0.02)
    """

    def _g2(self, t):
        return self._beta(t)

    def _var(self, t):
        return -torch.expm1(-self._int_beta(t))

    def _t_from_log_snr(self, lam):
        return self._t_from_int_beta(F.softplus(-2 * lam))

    def discretize(self, N: int) -> DiscreteSchedule:
        r"""The discrete DDPM chain this SDE is the limit of (Ho et al. 2020; Song et al. 2021, Appendix B).

        :math:`\beta_i = \beta_{\min}/N + (i-1)(\beta_{\max}-\beta_{\min})/(N(N-1))` for
        :math:`i = 1..N` at times :math:`t_i = iT/N`; for the defaults and ``N = 1000`` this is
        DDPM's linear schedule ``1e-4 … 0.02``.
        """
        N = check_int("N", N, minimum=2)
        i = torch.arange(N, dtype=torch.float64)
        betas = self.beta_min / N + i * (self.beta_max - self.beta_min) / (N * (N - 1))
        if float(betas.max()) > 0.999:  # Nichol & Dhariwal's bound; β → 1 makes 1/√α_i blow up
            n_min = max(2, math.ceil(self.beta_max / 0.999 - 1e-9))  # the largest beta_i is beta_max/N
            raise ValueError(
                f"N={N} is too small: the largest beta_i = beta_max/N must be <= 0.999, got "
                f"{float(betas.max()):.6g}; the smallest N that works is {n_min} (ddpm: steps >= {n_min})"
            )
        return DiscreteSchedule(betas=betas, times=(i + 1) * self.T / N)


class SubVPSDE(_LinearBetaSDE):
    r"""Sub-variance-preserving SDE (equation 12 of Song et al. 2021).

    .. math:: \mathrm{d}x = -\tfrac12\beta(t)x\,\mathrm{d}t + \sqrt{\beta(t)(1 - e^{-2B(t)})}\,\mathrm{d}W,

    same :math:`s(t)` as :class:`VPSDE`, :math:`\sigma(t) = 1 - s(t)^2` (smaller than VP's at every
    ``t``). Prior :math:`\mathcal N(0, I)`. Parameters as for :class:`VPSDE`.
    """

    def _g2(self, t):
        return -self._beta(t) * torch.expm1(-2 * self._int_beta(t))

    def _var(self, t):
        return torch.expm1(-self._int_beta(t)) ** 2

    def _t_from_log_snr(self, lam):
        # σ/s = 1/s - s = e^{-λ}  ⇒  log s = -asinh(e^{-λ}/2)
        return self._t_from_int_beta(2 * torch.asinh(0.5 * torch.exp(-lam)))


def _check_sigmas(sigma_min: float, sigma_max: float) -> tuple[float, float]:
    sigma_min = check_positive("sigma_min", sigma_min)
    sigma_max = check_positive("sigma_max", sigma_max)
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    return sigma_min, sigma_max


class VESDE(LinearSDE):
    r"""Variance-exploding SDE, the continuous limit of SMLD/NCSN (equation 9 of Song et al. 2021).

    .. math:: \mathrm{d}x = \sqrt{\tfrac{\mathrm d}{\mathrm dt}\sigma_{\rm VE}(t)^2}\,\mathrm{d}W,
              \qquad \sigma_{\rm VE}(t) = \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^{t/T},

    so :math:`s = 1` and :math:`\sigma(t)^2 = \sigma_{\min}^2((\sigma_{\max}/\sigma_{\min})^{2t/T} - 1)`
    exactly (Song et al. approximate it by :math:`\sigma_{\rm VE}(t)^2`). Prior
    :math:`\mathcal N(0, \sigma_{\max}^2 I)`.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0):
        self.sigma_min, self.sigma_max = _check_sigmas(sigma_min, sigma_max)
        super().__init__(T)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min) / self.T

    def _params(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "T": self.T}

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def _a(self, t):
        return torch.zeros_like(t)

    def _g2(self, t):
        return self.sigma_min**2 * torch.exp(2 * self._log_ratio * t) * 2 * self._log_ratio

    def _log_mean_coeff(self, t):
        return torch.zeros_like(t)

    def _var(self, t):
        return self.sigma_min**2 * torch.expm1(2 * self._log_ratio * t)

    def _t_from_log_snr(self, lam):
        return F.softplus(-2 * lam - 2 * math.log(self.sigma_min)) / (2 * self._log_ratio)


class CosineVPSDE(LinearSDE):
    r"""VP SDE with the cosine schedule of Nichol & Dhariwal (2021).

    :math:`\bar\alpha(t) = \cos^2\phi(t)/\cos^2\phi(0)` with :math:`\phi(t) = \frac{\pi}{2}\frac{t + s}{1 + s}`;
    :math:`s(t) = \sqrt{\bar\alpha(t)}`, :math:`\sigma(t)^2 = 1 - \bar\alpha(t)` and
    :math:`\beta(t) = -\tfrac{\mathrm d}{\mathrm dt}\log\bar\alpha(t) = \pi\tan\phi(t)/(1 + s)`.
    :math:`\beta` blows up at ``t = 1``, so the horizon must stay below 1; the default
    ``T = 0.9946`` (as in DPM-Solver) gives :math:`\lambda(T) \approx -4.8`.

    Parameters
    ----------
    s : float
        Offset that keeps :math:`\beta` finite near ``t = 0`` (default 0.008).
    T : float
        Horizon in ``(0, 1)``.
    """

    def __init__(self, s: float = 0.008, T: float = 0.9946):
        self.s = check_positive("s", s)
        T = check_positive("T", T)
        if T >= 1.0:
            raise ValueError(f"T must be < 1 for the cosine schedule (beta(1) is infinite), got {T}")
        super().__init__(T)
        self._phi0 = 0.5 * math.pi * self.s / (1 + self.s)

    def _params(self):
        return {"s": self.s, "T": self.T}

    @property
    def prior_std(self) -> float:
        return 1.0

    def _phi(self, t):
        return 0.5 * math.pi * (t + self.s) / (1 + self.s)

    def _a(self, t):
        return -0.5 * self._g2(t)

    def _g2(self, t):
        return math.pi / (1 + self.s) * torch.tan(self._phi(t))

    def _log_mean_coeff(self, t):
        # log(cos(φ0 + δ)/cos φ0) = log(cos δ − tan φ0 · sin δ), δ = φ(t) − φ0: exact 0 at t = 0
        delta = 0.5 * math.pi * t / (1 + self.s)
        return torch.log(torch.cos(delta) - math.tan(self._phi0) * torch.sin(delta))

    def _var(self, t):
        return -torch.expm1(2 * self._log_mean_coeff(t))

    def _t_from_log_snr(self, lam):
        root = torch.sqrt(torch.sigmoid(2 * lam)) * math.cos(self._phi0)
        return torch.arccos(root) * 2 * (1 + self.s) / math.pi - self.s

    def discretize(self, N: int) -> DiscreteSchedule:
        r"""Discrete chain with :math:`\bar\alpha_i = \bar\alpha(t_i)`, :math:`t_i = iT/N`, so
        :math:`\beta_i = 1 - \bar\alpha(t_i)/\bar\alpha(t_{i-1})` (Nichol & Dhariwal 2021, equation 17)."""
        N = check_int("N", N, minimum=2)
        times = torch.arange(N + 1, dtype=torch.float64) * self.T / N
        log_abar = 2 * self._log_mean_coeff(times)
        betas = -torch.expm1(log_abar[1:] - log_abar[:-1])
        return DiscreteSchedule(betas=betas, times=times[1:])


def _as_table(name: str, values) -> torch.Tensor:
    """``values`` as a fresh 1-D float64 CPU tensor of at least 2 finite entries."""
    if isinstance(values, torch.Tensor):
        if values.is_complex() or not (values.is_floating_point() or values.dtype in (
                torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
            raise TypeError(f"{name} must be a real tensor, got dtype {values.dtype}")
        table = values.detach().to("cpu", torch.float64).clone()
    else:
        try:
            table = torch.as_tensor(values, dtype=torch.float64).clone()
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a 1-D tensor or sequence of floats, got "
                            f"{type(values).__name__}") from None
    if table.ndim != 1 or table.numel() < 2:
        raise ValueError(f"{name} must be a 1-D table of at least 2 values, got shape {tuple(table.shape)}")
    if not bool(torch.isfinite(table).all()):
        raise ValueError(f"{name} must contain only finite values")
    return table


class DiscreteVPSDE(LinearSDE):
    r"""The VP SDE of a discrete-time model: a table :math:`\bar\alpha_0 > \dots > \bar\alpha_{N-1} > 0`.

    A DDPM-style model trained on the chain :math:`q(x_\tau \mid x_0) = \mathcal N(\sqrt{\bar\alpha_\tau}
    x_0, (1 - \bar\alpha_\tau) I)`, :math:`\tau = 0..N-1` (Ho et al. 2020; diffusers'
    ``alphas_cumprod``), is read as a VP process on :math:`t \in [0, 1]` observed at
    :math:`t_\tau = (\tau + 1)/N`. Between the knots :math:`t_k = k/N` (with
    :math:`\bar\alpha = 1` at :math:`t_0 = 0`) :math:`\log\bar\alpha` is interpolated linearly in
    ``t``, so that

    .. math:: s(t) = \sqrt{\bar\alpha(t)}, \qquad \sigma(t)^2 = 1 - \bar\alpha(t), \qquad
              \beta(t) = -\frac{\mathrm d\log\bar\alpha}{\mathrm dt} = N\log\frac{\bar\alpha_{k-1}}{\bar\alpha_k}
              \quad\text{on } (t_{k}, t_{k+1}],

    i.e. the VP SDE :math:`\mathrm dx = -\tfrac12\beta(t)x\,\mathrm dt + \sqrt{\beta(t)}\,\mathrm dW`
    with a piecewise-constant rate (:math:`a = -\beta/2`, :math:`g^2 = \beta`, from
    :math:`\mathrm d\sigma^2/\mathrm dt = 2a\sigma^2 + g^2`). It is exact at every table step and
    at ``t = 0``, continuous and strictly monotone in between, and its transition over one segment
    is the chain's own, :math:`\mathcal N(\sqrt{\alpha_\tau}\,x, (1 - \alpha_\tau) I)`: observed
    at the knots, this SDE *is* the discrete forward chain, so DDPM, DDIM and the exponential
    integrators see the model's own coefficients at table times, while SDE solvers, Langevin and
    the likelihood get a drift and diffusion consistent with the marginals in between.

    Why :math:`\log\bar\alpha` rather than the log-SNR :math:`\lambda`: the log-SNR is infinite
    at ``t = 0`` and cannot be interpolated linearly on the first segment, and only the
    :math:`\log\bar\alpha` interpolant keeps the one-step transitions equal to the chain's (its
    rate integrates to :math:`-\log\alpha_\tau` on each segment). DPM-Solver's
    ``NoiseScheduleVP('discrete')`` interpolates :math:`\log\sqrt{\bar\alpha}` the same way
    (Lu et al. 2022, App. D); k-diffusion's ``DiscreteSchedule`` interpolates the timestep
    linearly in :math:`\log(\sigma/s)` instead, which differs only inside a segment. Both maps
    between time and log-SNR are closed form here (:meth:`t_from_log_snr` solves on one segment).

    The prior is :math:`\mathcal N(0, I)`; the terminal marginal has signal
    :math:`\sqrt{\bar\alpha_{N-1}}` (4e-3 for DDPM's linear schedule). Zero-terminal-SNR tables
    (:math:`\bar\alpha_{N-1} = 0`, Lin et al. 2024) are refused: their log-SNR is
    :math:`-\infty` at ``t = 1``. Clip the last entry to a small positive value first (diffusers'
    DPM-Solver uses :math:`2^{-24}`) if such a model is to be sampled.

    Parameters
    ----------
    alphas_cumprod : Tensor or sequence of float
        :math:`\bar\alpha_\tau`, ``τ = 0..N-1``, strictly decreasing in ``(0, 1)``, ``N >= 2``;
        kept in float64.

    Attributes
    ----------
    alphas_cumprod : Tensor
        The table (float64, CPU).
    N : int
        Its length, the number of training timesteps.

    References
    ----------
    Ho, Jain & Abbeel (2020), *Denoising diffusion probabilistic models*, NeurIPS. Song et al.
    (2021), *Score-based generative modeling through SDEs*, ICLR (App. B). Lu et al. (2022),
    *DPM-Solver*, NeurIPS (App. D). Lin, Liu, Li & Yang (2024), *Common diffusion noise schedules
    and sample steps are flawed*, WACV.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.DiscreteVPSDE.from_schedule("linear", N=1000, beta_start=1e-4, beta_end=0.02)
    >>> t = sde.timestep_to_time(torch.tensor([999, 500, 0]))
    >>> t.tolist()
    [1.0, 0.501, 0.001]
    >>> s, sigma = sde.scale_std(t)
    >>> torch.allclose(s**2, sde.alphas_cumprod[[999, 500, 0]])
    True
    >>> sde.time_to_timestep(torch.tensor([0.501, 0.0005], dtype=torch.float64)).tolist()
    [500.0, -0.5]
    """

    #: The beta schedules of diffusers' schedulers that :meth:`from_schedule` builds.
    BETA_SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "squaredcos_cap_v2")

    def __init__(self, alphas_cumprod):
        abar = _as_table("alphas_cumprod", alphas_cumprod)
        lo, hi = float(abar.min()), float(abar.max())
        if float(abar[-1]) == 0.0:
            raise ValueError(
                "alphas_cumprod[-1] = 0 (a zero-terminal-SNR table): DiscreteVPSDE needs every "
                "entry in (0, 1), the log-SNR at t = 1 would be -inf; clip the last entry to a "
                "small positive value (e.g. 2**-24) first")
        if not (lo > 0.0 and hi < 1.0):
            raise ValueError(f"alphas_cumprod must lie in (0, 1), got values in [{lo:g}, {hi:g}]")
        rising = torch.nonzero(abar[1:] >= abar[:-1]).flatten()
        if rising.numel():
            k = int(rising[0]) + 1
            raise ValueError(
                f"alphas_cumprod must be strictly decreasing, but alphas_cumprod[{k}] = "
                f"{float(abar[k]):.8g} >= alphas_cumprod[{k - 1}] = {float(abar[k - 1]):.8g}")
        super().__init__(1.0)
        self.alphas_cumprod = abar
        self.N = abar.numel()
        # knots t_k = k / N, k = 0..N, of the piecewise-linear log alpha-bar (0 at t = 0)
        self._log_abar = torch.cat([abar.new_zeros(1), torch.log(abar)])
        self._rate = (self._log_abar[:-1] - self._log_abar[1:]) * self.N  # beta on (t_k, t_k+1]
        self._tables: dict = {}

    @classmethod
    def from_betas(cls, betas) -> DiscreteVPSDE:
        r"""The table :math:`\bar\alpha_\tau = \prod_{j \le \tau}(1 - \beta_j)` of the chain with rates ``betas``.

        Computed in float64 as :math:`\exp\sum_{j\le\tau}\log(1 - \beta_j)`; every
        :math:`\beta_j` must lie in ``(0, 1)`` (diffusers' ``trained_betas``).

        Examples
        --------
        >>> import scoresde as sd
        >>> sde = sd.DiscreteVPSDE.from_betas([0.1, 0.2, 0.5])
        >>> [round(v, 4) for v in sde.alphas_cumprod.tolist()]
        [0.9, 0.72, 0.36]
        """
        b = _as_table("betas", betas)
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError(f"betas must lie in (0, 1), got values in [{float(b.min()):g}, {float(b.max()):g}]")
        return cls(torch.exp(torch.cumsum(torch.log1p(-b), 0)))

    @classmethod
    def from_schedule(cls, name: str = "linear", N: int = 1000, beta_start: float = 1e-4,
                      beta_end: float = 0.02) -> DiscreteVPSDE:
        r"""The table of one of diffusers' named beta schedules (:attr:`BETA_SCHEDULES`).

        - ``"linear"`` (Ho et al. 2020): :math:`\beta_\tau` evenly spaced from ``beta_start``
          to ``beta_end``;
        - ``"scaled_linear"`` (latent diffusion, Rombach et al. 2022): :math:`\sqrt{\beta_\tau}`
          evenly spaced from :math:`\sqrt{\text{beta\_start}}` to :math:`\sqrt{\text{beta\_end}}`;
        - ``"squaredcos_cap_v2"`` (Nichol & Dhariwal 2021, eq. 17):
          :math:`\beta_\tau = \min(1 - \bar\alpha(\tfrac{\tau+1}N)/\bar\alpha(\tfrac{\tau}N), 0.999)`,
          :math:`\bar\alpha(u) = \cos^2\big(\tfrac{u + 0.008}{1.008}\tfrac\pi2\big)` (``beta_start``
          and ``beta_end`` unused).

        Computed in float64 (diffusers computes the same tables in float32; they agree to
        float32 round-off).

        Parameters
        ----------
        name : {"linear", "scaled_linear", "squaredcos_cap_v2"}
        N : int
            Number of training timesteps (>= 2).
        beta_start, beta_end : float
            First and last :math:`\beta` (diffusers' defaults 1e-4 and 0.02), in ``(0, 1)``.

        Examples
        --------
        >>> import scoresde as sd
        >>> sde = sd.DiscreteVPSDE.from_schedule("squaredcos_cap_v2", N=1000)
        >>> sde.N, f"{float(sde.alphas_cumprod[-1]):.3g}"
        (1000, '2.43e-09')
        """
        if name not in cls.BETA_SCHEDULES:
            raise ValueError(f"name must be one of {cls.BETA_SCHEDULES}, got {name!r}")
        N = check_int("N", N, minimum=2)
        for arg, v in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not 0.0 < check_positive(arg, v) < 1.0:
                raise ValueError(f"{arg} must lie in (0, 1), got {v!r}")
        if name == "linear":
            betas = torch.linspace(beta_start, beta_end, N, dtype=torch.float64)
        elif name == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, N, dtype=torch.float64) ** 2
        else:
            u = torch.arange(N + 1, dtype=torch.float64) / N
            log_abar = 2 * torch.log(torch.cos((u + 0.008) / 1.008 * math.pi / 2))
            betas = (-torch.expm1(log_abar[1:] - log_abar[:-1])).clamp(max=0.999)
        return cls.from_betas(betas)

    def __repr__(self) -> str:
        return f"DiscreteVPSDE(N={self.N}, alphas_cumprod[-1]={float(self.alphas_cumprod[-1]):.6g})"

    @property
    def prior_std(self) -> float:
        return 1.0

    def _table(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The knots of log ᾱ and the rates on ``t``'s device and dtype (copied once per kind)."""
        key = (t.device, t.dtype)
        if key not in self._tables:
            self._tables[key] = (self._log_abar.to(t.device, t.dtype), self._rate.to(t.device, t.dtype))
        return self._tables[key]

    def _log_abar_at(self, t: torch.Tensor) -> torch.Tensor:
        knots, _ = self._table(t)
        u = t * self.N
        k = torch.floor(u).clamp(0, self.N - 1)
        lo = knots[k.long()]
        return lo + (u - k) * (knots[k.long() + 1] - lo)

    def _beta(self, t: torch.Tensor) -> torch.Tensor:
        _, rate = self._table(t)
        k = (torch.ceil(t * self.N) - 1).clamp(0, self.N - 1)  # segment (t_k, t_k+1] holding t
        return rate[k.long()]

    def _a(self, t):
        return -0.5 * self._beta(t)

    def _g2(self, t):
        return self._beta(t)

    def _log_mean_coeff(self, t):
        return 0.5 * self._log_abar_at(t)

    def _var(self, t):
        return -torch.expm1(self._log_abar_at(t))

    def _t_from_log_snr(self, lam):
        knots, _ = self._table(lam)
        log_abar = -F.softplus(-2 * lam)  # ᾱ = sigmoid(2λ)
        k = (torch.searchsorted(-knots, (-log_abar).contiguous(), right=True) - 1).clamp(0, self.N - 1)
        lo, hi = knots[k], knots[k + 1]
        return (k.to(lam.dtype) + (log_abar - lo) / (hi - lo)) / self.N

    def timestep_to_time(self, timesteps) -> torch.Tensor:
        r"""The time :math:`t = (\tau + 1)/N` of (fractional) timesteps :math:`\tau \in [-1, N-1]`.

        Table step :math:`\tau` lives at :math:`t_\tau = (\tau + 1)/N`; :math:`\tau = -1` is
        ``t = 0`` (:math:`\bar\alpha = 1`, where diffusers' DDIM loop ends with
        ``set_alpha_to_one``). Integer input (e.g. a scheduler's ``timesteps``) gives float64,
        floating input keeps its dtype; the device is kept.

        Examples
        --------
        >>> import torch, scoresde as sd
        >>> sde = sd.DiscreteVPSDE.from_schedule("linear", N=10)
        >>> sde.timestep_to_time(torch.tensor([9, 4, 0, -1])).tolist()
        [1.0, 0.5, 0.1, 0.0]
        """
        tau = timesteps if isinstance(timesteps, torch.Tensor) else torch.as_tensor(timesteps)
        if tau.is_complex() or tau.dtype == torch.bool:
            raise TypeError(f"timesteps must be real, got dtype {tau.dtype}")
        if not tau.is_floating_point():
            tau = tau.to(torch.float64)
        if tau.numel():
            lo, hi = (float(v) for v in torch.aminmax(tau.detach()))
            if not (-1.0 <= lo and hi <= self.N - 1):  # also catches NaN
                raise ValueError(f"timesteps must lie in [-1, N - 1] = [-1, {self.N - 1}], got values "
                                 f"in [{lo:g}, {hi:g}]")
        return (tau + 1.0) / self.N

    def time_to_timestep(self, t) -> torch.Tensor:
        r"""The fractional timestep :math:`\tau = tN - 1 \in [-1, N-1]` of times ``t`` in ``[0, 1]``.

        The inverse of :meth:`timestep_to_time`; table steps come out as whole numbers (up to
        the round-off of ``t``'s dtype). A tensor keeps its shape, dtype and device; a float
        gives a 0-d tensor of the default dtype.

        Examples
        --------
        >>> import scoresde as sd
        >>> sde = sd.DiscreteVPSDE.from_schedule("linear", N=1000)
        >>> float(sde.time_to_timestep(0.25))
        249.0
        """
        if isinstance(t, torch.Tensor):
            if t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"t must be real, got dtype {t.dtype}")
            tt = t if t.is_floating_point() else t.to(torch.get_default_dtype())
        elif isinstance(t, (int, float)) and not isinstance(t, bool):
            tt = torch.tensor(float(t), dtype=torch.get_default_dtype())
        else:
            raise TypeError(f"t must be a float or a torch.Tensor, got {type(t).__name__}")
        if tt.numel():
            lo, hi = (float(v) for v in torch.aminmax(tt.detach()))
            if not (0.0 <= lo and hi <= self.T * (1 + 1e-6)):  # also catches NaN
                raise ValueError(f"t must lie in [0, T] = [0, {self.T:g}], got values in [{lo:g}, {hi:g}]")
        return tt * self.N - 1.0

    def discretize(self, N: int) -> DiscreteSchedule:
        r"""The DDPM chain on ``N`` of the table's steps, the last one included.

        Steps :math:`\tau_i = \operatorname{round}(iN_{\rm table}/N) - 1`, :math:`i = 1..N`
        (evenly spaced, "trailing" in diffusers' terms: :math:`\tau_N = N_{\rm table} - 1`), at
        times :math:`t_i = (\tau_i + 1)/N_{\rm table}`, with
        :math:`\beta_i = 1 - \bar\alpha_{\tau_i}/\bar\alpha_{\tau_{i-1}}` (:math:`\bar\alpha = 1`
        before the first), so :math:`\bar\alpha_i` of the chain is the table's at its steps
        (Nichol & Dhariwal 2021, §4). ``N`` equal to the table's length gives the training chain.

        Examples
        --------
        >>> import scoresde as sd
        >>> sde = sd.DiscreteVPSDE.from_schedule("linear", N=1000)
        >>> sched = sde.discretize(4)
        >>> sched.times.tolist()
        [0.25, 0.5, 0.75, 1.0]
        >>> bool((sched.alphas_cumprod - sde.alphas_cumprod[[249, 499, 749, 999]]).abs().max() < 1e-12)
        True
        """
        N = check_int("N", N, minimum=2)
        if N > self.N:
            raise ValueError(f"N must be an int in [2, {self.N}] (the table's length), got {N}")
        i = torch.arange(1, N + 1, dtype=torch.int64)
        knot = (2 * i * self.N + N) // (2 * N)  # round(i N_table / N): the knot of step tau_i
        prev = torch.cat([knot.new_zeros(1), knot[:-1]])
        betas = -torch.expm1(self._log_abar[knot] - self._log_abar[prev])
        return DiscreteSchedule(betas=betas, times=knot.to(torch.float64) / self.N)


class EDMSDE(LinearSDE):
    r"""The SDE of Karras et al. (2022): no drift, noise level equal to time, :math:`\sigma(t) = t`.

    .. math:: \mathrm{d}x = \sqrt{2t}\,\mathrm{d}W, \qquad t \in [0, \sigma_{\max}],

    so :math:`s(t) = 1`, :math:`\sigma(t)^2 = \int_0^t 2u\,\mathrm du = t^2` and
    :math:`g(t)^2 = \mathrm d\sigma^2/\mathrm dt = 2t` exactly; the half log-SNR is
    :math:`\lambda(t) = -\log t` and its inverse :math:`t = e^{-\lambda}`. Time *is* the
    noise-to-signal ratio :math:`\tilde\sigma = \sigma/s` in which EDM writes its sampler, its
    grid (:math:`\rho = 7`) and its preconditioning (:class:`~scoresde.ScoreModel` with
    ``parameterization="edm"``, :func:`~scoresde.losses.edm_loss`).

    Time domain: data at ``t = 0`` and the horizon ``T = sigma_max``, as for every SDE of the
    package. Prior :math:`\mathcal N(0, \sigma_{\max}^2 I)` (the marginal at ``T`` of data
    whose scale is small against :math:`\sigma_{\max}`). ``sigma_min`` is EDM's smallest noise
    level: the end time to sample to (pass ``eps=sde.sigma_min`` to :func:`scoresde.sample`; the
    final Euler step of EDM's Alg. 2 from :math:`\sigma_{\min}` to 0 is the driver's
    ``denoise=True``), kept as an attribute; it does not change the process.

    Parameters
    ----------
    sigma_min : float
        Smallest noise level used for sampling (> 0, < ``sigma_max``; default 0.002, EDM's).
    sigma_max : float
        Largest noise level, the horizon ``T`` and the prior's standard deviation (default 80).

    References
    ----------
    Karras, Aittala, Aila & Laine (2022), *Elucidating the design space of diffusion-based
    generative models*, NeurIPS, Table 1 and Alg. 2.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.EDMSDE()
    >>> sde.T, sde.prior_std
    (80.0, 80.0)
    >>> s, sigma = sde.scale_std(torch.tensor([0.5, 2.0], dtype=torch.float64))
    >>> s.tolist(), sigma.tolist(), sde.g2(2.0).tolist()
    ([1.0, 1.0], [0.5, 2.0], [4.0])
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.sigma_min, self.sigma_max = _check_sigmas(sigma_min, sigma_max)
        super().__init__(self.sigma_max)

    def _params(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def _a(self, t):
        return torch.zeros_like(t)

    def _g2(self, t):
        return 2.0 * t

    def _log_mean_coeff(self, t):
        return torch.zeros_like(t)

    def _var(self, t):
        return t * t

    def _log_snr(self, t):
        return -torch.log(t)

    def _t_from_log_snr(self, lam):
        return torch.exp(-lam)


@dataclass(frozen=True)
class DiscreteSchedule:
    r"""A discrete diffusion chain :math:`q(x_i \mid x_{i-1}) = \mathcal N(\sqrt{\alpha_i} x_{i-1}, \beta_i I)`.

    Derived: ``alphas`` :math:`= 1 - \beta`, ``alphas_cumprod`` :math:`\bar\alpha_i = \prod_{j \le i}\alpha_j`,
    ``alphas_cumprod_prev`` (:math:`\bar\alpha_0 = 1`), and ``posterior_variance``
    :math:`\tilde\beta_i = \beta_i(1 - \bar\alpha_{i-1})/(1 - \bar\alpha_i)` (Ho et al. 2020, eq. 7).

    Attributes
    ----------
    betas : Tensor
        :math:`\beta_1..\beta_N` (float64), each in ``(0, 1)``.
    times : Tensor
        The continuous time :math:`t_i` each step corresponds to (``i T / N``).
    """

    betas: torch.Tensor
    times: torch.Tensor

    def __post_init__(self):
        b = self.betas
        if not isinstance(b, torch.Tensor) or b.ndim != 1 or b.numel() < 1:
            raise ValueError("betas must be a non-empty 1-D tensor")
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("betas must lie in (0, 1)")
        if self.times.shape != b.shape:
            raise ValueError(f"times must have shape {tuple(b.shape)}, got {tuple(self.times.shape)}")

    @property
    def N(self) -> int:
        """Number of steps."""
        return self.betas.numel()

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, 0)

    @property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        return torch.cat([self.betas.new_ones(1), self.alphas_cumprod[:-1]])

    @property
    def posterior_variance(self) -> torch.Tensor:
        return self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)


#: Short names of the SDE family, accepted by :func:`make_sde` (and the command line).
SDE_NAMES: tuple[str, ...] = ("vp", "subvp", "ve", "ou", "cosine", "edm")


def make_sde(name: str) -> LinearSDE:
    """The SDE called ``name`` (one of :data:`SDE_NAMES`) with its default parameters.

    ``"vp"`` :class:`VPSDE`, ``"subvp"`` :class:`SubVPSDE`, ``"ve"`` :class:`VESDE`, ``"ou"``
    :class:`OU`, ``"cosine"`` :class:`CosineVPSDE`, ``"edm"`` :class:`EDMSDE`.

    Examples
    --------
    >>> from scoresde.sde import make_sde
    >>> make_sde("ve")
    VESDE(sigma_min=0.01, sigma_max=50, T=1)
    """
    classes = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "ou": OU, "cosine": CosineVPSDE,
               "edm": EDMSDE}
    if not isinstance(name, str) or name not in classes:
        raise ValueError(f"sde must be one of {', '.join(SDE_NAMES)}, got {name!r}")
    return classes[name]()
