r"""Posterior samplers for linear inverse problems :math:`y = A x + \sigma_y\varepsilon`.

:func:`posterior_sample` draws from :math:`p(x \mid y) \propto p_0(x)\,\mathcal N(y; Ax,
\sigma_y^2 I)` with an unconditional score of the prior :math:`p_0` and a linear SDE. Its methods
(:func:`methods`):

``"smc"`` (default)
    Sequential Monte Carlo with the Gaussian potentials of MCGdiff (Cardoso et al. 2023) and
    the locally optimal proposal, asymptotically exact as ``particles`` grows. In the SVD
    coordinates of ``A`` (:class:`~scoresde.operators.Measurement`) the intermediate targets are
    :math:`\pi_t(x_t) \propto p_t(x_t)\,\tilde g_t(x_t)` with

    .. math:: \tilde g_t(x) = \prod_{i \le r}\mathcal N\big(\bar y_i;\; \lambda_i\,\bar x_i / s(t),\;
              \sigma_y^2 + \lambda_i^2\,\tilde\sigma(t)^2\big), \qquad
              \tilde\sigma = \sigma/s,

    the likelihood of :math:`y` when :math:`x_0` is read off :math:`x_t` as
    :math:`x_t/s \pm \tilde\sigma` (for :math:`\sigma_y = 0` exactly MCGdiff's potentials
    :math:`\mathcal N(s\,\bar y_i/\lambda_i; \bar x_i, \sigma^2)`; the noisy version is the
    Gaussian convolution of Dou & Song 2024). Between grid times the prior moves by the
    ancestral kernel :math:`\mathcal N(s'\hat x_0 + \sqrt{\sigma'^2 - c^2}\,\hat\epsilon, v I)`
    (DDIM with :math:`\eta = 1`: :math:`v = c^2`, the variance of
    :math:`q(x_{t'} \mid x_t, x_0)`), by default with the variance of :math:`x_0` given
    :math:`x_t` added, :math:`v = c^2 + a^2\gamma_t` (:math:`a` the coefficient of :math:`x_0`
    in the mean of :math:`q`, :math:`\gamma_t = \tilde\sigma^2(1 - \overline{\lVert\hat
    \epsilon\rVert^2}/d)` the estimate of Analytic-DPM, Bao et al. 2022, averaged over the
    weighted particles): exact for isotropic Gaussian data, it removes most of the
    under-dispersion of the ancestral chain at 100 steps. The kernel is Gaussian, so the product
    of kernel and next potential is sampled exactly and its normaliser is the incremental
    weight (a fully adapted particle filter; Pitt & Shephard 1999). Particles are resampled
    (systematic) when the effective sample size drops below ``ess_threshold * particles``.
    At the end the potential is the likelihood of :math:`y` at the end time, so the weighted
    particles target the posterior of the discretised chain: exact as particles → ∞, up to the discretisation of the
    unconditional chain, which vanishes as steps grow. No gradient of the score is needed.
    ``result.log_evidence`` estimates :math:`\log p(y)`.
``"replacement"``
    Song et al. (2021, App. I.2) inpainting generalised to any ``A`` through its SVD: after each
    ancestral step, every observed coordinate :math:`\bar x_i` is replaced by a forward-noised
    measurement :math:`s\,\bar y_i/\lambda_i + \sqrt{\sigma^2 - s^2\sigma_y^2/\lambda_i^2}\,z`
    while the diffusion noise exceeds the measurement's (:math:`\lambda_i\tilde\sigma \ge
    \sigma_y`; afterwards it evolves freely). The final state is the sampler's own state at the
    end time (no un-denoised "mean" as in score_sde's inpainter). A heuristic: the unobserved
    coordinates never see the measurement's influence on the past.
``"repaint"``
    RePaint (Lugmayr et al. 2022): replacement with resampling jumps — after every
    ``jump_length`` reverse steps the state is noised forward again ``jump_length`` steps,
    ``jump_n_sample - 1`` times, so the unobserved part can harmonise with the observed one.
``"dps"``
    A reverse-time sampler (default the ancestral DDIM step, :math:`\eta = 1`) run with the
    guided score of :func:`scoresde.guidance.dps` (Chung et al. 2023) with the paper's
    normalised step :math:`\zeta/\lVert y - A\hat x_0\rVert` (``step_size`` :math:`\zeta = 20`
    per unit time; ``step_size=None`` gives the Gaussian-likelihood weight
    :math:`1/\sigma_y^2`, which diverges on networks at small :math:`\sigma_y`).
``"pigdm"``
    ΠGDM (Song et al. 2023, Alg. 1): the ancestral DDIM step plus :math:`s(t)\,s(t')\,g`,
    :math:`g = J^\top A^\top (AA^\top + \sigma_y^2/r_t^2 I)^{+}(y - A\hat x_0)` (one
    vector-Jacobian product per step). With ``sampler`` given, that sampler runs the score form
    :func:`scoresde.guidance.pigdm` instead (exact for an isotropic Gaussian prior). Both are
    approximations, biased even for a Gaussian prior (DPS) or a non-isotropic one (ΠGDM).
``"tds"``
    Twisted SMC (Wu et al. 2023) with the twisting potentials
    :math:`\tilde g_t(x) = \prod_{i \le r}\mathcal N(\bar y_i; \lambda_i\,(V^\top\hat x_0(x))_i,
    \sigma_y^2 + \lambda_i^2 r_t^2)`, :math:`r_t^2 = v\tilde\sigma^2/(v + \tilde\sigma^2)`
    (ΠGDM's variance, ``data_var`` :math:`= v`), the proposal
    :math:`\mathcal N(m(x) + \kappa\,D\,\nabla\log\tilde g_t(x), v_k I)` (:math:`\kappa` the
    derivative of the kernel mean :math:`m` with respect to the score, :math:`D` the damping
    :math:`1/(1 + \kappa\lambda_i^2/(s^2\operatorname{var}_i))` along the observed directions) and
    the weights :math:`K(x' \mid x)\tilde g_{t'}(x') / (q(x' \mid x)\tilde g_t(x))`; the last
    potential is the likelihood. Asymptotically exact for any twist; one backward pass per step.
    Much less variable than ``"smc"`` on tight measurements of correlated coordinates when
    :math:`v` matches the data's variance.
``"ddrm"``
    DDRM (Kawar et al. 2022, eqs. 6-8) in the SVD coordinates, :math:`\eta = 0.85`,
    :math:`\eta_b = 1` by default; noisy and noiseless. Not exact: under-dispersed on Gaussian
    priors.

Cost convention (honest NFE): ``nfe`` is the number of batched score calls (each evaluates
the whole batch of particles or samples, as :func:`scoresde.sample` counts);
``score_evaluations`` is the number of per-sample evaluations (sum of batch sizes:
``particles × steps`` for SMC); ``nfe_per_sample`` is ``score_evaluations / n`` — the network
evaluations paid per returned sample, the cost axis on which methods are compared; ``vjp`` is the
number of backward passes through the score (DPS, ΠGDM, TDS: one per call).

References
----------
Cardoso, Janati El Idrissi, Le Corff & Moulines (2023), *Monte Carlo guided diffusion for Bayesian
linear inverse problems*, ICLR 2024. Wu, Trippe, Naesseth, Blei & Cunningham (2023), *Practical and
asymptotically exact conditional sampling in diffusion models*, NeurIPS. Dou & Song (2024),
*Diffusion posterior sampling for linear inverse problem solving: a filtering perspective*, ICLR.
Pitt & Shephard (1999), *Filtering via simulation: auxiliary particle filters*, JASA 94.
Bao, Li, Zhu & Zhang (2022), *Analytic-DPM: an analytic estimate of the optimal reverse variance
in diffusion probabilistic models*, ICLR. Kitagawa (1996), *Monte Carlo filter and smoother for
non-Gaussian nonlinear state space models*, JCGS 5.
Song et al. (2021), *Score-based generative modeling through stochastic differential equations*,
ICLR. Lugmayr et al. (2022), *RePaint*, CVPR. Chung et al. (2023), *Diffusion posterior sampling for
general noisy inverse problems*, ICLR. Song, Vahdat, Mardani & Kautz (2023), *Pseudoinverse-guided
diffusion models for inverse problems*, ICLR. Kawar, Elad, Ermon & Song (2022), *Denoising diffusion
restoration models*, NeurIPS.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from ._checks import check_int, check_positive, check_shape
from ._runtime import CountingScore, gaussian_like
from .operators import Measurement, random_measurement
from .predict import PredictionAdapter, scale_std_values
from .sde import SDE, LinearSDE
from .targets import GaussianMixture

__all__ = [
    "METHODS",
    "DEFAULT_STEPS",
    "ParticleCollapseError",
    "PosteriorResult",
    "InverseProblem",
    "methods",
    "method_cost",
    "posterior_sample",
    "make_problem",
    "problem_names",
]

#: The methods of :func:`posterior_sample`.
METHODS: tuple[str, ...] = ("smc", "replacement", "repaint", "dps", "pigdm", "ddrm", "tds")

#: Grid intervals of :func:`posterior_sample` when ``steps`` is not given.
DEFAULT_STEPS = 100

_OPTIONS = {
    "smc": {"particles": None, "ess_threshold": 0.5, "variance": "analytic"},
    "replacement": {},
    "repaint": {"jump_length": 10, "jump_n_sample": 10},
    "dps": {"scale": 1.0, "step_size": 20.0, "sampler": None},
    "pigdm": {"scale": 1.0, "data_var": 1.0, "sampler": None},
    "ddrm": {"eta": 0.85, "eta_b": 1.0},
    "tds": {"particles": None, "ess_threshold": 0.5, "variance": "analytic", "data_var": 1.0},
}


class ParticleCollapseError(RuntimeError):
    """Raised when every particle of an SMC run has weight zero (or a non-finite weight)."""


def methods() -> list[str]:
    """The method names of :func:`posterior_sample`, in the order of :data:`METHODS`.

    Examples
    --------
    >>> import scoresde as sd
    >>> sd.inverse.methods()
    ['smc', 'replacement', 'repaint', 'dps', 'pigdm', 'ddrm', 'tds']
    """
    return list(METHODS)


@dataclass
class PosteriorResult:
    """What :func:`posterior_sample` returns.

    Attributes
    ----------
    samples : Tensor
        ``(n, *event_shape)``, equally weighted.
    nfe : int
        Batched score calls (one call evaluates the whole batch of particles or samples).
    score_evaluations : int
        Per-sample score evaluations (the sum of the batch sizes of the calls).
    nfe_per_sample : float
        ``score_evaluations / n``: network evaluations per returned sample.
    vjp : int
        Backward passes through the score (DPS and ΠGDM).
    method : str
    steps : int
        Grid intervals.
    particles : int or None
        SMC particles.
    ess : Tensor or None
        SMC: effective sample size after each reweighting (before any resampling), float64.
    resamplings : int
        SMC: resampling events (the final draw of the returned samples not included).
    log_evidence : float or None
        SMC: estimate of :math:`\\log p(y)` under the discretised chain.
    """

    samples: torch.Tensor
    nfe: int
    score_evaluations: int
    nfe_per_sample: float
    vjp: int
    method: str
    steps: int
    particles: int | None = None
    ess: torch.Tensor | None = None
    resamplings: int = 0
    log_evidence: float | None = None


# --------------------------------------------------------------------------------------
# shared pieces
# --------------------------------------------------------------------------------------
def _kernel(s, sig, i):
    """Ancestral (DDIM eta = 1) step from ts[i] to ts[i+1]: (noise coefficient b, variance c^2).

    The mean is s' x0_hat + b eps_hat with b = sqrt(sigma'^2 - c^2), c^2 the variance of
    q(x_{t'} | x_t, x_0) (Ho et al. 2020, eq. 7, for any linear SDE).
    """
    r = s[i] / s[i + 1]
    nu2 = max(sig[i] ** 2 - r * r * sig[i + 1] ** 2, 0.0)
    c2 = sig[i + 1] ** 2 * nu2 / sig[i] ** 2
    return math.sqrt(max(sig[i + 1] ** 2 - c2, 0.0)), c2


def _ancestral_mean(pred, x, ts, s, sig, i, weights=None):
    """Kernel mean and variance; with ``weights`` (normalised log-weights of the particles) the
    variance adds a^2 gamma, gamma the Analytic-DPM estimate of Var[x0 | x_t] (Bao et al. 2022)."""
    return _kernel_from_x0(x, pred.x0(x, ts[i], s=s[i], sigma=sig[i]), s, sig, i, weights)


def _kernel_from_x0(x, x0, s, sig, i, weights=None):
    """:func:`_ancestral_mean` from a given x0 prediction at ts[i]."""
    eps_hat = (x - s[i] * x0) / sig[i]
    b, c2 = _kernel(s, sig, i)
    if weights is not None:
        d = x[0].numel()
        sq = eps_hat.reshape(x.shape[0], -1).to(torch.float64).square().sum(-1) / d
        mean_sq = float((torch.exp(weights) * sq).sum())
        gamma = (sig[i] / s[i]) ** 2 * max(0.0, 1.0 - mean_sq)
        r = s[i] / s[i + 1]
        a = s[i + 1] * (sig[i] ** 2 - r * r * sig[i + 1] ** 2) / sig[i] ** 2
        c2 = c2 + a * a * gamma
    return s[i + 1] * x0 + b * eps_hat, c2


def _log_normal(value: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis of log N(value; mean, var), float64."""
    return -0.5 * ((value - mean).square() / var + torch.log(2 * math.pi * var)).sum(-1)


class _Ctx:
    """Everything a method needs: the SDE, the counted adapter, the measurement in x's dtype."""

    def __init__(self, sde, counted, meas: Measurement, x: torch.Tensor, generator, label):
        self.sde, self.counted, self.meas, self.generator, self.label = sde, counted, meas, generator, label
        self.pred = PredictionAdapter(sde, counted, who=f"posterior_sample({label!r})")
        self.V = meas.V.to(x)
        r = meas.rank
        self.r = r
        self.lam = meas.lam.to(device=x.device)
        self.y_bar = meas.y_bar.to(device=x.device)
        self.sy2 = meas.noise_std**2

    def rotate(self, x):
        return x.reshape(x.shape[0], -1) @ self.V

    def unrotate(self, xbar, like):
        return (xbar @ self.V.T).reshape(like.shape)


def _replace(ctx: _Ctx, x: torch.Tensor, s: float, sig: float) -> torch.Tensor:
    """Replace the observed SVD coordinates by the measurement noised to (s, sigma)."""
    if ctx.r == 0:
        return x
    xbar = ctx.rotate(x)
    obs_var = ctx.sy2 / ctx.lam.square()  # variance of y_bar/lam around x_bar (data units)
    rest = sig**2 - s**2 * obs_var
    active = rest >= 0
    if not bool(active.any()):
        return x
    z = gaussian_like(xbar[:, : ctx.r], ctx.generator)
    target = (s * ctx.y_bar / ctx.lam).to(x.dtype) + z * rest.clamp_min(0).sqrt().to(x.dtype)
    xbar = xbar.clone()
    xbar[:, : ctx.r] = torch.where(active.to(x.device)[None, :], target, xbar[:, : ctx.r])
    return ctx.unrotate(xbar, x)


# --------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------
def _systematic(logw: torch.Tensor, n: int, generator) -> torch.Tensor:
    """n indices by systematic resampling of the normalised log-weights (Kitagawa 1996)."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    u0 = torch.rand((), generator=generator, device=gdev, dtype=torch.float64).to(logw.device)
    u = (u0 + torch.arange(n, dtype=torch.float64, device=logw.device)) / n
    cdf = torch.cumsum(torch.exp(logw - torch.logsumexp(logw, 0)), 0)
    cdf[-1] = 1.0
    return torch.searchsorted(cdf, u).clamp(max=logw.numel() - 1)


def _reweight(lw: torch.Tensor, who: str, i: int, t: float, check: str):
    """Normalise unnormalised log-weights: (normalised, log of their sum); collapse is an error."""
    total = torch.logsumexp(lw, 0)
    if not math.isfinite(float(total)):
        raise ParticleCollapseError(
            f"{who}: particle system collapsed at step {i} (t={t:.6g}): every particle has "
            f"weight zero or a non-finite weight; use more particles or steps, or check {check}")
    return lw - total, float(total)


def _run_smc(ctx: _Ctx, x, ts, s, sig, n: int, ess_threshold: float, variance: str):
    P = x.shape[0]
    lam, y_bar, r = ctx.lam, ctx.y_bar, ctx.r

    def potential(xbar_obs: torch.Tensor, k: int) -> torch.Tensor:
        var = ctx.sy2 + (sig[k] / s[k]) ** 2 * lam.square()
        return _log_normal(y_bar, xbar_obs.to(torch.float64) * (lam / s[k]), var)

    xbar = ctx.rotate(x)
    log_g = potential(xbar[:, :r], 0)
    log_z = float(torch.logsumexp(log_g, 0)) - math.log(P)
    logw = log_g - torch.logsumexp(log_g, 0)
    ess_hist, resamplings = [], 0
    for i in range(len(ts) - 1):
        mean, c2 = _ancestral_mean(ctx.pred, x, ts, s, sig, i,
                                   logw if variance == "analytic" else None)
        mbar = ctx.rotate(mean)
        b = lam / s[i + 1]
        v1 = ctx.sy2 + (sig[i + 1] / s[i + 1]) ** 2 * lam.square()
        denom = v1 + c2 * b.square()
        mo = mbar[:, :r].to(torch.float64)
        incr = _log_normal(y_bar, b * mo, denom) - log_g
        logw, total = _reweight(logw + incr, "smc", i, ts[i], "A, y and noise_std")
        log_z += total
        ess = float(1.0 / torch.exp(2 * logw).sum())
        ess_hist.append(ess)
        if ess < ess_threshold * P:
            idx = _systematic(logw, P, ctx.generator)
            mbar, mo = mbar[idx], mo[idx]
            logw = torch.full_like(logw, -math.log(P))
            resamplings += 1
        z = gaussian_like(mbar, ctx.generator)
        gain = c2 * b / denom
        post_mean = mo + gain * (y_bar - b * mo)
        post_std = torch.sqrt(c2 * v1 / denom)
        new = mbar + math.sqrt(c2) * z
        new[:, :r] = (post_mean + post_std * z[:, :r].to(torch.float64)).to(new.dtype)
        x = ctx.unrotate(new, x)
        log_g = potential(new[:, :r], i + 1)
    if ess_hist and min(ess_hist[-1:]) < 2.0:
        warnings.warn(f"smc: the particle system collapsed to an effective sample size of "
                      f"{ess_hist[-1]:.2f} at the last step; the samples are unreliable: use more "
                      "particles or steps", RuntimeWarning, stacklevel=3)
    if P == n and bool((logw == logw[0]).all()):
        out = x
    else:
        out = x[_systematic(logw, n, ctx.generator)]
    log_z += ctx.meas.log_evidence_constant()
    return out, torch.tensor(ess_hist, dtype=torch.float64), resamplings, log_z


def _run_replacement(ctx: _Ctx, x, ts, s, sig):
    x = _replace(ctx, x, s[0], sig[0])
    for i in range(len(ts) - 1):
        mean, c2 = _ancestral_mean(ctx.pred, x, ts, s, sig, i)
        x = mean + math.sqrt(c2) * gaussian_like(mean, ctx.generator)
        x = _replace(ctx, x, s[i + 1], sig[i + 1])
    return x


def _run_pigdm(ctx: _Ctx, x, ts, s, sig, scale: float, data_var: float):
    """ΠGDM as in Song et al. (2023, Alg. 1): the ancestral DDIM step plus ``s_t s_t' g``.

    g = J^T A^T (A A^T + sigma_y^2 / r_t^2 I)^+ (y - A x0_hat), J = d x0_hat / d x_t (one VJP),
    r_t^2 = v sigma~^2 / (v + sigma~^2); the inverse acts on the range of A (a pseudo-inverse).
    """
    from .guidance import _finite_grad

    A, U = ctx.meas.A.to(x), ctx.meas.U.to(x)
    lam2, y = ctx.meas.lam_full.square().to(x), ctx.meas.y.to(x)
    for i in range(len(ts) - 1):
        snr_inv = (sig[i] / s[i]) ** 2
        r2 = data_var * snr_inv / (data_var + snr_inv)
        denom = lam2 + ctx.sy2 / r2
        w = torch.where(lam2 > 0, 1.0 / denom.clamp_min(torch.finfo(x.dtype).tiny),
                        torch.zeros_like(lam2))
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = ctx.pred.x0(xg, ts[i], s=s[i], sigma=sig[i])
            resid = y - x0.reshape(x.shape[0], -1) @ A.T
            v = ((resid.detach() @ U) * w) @ U.T @ A  # A^T (A A^T + c)^+ r, (batch, d)
            (g,) = torch.autograd.grad(x0, xg, v.reshape(x.shape))
        g = _finite_grad(g, "pigdm", torch.tensor(ts[i]))
        x0 = x0.detach()
        b, c2 = _kernel(s, sig, i)
        mean = s[i + 1] * x0 + b * ((x - s[i] * x0) / sig[i])
        x = mean + math.sqrt(c2) * gaussian_like(mean, ctx.generator) + (scale * s[i] * s[i + 1]) * g
    return x


def _repaint_moves(steps: int, jump_length: int, jump_n_sample: int) -> list[tuple[int, int]]:
    """Lugmayr et al. (2022) jump schedule over grid indices 0 (T) .. steps (end): (from, to) moves."""
    jumps = {steps - t: jump_n_sample - 1 for t in range(0, steps - jump_length, jump_length)}
    moves, i = [], 0
    while i < steps:
        moves.append((i, i + 1))
        i += 1
        if jumps.get(i, 0) > 0:
            jumps[i] -= 1
            for _ in range(jump_length):
                moves.append((i, i - 1))
                i -= 1
    return moves


def _run_repaint(ctx: _Ctx, x, ts, s, sig, jump_length, jump_n_sample):
    x = _replace(ctx, x, s[0], sig[0])
    for i, j in _repaint_moves(len(ts) - 1, jump_length, jump_n_sample):
        if j == i + 1:  # reverse step + replacement
            mean, c2 = _ancestral_mean(ctx.pred, x, ts, s, sig, i)
            x = mean + math.sqrt(c2) * gaussian_like(mean, ctx.generator)
            x = _replace(ctx, x, s[j], sig[j])
        else:  # forward transition from ts[i] to the earlier... later time ts[j] > ts[i]
            a = s[j] / s[i]
            nu2 = max(sig[j] ** 2 - a * a * sig[i] ** 2, 0.0)
            x = a * x + math.sqrt(nu2) * gaussian_like(x, ctx.generator)
    return x


def _run_ddrm(ctx: _Ctx, x, ts, s, sig, eta: float, eta_b: float):
    """DDRM (Kawar et al. 2022, eqs. 7-8) in the SVD coordinates, in the units of x / s."""
    r = ctx.r
    obs_std = (math.sqrt(ctx.sy2) / ctx.lam).to(x.dtype)  # sigma_y / lambda_i
    target = (ctx.y_bar / ctx.lam).to(x.dtype)            # y_bar_i / lambda_i
    lo = torch.finfo(x.dtype).tiny

    def observed(x0b, z, sn):
        """The observed coordinates at the next noise level sn (data units)."""
        before = sn >= obs_std  # noisier than the measurement
        v_before = (sn**2 - (eta_b * obs_std) ** 2).clamp_min(0).sqrt()
        x_before = (1 - eta_b) * x0b + eta_b * target + v_before * z
        x_after = (x0b + math.sqrt(1 - eta**2) * sn * (target - x0b) / obs_std.clamp_min(lo)
                   + eta * sn * z)
        return torch.where(before, x_before, x_after)

    st = sig[0] / s[0]
    z = gaussian_like(ctx.rotate(x), ctx.generator)
    xbar = st * z
    if r:
        # x_T given y (Kawar et al. 2022, eq. 6): the measurement noised up to st where it is
        # less noisy than x_T, pure noise elsewhere
        init = target + (st**2 - obs_std.square()).clamp_min(0).sqrt() * z[:, :r]
        xbar[:, :r] = torch.where(st >= obs_std, init, xbar[:, :r])
    x = s[0] * ctx.unrotate(xbar, x)
    for i in range(len(ts) - 1):
        x0 = ctx.pred.x0(x, ts[i], s=s[i], sigma=sig[i])
        st, sn = sig[i] / s[i], sig[i + 1] / s[i + 1]
        x0b = ctx.rotate(x0)
        eps_b = (ctx.rotate(x) / s[i] - x0b) / st
        z = gaussian_like(x0b, ctx.generator)
        new = x0b + math.sqrt(1 - eta**2) * sn * eps_b + eta * sn * z
        if r:
            new[:, :r] = observed(x0b[:, :r], z[:, :r], sn)
        x = s[i + 1] * ctx.unrotate(new, x)
    return x


def _run_tds(ctx: _Ctx, x, ts, s, sig, n: int, ess_threshold: float, variance: str,
             data_var: float):
    """Twisted SMC (Wu et al. 2023) with the twist N(y_bar; lam xbar0_hat, sy^2 + lam^2 r_t^2)."""
    P, N = x.shape[0], len(ts) - 1
    lam, y_bar, r = ctx.lam, ctx.y_bar, ctx.r
    tw_prec: dict = {}

    def twist(xt: torch.Tensor, k: int):
        """(x0_hat, grad log g_k, log g_k) at grid index k < N, or the likelihood at k = N."""
        if k == N:
            var = ctx.sy2 + (sig[k] / s[k]) ** 2 * lam.square()
            xo = ctx.rotate(xt)[:, :r].to(torch.float64)
            return None, None, _log_normal(y_bar, xo * (lam / s[k]), var)
        snr_inv = (sig[k] / s[k]) ** 2
        var = ctx.sy2 + data_var * snr_inv / (data_var + snr_inv) * lam.square()
        tw_prec[k] = lam.square() / (s[k] ** 2 * var)
        with torch.enable_grad():
            xg = xt.detach().requires_grad_(True)
            x0 = ctx.pred.x0(xg, ts[k], s=s[k], sigma=sig[k])
            logg = _log_normal(y_bar, ctx.rotate(x0)[:, :r].to(torch.float64) * lam, var)
            (grad,) = torch.autograd.grad(logg.sum(), xg)
        if not bool(torch.isfinite(grad).all()):
            raise ctx.counted._non_finite("twist gradient", ts[k])
        return x0.detach(), grad, logg.detach()

    x0, grad, log_g = twist(x, 0)
    log_z = float(torch.logsumexp(log_g, 0)) - math.log(P)
    logw = log_g - torch.logsumexp(log_g, 0)
    ess_hist, resamplings = [], 0
    for i in range(N):
        if float(1.0 / torch.exp(2 * logw).sum()) < ess_threshold * P:
            idx = _systematic(logw, P, ctx.generator)
            x, x0, grad, log_g = x[idx], x0[idx], grad[idx], log_g[idx]
            logw = torch.full_like(logw, -math.log(P))
            resamplings += 1
        mean, v = _kernel_from_x0(x, x0, s, sig, i, logw if variance == "analytic" else None)
        b = math.sqrt(max(sig[i + 1] ** 2 - _kernel(s, sig, i)[1], 0.0))
        kappa = sig[i] * (s[i + 1] * sig[i] / s[i] - b)  # d(kernel mean)/d(score)
        # the guided step, damped along the observed directions by the twist's curvature
        # lam^2 / (s^2 var) under a flat prior (no overshoot past the measurement)
        gbar = ctx.rotate(grad)
        if r:
            gbar = gbar.clone()
            gbar[:, :r] = gbar[:, :r] / (1 + kappa * tw_prec[i]).to(gbar.dtype)
        shift = kappa * ctx.unrotate(gbar, grad)
        noise = math.sqrt(v) * gaussian_like(mean, ctx.generator)
        new = mean + shift + noise
        # log K(new | x) - log q(new | x): both Gaussian with variance v
        flat = lambda u: u.reshape(P, -1).to(torch.float64)  # noqa: E731
        log_ratio = (flat(noise).square().sum(-1) - flat(noise + shift).square().sum(-1)) / (2 * v)
        x0, grad, log_g_new = twist(new, i + 1)
        logw, total = _reweight(logw + log_ratio + log_g_new - log_g, "tds", i, ts[i],
                                "A, y, noise_std and data_var")
        log_z += total
        ess_hist.append(float(1.0 / torch.exp(2 * logw).sum()))
        x, log_g = new, log_g_new
    out = x if P == n and bool((logw == logw[0]).all()) else x[_systematic(logw, n, ctx.generator)]
    log_z += ctx.meas.log_evidence_constant()
    return out, torch.tensor(ess_hist, dtype=torch.float64), resamplings, log_z


def method_cost(method: str, steps: int, particles: int = 1, n: int = 1, **options) -> dict:
    """The cost of a :func:`posterior_sample` run without running it: ``nfe``, ``nfe_per_sample``, ``vjp``.

    Follows the convention of :class:`PosteriorResult`; RePaint's count follows its jump schedule.

    Examples
    --------
    >>> from scoresde.inverse import method_cost
    >>> method_cost("smc", 100, particles=4000, n=2000)
    {'nfe': 100, 'nfe_per_sample': 200.0, 'vjp': 0}
    >>> method_cost("repaint", 20, jump_length=5, jump_n_sample=3)["nfe"]
    50
    """
    _check_method(method)
    steps = check_int("steps", steps)
    opts = {**_OPTIONS[method], **options}
    if method == "repaint":
        calls = sum(1 for i, j in _repaint_moves(steps, int(opts["jump_length"]),
                                                 int(opts["jump_n_sample"])) if j == i + 1)
    else:
        calls = steps
    batch = particles if method in ("smc", "tds") else n
    return {"nfe": calls, "nfe_per_sample": calls * batch / n,
            "vjp": calls if method in ("dps", "pigdm", "tds") else 0}


def _check_method(method) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def _resolve_options(method: str, options: dict) -> dict:
    allowed = _OPTIONS[method]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        shown = ", ".join(allowed) if allowed else "none"
        raise TypeError(f"posterior_sample(method={method!r}) got unknown option(s) "
                        f"{', '.join(unknown)}; its options: {shown}")
    return {**allowed, **options}


def posterior_sample(
    sde: SDE,
    score_fn,
    A,
    y,
    noise_std: float,
    shape,
    method: str = "smc",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    *,
    eps: float | None = None,
    grid=None,
    check_finite: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **options,
) -> PosteriorResult:
    r"""Sample the posterior :math:`p(x \mid y) \propto p_0(x)\,\mathcal N(y; Ax, \sigma_y^2 I)`.

    With the exact score of a mixture prior the defaults (``method="smc"``, 100 steps,
    ``particles = n``) reproduce the exact posterior
    (:meth:`~scoresde.GaussianMixture.posterior`) of 2-D and 10-D mixtures with a few noisy
    measurements; see the module docstring for every method and the cost convention.

    Parameters
    ----------
    sde : LinearSDE
    score_fn : callable
        Unconditional ``score_fn(x, t)`` of the prior (or a
        :class:`~scoresde.predict.NativePrediction` model).
    A : array_like, shape (m, d)
        Measurement matrix on the flattened event (:mod:`scoresde.operators` builds masks and
        colour-to-grey); ``A = 0`` returns the prior.
    y : array_like, shape (m,)
    noise_std : float
        :math:`\sigma_y \ge 0`; 0 (noiseless) for every method but ``"dps"``.
    shape : tuple of int
        ``(n, *event_shape)`` of the returned samples.
    method : {"smc", "replacement", "repaint", "dps", "pigdm", "ddrm", "tds"}
    steps : int, optional
        Grid intervals (default :data:`DEFAULT_STEPS` = 100).
    generator : torch.Generator, optional
        Source of all randomness (prior draw, kernel noise, resampling).
    eps : float, optional
        End time (default ``1e-3``).
    grid : None, str, LogSNRSchedule or Tensor
        As in :func:`scoresde.sample` (default ``"uniform"``); must end at ``t > 0``.
    check_finite : bool
        Check every score evaluation for NaN/inf (default).
    device, dtype : optional
        Of the samples (default the generator's device, torch's default dtype).
    **options
        ``smc``: ``particles`` (default ``n``; at least ``n``: the ``n`` samples are drawn from
        the final weighted particles), ``ess_threshold`` (default 0.5, in ``(0, 1]``) and
        ``variance`` (``"analytic"``, default, or ``"ddpm"``: the kernel variance :math:`c^2`);
        ``repaint``: ``jump_length`` (10) and ``jump_n_sample`` (10); ``dps``: ``scale`` (1),
        ``step_size`` (20; None for the likelihood weight :math:`1/\sigma_y^2`, see
        :func:`scoresde.guidance.dps`) and ``sampler`` (a name or
        :class:`~scoresde.samplers.Sampler`; default ancestral :class:`~scoresde.samplers.DDIM`
        with ``eta=1``); ``pigdm``: ``scale`` (1), ``data_var`` (1) and ``sampler`` (default
        None: the update of Song et al.'s Algorithm 1; a sampler runs the score form);
        ``ddrm``: ``eta`` (0.85) and ``eta_b`` (1), both in ``[0, 1]``; ``tds``: ``particles``,
        ``ess_threshold``, ``variance`` as ``smc`` and ``data_var`` (1, the data's variance per
        coordinate assumed by the twist).

    Returns
    -------
    PosteriorResult

    Raises
    ------
    ParticleCollapseError
        When every SMC particle has weight zero.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde, prior = sd.VPSDE(), sd.ring8()
    >>> A, y = torch.tensor([[1.0, 0.0]]), torch.tensor([0.0])
    >>> out = sd.posterior_sample(sde, prior.score_fn(sde), A, y, 0.3, (500, 2),
    ...                           generator=torch.Generator().manual_seed(0))
    >>> out.nfe, out.nfe_per_sample, (out.samples[:, 1] > 0).float().mean().item() > 0.3
    (100, 100.0, True)
    """
    from .samplers import DDIM, resolve_grid
    from .samplers import sample as _sample

    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a LinearSDE (closed-form transitions), got {type(sde).__name__}")
    if not callable(score_fn):
        raise TypeError("score_fn must be callable as score_fn(x, t)")
    method = _check_method(method)
    shape = check_shape("shape", shape)
    n = shape[0]
    d = math.prod(shape[1:])
    opts = _resolve_options(method, options)
    meas = Measurement(A, y, noise_std, allow_zero=method != "dps")
    meas.check_dim(d)
    steps = DEFAULT_STEPS if steps is None and not isinstance(grid, torch.Tensor) else steps
    if steps is not None:
        steps = check_int("steps", steps)
    times = resolve_grid("uniform" if grid is None else grid, sde, steps, eps)
    if float(times[-1]) <= 0.0:
        raise ValueError("grid must end at t > 0 (posterior samplers evaluate the score at the "
                         "end time's neighbour and divide by sigma); end it at a small eps")
    steps = len(times) - 1
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be a bool, got {type(check_finite).__name__}")

    label = f"posterior_sample[{method}]"
    counted = CountingScore(score_fn, label, check_finite=check_finite)
    batch = n
    if method in ("smc", "tds"):
        particles = n if opts["particles"] is None else check_int("particles", opts["particles"])
        if particles < n:
            raise ValueError(f"particles must be >= n = shape[0] = {n} (the samples are drawn "
                             f"from the final particles), got {particles}")
        thr = check_positive("ess_threshold", opts["ess_threshold"])
        if thr > 1.0:
            raise ValueError(f"ess_threshold must lie in (0, 1], got {thr}")
        if opts["variance"] not in ("analytic", "ddpm"):
            raise ValueError(f"variance must be 'analytic' or 'ddpm', got {opts['variance']!r}")
        batch = particles
    if method == "tds":
        data_var = check_positive("data_var", opts["data_var"])
    if method == "ddrm":
        eta_ddrm, eta_b = (check_positive(k, opts[k], strict=False) for k in ("eta", "eta_b"))
        if eta_ddrm > 1.0 or eta_b > 1.0:
            raise ValueError(f"eta and eta_b must lie in [0, 1], got eta={eta_ddrm}, eta_b={eta_b}")
    if method == "repaint":
        jl = check_int("jump_length", opts["jump_length"])
        jn = check_int("jump_n_sample", opts["jump_n_sample"])

    if method in ("dps", "pigdm") and not (method == "pigdm" and opts["sampler"] is None):
        from . import guidance

        if method == "dps":
            guided = guidance.dps(sde, counted, meas.A, meas.y, meas.noise_std, scale=opts["scale"],
                                  step_size=opts["step_size"])
        else:
            guided = guidance.pigdm(sde, counted, meas.A, meas.y, meas.noise_std,
                                    data_var=opts["data_var"], scale=opts["scale"])
        sampler = opts["sampler"] if opts["sampler"] is not None else DDIM(eta=1.0)
        out = _sample(sde, guided, shape, sampler=sampler, generator=generator, grid=times,
                      check_finite=check_finite, device=device, dtype=dtype)
        return PosteriorResult(samples=out.samples, nfe=counted.calls,
                               score_evaluations=counted.calls * n,
                               nfe_per_sample=float(counted.calls), vjp=counted.calls,
                               method=method, steps=steps)

    x = sde.prior_sample((batch, *shape[1:]), generator=generator, device=device, dtype=dtype)
    s, sig = scale_std_values(sde, times, who=label)
    ts = times.tolist()
    ctx = _Ctx(sde, counted, meas, x, generator, method)
    result = {"ess": None, "resamplings": 0, "log_evidence": None, "particles": None}
    with torch.no_grad():
        if method == "smc":
            x, ess, res, log_z = _run_smc(ctx, x, ts, s, sig, n, thr, opts["variance"])
            result.update(ess=ess, resamplings=res, log_evidence=log_z, particles=batch)
        elif method == "tds":
            x, ess, res, log_z = _run_tds(ctx, x, ts, s, sig, n, thr, opts["variance"], data_var)
            result.update(ess=ess, resamplings=res, log_evidence=log_z, particles=batch)
        elif method == "ddrm":
            x = _run_ddrm(ctx, x, ts, s, sig, eta_ddrm, eta_b)
        elif method == "replacement":
            x = _run_replacement(ctx, x, ts, s, sig)
        elif method == "pigdm":
            x = _run_pigdm(ctx, x, ts, s, sig, check_positive("scale", opts["scale"], strict=False),
                           check_positive("data_var", opts["data_var"]))
        else:
            x = _run_repaint(ctx, x, ts, s, sig, jl, jn)
    if check_finite and not bool(torch.isfinite(x).all()):
        raise counted._non_finite("state", ts[-1])
    return PosteriorResult(samples=x, nfe=counted.calls, score_evaluations=counted.calls * batch,
                           nfe_per_sample=counted.calls * batch / n,
                           vjp=counted.calls if method in ("pigdm", "tds") else 0, method=method,
                           steps=steps, **result)


# --------------------------------------------------------------------------------------
# named inverse problems with exact posteriors
# --------------------------------------------------------------------------------------
@dataclass
class InverseProblem:
    r"""A prior, a measurement and the exact posterior (:meth:`~scoresde.GaussianMixture.posterior`).

    Attributes
    ----------
    name : str
    prior : GaussianMixture
    A : Tensor, shape (m, d)
    y : Tensor, shape (m,)
    noise_std : float
    x_true : Tensor or None
        The prior draw ``y`` was measured from.
    """

    name: str
    prior: GaussianMixture
    A: torch.Tensor
    y: torch.Tensor
    noise_std: float
    x_true: torch.Tensor | None = None

    @property
    def posterior(self) -> GaussianMixture:
        """The exact posterior :math:`p(x \\mid y)`."""
        return self.prior.posterior(self.A, self.y, self.noise_std)

    @property
    def dim(self) -> int:
        return self.prior.dim


def _bimodal_2d(seed: int) -> InverseProblem:
    from .targets import ring8

    prior = ring8()
    A = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    return InverseProblem("bimodal_2d", prior, A, torch.tensor([0.0], dtype=torch.float64), 0.3)


def _mixture_10d(seed: int) -> InverseProblem:
    g = torch.Generator().manual_seed(seed + 10)
    K, d = 5, 10
    means = 2.0 * torch.randn(K, d, generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(torch.randn(K, d, d, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    evals = 0.05 + 0.45 * torch.rand(K, d, generator=g, dtype=torch.float64)
    covs = q @ torch.diag_embed(evals) @ q.transpose(-1, -2)
    w = torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1], dtype=torch.float64)
    prior = GaussianMixture(means, covs, w)
    A = torch.randn(3, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return _measured("mixture_10d", prior, A, 0.2, g)


def _measured(name, prior, A, noise_std, g) -> InverseProblem:
    x = prior.sample(1, generator=g, dtype=torch.float64)[0]
    y = A @ x + noise_std * torch.randn(A.shape[0], generator=g, dtype=torch.float64)
    return InverseProblem(name, prior, A, y, noise_std, x)


def _grid25(m: int):
    r"""The Gaussian-mixture benchmark of Cardoso et al. (2023), recipe of their code.

    Source: ``gabrielvc/benchopts_inverse_problem_diffusion_prior``, ``datasets/gaussian_mixture.py``
    (``Dataset.get_data`` and ``generate_measurement_equations``; the same construction is in
    ``gabrielvc/mcg_diff``, ``scripts/viz_gaussian.py``), run there with ``dims`` (m, d) in
    {(1, 8), (2, 8), (4, 8)}: means :math:`-8\,(i, j, i, j, \dots)` for
    :math:`i, j \in \{-2, \dots, 2\}` (the same 25 points as :math:`8\,(i, j, \dots)`), identity
    covariances, weights :math:`w_k \propto z_k^2` with :math:`z_k \sim \mathcal N(0, 1)`;
    ``A = U diag(lambda) V[:m]`` from the SVD of an (m, d) standard Gaussian matrix (Haar singular
    vectors) with the singular values replaced by sorted uniforms on [0, 1); noise std
    :math:`\sigma_y = u \max_i \lambda_i`, :math:`u \sim U[0, 1)`; ``y`` measures one prior draw.
    Our own generator and seeds (theirs is torch's global seed 27).
    """

    def build(seed: int) -> InverseProblem:
        g = torch.Generator().manual_seed(seed + 100 * m)
        d = 8
        ij = torch.tensor([(i, j) for i in range(-2, 3) for j in range(-2, 3)], dtype=torch.float64)
        means = 8.0 * ij.repeat(1, d // 2)
        w = torch.randn(25, generator=g, dtype=torch.float64).square()
        prior = GaussianMixture(means, torch.eye(d, dtype=torch.float64).expand(25, d, d),
                                w / w.sum())
        lam = torch.sort(torch.rand(m, generator=g, dtype=torch.float64), descending=True).values
        A = random_measurement(m, d, lam, g)
        noise_std = float(torch.rand((), generator=g, dtype=torch.float64)) * float(lam[0])
        return _measured(f"grid25_d8_m{m}", prior, A, noise_std, g)

    return build


_PROBLEMS = {
    "bimodal_2d": _bimodal_2d,
    "mixture_10d": _mixture_10d,
    "grid25_d8_m1": _grid25(1),
    "grid25_d8_m2": _grid25(2),
    "grid25_d8_m4": _grid25(4),
}


def problem_names() -> list[str]:
    """Names accepted by :func:`make_problem`."""
    return list(_PROBLEMS)


def make_problem(name: str, seed: int = 0) -> InverseProblem:
    r"""A named inverse problem with an exact posterior.

    - ``"bimodal_2d"``: the ``ring8`` prior observed through :math:`x_1` only,
      :math:`y = 0`, :math:`\sigma_y = 0.3`: a posterior with two main modes (:math:`x_2 = \pm 2`)
      and four lighter ones;
    - ``"mixture_10d"``: a 5-component 10-D mixture with rotated covariances (eigenvalues in
      :math:`[0.05, 0.5]`), 3 random measurements (:math:`A_{ij} \sim \mathcal N(0, 1/d)`) of a
      prior draw, :math:`\sigma_y = 0.2`;
    - ``"grid25_d8_m{1,2,4}"``: the Gaussian-mixture benchmark of Cardoso et al. (2023, §4.1;
      also used by DCPS) with the recipe of their code (``datasets/gaussian_mixture.py`` of
      ``gabrielvc/benchopts_inverse_problem_diffusion_prior``, which runs exactly
      :math:`d = 8`, :math:`m \in \{1, 2, 4\}`): 25 unit-covariance components with means
      :math:`8\,(i, j, i, j, i, j, i, j)`, :math:`i, j \in \{-2, \dots, 2\}`, weights
      :math:`\propto z_k^2`, :math:`z_k \sim \mathcal N(0, 1)`; :math:`m` measurements with
      Haar-random singular vectors and sorted uniform singular values on :math:`[0, 1)`, noise
      std :math:`\sigma_y = u\,\lambda_{\max}`, :math:`u \sim U[0, 1)`, of a prior draw.

    Deterministic for a given ``seed`` (``bimodal_2d`` does not depend on it).
    """
    if name not in _PROBLEMS:
        raise ValueError(f"unknown inverse problem {name!r}; valid names: {', '.join(_PROBLEMS)}")
    return _PROBLEMS[name](check_int("seed", seed, minimum=0))

