r"""Score-matching objectives.

- :func:`dsm_loss` — denoising score matching over the forward SDE (Vincent 2011; Song et al.
  2021, eq. 7), with the :math:`\sigma^2`, likelihood (:math:`g^2`) and flat weightings and
  importance sampling of ``t`` for the likelihood weighting, conditional on class labels when
  given (``labels=``), with :func:`drop_labels` for classifier-free guidance training;
- :func:`ddpm_loss` — the ε-prediction loss of DDPM (Ho et al. 2020, Alg. 1), DSM with
  :math:`\lambda = \sigma^2` on the discrete chain;
- :func:`edm_loss` — the denoiser loss of EDM (Karras et al. 2022, eq. 8 and Table 1):
  log-normal noise levels and the weighting :math:`(\tilde\sigma^2 + \sigma_d^2)/(\tilde\sigma\sigma_d)^2`;
- :func:`sliced_score_matching_loss`, :func:`implicit_score_matching_loss` — objectives that
  need only data samples, not a noising process (Song et al. 2019; Hyvärinen 2005);
- :func:`explicit_score_matching_loss` — the regression on a known score (reference targets).

Scaling convention (that of Hyvärinen 2005, Thm. 1): the data-only objectives are written with a
factor ½,

.. math:: J_{\rm ESM} = \mathbb E\,\tfrac12\|s_\theta - \nabla\log p\|^2, \qquad
          J_{\rm ISM} = \mathbb E\big[\tfrac12\|s_\theta\|^2 + \operatorname{div} s_\theta\big]
          = J_{\rm ESM} - \tfrac12\,\mathbb E\|\nabla\log p\|^2,

(some texts write twice these quantities; the minimiser is the same), and the sliced loss has the
same expectation as the implicit one.
The DSM and DDPM losses are written, like the papers, without the ½.

Every loss sums over the event dimensions of each sample and returns the batch mean, or the
per-sample values (shape ``(batch,)``) with ``reduction="none"``. Every random draw comes from
the ``generator`` argument (on its device), in a documented order.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._checks import bcast, check_end_time, check_int, check_linear, check_positive, check_tensor
from .sde import SDE, DiscreteSchedule

__all__ = [
    "dsm_loss",
    "ddpm_loss",
    "edm_loss",
    "sliced_score_matching_loss",
    "implicit_score_matching_loss",
    "explicit_score_matching_loss",
    "drop_labels",
    "WEIGHTINGS",
]

#: Weightings :math:`\lambda(t)` accepted by :func:`dsm_loss`.
WEIGHTINGS = ("sigma2", "g2", "none")
_REDUCTIONS = ("mean", "none")
_NOISES = ("gaussian", "rademacher")


# -- helpers ---------------------------------------------------------------------------------


def _check_callable(name: str, fn) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")


def _check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_output(name: str, out, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name} must return a tensor shaped like x {tuple(x.shape)}, got {got}")
    return out


def _check_labels(labels, n: int | None) -> None:
    """``labels`` must be an integer tensor ``(n,)`` (any length when ``n`` is None)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of integer labels, got {type(labels).__name__}")
    bad_dtype = labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool
    if bad_dtype or labels.ndim != 1 or (n is not None and labels.shape[0] != n):
        want = f"({n},)" if n is not None else "(batch,)"
        raise ValueError(f"labels must be an integer tensor of shape {want}, got dtype {labels.dtype}, "
                         f"shape {tuple(labels.shape)}")


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_sample.mean() if reduction == "mean" else per_sample


def _sqnorm(v: torch.Tensor) -> torch.Tensor:
    """Squared norm per sample, ``(batch,)``."""
    return v.reshape(v.shape[0], -1).square().sum(-1)


