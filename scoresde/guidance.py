r"""Guidance: score-function transforms that condition a sampler on a label or a measurement.

Bayes' rule for scores (Song et al. 2021, eq. 14): for any condition :math:`y`,

.. math:: \nabla_x \log p_t(x \mid y) = \nabla_x \log p_t(x) + \nabla_x \log p_t(y \mid x).

Every function here returns a plain ``score_fn(x, t)`` that adds (an approximation of) the
second term to an unconditional score, so the result plugs into every sampler of
:func:`scoresde.sample` and into :func:`scoresde.posterior_sample`:

- :func:`classifier` — any differentiable noisy classifier or log-likelihood
  :math:`\log p_t(y \mid x)` (Dhariwal & Nichol 2021); exact with the exact noisy classifier
  (:meth:`~scoresde.GaussianMixture.class_log_prob`);
- :func:`classifier_free` — :math:`(1 + w)\,s(x, t \mid y) - w\,s(x, t)` (Ho & Salimans 2022);
- :func:`dps` — diffusion posterior sampling, :math:`p_t(y \mid x) \approx
  \mathcal N(y; A\hat x_0(x), \sigma_y^2 I)` (Chung et al. 2023);
- :func:`pigdm` — pseudo-inverse guidance, :math:`p_t(y \mid x) \approx
  \mathcal N(y; A\hat x_0(x), \sigma_y^2 I + r_t^2 A A^\top)` (Song et al. 2023).

:math:`\hat x_0` is Tweedie's posterior mean, taken from
:class:`~scoresde.predict.PredictionAdapter` (a model that predicts :math:`x_0` natively is used
as it is). The gradients need autograd, which every function enables locally: the sampler driver
runs without it. A non-finite gradient stops with :class:`~scoresde.NonFiniteError` naming the
argument that produced it.

Cost: one guided call makes one evaluation of ``score_fn`` (two for :func:`classifier_free`,
one of each model) plus, for :func:`dps` and :func:`pigdm`, one backward pass through it; the
sampler driver counts guided calls. See :doc:`/theory/inverse-problems` for when each is exact.

References
----------
Dhariwal & Nichol (2021), *Diffusion models beat GANs on image synthesis*, NeurIPS. Ho & Salimans
(2022), *Classifier-free diffusion guidance*, NeurIPS workshop. Chung, Kim, McCann, Klasky & Ye
(2023), *Diffusion posterior sampling for general noisy inverse problems*, ICLR. Song, Vahdat,
Mardani & Kautz (2023), *Pseudoinverse-guided diffusion models for inverse problems*, ICLR.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._checks import all_finite, check_positive
from ._runtime import NonFiniteError, time_vector
from .predict import PredictionAdapter, convert

__all__ = ["classifier", "classifier_free", "dps", "pigdm"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_callable(name: str, fn) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable as {name}(x, t), got {type(fn).__name__}")


def _check_real(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def _times(x: torch.Tensor, t) -> torch.Tensor:
    return t if isinstance(t, torch.Tensor) else time_vector(t, x)


def _finite_grad(grad: torch.Tensor, name: str, t) -> torch.Tensor:
    if not all_finite(grad):
        t0 = float(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) else float(t)
        raise NonFiniteError(
            f"{name}: non-finite guidance gradient at t={t0:.6g}; check {name} (and its scale) "
            "at this noise level"
        )
    return grad


def classifier(score_fn: ScoreFn, log_likelihood: Callable, scale: float = 1.0) -> ScoreFn:
    r"""Classifier guidance: :math:`\nabla\log p_t(x) + w\,\nabla_x \log p_t(y \mid x)`.

    Dhariwal & Nichol (2021), eq. 2 / Alg. 1 in score form (Song et al. 2021, eq. 14). With the
    exact noisy classifier and :math:`w = 1` this is exactly the conditional score
    :math:`\nabla\log p_t(x \mid y)`; :math:`w > 1` sharpens towards
    :math:`p_t(x)\,p_t(y \mid x)^w`, which is *not* a conditional distribution of the data.

    Parameters
    ----------
    score_fn : callable
        Unconditional ``score_fn(x, t)``.
    log_likelihood : callable
        ``log_likelihood(x, t) -> (batch,)``, differentiable in ``x``: a noisy classifier's
        :math:`\log p_t(y \mid x)` for the wanted label (e.g. a column of
        :meth:`~scoresde.GaussianMixture.class_log_prob`) or any log-likelihood of a condition.
    scale : float
        Guidance scale :math:`w \ge 0`.

    Returns
    -------
    callable
        The guided ``score_fn(x, t)``; one call evaluates ``score_fn`` once and
        ``log_likelihood`` with one backward pass.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> gm = sd.GaussianMixture(torch.tensor([[-2.0], [2.0]]), torch.ones(2, 1, 1) * 0.25)
    >>> sde = sd.VPSDE()
    >>> cls = gm.class_log_prob(sde)
    >>> guided = sd.guidance.classifier(gm.score_fn(sde), lambda x, t: cls(x, t)[:, 1])
    >>> x = torch.randn(4, 1)
    >>> torch.allclose(guided(x, 0.3), gm.component(1).score_fn(sde)(x, 0.3), atol=1e-5)
    True
    """
    _check_callable("score_fn", score_fn)
    _check_callable("log_likelihood", log_likelihood)
    scale = check_positive("scale", scale, strict=False)

    def classifier_guided_score(x: torch.Tensor, t) -> torch.Tensor:
        tt = _times(x, t)
        score = score_fn(x, tt)
        if scale == 0.0:
            return score
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            ll = log_likelihood(xg, tt)
            if not isinstance(ll, torch.Tensor) or ll.shape != (x.shape[0],):
                got = tuple(ll.shape) if isinstance(ll, torch.Tensor) else type(ll).__name__
                raise ValueError(
                    f"log_likelihood must return a tensor of shape (batch,) = ({x.shape[0]},), "
                    f"got {got}")
            (grad,) = torch.autograd.grad(ll.sum(), xg)
        return score + scale * _finite_grad(grad, "log_likelihood", tt).to(score.dtype)

    return classifier_guided_score


def classifier_free(cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn, weight: float) -> ScoreFn:
    r"""Classifier-free guidance: :math:`(1 + w)\,s(x, t \mid y) - w\,s(x, t)`.

    Ho & Salimans (2022), eq. 6 in score form. :math:`w = 0` is the conditional model;
    :math:`w > 0` extrapolates away from the unconditional one, the score of
    :math:`p_t(x \mid y)^{1+w} p_t(x)^{-w}` (not a sample of :math:`p(x \mid y)`); ``weight``
    may lie in :math:`[-1, 0)` to interpolate towards the unconditional model (:math:`w = -1`).

    Parameters
    ----------
    cond_score_fn, uncond_score_fn : callable
        ``score_fn(x, t)`` of the conditional model (the label bound in, e.g. a class-conditional
        network called with the label) and of the unconditional one (e.g. the same network with
        its null label).
    weight : float
        Guidance weight :math:`w \ge -1`.

    Returns
    -------
    callable
        The guided ``score_fn(x, t)``; one call evaluates each model once (two network
        evaluations).

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> gm = sd.GaussianMixture(torch.tensor([[-2.0], [2.0]]), torch.ones(2, 1, 1) * 0.25)
    >>> sde = sd.VPSDE()
    >>> cfg = sd.guidance.classifier_free(gm.component(1).score_fn(sde), gm.score_fn(sde), 0.0)
    >>> x = torch.randn(4, 1)
    >>> torch.equal(cfg(x, 0.3), gm.component(1).score_fn(sde)(x, 0.3))   # w = 0: conditional
    True
    """
    _check_callable("cond_score_fn", cond_score_fn)
    _check_callable("uncond_score_fn", uncond_score_fn)
    weight = _check_real("weight", weight)
    if weight < -1.0:
        raise ValueError(f"weight must be >= -1, got {weight}")

    def classifier_free_score(x: torch.Tensor, t) -> torch.Tensor:
        tt = _times(x, t)
        cond = cond_score_fn(x, tt)
        if weight == 0.0:
            return cond
        return (1.0 + weight) * cond - weight * uncond_score_fn(x, tt)

    return classifier_free_score


def _measurement_guidance(sde, score_fn, A, y, noise_std, *, scale, posterior_var, who,
                          allow_zero, step_size=None):
    """The shared body of DPS and PiGDM: a Gaussian likelihood of y around A x0_hat.

    ``posterior_var(s, sigma)`` gives the variance r_t^2 (data units) that PiGDM adds along A
    (``None`` for DPS: no variance of x0_hat is accounted for). ``step_size`` (DPS only)
    replaces the precision 1/sigma_y^2 by Chung et al.'s normalised step
    zeta / (g(t)^2 ||y - A x0_hat||), constant in x (detached) per sample.
    """
    from .operators import Measurement

    _check_callable("score_fn", score_fn)
    pred = PredictionAdapter(sde, score_fn, who=who)
    meas = Measurement(A, y, noise_std, allow_zero=allow_zero)
    scale = check_positive("scale", scale, strict=False)
    if step_size is not None:
        step_size = check_positive("step_size", step_size)
    lam2_cache: dict = {}

    def guided_score(x: torch.Tensor, t) -> torch.Tensor:
        tt = _times(x, t)
        if x[0].numel() != meas.dim:
            raise ValueError(f"x must have {meas.dim} entries per sample to match A of shape "
                             f"{tuple(meas.A.shape)}, got shape {tuple(x.shape)}")
        s, sigma = sde.scale_std(tt)
        key = (x.dtype, x.device)
        if key not in lam2_cache:
            lam2_cache[key] = (meas.U.to(x), meas.lam_full.square().to(x), meas.A.to(x),
                               meas.y.to(x))
        U, lam2, Ax, yx = lam2_cache[key]
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = pred.x0(xg, tt, s=s, sigma=sigma)
            resid = yx - x0.reshape(x.shape[0], -1) @ Ax.T  # (batch, m)
            # precision of y | x_t along the left singular vectors of A
            var = torch.full_like(lam2, meas.noise_std**2).expand(x.shape[0], -1)
            if posterior_var is not None:
                var = var + posterior_var(s, sigma).to(x)[:, None] * lam2[None]
            prec = torch.where(var > 0, 1.0 / var.clamp_min(torch.finfo(x.dtype).tiny),
                               torch.zeros_like(var))
            rot = resid @ U  # (batch, m)
            if step_size is not None:
                # zeta_t = zeta / (g^2 ||r||) on ||r||^2: a step of speed zeta along -grad ||r||;
                # r = 0 (nothing to correct) gives a zero gradient, not 0/0
                norm = resid.detach().norm(dim=1)
                g2 = sde.diffusion(tt).to(x).square()
                prec = torch.where(norm > 0, 2 * step_size / (g2 * norm.clamp_min(
                    torch.finfo(x.dtype).tiny)), torch.zeros_like(norm))[:, None]
            loglik = -0.5 * (rot.square() * prec).sum()
            (grad,) = torch.autograd.grad(loglik, xg)
        score = convert(x0.detach(), x, s, sigma, source="x0", target="score")
        return score + scale * _finite_grad(grad, who, tt)

    return guided_score


def dps(sde, score_fn: ScoreFn, A, y, noise_std: float, scale: float = 1.0, *,
        step_size: float | None = None) -> ScoreFn:
    r"""Diffusion posterior sampling (Chung et al. 2023): the likelihood at Tweedie's estimate.

    .. math:: \nabla_x\log p_t(x \mid y) \approx \nabla_x\log p_t(x)
              - \frac{w}{2\sigma_y^2}\nabla_x \big\lVert y - A\,\hat x_0(x, t)\big\rVert^2,
              \qquad \hat x_0 = \frac{x + \sigma(t)^2\nabla\log p_t(x)}{s(t)},

    i.e. :math:`p_t(y \mid x) \approx \mathcal N(y; A\hat x_0, \sigma_y^2 I)` (Chung et al. 2023,
    eq. 16 with :math:`\rho = w / \sigma_y^2`). It ignores the spread of :math:`x_0` around
    :math:`\hat x_0`, so it is over-confident at large ``t`` and biased even for a Gaussian prior
    (:doc:`/theory/inverse-problems`).

    **The normalised step** (``step_size`` :math:`\zeta`). Chung et al. (2023, Alg. 1 and
    App. C) do not run :math:`\rho = 1/\sigma_y^2`: their step is
    :math:`\zeta_i = \zeta' / \lVert y - A\hat x_0(x_i)\rVert`. Here, per sample,

    .. math:: \rho_t(x) = \frac{2w\,\zeta}{g(t)^2\,\lVert y - A\hat x_0(x, t)\rVert}

    in place of :math:`w/\sigma_y^2`, constant in :math:`x` (no gradient flows through it), so
    the reverse SDE (drift weight :math:`g^2` on the score) moves :math:`x` by
    :math:`-\zeta\,\nabla_x\lVert y - A\hat x_0\rVert^2 / \lVert y - A\hat x_0\rVert` per unit
    time (the paper's :math:`N = 1000` steps of :math:`\zeta'` are
    :math:`\zeta = 1000\,\zeta'`; an ancestral step of length :math:`\Delta t` moves by
    :math:`\approx\zeta\Delta t`). A zero residual gives a zero step (not 0/0). Why it is
    needed with networks: the guidance is an explicit gradient step on
    :math:`\rho\lVert y - A\hat x_0\rVert^2` with curvature :math:`\rho\lVert A J\rVert^2`,
    :math:`J = \partial\hat x_0/\partial x = (I - \sigma\,\partial\hat\epsilon/\partial x)/s`.
    For an exact score :math:`J = s\,\mathrm{Cov}[x_0 \mid x_t]/\sigma^2` is tiny at large
    ``t``; a network's error in :math:`\partial\hat\epsilon/\partial x` is amplified by
    :math:`\sigma/s` (152 at ``t = 1`` under the default VP SDE; measured
    :math:`\lVert J v\rVert/\lVert v\rVert \approx 25` for a digits UNet after 200 training
    steps). With :math:`\rho = 1/\sigma_y^2 = 400` a step multiplies the residual by far more
    than one, the state grows geometrically and float32 overflows within a few steps. The
    normalised step bounds the displacement by :math:`\zeta\Delta t\,\lVert AJ\rVert`
    whatever the residual. :func:`scoresde.posterior_sample` uses ``step_size=20``.

    Parameters
    ----------
    sde : LinearSDE
    score_fn : callable
        Unconditional ``score_fn(x, t)`` or a :class:`~scoresde.predict.NativePrediction`.
    A : array_like, shape (m, d)
        Measurement matrix on the flattened event (see :mod:`scoresde.operators` for masks and
        colour-to-grey).
    y : array_like, shape (m,)
    noise_std : float
        :math:`\sigma_y > 0` (the approximation is singular for noiseless data).
    scale : float
        :math:`w \ge 0` (1 is the Gaussian likelihood itself).
    step_size : float, optional
        :math:`\zeta > 0`: use the normalised step above instead of :math:`1/\sigma_y^2`
        (default None: the Gaussian likelihood).

    Returns
    -------
    callable
        Guided ``score_fn(x, t)``: one evaluation of ``score_fn`` and one backward pass per call.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde, prior = sd.VPSDE(), sd.ring8()
    >>> g = sd.guidance.dps(sde, prior.score_fn(sde), torch.tensor([[1.0, 0.0]]),
    ...                     torch.tensor([0.0]), 0.05, step_size=20.0)
    >>> bool(torch.isfinite(g(torch.randn(4, 2), 0.5)).all())
    True
    """
    return _measurement_guidance(sde, score_fn, A, y, noise_std, scale=scale, posterior_var=None,
                                 who="dps", allow_zero=False, step_size=step_size)


def pigdm(sde, score_fn: ScoreFn, A, y, noise_std: float, *, data_var: float = 1.0,
          scale: float = 1.0) -> ScoreFn:
    r"""Pseudoinverse-guided diffusion (ΠGDM, Song et al. 2023): DPS with the spread of :math:`x_0`.

    .. math:: p_t(y \mid x) \approx \mathcal N\big(y;\, A\hat x_0(x, t),\;
              \sigma_y^2 I + r_t^2 A A^\top\big), \qquad
              r_t^2 = \frac{v\,\tilde\sigma_t^2}{v + \tilde\sigma_t^2},\quad
              \tilde\sigma_t = \frac{\sigma(t)}{s(t)},

    and the guided score adds
    :math:`w\,(\partial\hat x_0/\partial x)^\top A^\top (\sigma_y^2 I + r_t^2 AA^\top)^{-1}
    (y - A\hat x_0)` (Song et al. 2023, eq. 8; one vector-Jacobian product). :math:`r_t^2` is
    the posterior variance of :math:`x_0 \mid x_t` for data :math:`\mathcal N(\cdot, v I)`
    (Song et al. take :math:`v = 1`: :math:`r_t^2 = \sigma^2/(s^2 + \sigma^2)`), so ΠGDM is
    exact for an isotropic Gaussian prior of variance ``data_var`` and an approximation
    otherwise. Noiseless data (:math:`\sigma_y = 0`) is supported: the covariance is inverted on
    the range of :math:`A` (a pseudo-inverse).

    This is the score form, exact where the approximation is. ``posterior_sample(method="pigdm")``
    by default runs the update of Song et al.'s Algorithm 1 instead (the ancestral DDIM step plus
    :math:`s(t)\,s(t')\,g` with :math:`g = J^\top A^\top(AA^\top + \sigma_y^2/r_t^2)^{+}
    (y - A\hat x_0)`), whose factor :math:`s(t)s(t')` keeps a network's large Jacobian at large
    ``t`` from making the explicit step unstable (see :func:`dps` for the mechanism).

    Parameters
    ----------
    sde : LinearSDE
    score_fn : callable
        Unconditional ``score_fn(x, t)`` or a :class:`~scoresde.predict.NativePrediction`.
    A : array_like, shape (m, d)
    y : array_like, shape (m,)
    noise_std : float
        :math:`\sigma_y \ge 0`.
    data_var : float
        :math:`v > 0`, the data variance assumed by :math:`r_t^2` (default 1).
    scale : float
        :math:`w \ge 0` (default 1).

    Returns
    -------
    callable
        Guided ``score_fn(x, t)``: one evaluation of ``score_fn`` and one backward pass per call.
    """
    v = check_positive("data_var", data_var)

    def r2(s: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        snr_inv = (sigma / s) ** 2
        return v * snr_inv / (v + snr_inv)

    return _measurement_guidance(sde, score_fn, A, y, noise_std, scale=scale, posterior_var=r2,
                                 who="pigdm", allow_zero=True)
