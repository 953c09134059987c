r"""Variational lower bounds on the log-likelihood of diffusion models.

Two bounds, one result type:

- :func:`elbo` — the continuous-time ELBO of the *reverse SDE* (the stochastic generative
  model) of a linear forward SDE (Song, Durkan, Murray & Ermon 2021, Thm. 1 and eq. 25;
  Huang, Lim & Courville 2021, Thm. 3; Kingma, Salimans, Poole & Ho 2021);
- :func:`ddpm_elbo` — the variational bound of the discrete DDPM chain ``sde.discretize(N)``
  (Sohl-Dickstein et al. 2015; Ho, Jain & Abbeel 2020, eq. 5), with exact Gaussian KL terms.

Both return an :class:`ELBOResult`: a per-sample Monte-Carlo estimate of the bound in nats,
its standard error, the number of score evaluations per sample, and bits per dimension. The
probability-flow ODE likelihood of the *deterministic* model is
:func:`scoresde.log_likelihood`; with the exact score both models have the same marginals, and
then the continuous bound is tight.

Conventions: for a linear SDE :math:`f(x, t) = a(t)\,x`, :math:`x_t = s(t)\,x_0 + \sigma(t)\,z`,
:math:`z \sim \mathcal N(0, I)`, event dimension :math:`d`, half log-SNR
:math:`\lambda(t) = \log(s/\sigma)`. All coefficients and sums are computed in float64; the score
is called in the dtype of ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._checks import check_end_time, check_int, check_linear, check_tensor
from ._runtime import CountingScore
from .sde import SDE

__all__ = ["ELBOResult", "elbo", "ddpm_elbo"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

FORMS = ("denoising", "divergence")
TIME_SAMPLINGS = ("importance", "uniform")
TRACES = ("exact", "hutchinson")
NOISES = ("rademacher", "gaussian")
VARIANCES = ("beta", "beta_tilde")
DECODERS = ("gaussian", "discretized")
SCORE_TIMES = ("matched", "grid")

# Rows (x_t, t) handed to one score call at most; bounds the memory of the batched draws.
_MAX_ROWS = 2**15


# -- result ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ELBOResult:
    r"""A Monte-Carlo estimate of a variational bound, per sample.

    Attributes
    ----------
    elbo : Tensor, shape (batch,)
        The estimated bound on :math:`\log p(x)` in nats (float64). For discrete data
        (``n_bins`` given, or the discretised decoder) it bounds the log-*probability* of the
        observed levels, so it is :math:`\le 0`.
    stderr : Tensor, shape (batch,)
        Monte-Carlo standard error of each entry of ``elbo`` (from independent draws; see the
        functions for the estimator).
    nfe : int
        Score evaluations per sample: the number of ``(x, t)`` rows given to ``score_fn`` per
        entry of ``x`` (the calls are batched over samples and draws).
    dim : int
        Event dimension :math:`d` of the data, for the per-dimension conversions.

    Examples
    --------
    >>> import math, torch
    >>> from scoresde.elbo import ELBOResult
    >>> res = ELBOResult(torch.tensor([-2.0 * math.log(2)]), torch.tensor([0.0]), nfe=1, dim=2)
    >>> float(res.bits_per_dim[0])
    1.0
    """

    elbo: torch.Tensor
    stderr: torch.Tensor
    nfe: int
    dim: int

    @property
    def bits_per_dim(self) -> torch.Tensor:
        r"""The bound as a code length, :math:`-\text{elbo}/(d\ln 2)`, shape ``(batch,)``: an upper
        bound on the bits per dimension of the model."""
        return -self.elbo / (self.dim * math.log(2))

    @property
    def bits_per_dim_stderr(self) -> torch.Tensor:
        """Standard error of :attr:`bits_per_dim`."""
        return self.stderr / (self.dim * math.log(2))

    def mean(self) -> tuple[float, float]:
        """Batch mean of ``elbo`` and its Monte-Carlo standard error :math:`\\sqrt{\\sum se^2}/n`."""
        n = self.elbo.numel()
        return float(self.elbo.mean()), float(self.stderr.square().sum().sqrt()) / n


# -- shared helpers ----------------------------------------------------------------------------


def _draw(kind: str, shape, generator: torch.Generator | None) -> torch.Tensor:
    """float64 ``rand``/``randn`` on the generator's device (CPU without one)."""
    device = generator.device if generator is not None else None
    fn = torch.rand if kind == "rand" else torch.randn
    return fn(shape, generator=generator, device=device, dtype=torch.float64)


def _choice(name: str, value, valid: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, valid))}; got {value!r}")
    return value