def _draw(kind: str, shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``rand``/``randn`` of ``shape`` drawn from ``generator`` on its device, moved to ``like``."""
    device = generator.device if generator is not None else like.device
    fn = torch.rand if kind == "rand" else torch.randn
    return fn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _importance_times(sde, n: int, eps: float, like: torch.Tensor, generator) -> tuple:
    r"""Draw ``t`` on ``[eps, T]`` with density :math:`q(t) \propto g(t)^2/\sigma(t)^2`.

    For a linear SDE :math:`\sigma^2/s^2 = \int_0^t g^2/s^2`, so
    :math:`g^2/\sigma^2 = \frac{\mathrm d}{\mathrm dt}\log(\sigma^2/s^2) = -2\lambda'(t)` with
    :math:`\lambda = \log(s/\sigma)` the half log-SNR: ``q`` is uniform in :math:`\lambda`, and
    the inverse CDF is exact,
    :math:`t = \lambda^{-1}(\lambda(\epsilon) - u\,(\lambda(\epsilon) - \lambda(T)))`.
    Returns ``(t, Z)`` with
    :math:`Z = \int_\epsilon^T g^2/\sigma^2 = 2(\lambda(\epsilon) - \lambda(T))`.
    """
    has = [callable(getattr(sde, name, None)) for name in ("log_snr", "t_from_log_snr")]
    if not all(has):
        raise TypeError(
            f"importance_sampling needs an SDE with log_snr and t_from_log_snr (a LinearSDE), got {type(sde).__name__}"
        )
    ends = sde.log_snr(torch.tensor([eps, sde.T], dtype=torch.float64))
    lam_lo, lam_hi = float(ends[1]), float(ends[0])
    u = _draw("rand", (n,), like, generator).double()
    t = sde.t_from_log_snr(lam_hi - u * (lam_hi - lam_lo)).clamp(eps, sde.T)
    return t.to(like.dtype), 2.0 * (lam_hi - lam_lo)


# -- denoising score matching ------------------------------------------------------------------


def dsm_loss(
    model_or_score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    x0: torch.Tensor,
    weighting: str = "sigma2",
    eps: float = 1e-5,
    importance_sampling: bool = False,
    reduction: str = "mean",
    generator: torch.Generator | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Denoising score matching over the forward SDE (Vincent 2011; Song et al. 2021, equation 7).

    .. math:: \mathcal L(\theta) = \mathbb E_{t \sim \mathcal U(\epsilon, T)}\, \lambda(t)\,
              \mathbb E_{x_0, z}\,\big\|s_\theta(x_t, t) + z/\sigma(t)\big\|^2, \qquad
              x_t = s(t)\,x_0 + \sigma(t)\,z,\; z \sim \mathcal N(0, I),

    with the squared norm summed over the event dimensions. Up to a constant it equals the
    explicit objective :math:`\mathbb E\,\lambda(t)\|s_\theta(x_t, t) - \nabla\log p_t(x_t)\|^2`,
    so it is minimised by the true score. Weightings :math:`\lambda(t)`:

    ``"sigma2"`` (default)
        :math:`\lambda = \sigma^2`: the loss is the ε-prediction error
        :math:`\|\sigma s_\theta + z\|^2` (Ho et al. 2020; Song et al. 2021).
    ``"g2"``
        :math:`\lambda = g^2`, the likelihood weighting: the objective bounds the negative
        log-likelihood (Song, Durkan et al. 2021, Thm. 1).
    ``"none"``
        :math:`\lambda = 1`.

    ``importance_sampling=True`` (only with ``"g2"``) draws ``t`` from
    :math:`q(t) \propto g(t)^2/\sigma(t)^2` on :math:`[\epsilon, T]` and reweights by
    :math:`\lambda(t)\,/\,(q(t)(T - \epsilon))`, so the estimator has the *same expectation* as
    the uniform-``t`` one with much smaller variance (Song, Durkan et al. 2021, §4):

    .. math:: \hat{\mathcal L} = \frac{Z}{T - \epsilon}\,\|\sigma(t) s_\theta(x_t, t) + z\|^2,
              \qquad Z = \int_\epsilon^T \frac{g^2}{\sigma^2}\,\mathrm dt
              = 2\big(\lambda_{\rm snr}(\epsilon) - \lambda_{\rm snr}(T)\big).

    For every linear SDE :math:`g^2/\sigma^2 = -2\,\mathrm d\lambda_{\rm snr}/\mathrm dt` with
    :math:`\lambda_{\rm snr} = \log(s/\sigma)`, so ``q`` is uniform in log-SNR and sampled
    exactly by :meth:`LinearSDE.t_from_log_snr <scoresde.LinearSDE.t_from_log_snr>`.

    Parameters
    ----------
    model_or_score_fn : callable
        ``score_fn(x, t) -> tensor like x`` (a :class:`~scoresde.nets.ScoreModel`, or an exact
        score such as ``target.score_fn(sde)``).
    sde : SDE
        Forward process; its :meth:`~scoresde.SDE.marginal` gives :math:`s(t), \sigma(t)`.
    x0 : Tensor
        Data batch ``(batch, *event_shape)``.
    weighting : {"sigma2", "g2", "none"}
        :math:`\lambda(t)`.
    eps : float
        Lower end of the time interval, in ``(0, T)``; :math:`\sigma(\epsilon) > 0` keeps the
        target :math:`z/\sigma` finite (default ``1e-5``, as Song et al.).
    importance_sampling : bool
        Sample ``t`` from :math:`g^2/\sigma^2` (``weighting="g2"`` only; needs a linear SDE).
    reduction : {"mean", "none"}
        Batch mean, or the per-sample losses ``(batch,)``.
    generator : torch.Generator, optional
        Draws, in this order: ``t`` (``(batch,)`` uniforms), then ``z`` (shaped like ``x0``).
    labels : Tensor, optional
        Class labels ``(batch,)`` (integers) of a class-conditional model: the model is called
        as ``model(x_t, t, labels)`` and the loss is DSM for :math:`\nabla\log p_t(x \mid y)`
        (the null label trains the unconditional score; see :func:`drop_labels`).

    Returns
    -------
    Tensor
        Scalar (or ``(batch,)``), differentiable with respect to the model's parameters.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> from scoresde.losses import dsm_loss
    >>> sde, target = sd.VPSDE(), sd.Gaussian(torch.zeros(2), torch.eye(2))
    >>> x0 = target.sample(4096, generator=torch.Generator().manual_seed(0))
    >>> exact = target.score_fn(sde)
    >>> g = lambda: torch.Generator().manual_seed(1)   # the same draws for both evaluations
    >>> loss_exact = dsm_loss(exact, sde, x0, generator=g())
    >>> loss_scaled = dsm_loss(lambda x, t: 0.8 * exact(x, t), sde, x0, generator=g())
    >>> bool(loss_exact < loss_scaled)
    True
    """
    _check_callable("model_or_score_fn", model_or_score_fn)
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE, got {type(sde).__name__}")
    check_tensor("x0", x0, min_dim=2)
    _check_choice("weighting", weighting, WEIGHTINGS)
    _check_choice("reduction", reduction, _REDUCTIONS)
    eps = check_end_time(sde, eps)
    if importance_sampling and weighting != "g2":
        raise ValueError(f"importance_sampling=True is only defined for weighting='g2', got weighting={weighting!r}")
    n = x0.shape[0]
    if labels is not None:
        _check_labels(labels, n)
    if importance_sampling:
        t, Z = _importance_times(sde, n, eps, x0, generator)
    else:
        t = eps + (sde.T - eps) * _draw("rand", (n,), x0, generator)
    z = _draw("randn", x0.shape, x0, generator)
    mean, sigma = sde.marginal(x0, t)
    x_t = mean + bcast(sigma, x0) * z
    out = model_or_score_fn(x_t, t) if labels is None else model_or_score_fn(x_t, t, labels)
    score = _check_output("model_or_score_fn", out, x0)
    err = _sqnorm(bcast(sigma, x0) * score + z)  # ‖σ s + z‖² = σ² ‖s + z/σ‖²
    if importance_sampling:
        per_sample = Z / (sde.T - eps) * err
    elif weighting == "sigma2":
        per_sample = err
    elif weighting == "g2":
        per_sample = sde.diffusion(t) ** 2 / sigma**2 * err
    else:
        per_sample = err / sigma**2
    return _reduce(per_sample, reduction)


def drop_labels(
    labels: torch.Tensor,
    p: float,
    null_label: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Label dropout for classifier-free guidance (Ho & Salimans 2021, Algorithm 1).

    Each label is replaced by the null label :math:`\varnothing` independently with
    probability ``p``,

    .. math:: \tilde y_i = \begin{cases} \varnothing & u_i < p \\ y_i & \text{otherwise}
              \end{cases}, \qquad u_i \sim \mathcal U(0, 1),

    so one network, trained by :func:`dsm_loss` on ``(x, ỹ)``, learns the conditional scores
    :math:`\nabla\log p_t(x \mid y)` and (on the dropped fraction) the unconditional score
    :math:`\nabla\log p_t(x)` that guidance combines.

    Parameters
    ----------
    labels : Tensor
        Integer labels ``(batch,)``.
    p : float
        Dropout probability in ``[0, 1]`` (0 returns ``labels`` unchanged, drawing nothing).
    null_label : int
        The index of "no label" (``model.null_label``, the number of classes).
    generator : torch.Generator, optional
        Draws ``(batch,)`` uniforms on its device.

    Examples
    --------
    >>> import torch
    >>> from scoresde.losses import drop_labels
    >>> y = drop_labels(torch.zeros(100_000, dtype=torch.long), 0.1, 10,
    ...                 generator=torch.Generator().manual_seed(0))
    >>> round(float((y == 10).double().mean()), 2)
    0.1
    """
    _check_labels(labels, None)
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p!r}")
    null_label = check_int("null_label", null_label)
    if p == 0.0:
        return labels
    u = _draw("rand", labels.shape, torch.empty(0, device=labels.device), generator)
    return torch.where(u < p, torch.full_like(labels, null_label), labels)


def ddpm_loss(
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: DiscreteSchedule,
    x0: torch.Tensor,
    reduction: str = "mean",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""The ε-prediction loss of DDPM (Ho et al. 2020, Algorithm 1, their :math:`L_{\rm simple}`).

    .. math:: \mathcal L = \mathbb E_{i, x_0, \epsilon}\,
              \big\|\epsilon - \epsilon_\theta\big(\sqrt{\bar\alpha_i}\,x_0
              + \sqrt{1-\bar\alpha_i}\,\epsilon,\; i\big)\big\|^2,
              \qquad i \sim \mathcal U\{0, \dots, N-1\},\; \epsilon \sim \mathcal N(0, I),

    with 0-based step indices ``i`` (Ho et al.'s :math:`t - 1`) and the squared norm *summed*
    over event dimensions (Ho et al.'s code averages; the two differ by the factor ``d``).

    It is DSM with :math:`\lambda = \sigma^2` on the discrete chain (Ho et al. 2020, §3.2;
    :doc:`/theory/ddpm`): with
    :math:`\sigma_i = \sqrt{1 - \bar\alpha_i}` and
    :math:`s_\theta(x, t_i) = -\epsilon_\theta(x, i)/\sigma_i` (exactly
    :class:`~scoresde.samplers.EpsilonScore`), for the same draws, term by term,
    :math:`\|\epsilon - \epsilon_\theta\|^2 = \sigma_i^2\|s_\theta + \epsilon/\sigma_i\|^2`.

    Parameters
    ----------
    eps_model : callable
        ``eps_model(x, i) -> tensor like x`` with ``i`` a ``(batch,)`` LongTensor. A
        continuous-time network takes ``t_i = (i + 1) T / N`` instead, e.g.
        ``lambda x, i: net(x, (i + 1).to(x.dtype) / N)`` (time normalised to ``(0, 1]``).
    schedule : DiscreteSchedule
        The chain, e.g. ``sd.VPSDE().discretize(1000)``.
    x0 : Tensor
        Data batch ``(batch, *event_shape)``.
    reduction : {"mean", "none"}
        Batch mean, or per-sample losses ``(batch,)``.
    generator : torch.Generator, optional
        Draws, in this order: ``i`` (``torch.randint(N, (batch,))``), then ``ε`` (shaped like
        ``x0``), both on the generator's device.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> from scoresde.losses import ddpm_loss
    >>> sched = sd.VPSDE().discretize(1000)
    >>> x0 = torch.randn(8, 2)
    >>> zero_model = lambda x, i: torch.zeros_like(x)   # loss = E‖ε‖² = d
    >>> g = torch.Generator().manual_seed(0)
    >>> round(float(ddpm_loss(zero_model, sched, torch.randn(20000, 2), generator=g)), 1)
    2.0
    """
    _check_callable("eps_model", eps_model)
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"schedule must be a DiscreteSchedule (e.g. sde.discretize(N)), got {type(schedule).__name__}")
    check_tensor("x0", x0, min_dim=2)
    _check_choice("reduction", reduction, _REDUCTIONS)
    n = x0.shape[0]
    device = generator.device if generator is not None else x0.device
    i = torch.randint(schedule.N, (n,), generator=generator, device=device).to(x0.device)
    noise = _draw("randn", x0.shape, x0, generator)
    abar = schedule.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[i]
    x_i = bcast(abar.sqrt(), x0) * x0 + bcast((1 - abar).sqrt(), x0) * noise
    out = _check_output("eps_model", eps_model(x_i, i), x0)
    return _reduce(_sqnorm(noise - out), reduction)


def edm_loss(
    model_or_score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    x0: torch.Tensor,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    sigma_data: float = 0.5,
    reduction: str = "mean",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""The EDM training loss (Karras et al. 2022, equation 8 and Table 1, "Training").

    .. math:: \mathcal L = \mathbb E_{\tilde\sigma, x_0, z}\,\lambda(\tilde\sigma)\,
              \big\|D(x_t, t) - x_0\big\|^2, \qquad
              \log\tilde\sigma \sim \mathcal N(P_{\rm mean}, P_{\rm std}^2), \qquad
              \lambda(\tilde\sigma) = \frac{\tilde\sigma^2 + \sigma_d^2}{(\tilde\sigma\,\sigma_d)^2},

    where :math:`\tilde\sigma = \sigma(t)/s(t)` is the noise-to-signal ratio of time ``t``
    (``t = sde.t_from_log_snr(-log σ̃)``, clamped to ``[0, T]``; on :class:`~scoresde.EDMSDE`
    ``t = σ̃``), :math:`x_t = s(t)\,x_0 + \sigma(t)\,z` and :math:`D` the model's data
    prediction :math:`\hat x_0` (read through :class:`~scoresde.predict.PredictionAdapter`: the
    denoiser of a :class:`~scoresde.ScoreModel` with ``parameterization="edm"``, or Tweedie's
    :math:`\hat x_0` of any score function). The squared norm is summed over event dimensions.
    With the weighting, the loss of the exact denoiser of data with variance :math:`\sigma_d^2`
    per dimension is :math:`d` at every noise level (the posterior variance
    :math:`\sigma_d^2\tilde\sigma^2/(\sigma_d^2 + \tilde\sigma^2)` times
    :math:`\lambda`), and for Gaussian data :math:`\mathcal N(\mu, \Sigma)` its minimum is
    :math:`\mathbb E\,\lambda(\tilde\sigma)\operatorname{tr}\big(\tilde\sigma^2\Sigma
    (\Sigma + \tilde\sigma^2 I)^{-1}\big)`.

    Parameters
    ----------
    model_or_score_fn : callable
        A model or score function (see above).
    sde : LinearSDE
        Forward process (provides :math:`s, \sigma` and the map from :math:`\tilde\sigma` to ``t``).
    x0 : Tensor
        Data batch ``(batch, *event_shape)``.
    P_mean, P_std : float
        Mean and standard deviation (> 0) of :math:`\log\tilde\sigma` (EDM: -1.2, 1.2).
    sigma_data : float
        :math:`\sigma_d` (> 0) of the weighting; use the model's own (default 0.5).
    reduction : {"mean", "none"}
        Batch mean, or per-sample losses ``(batch,)``.
    generator : torch.Generator, optional
        Draws, in this order: :math:`\log\tilde\sigma` (``(batch,)`` normals), then ``z``
        (shaped like ``x0``).

    Returns
    -------
    Tensor
        Scalar (or ``(batch,)``), differentiable with respect to the model's parameters.

    References
    ----------
    Karras, Aittala, Aila & Laine (2022), *Elucidating the design space of diffusion-based
    generative models*, NeurIPS.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.EDMSDE()
    >>> target = sd.Gaussian(torch.zeros(2), 0.25 * torch.eye(2))   # variance sigma_data² = 0.25
    >>> x0 = target.sample(20000, generator=torch.Generator().manual_seed(0))
    >>> loss = sd.edm_loss(target.score_fn(sde), sde, x0, generator=torch.Generator().manual_seed(1))
    >>> round(float(loss), 1)          # the exact denoiser: d = 2 at every noise level
    2.0
    """
    from ._runtime import CountingScore
    from .predict import PredictionAdapter

    _check_callable("model_or_score_fn", model_or_score_fn)
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE, got {type(sde).__name__}")
    check_linear(sde, "edm_loss")
    check_tensor("x0", x0, min_dim=2)
    _check_choice("reduction", reduction, _REDUCTIONS)
    try:
        P_mean = float(P_mean)
    except (TypeError, ValueError):
        raise TypeError(f"P_mean must be a real number, got {type(P_mean).__name__}") from None
    if not math.isfinite(P_mean):
        raise ValueError(f"P_mean must be finite, got {P_mean}")
    P_std = check_positive("P_std", P_std)
    sigma_data = check_positive("sigma_data", sigma_data)
    n = x0.shape[0]
    log_sigma = P_mean + P_std * _draw("randn", (n,), x0, generator)
    t = sde.t_from_log_snr(-log_sigma.double()).clamp(0.0, sde.T)
    t = torch.where(t > 0, t, torch.full_like(t, sde.T * 1e-12)).to(x0.dtype)
    z = _draw("randn", x0.shape, x0, generator)
    s, sigma = sde.scale_std(t)
    x_t = bcast(s, x0) * x0 + bcast(sigma, x0) * z
    checked = CountingScore(model_or_score_fn, "edm_loss", check_finite=False)  # shape checks
    pred = PredictionAdapter(sde, checked, who="edm_loss")
    d = pred.x0(x_t, t, s=s, sigma=sigma)
    sig_t = sigma / s
    weight = (sig_t**2 + sigma_data**2) / (sig_t * sigma_data) ** 2
    return _reduce(weight * _sqnorm(d - x0), reduction)


# -- data-only objectives ----------------------------------------------------------------------


def _prepare(score_fn, x: torch.Tensor, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    _check_callable("score_fn", score_fn)
    check_tensor("x", x, min_dim=2)
    _check_choice("reduction", reduction, _REDUCTIONS)
    x = x.detach().requires_grad_(True)
    return x, _check_output("score_fn", score_fn(x), x)


def _vjp(s: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r""":math:`(\partial s/\partial x)^\top v` per sample, kept in the graph (zero if unused)."""
    if not s.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(s, x, grad_outputs=v, create_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def sliced_score_matching_loss(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    n_projections: int = 1,
    noise: str = "gaussian",
    reduction: str = "mean",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Sliced score matching (Song, Garg, Shi & Ermon 2019, equation 7).

    .. math:: J_{\rm SSM}(\theta) = \mathbb E_{x}\,\mathbb E_{v}\Big[v^\top \nabla_x s_\theta(x)\, v
              + \tfrac12\big(v^\top s_\theta(x)\big)^2\Big],

    with projections :math:`v` of identity covariance (Gaussian or Rademacher), averaged over
    ``n_projections`` per sample. Its expectation equals
    :func:`implicit_score_matching_loss` (:math:`\mathbb E\,vv^\top = I`) but each projection
    costs one vector-Jacobian product instead of ``d``. The loss is differentiable with respect
    to the parameters of ``score_fn`` (the VJPs are taken with ``create_graph=True``).

    ``score_fn`` maps data to a score, ``x -> s(x)``, with no time argument. For a
    time-conditioned model at a fixed small time, pass ``lambda x: model(x, t0)``.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(x) -> tensor like x``, differentiable in ``x``.
    x : Tensor
        Data batch ``(batch, *event_shape)``.
    n_projections : int
        Projections per sample (>= 1).
    noise : {"gaussian", "rademacher"}
        Distribution of :math:`v`; Rademacher has the lower variance.
    reduction : {"mean", "none"}
        Batch mean, or per-sample losses ``(batch,)``.
    generator : torch.Generator, optional
        Draws all projections at once, shape ``(n_projections, *x.shape)``.

    Examples
    --------
    >>> import torch
    >>> from scoresde.losses import sliced_score_matching_loss
    >>> x = torch.randn(4096, 2, generator=torch.Generator().manual_seed(0))
    >>> loss = sliced_score_matching_loss(lambda x: -x, x, n_projections=4,
    ...                                   generator=torch.Generator().manual_seed(1))
    >>> round(float(loss.detach()), 1)   # N(0, I): E[½‖x‖² - d] = -d/2
    -1.0
    """
    n_projections = check_int("n_projections", n_projections)
    _check_choice("noise", noise, _NOISES)
    x, s = _prepare(score_fn, x, reduction)
    v = _draw("randn", (n_projections, *x.shape), x, generator)
    if noise == "rademacher":
        v = torch.sign(v)
        v[v == 0] = 1.0
    total = x.new_zeros(x.shape[0])
    for k in range(n_projections):
        vjp = _vjp(s, x, v[k])
        vs = (v[k] * s).reshape(x.shape[0], -1).sum(-1)
        total = total + (v[k] * vjp).reshape(x.shape[0], -1).sum(-1) + 0.5 * vs**2
    return _reduce(total / n_projections, reduction)


def implicit_score_matching_loss(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Implicit score matching (Hyvärinen 2005, Theorem 1).

    .. math:: J_{\rm ISM}(\theta) = \mathbb E_{x \sim p}\Big[\tfrac12\|s_\theta(x)\|^2
              + \operatorname{div} s_\theta(x)\Big]
              = \mathbb E\,\tfrac12\|s_\theta - \nabla\log p\|^2
              - \tfrac12\mathbb E\|\nabla\log p\|^2,

    the second form by integration by parts (for :math:`p\,s_\theta \to 0` at infinity), so it
    is minimised by the true score without knowing it. This is Hyvärinen's objective, half of
    :math:`K = \mathbb E[\|s\|^2 + 2\operatorname{div} s]` as some texts write it; the same ½ convention as
    :func:`sliced_score_matching_loss` and :func:`explicit_score_matching_loss`.

    The divergence is exact: ``d`` autograd passes for ``d`` event entries (with
    ``create_graph=True`` so the loss can be trained). Use it for small ``d`` (toy 2-D sets,
    tests); in high dimension use :func:`sliced_score_matching_loss` or :func:`dsm_loss`.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(x) -> tensor like x``, differentiable in ``x`` (e.g. ``lambda x: model(x, t0)``).
    x : Tensor
        Data batch ``(batch, *event_shape)``.
    reduction : {"mean", "none"}
        Batch mean, or per-sample losses ``(batch,)``.

    Examples
    --------
    >>> import torch
    >>> from scoresde.losses import implicit_score_matching_loss
    >>> x = torch.randn(3, 2)
    >>> implicit_score_matching_loss(lambda x: -x, x, reduction="none") + 2   # ½‖x‖² exactly
    tensor([...], grad_fn=<AddBackward0>)
    """
    x, s = _prepare(score_fn, x, reduction)
    n = x.shape[0]
    sf = s.reshape(n, -1)
    div = x.new_zeros(n)
    for j in range(sf.shape[1]):
        e = torch.zeros_like(sf)
        e[:, j] = 1.0
        div = div + _vjp(s, x, e.reshape(x.shape)).reshape(n, -1)[:, j]
    return _reduce(0.5 * sf.square().sum(-1) + div, reduction)


def explicit_score_matching_loss(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    true_score,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Explicit score matching: the regression on a known score (Hyvärinen 2005, equation 2).

    .. math:: J_{\rm ESM}(\theta) = \mathbb E_{x \sim p}\,
              \tfrac12\,\|s_\theta(x) - \nabla\log p(x)\|^2.

    Only usable when :math:`\nabla\log p` is known, e.g. on the reference targets
    (``target.score``); the benchmark that the other objectives estimate up to a constant.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(x) -> tensor like x``.
    x : Tensor
        Batch ``(batch, *event_shape)``.
    true_score : Tensor or callable
        :math:`\nabla\log p(x)`: a tensor shaped like ``x`` or a callable ``x -> tensor``.
    reduction : {"mean", "none"}
        Batch mean, or per-sample losses ``(batch,)``.

    Examples
    --------
    >>> import torch
    >>> from scoresde.losses import explicit_score_matching_loss
    >>> x = torch.randn(8, 2)
    >>> explicit_score_matching_loss(lambda x: -x, x, lambda x: -x)
    tensor(0.)
    """
    _check_callable("score_fn", score_fn)
    check_tensor("x", x, min_dim=2)
    _check_choice("reduction", reduction, _REDUCTIONS)
    target = true_score(x) if callable(true_score) else true_score
    if not isinstance(target, torch.Tensor) or target.shape != x.shape:
        got = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"true_score must be (or return) a tensor shaped like x {tuple(x.shape)}, got {got}")
    s = _check_output("score_fn", score_fn(x), x)
    return _reduce(0.5 * _sqnorm(s - target), reduction)