def _check_common(sde, score_fn, x, generator) -> None:
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE, got {type(sde).__name__}")
    if not callable(score_fn):
        raise TypeError("score_fn must be callable as score_fn(x, t)")
    check_tensor("x", x, min_dim=2)
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"x must be non-empty, shape (batch, *event), got {tuple(x.shape)}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _levels(x: torch.Tensor, n_bins, data_range) -> tuple[torch.Tensor, float, float]:
    r"""Level indices ``k`` of discrete data ``x`` (float64), with ``(lo, hi)``.

    Level :math:`k \in \{0..n-1\}` is stored as :math:`lo + k(hi - lo)/(n - 1)`; ``x`` must lie
    on that grid (within ``1e-3`` of a level spacing).
    """
    n_bins = check_int("n_bins", n_bins, minimum=2)
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise TypeError(f"data_range must be a pair of numbers (lo, hi), got {data_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"data_range must be finite with lo < hi, got {data_range!r}")
    level = (x.detach().to(torch.float64) - lo) * ((n_bins - 1) / (hi - lo))
    k = level.round()
    if float((level - k).abs().max()) > 1e-3 or bool((k < 0).any()) or bool((k > n_bins - 1).any()):
        raise ValueError(
            f"x must hold the {n_bins} levels lo + k (hi - lo)/(n_bins - 1), k = 0..{n_bins - 1}, of "
            f"data_range = ({lo:g}, {hi:g}) (got values off the grid or outside the range); pass "
            "n_bins=None for continuous data"
        )
    return k, lo, hi


def _dequantized(k: torch.Tensor, n_bins: int, lo: float, hi: float, u: torch.Tensor) -> torch.Tensor:
    r"""Uniform dequantisation :math:`y = lo + (k + u)\,\Delta`, :math:`\Delta = (hi - lo)/n`."""
    return lo + (k + u) * ((hi - lo) / n_bins)


def _gaussian_prior_variance(sde: SDE, prior_log_prob) -> float | None:
    """The variance of the isotropic Gaussian prior when it is known in closed form, else None."""
    if prior_log_prob is not None or type(sde).prior_log_prob is not SDE.prior_log_prob:
        return None
    return float(sde.prior_std) ** 2


def _prior_term(sde, prior_log_prob, x0, sT, sigT, zT, event) -> torch.Tensor:
    r""":math:`\mathbb E_{x_T \mid x_0}\log\pi(x_T)`: closed form for the SDE's Gaussian prior,
    else one draw ``x_T = s_T x_0 + \sigma_T z_T`` per row. ``x0`` is ``(rows, d)`` float64."""
    d = x0.shape[1]
    var = _gaussian_prior_variance(sde, prior_log_prob)
    if var is not None:
        sq = x0.square().sum(-1)
        return -0.5 * d * math.log(2 * math.pi * var) - (sT**2 * sq + d * sigT**2) / (2 * var)
    xT = (sT * x0 + sigT * zT).reshape(x0.shape[0], *event)
    fn = sde.prior_log_prob if prior_log_prob is None else prior_log_prob
    out = fn(xT)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (x0.shape[0],):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"prior_log_prob must return a ({x0.shape[0]},) tensor, got {got}")
    return out.detach().to(torch.float64)


def _estimate(values: torch.Tensor, stratified: bool) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and standard error of the rows of ``values`` ``(batch, K)``.

    Stratified draws come in pairs (stratum ``h`` holds draws ``2h`` and ``2h + 1``): the
    unbiased variance of the stratified mean is :math:`\frac{1}{H^2}\sum_h (v_{h1} - v_{h2})^2/4`.
    """
    K = values.shape[1]
    mean = values.mean(1)
    if stratified:
        pairs = values.reshape(values.shape[0], K // 2, 2)
        var = (pairs[..., 0] - pairs[..., 1]).square().sum(1) / (4 * (K // 2) ** 2)
    else:
        var = values.var(1, unbiased=True) / K
    return mean, var.sqrt()


def _uniforms(n: int, K: int, stratified: bool, generator) -> torch.Tensor:
    """``(n, K)`` uniforms on (0, 1); stratified: pair ``h`` lies in ``[h/H, (h+1)/H)``."""
    u = _draw("rand", (n, K), generator)
    if stratified:
        h = torch.arange(K, dtype=torch.float64) // 2
        u = (h + u) / (K // 2)
    return u


def _call(counted: CountingScore, x: torch.Tensor, t: torch.Tensor, shape, dtype) -> torch.Tensor:
    """``score_fn`` on float64 rows ``x`` ``(rows, d)``: reshaped to the event shape, cast to
    the data dtype; the result flattened back to float64 ``(rows, d)``. No autograd graph is
    built (a score that needs gradients inside, e.g. guidance, enables them itself)."""
    xs = x.reshape(x.shape[0], *shape).to(dtype)
    with torch.no_grad():
        out = counted(xs, t.to(dtype))
    return out.reshape(x.shape[0], -1)


# -- continuous-time ELBO ----------------------------------------------------------------------


def elbo(
    sde: SDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    *,
    form: str = "denoising",
    n_samples: int = 64,
    time_sampling: str | None = None,
    stratified: bool = True,
    eps: float = 1e-5,
    decoder: bool = True,
    control_variate: bool = True,
    trace: str = "exact",
    noise: str = "rademacher",
    n_bins: int | None = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> ELBOResult:
    r"""Continuous-time ELBO of the reverse SDE defined by ``score_fn`` (nats per sample).

    For a linear SDE and any score model :math:`s_\theta`, the generative reverse SDE
    :math:`\mathrm dx = [f - g^2 s_\theta]\,\mathrm dt + g\,\mathrm d\bar W` started from the prior
    :math:`\pi` has a density :math:`p_\theta^{\rm SDE}` with (Song, Durkan et al. 2021, Thm. 1
    and eq. 25; Huang et al. 2021)

    .. math::
        \log p_\theta^{\rm SDE}(x_0) \ge \mathbb E_{x_T\mid x_0}\log\pi(x_T)
        - \int_0^T \mathbb E_{x_t \mid x_0}\Big[\tfrac12 g^2\|s_\theta\|^2 + g^2\,\nabla\!\cdot s_\theta
        - \nabla\!\cdot f\Big]\mathrm dt .

    With the exact score and :math:`\pi = p_T` this is an identity (the generative path measure
    equals the forward one). Two estimators of the time integral (``form``):

    ``"denoising"`` (default)
        Stein's identity :math:`\mathbb E[s_\theta\cdot z]/\sigma = \mathbb E[\nabla\cdot s_\theta]`
        and completing the square give the likelihood-weighted DSM integrand,
        :math:`\tfrac12\frac{g^2}{\sigma^2}\big(\|\sigma s_\theta + z\|^2 - d\big)`, and the
        closed-form remainder :math:`\int_\epsilon^T (\tfrac12 g^2 d/\sigma^2 + a d) = d\log
        \frac{\sigma(T)}{\sigma(\epsilon)}`; together

        .. math:: \mathrm{ELBO} = \mathbb E\log\pi(x_T) + d\log\frac{s(T)}{s(\epsilon)}
                  - \int_\epsilon^T \tfrac12\frac{g^2}{\sigma^2}\,
                  \mathbb E_z\big[\|\sigma s_\theta(x_t, t) + z\|^2 - d\big]\mathrm dt + D .

        One score evaluation per draw, no autograd. Lowest variance at large :math:`t`
        (:math:`\sigma(t)` above the scale of the data), where :math:`\sigma s_\theta \approx -z`
        and the bracket is nearly deterministic; near :math:`t = 0` its per-draw spread tends to
        that of :math:`\|z\|^2 - d` (variance :math:`2d`) times the weight :math:`g^2/\sigma^2`.
    ``"divergence"``
        The integrand :math:`g^2(\tfrac12\|s_\theta\|^2 + \nabla\cdot s_\theta)` with the
        divergence exact (``trace="exact"``, ``d`` backward passes) or Hutchinson's
        :math:`v^\top\nabla s_\theta v` (``"hutchinson"``, one). Bounded as :math:`t \to 0`, so it
        has the lower variance at small :math:`t`, but at large :math:`t` (VP: :math:`s_\theta
        \approx -x`) it fluctuates like :math:`\tfrac12 g^2(\|x\|^2 - d)`, which the denoising form
        cancels. Needs ``score_fn`` differentiable in ``x``.

    **Time.** ``t`` is drawn on :math:`[\epsilon, T]` and the integrand divided by its density:
    ``time_sampling="importance"`` draws :math:`q(t) \propto g^2/\sigma^2`, uniform in
    :math:`\lambda` (Song, Durkan et al.'s proposal; sampled exactly through
    :meth:`~scoresde.LinearSDE.t_from_log_snr`), the default for the denoising form, whose
    weighted integrand becomes :math:`\tfrac{Z}{2}(\|\sigma s_\theta + z\|^2 - d)` with
    :math:`Z = 2(\lambda(\epsilon) - \lambda(T))`; ``"uniform"`` draws :math:`\mathcal U(\epsilon,
    T)`, the default for the divergence form. With ``stratified=True`` the ``n_samples`` draws
    of each sample come in pairs, pair :math:`h` from the :math:`h`-th of ``n_samples / 2``
    equal-probability strata of :math:`q`; the standard error is the unbiased one of the
    stratified mean, :math:`\frac1H\sqrt{\sum_h (v_{h1} - v_{h2})^2/4}`.

    **The interval** :math:`[0, \epsilon]`. The score may be singular at ``t = 0``, so the path
    stops at :math:`\epsilon`. With ``decoder=True`` (default) the model's last step is the
    Gaussian decoder :math:`p_\theta(x_0 \mid x_\epsilon) = \mathcal N\big((x_\epsilon +
    \sigma_\epsilon^2 s_\theta(x_\epsilon, \epsilon))/s_\epsilon,\ (\sigma_\epsilon/s_\epsilon)^2
    I\big)` (Tweedie's mean), whose terms
    :math:`\mathbb E\log p_\theta(x_0\mid x_\epsilon) - \mathbb E\log q(x_\epsilon\mid x_0)` add

    .. math:: D = d\log s(\epsilon) - \tfrac12\,\mathbb E\big[\|\sigma_\epsilon s_\theta\|^2
              + 2\sigma_\epsilon\, s_\theta\cdot z'\big], \qquad x_\epsilon = s_\epsilon x_0 +
              \sigma_\epsilon z',

    (one more score evaluation per draw): the result is then a lower bound on the log-density of
    a proper model of :math:`x_0`, with :math:`D \to 0` as :math:`\epsilon \to 0` for smooth data.
    With ``decoder=False`` :math:`D = 0`: the result bounds the model's :math:`\log p_\epsilon`
    at the forward-noised point, on average over :math:`x_\epsilon \sim q(\cdot\mid x_0)`.

    **Prior.** For the SDE's own :math:`\pi = \mathcal N(0, \sigma_\pi^2 I)` the prior term is
    closed form, :math:`-\tfrac d2\log(2\pi\sigma_\pi^2) - (s_T^2\|x_0\|^2 + d\sigma_T^2)/(2\sigma_\pi^2)`;
    ``prior_log_prob`` (e.g. the exact :math:`\log p_T` of a reference target) replaces it, then
    estimated from one :math:`x_T` per draw. The bound with :math:`\pi` is below the one with
    :math:`p_T` by :math:`\mathbb E_{x_T\mid x_0}[\log p_T(x_T) - \log\pi(x_T)]`.

    **Discrete data** (``n_bins`` given): ``x`` must hold the levels :math:`lo + k(hi -
    lo)/(n - 1)` of ``data_range``. Every draw dequantises uniformly, :math:`y = lo + (k + u)
    \Delta`, :math:`\Delta = (hi - lo)/n` (Theis et al. 2016; Song et al.'s ``(255 x + u)/256``),
    and the result is the bound on the discrete log-probability :math:`\log P(k) \ge
    \mathbb E_u[\mathrm{ELBO}(y)] + d\log\Delta`, so :attr:`ELBOResult.bits_per_dim` is the
    number papers report: for 8-bit data scaled to ``[-1, 1]``, :math:`-d\log\Delta/(d\ln 2) =
    \log_2 128 = 7` bits are added to :math:`-\mathrm{ELBO}(y)/(d\ln 2)` (score_sde's ``offset =
    7 - inverse_scaler(-1)``; 8 bits for data in ``[0, 1]``). Without dequantisation a density on
    discrete points can exceed 1 and the bits per dimension go negative.

    Parameters
    ----------
    sde : LinearSDE
        Forward process with closed-form marginals (``marginal``, ``diffusion``).
    score_fn : callable
        ``score_fn(x, t) -> tensor like x``; called with ``x`` in the dtype of the data and
        ``t`` a ``(rows,)`` tensor. Samples must be treated independently.
    x : Tensor, shape ``(batch, *event)``
        Finite data points.
    form : {"denoising", "divergence"}
        Estimator of the time integral (above).
    n_samples : int
        Draws of ``(t, z)`` per sample (>= 2; even when ``stratified``).
    time_sampling : {"importance", "uniform"}, optional
        Proposal of ``t``; default ``"importance"`` for the denoising form, ``"uniform"`` for the
        divergence form. ``"importance"`` needs a :class:`~scoresde.LinearSDE`.
    stratified : bool
        Stratify the time draws in pairs (above).
    eps : float
        End time :math:`\epsilon \in (0, T)` of the path (default ``1e-5``, as for likelihoods).
    decoder : bool
        Include the Gaussian decoder over :math:`[0, \epsilon]` (above).
    control_variate : bool
        Denoising form only: subtract :math:`c(t)\,(\|z\|^2 - d)`, of mean zero, from the
        bracket, with :math:`c = (s^2/(s^2 + \sigma^2))^2`, the coefficient of :math:`\|z\|^2` in
        :math:`\|\sigma s_\theta + z\|^2` for data of unit variance per coordinate. Unbiased for
        any data; it removes the :math:`\|z\|^2` noise where :math:`\sigma(t)` is below the data
        scale (2-D mixtures: 4x smaller per-draw standard deviation; 64-D: 2x).
    trace, noise : str
        Divergence of the ``"divergence"`` form: ``"exact"`` or ``"hutchinson"`` with a
        ``"rademacher"`` or ``"gaussian"`` probe (one per draw). Ignored by the denoising form.
    n_bins : int, optional
        Levels per coordinate of discrete data (256 for 8-bit); enables dequantisation.
    data_range : (float, float)
        ``(lo, hi)`` of the levels, used with ``n_bins``.
    prior_log_prob : callable, optional
        ``prior_log_prob(x_T) -> (batch,)`` replacing :meth:`SDE.prior_log_prob`.
    generator : torch.Generator, optional
        Source of every draw; the same seed gives the same result.

    Returns
    -------
    ELBOResult
        ``elbo`` and ``stderr`` shaped ``(batch,)`` (float64), ``nfe = n_samples (1 + decoder)``.

    References
    ----------
    Song, Durkan, Murray & Ermon (2021), *Maximum likelihood training of score-based diffusion
    models*, NeurIPS, Thm. 1, eq. 25 and §4 (importance sampling).
    Huang, Lim & Courville (2021), *A variational perspective on diffusion-based generative
    models and score matching*, NeurIPS.
    Kingma, Salimans, Poole & Ho (2021), *Variational diffusion models*, NeurIPS.
    Theis, van den Oord & Bethge (2016), *A note on the evaluation of generative models*, ICLR.

    Examples
    --------
    With the exact score of a Gaussian and its exact :math:`p_T` the bound is tight:

    >>> import torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.tensor([0.5, -0.5]), torch.tensor([[1.0, 0.3], [0.3, 0.5]]))
    >>> x = target.sample(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> exact_T = target.log_prob_fn(sde)
    >>> res = sd.elbo(sde, target.score_fn(sde), x, n_samples=256,
    ...               prior_log_prob=lambda xT: exact_T(xT, sde.T),
    ...               generator=torch.Generator().manual_seed(1))
    >>> bool(((res.elbo - target.log_prob(x)).abs() < 4 * res.stderr).all()), res.nfe
    (True, 512)
    """
    _check_common(sde, score_fn, x, generator)
    form = _choice("form", form, FORMS)
    if time_sampling is None:
        time_sampling = "importance" if form == "denoising" else "uniform"
    time_sampling = _choice("time_sampling", time_sampling, TIME_SAMPLINGS)
    trace = _choice("trace", trace, TRACES)
    noise = _choice("noise", noise, NOISES)
    n_samples = check_int("n_samples", n_samples, minimum=2)
    stratified = bool(stratified)
    if stratified and n_samples % 2:
        raise ValueError(f"n_samples must be even with stratified=True (draws come in pairs), got {n_samples}")
    eps = check_end_time(sde, eps)
    if time_sampling == "importance":
        check_linear(sde, "elbo(time_sampling='importance')")
    if prior_log_prob is not None and not callable(prior_log_prob):
        raise TypeError("prior_log_prob must be callable as prior_log_prob(x_T) -> (batch,)")
    levels = None
    if n_bins is not None:
        levels, lo, hi = _levels(x, n_bins, data_range)

    B, event, dtype = x.shape[0], tuple(x.shape[1:]), x.dtype
    d = x[0].numel()
    T = float(sde.T)
    ends = torch.tensor([eps, T], dtype=torch.float64)
    (s_eps, s_T), (sig_eps, sig_T) = (v.tolist() for v in sde.scale_std(ends.to(torch.float64)))
    lam_eps = lam_T = 0.0
    if time_sampling == "importance":
        lam_eps, lam_T = (float(v) for v in sde.log_snr(ends))
    Z = 2.0 * (lam_eps - lam_T)
    closed_prior = _gaussian_prior_variance(sde, prior_log_prob) is not None

    counted = CountingScore(score_fn, "elbo")
    x0_all = x.detach().reshape(B, d).to(torch.float64)
    k_all = None if levels is None else levels.reshape(B, d)
    means, errs = [], []
    rows = 0
    per_chunk = max(1, _MAX_ROWS // n_samples)
    for c0 in range(0, B, per_chunk):
        counted.step = c0 // per_chunk
        n = min(B, c0 + per_chunk) - c0
        R = n * n_samples
        # draws, in this order: time uniforms, z, decoder z', prior z_T, dequantisation u, probe
        u = _uniforms(n, n_samples, stratified, generator).reshape(R)
        z = _draw("randn", (R, d), generator)
        z_dec = _draw("randn", (R, d), generator) if decoder else None
        z_T = None if closed_prior else _draw("randn", (R, d), generator)
        if k_all is None:
            x0 = x0_all[c0:c0 + n].repeat_interleave(n_samples, 0)
        else:
            k = k_all[c0:c0 + n].repeat_interleave(n_samples, 0)
            x0 = _dequantized(k, n_bins, lo, hi, _draw("rand", (R, d), generator))
        probe = None
        if form == "divergence" and trace == "hutchinson":
            probe = _draw("randn", (R, d), generator)
            if noise == "rademacher":
                probe = torch.where(probe >= 0, 1.0, -1.0).to(torch.float64)

        if time_sampling == "importance":
            t = sde.t_from_log_snr(lam_eps - u * (lam_eps - lam_T)).to(torch.float64).clamp(eps, T)
        else:
            t = eps + u * (T - eps)
        s, sig = sde.scale_std(t.to(torch.float64))
        xt = s[:, None] * x0 + sig[:, None] * z
        if form == "denoising":
            score = _call(counted, xt, t, event, dtype).to(torch.float64)
            zz = z.square().sum(-1) - d
            bracket = (sig[:, None] * score + z).square().sum(-1) - d
            if control_variate:
                bracket = bracket - torch.sigmoid(2 * torch.log(s / sig)) ** 2 * zz
            if time_sampling == "importance":
                integral = 0.5 * Z * bracket
            else:
                g2 = sde.diffusion(t).to(torch.float64) ** 2
                integral = (T - eps) * 0.5 * g2 / sig**2 * bracket
        else:
            integrand = _divergence_integrand(counted, xt, t, event, dtype, probe, sde)
            if time_sampling == "importance":
                g2 = sde.diffusion(t).to(torch.float64) ** 2
                integral = Z * sig**2 / g2 * integrand
            else:
                integral = (T - eps) * integrand
        rows += R

        value = _prior_term(sde, prior_log_prob, x0, s_T, sig_T, z_T, event) + d * math.log(s_T / s_eps) - integral
        if decoder:
            x_eps = s_eps * x0 + sig_eps * z_dec
            t_eps = torch.full((R,), eps, dtype=torch.float64)
            e = sig_eps * _call(counted, x_eps, t_eps, event, dtype).to(torch.float64)
            value = value + d * math.log(s_eps) - 0.5 * (e.square().sum(-1) + 2 * (e * z_dec).sum(-1))
            rows += R
        m, se = _estimate(value.reshape(n, n_samples), stratified)
        means.append(m)
        errs.append(se)

    est = torch.cat(means)
    if levels is not None:
        est = est + d * math.log((hi - lo) / n_bins)
    return ELBOResult(elbo=est.detach(), stderr=torch.cat(errs).detach(), nfe=rows // B, dim=d)


def _divergence_integrand(counted, xt, t, event, dtype, probe, sde) -> torch.Tensor:
    r""":math:`g^2(\tfrac12\|s_\theta\|^2 + \nabla\cdot s_\theta)` per row (float64, detached)."""
    R, d = xt.shape
    with torch.enable_grad():
        xg = xt.reshape(R, *event).to(dtype).detach().requires_grad_(True)
        out = counted(xg, t.to(dtype))
        if not out.requires_grad:
            raise ValueError(
                "score_fn must return a tensor differentiable in x for form='divergence', got one "
                "that does not require grad (do not detach it, or use form='denoising')"
            )
        flat = out.reshape(R, d)
        if probe is None:
            div = torch.zeros(R, dtype=torch.float64)
            for i in range(d):
                (gi,) = torch.autograd.grad(flat[:, i].sum(), xg, retain_graph=i < d - 1,
                                            allow_unused=True, materialize_grads=True)
                div = div + gi.reshape(R, d)[:, i].to(torch.float64)
        else:
            v = probe.to(dtype).reshape(R, *event)
            (gv,) = torch.autograd.grad(out, xg, v, allow_unused=True, materialize_grads=True)
            div = (gv.reshape(R, d).to(torch.float64) * probe).sum(-1)
    g2 = sde.diffusion(t).to(torch.float64) ** 2
    sq = flat.detach().to(torch.float64).square().sum(-1)
    return g2 * (0.5 * sq + div.detach())


# -- the discrete DDPM bound -------------------------------------------------------------------


def _log_prob_bin(x0: torch.Tensor, mean: torch.Tensor, std: float, half: float, lo: float,
                  hi: float) -> torch.Tensor:
    r""":math:`\log\int_{x_0 - \delta}^{x_0 + \delta}\mathcal N(y; \mu, \sigma^2)\,\mathrm dy`
    per entry, with the outer bins open to :math:`\pm\infty` (Ho et al. 2020, eq. 13)."""
    a = (x0 - half - mean) / std
    b = (x0 + half - mean) / std
    a = torch.where(x0 <= lo + 0.5 * half, torch.full_like(a, -math.inf), a)
    b = torch.where(x0 >= hi - 0.5 * half, torch.full_like(b, math.inf), b)
    # log(Φ(b) − Φ(a)), through the tail on the far side of 0 for accuracy
    right = a + b > 0
    hi_, lo_ = torch.where(right, -a, b), torch.where(right, -b, a)
    log_hi, log_lo = torch.special.log_ndtr(hi_), torch.special.log_ndtr(lo_)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi))


def ddpm_elbo(
    sde: SDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    steps: int,
    *,
    variance: str = "beta",
    decoder: str = "gaussian",
    n_terms: int | None = None,
    n_samples: int = 8,
    control_variate: bool = True,
    score_time: str = "matched",
    n_bins: int | None = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    generator: torch.Generator | None = None,
) -> ELBOResult:
    r"""Variational bound of the discrete DDPM chain ``sde.discretize(steps)`` (Ho et al. 2020).

    The chain :math:`q(x_i\mid x_{i-1}) = \mathcal N(\sqrt{\alpha_i}x_{i-1}, \beta_i I)`,
    :math:`i = 1..N`, is reversed by :math:`p_\theta(x_{i-1}\mid x_i) = \mathcal N(\mu_\theta,
    \sigma_i^2 I)`, :math:`\mu_\theta = (x_i + \beta_i s_\theta(x_i, \tau_i))/\sqrt{\alpha_i}`
    (Tweedie's formula for the one-step kernel: with the exact score of the chain's marginal
    :math:`q(x_i)` this is the exact mean :math:`\mathbb E[x_{i-1}\mid x_i]`), and

    .. math::
        \log p_\theta(x_0) \ge -\underbrace{\mathrm{KL}(q(x_N\mid x_0)\,\|\,\pi)}_{L_N}
        - \sum_{i=2}^N \mathbb E_{q(x_i\mid x_0)}\underbrace{\mathrm{KL}\big(q(x_{i-1}\mid x_i, x_0)
        \,\|\,p_\theta(x_{i-1}\mid x_i)\big)}_{L_{i-1}}
        + \mathbb E_{q(x_1\mid x_0)}\log p_\theta(x_0\mid x_1),

    with :math:`q(x_{i-1}\mid x_i, x_0) = \mathcal N(\tilde\mu_i, \tilde\beta_i I)`,
    :math:`\tilde\mu_i = \frac{\sqrt{\bar\alpha_{i-1}}\beta_i}{1 - \bar\alpha_i}x_0 +
    \frac{\sqrt{\alpha_i}(1 - \bar\alpha_{i-1})}{1 - \bar\alpha_i}x_i`, and each Gaussian KL in
    closed form,
    :math:`\tfrac12\big[d(\rho - 1 - \log\rho) + \|\tilde\mu_i - \mu_\theta\|^2/\sigma_i^2\big]`,
    :math:`\rho = \tilde\beta_i/\sigma_i^2`. The prior term is closed form for the SDE's
    :math:`\pi = \mathcal N(0, \sigma_\pi^2 I)`.

    Parameters
    ----------
    sde : VPSDE or CosineVPSDE
        An SDE with ``discretize(N)`` (a :class:`~scoresde.DiscreteSchedule`).
    score_fn : callable
        ``score_fn(x, t) -> tensor like x``.
    x : Tensor, shape ``(batch, *event)``
        Finite data points.
    steps : int
        Number of steps :math:`N` of the chain (>= 2, and small enough that every
        :math:`\beta_i \le 0.999`).
    variance : {"beta", "beta_tilde"}
        Reverse variance :math:`\sigma_i^2 = \beta_i` (Ho et al.'s "fixedlarge", default; the
        decoder then has :math:`\sigma_1^2 = \beta_1`) or :math:`\tilde\beta_i` (the posterior's,
        "fixedsmall"; the decoder uses :math:`\tilde\beta_2` since :math:`\tilde\beta_1 = 0`, as
        Ho et al.'s code). For data that are smooth on the scale :math:`\sigma_1`, the true
        reverse variance at small :math:`i` is :math:`\approx\beta_i` and ``"beta"`` gives the far
        tighter bound (2-D mixture, ``N = 1000``: about 0.1 nats below :math:`\log p` against
        1.4 for ``"beta_tilde"``); :math:`\tilde\beta_i` is the right variance for data that are
        point masses on that scale.
    decoder : {"gaussian", "discretized"}
        :math:`p_\theta(x_0\mid x_1)`: the Gaussian :math:`\mathcal N(\mu_\theta(x_1),
        \tilde\beta_2 I)` for real-valued data, or Ho et al.'s discretised Gaussian (eq. 13) for
        data on ``n_bins`` levels of ``data_range`` (default 256 levels: 8-bit images in
        ``[-1, 1]``, bins :math:`x \pm 1/255`, the outer ones open): the mass of the bin of each
        level, so the result is a bound on the discrete log-probability, with no offset.
    n_terms : int, optional
        ``None`` (default): the exact sum over :math:`i = 2..N` in every draw (``N`` score
        evaluations per draw). An int ``M < N - 1``: split :math:`2..N` into ``M`` contiguous
        strata of near-equal size :math:`m_j`, draw one step uniformly from each and weight it by
        :math:`m_j`: an unbiased estimate of the sum with ``M + 1`` evaluations per draw. The
        terms near :math:`i = 1` dominate the variance, which stratification keeps in check.
    n_samples : int
        Independent draws per sample (>= 2); ``stderr`` is their standard deviation over
        :math:`\sqrt{n}`. Each draw takes one :math:`x_i \sim q(x_i\mid x_0)` per evaluated step.
    control_variate : bool
        Subtract from every Gaussian term :math:`c_i(\|z_i\|^2 - d)`, of mean zero, where
        :math:`z_i` is the noise of its :math:`x_i` and :math:`c_i` the coefficient of
        :math:`\|z_i\|^2` in that term for data of unit variance and the exact score (the same
        construction as in :func:`elbo`). Unbiased for any data; it removes most of the
        variance of the terms near :math:`i = 1`.
    score_time : {"matched", "grid"}
        Time :math:`\tau_i` at which ``score_fn`` is asked about :math:`x_i`: ``"matched"``
        (default) the time with the chain's log-SNR, :math:`\lambda(\tau_i) =
        \tfrac12\log(\bar\alpha_i/(1 - \bar\alpha_i))`, so that the exact score of
        :math:`p_{\tau_i}` is the exact score of :math:`q(x_i)`; ``"grid"`` the schedule's
        :math:`t_i = iT/N` (where the DDPM sampler evaluates the score).
    n_bins : int, optional
        With the Gaussian decoder: dequantise the levels uniformly, as in :func:`elbo` (adds
        :math:`d\log\Delta`). With the discretised decoder: the number of levels (default 256).
    data_range : (float, float)
        ``(lo, hi)`` of the levels.
    generator : torch.Generator, optional
        Source of every draw.

    Returns
    -------
    ELBOResult
        ``nfe`` is the number of score evaluations per sample, ``n_samples (M + 1)`` with
        ``M = n_terms`` or ``N - 1``.

    References
    ----------
    Ho, Jain & Abbeel (2020), *Denoising diffusion probabilistic models*, NeurIPS, eqs. 5-13.
    Sohl-Dickstein, Weiss, Maheswaranathan & Ganguli (2015), *Deep unsupervised learning using
    nonequilibrium thermodynamics*, ICML.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.zeros(2), 0.25 * torch.eye(2))
    >>> x = target.sample(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> res = sd.ddpm_elbo(sde, target.score_fn(sde), x, steps=100,
    ...                    generator=torch.Generator().manual_seed(1))
    >>> bool((res.elbo < target.log_prob(x) + 3 * res.stderr).all()), res.nfe
    (True, 800)
    """
    _check_common(sde, score_fn, x, generator)
    if not callable(getattr(sde, "discretize", None)):
        raise TypeError(f"ddpm_elbo needs an SDE with discretize(N) (VPSDE, CosineVPSDE), got {type(sde).__name__}")
    steps = check_int("steps", steps, minimum=2)
    variance = _choice("variance", variance, VARIANCES)
    decoder = _choice("decoder", decoder, DECODERS)
    score_time = _choice("score_time", score_time, SCORE_TIMES)
    n_samples = check_int("n_samples", n_samples, minimum=2)
    if n_terms is not None:
        n_terms = check_int("n_terms", n_terms)
        if n_terms >= steps - 1:
            n_terms = None  # as many strata as terms: the exact sum
    try:
        sched = sde.discretize(steps)
    except ValueError as err:
        raise ValueError(f"steps={steps} is too small for the chain of {sde!r}: {err}") from None
    if decoder == "discretized" and n_bins is None:
        n_bins = 256
    levels = None
    if n_bins is not None:
        levels, lo, hi = _levels(x, n_bins, data_range)
    if score_time == "matched":
        check_linear(sde, "ddpm_elbo(score_time='matched')")

    N = sched.N
    betas = sched.betas.to(torch.float64)
    alphas = 1.0 - betas
    abar = sched.alphas_cumprod.to(torch.float64)
    abar_prev = sched.alphas_cumprod_prev.to(torch.float64)
    btil = sched.posterior_variance.to(torch.float64)
    var = (betas if variance == "beta" else btil).clone()
    if variance == "beta_tilde":
        var[0] = btil[1]  # the decoder's variance (β̃_1 = 0)
    if score_time == "matched":
        tau = sde.t_from_log_snr(0.5 * (torch.log(abar) - torch.log1p(-abar))).to(torch.float64)
    else:
        tau = sched.times.to(torch.float64)
    c0 = abar_prev.sqrt() * betas / (1 - abar)
    c1 = alphas.sqrt() * (1 - abar_prev) / (1 - abar)
    # control variate: coefficient of ‖z‖² in each term for unit-variance data and the exact score
    # (with s_θ = 0 the z-part of μ̃ - μ_θ is -β_i z/(√α_i σ_i); the exact score of N(0, I) keeps ᾱ_i of it)
    cv = betas**2 / (alphas * (1 - abar) * 2 * var) * abar**2
    cv_dec = float((1 - abar[0]) / (2 * alphas[0] * var[0]) * abar[0] ** 2)

    B, event, dtype = x.shape[0], tuple(x.shape[1:]), x.dtype
    d = x[0].numel()
    M = N - 1 if n_terms is None else n_terms
    edges = torch.linspace(2, N + 1, M + 1, dtype=torch.float64).round().long()  # strata of 2..N
    sizes = (edges[1:] - edges[:-1]).to(torch.float64)

    prior_var = _gaussian_prior_variance(sde, None)
    counted = CountingScore(score_fn, "ddpm_elbo")
    x0_all = x.detach().reshape(B, d).to(torch.float64)
    k_all = None if levels is None else levels.reshape(B, d)
    per_chunk = max(1, _MAX_ROWS // (n_samples * (M + 1)))
    means, errs = [], []
    rows = 0
    for b0 in range(0, B, per_chunk):
        counted.step = b0 // per_chunk
        n = min(B, b0 + per_chunk) - b0
        R = n * n_samples
        # draws, in this order: dequantisation u, step indices, noise of x_i, prior x_N noise
        if k_all is None or decoder == "discretized":
            x0 = x0_all[b0:b0 + n].repeat_interleave(n_samples, 0)
        else:
            k = k_all[b0:b0 + n].repeat_interleave(n_samples, 0)
            x0 = _dequantized(k, n_bins, lo, hi, _draw("rand", (R, d), generator))
        if n_terms is None:
            idx = torch.arange(2, N + 1).expand(R, M)
            weight = torch.ones(M, dtype=torch.float64)
        else:
            u = _draw("rand", (R, M), generator)
            idx = (edges[:-1] + (u * sizes).floor().long()).clamp(max=N)
            weight = sizes
        idx = torch.cat([torch.ones(R, 1, dtype=torch.long), idx], 1)  # column 0: the decoder, i = 1
        z = _draw("randn", (R, M + 1, d), generator)
        j = idx - 1  # 0-based position in the schedule
        ab = abar[j]
        xi = ab.sqrt()[..., None] * x0[:, None, :] + (1 - ab).sqrt()[..., None] * z
        flat_x, flat_t = xi.reshape(R * (M + 1), d), tau[j].reshape(-1)
        scores = torch.cat([
            _call(counted, flat_x[r0:r0 + _MAX_ROWS], flat_t[r0:r0 + _MAX_ROWS], event, dtype)
            for r0 in range(0, flat_x.shape[0], _MAX_ROWS)
        ]).to(torch.float64).reshape(R, M + 1, d)
        rows += R * (M + 1)
        mu = (xi + betas[j][..., None] * scores) / alphas[j].sqrt()[..., None]
        # L_{i-1}, i >= 2
        mut = c0[j][..., None] * x0[:, None, :] + c1[j][..., None] * xi
        rho = btil[j] / var[j]
        kl = 0.5 * (d * (rho - 1 - torch.log(rho)) + (mut - mu).square().sum(-1) / var[j])
        zz = z.square().sum(-1) - d
        if control_variate:
            kl = kl - cv[j] * zz
        value = -(kl[:, 1:] * weight).sum(1)
        # L_0: the decoder
        std0 = math.sqrt(float(var[0]))
        if decoder == "gaussian":
            rec = -0.5 * d * math.log(2 * math.pi * std0**2) - (x0 - mu[:, 0]).square().sum(-1) / (2 * std0**2)
            if control_variate:
                rec = rec + cv_dec * zz[:, 0]
        else:
            half = (hi - lo) / (2 * (n_bins - 1))
            rec = _log_prob_bin(x0, mu[:, 0], std0, half, lo, hi).sum(-1)
        value = value + rec
        # L_N: the prior
        aN = float(abar[-1])
        if prior_var is not None:
            sq = x0.square().sum(-1)
            kl_T = 0.5 * (d * (1 - aN) / prior_var + aN * sq / prior_var - d + d * math.log(prior_var / (1 - aN)))
            value = value - kl_T
        else:
            zN = _draw("randn", (R, d), generator)
            xN = math.sqrt(aN) * x0 + math.sqrt(1 - aN) * zN
            entropy = 0.5 * d * math.log(2 * math.pi * math.e * (1 - aN))
            value = value + sde.prior_log_prob(xN).to(torch.float64) + entropy
        m, se = _estimate(value.reshape(n, n_samples), stratified=False)
        means.append(m)
        errs.append(se)

    est = torch.cat(means)
    if levels is not None and decoder == "gaussian":
        est = est + d * math.log((hi - lo) / n_bins)
    return ELBOResult(elbo=est.detach(), stderr=torch.cat(errs).detach(), nfe=rows // B, dim=d)
