r"""Reference targets with exact scores under any linear SDE.

For data :math:`p_0 = \sum_k w_k \mathcal N(\mu_k, \Sigma_k)` and a linear SDE with transition
:math:`\mathcal N(s(t) x_0, \sigma(t)^2 I)`
(:meth:`LinearSDE.scale_std <scoresde.LinearSDE.scale_std>`), every marginal is again a mixture
(each component passes through the linear-Gaussian transition; Bishop 2006, eq. 2.115),

.. math:: p_t = \sum_k w_k\, \mathcal N\big(s(t)\mu_k,\; s(t)^2\Sigma_k + \sigma(t)^2 I\big),

whose log-density and score are closed form. These are the ground truth against which the
samplers, the likelihood and trained models are checked.

Implementation: each :math:`\Sigma_k = U_k \operatorname{diag}(\ell_k) U_k^\top` is diagonalised once,
so the covariance at time ``t`` is :math:`U_k \operatorname{diag}(s^2 \ell_k + \sigma^2) U_k^\top` — no
per-sample factorisation, exact at every ``t`` including ``t = 0``, and differentiable in ``x``
and ``t`` (the likelihood takes divergences of the score; tests take time derivatives).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._checks import as_time, check_int, check_positive, check_tensor
from .sde import LinearSDE

__all__ = [
    "GaussianMixture",
    "Gaussian",
    "ring8",
    "imbalanced_2d",
    "anisotropic_64d",
    "correlated_gaussian",
    "make_target",
    "target_names",
]


def _as_float64(name: str, value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach().to(torch.float64, copy=True).cpu()
    else:
        try:
            t = torch.as_tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a tensor or array of real numbers") from None
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains non-finite values")
    return t


class GaussianMixture:
    r"""Mixture of Gaussians :math:`\sum_k w_k \mathcal N(\mu_k, \Sigma_k)` in :math:`\mathbb R^d`.

    Parameters
    ----------
    means : array_like, shape (K, d)
    covariances : array_like, shape (K, d, d)
        Symmetric positive definite.
    weights : array_like, shape (K,), optional
        Non-negative, summing to 1 (within 1e-6). Default uniform.

    Notes
    -----
    Parameters are stored in float64; evaluations follow the dtype and device of their input.
    Inputs ``x`` may have shape ``(n, d)`` or ``(n, *event)`` with ``prod(event) == d`` (an
    image-shaped batch is flattened and the score reshaped back).

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> gm = sd.GaussianMixture(torch.tensor([[-2.0], [2.0]]), torch.ones(2, 1, 1) * 0.25)
    >>> sde = sd.VPSDE()
    >>> score = gm.score_fn(sde)
    >>> score(torch.zeros(1, 1), 0.5)     # symmetric mixture: zero score at the centre
    tensor([[0.]])
    """

    def __init__(self, means, covariances, weights=None):
        means = _as_float64("means", means)
        covs = _as_float64("covariances", covariances)
        if means.ndim == 3 or covs.ndim in (1, 2) and means.ndim != 2:
            raise ValueError(
                f"the arguments are GaussianMixture(means (K, d), covariances (K, d, d), weights (K,)); "
                f"got means of shape {tuple(means.shape)} and covariances of shape {tuple(covs.shape)}"
                " — are they in the wrong order?")
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(means.shape)}")
        K, d = means.shape
        if K < 1 or d < 1:
            raise ValueError(f"means must have shape (K, d) with K, d >= 1, got {tuple(means.shape)}")
        if covs.shape != (K, d, d):
            hint = (" (the order is means, covariances, weights: are weights and covariances swapped?)"
                    if covs.ndim == 1 and weights is not None else "")
            raise ValueError(f"covariances must have shape (K, d, d) = {(K, d, d)}, got {tuple(covs.shape)}{hint}")
        asym = (covs - covs.transpose(-1, -2)).abs().amax(dim=(-1, -2))
        scale = covs.abs().amax(dim=(-1, -2)).clamp_min(1e-300)
        for k in range(K):
            if asym[k] > 1e-8 * scale[k]:
                raise ValueError(f"covariances[{k}] is not symmetric")
        covs = 0.5 * (covs + covs.transpose(-1, -2))
        chol, info = torch.linalg.cholesky_ex(covs)
        for k in range(K):
            if info[k] != 0:
                raise ValueError(f"covariances[{k}] is not positive definite")
        if weights is None:
            w = torch.full((K,), 1.0 / K, dtype=torch.float64)
        else:
            w = _as_float64("weights", weights)
            if w.shape != (K,):
                raise ValueError(f"weights must have shape (K,) = ({K},), got {tuple(w.shape)}")
            if bool((w < 0).any()):
                raise ValueError(f"weights must be non-negative, got {w.tolist()}")
            if abs(float(w.sum()) - 1.0) > 1e-6:
                raise ValueError(f"weights must sum to 1, got sum {float(w.sum()):.8g}")
            w = w / w.sum()
        self.means, self.covariances, self.weights = means, covs, w
        self.dim, self.n_components = d, K
        self._chol = chol
        evals, evecs = torch.linalg.eigh(covs)
        if bool((evals <= 0).any()):  # Cholesky passed but eigh rounding says otherwise
            raise ValueError("covariances are numerically singular")
        self._evals, self._evecs = evals, evecs
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_components={self.n_components}, dim={self.dim})"

    # -- internals -------------------------------------------------------------------
    def _params(self, like: torch.Tensor):
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(
                p.to(device=like.device, dtype=like.dtype)
                for p in (self.means, self._evecs, self._evals, torch.log(self.weights))
            )
        return self._cache[key]

    def _flatten(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        check_tensor(name, x, min_dim=2)
        if x[0].numel() != self.dim:
            raise ValueError(
                f"{name} must have shape (n, {self.dim}) or (n, *event) with {self.dim} entries per "
                f"sample, got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], self.dim)

    def _joint(self, x: torch.Tensor, s: torch.Tensor | None, var: torch.Tensor | None):
        """Per-component log w_k N(x; s μ_k, s²Σ_k + σ²I), plus the projections and eigenvalues."""
        mu, U, ell, logw = self._params(x)
        if s is None:
            diff = x[:, None, :] - mu[None]
            ev = ell.expand(x.shape[0], -1, -1)
        else:
            diff = x[:, None, :] - s[:, None, None] * mu[None]
            ev = (s**2)[:, None, None] * ell[None] + var[:, None, None]
        proj = torch.einsum("bkd,kde->bke", diff, U)
        maha = (proj.square() / ev).sum(-1)
        logdet = torch.log(ev).sum(-1)
        joint = logw - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))
        return joint, proj, ev

    def _score(self, x, s, var):
        joint, proj, ev = self._joint(x, s, var)
        r = torch.softmax(joint, dim=-1)
        _, U, _, _ = self._params(x)
        return -torch.einsum("bk,bke,kde->bd", r, proj / ev, U)

    def _time_coeffs(self, sde: LinearSDE, t, x: torch.Tensor):
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a LinearSDE (closed-form marginals), got {type(sde).__name__}")
        s, sigma = sde.scale_std(as_time(t, x.shape[0], sde.T, like=x))
        return s, sigma**2

    # -- data distribution ---------------------------------------------------------------
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` samples, shape ``(n, d)``; the generator's device is used when ``device`` is None."""
        n = check_int("n", n)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        w = self.weights.to(gen_device)
        idx = torch.multinomial(w, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, device=gen_device, dtype=torch.float64)
        idx_cpu = idx.cpu()
        x = self.means[idx_cpu] + torch.einsum("nij,nj->ni", self._chol[idx_cpu], z.cpu())
        return x.to(device=device if device is not None else gen_device,
                    dtype=dtype or torch.get_default_dtype())

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p_0(x)`, shape ``(n,)``."""
        joint, _, _ = self._joint(self._flatten(x), None, None)
        return torch.logsumexp(joint, dim=-1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        r"""Data score :math:`\nabla_x \log p_0(x)`, shaped like ``x``."""
        xf = self._flatten(x)
        return self._score(xf, None, None).reshape(x.shape)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        r"""Posterior component probabilities :math:`r_k(x) = w_k \mathcal N_k(x) / p_0(x)`, shape ``(n, K)``."""
        joint, _, _ = self._joint(self._flatten(x), None, None)
        return torch.softmax(joint, dim=-1)

    # -- under a linear SDE ------------------------------------------------------------
    def marginal(self, sde: LinearSDE, t: float) -> GaussianMixture:
        r"""The mixture :math:`p_t` at one time ``t`` as a new :class:`GaussianMixture`."""
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a LinearSDE (closed-form marginals), got {type(sde).__name__}")
        t = as_time(t, None, sde.T, like=self.means)
        s, sigma = (float(v) for v in sde.scale_std(t))
        var = sigma**2
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(s * self.means, s**2 * self.covariances + var * eye, self.weights)

    def log_prob_fn(self, sde: LinearSDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        r"""Callable ``(x, t) -> log p_t(x)`` shaped ``(batch,)``: the exact marginal log-density."""

        def log_prob_t(x: torch.Tensor, t) -> torch.Tensor:
            xf = self._flatten(x)
            s, var = self._time_coeffs(sde, t, xf)
            joint, _, _ = self._joint(xf, s, var)
            return torch.logsumexp(joint, dim=-1)

        return log_prob_t

    def score_fn(self, sde: LinearSDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        r"""Callable ``(x, t) -> ∇_x log p_t(x)`` shaped like ``x``: the exact score under ``sde``.

        A posterior-weighted sum of Gaussian scores, with the responsibilities computed by a
        log-sum-exp (stable far from every mode):

        .. math:: \nabla\log p_t(x) = -\sum_k r_k(x, t)\, C_k(t)^{-1} (x - s(t)\mu_k),
                  \qquad C_k(t) = s(t)^2\Sigma_k + \sigma(t)^2 I.
        """

        def exact_score(x: torch.Tensor, t) -> torch.Tensor:
            xf = self._flatten(x)
            s, var = self._time_coeffs(sde, t, xf)
            return self._score(xf, s, var).reshape(x.shape)

        return exact_score


class Gaussian(GaussianMixture):
    r"""A single Gaussian :math:`\mathcal N(\mu, \Sigma)` (a one-component :class:`GaussianMixture`).

    Parameters
    ----------
    mean : array_like, shape (d,)
    covariance : array_like, shape (d, d)
    """

    def __init__(self, mean, covariance):
        mean = _as_float64("mean", mean)
        cov = _as_float64("covariance", covariance)
        if mean.ndim != 1:
            raise ValueError(f"mean must have shape (d,), got {tuple(mean.shape)}")
        d = mean.shape[0]
        if cov.shape != (d, d):
            raise ValueError(f"covariance must have shape (d, d) = {(d, d)}, got {tuple(cov.shape)}")
        super().__init__(mean[None], cov[None], None)

    @property
    def mean(self) -> torch.Tensor:
        return self.means[0]

    @property
    def covariance(self) -> torch.Tensor:
        return self.covariances[0]


# -- named reference targets -----------------------------------------------------------


def ring8(radius: float = 2.0, std: float = 0.15) -> GaussianMixture:
    """Eight equally weighted isotropic modes on a circle — the classic '8 Gaussians' set."""
    radius = check_positive("radius", radius)
    std = check_positive("std", std)
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    return GaussianMixture(means, (std**2) * torch.eye(2, dtype=torch.float64).expand(8, 2, 2))


def imbalanced_2d() -> GaussianMixture:
    """Three correlated 2-D modes with weights 0.55/0.30/0.15, the lightest one tight (std 0.05).

    Stiff for samplers: the tight mode's score changes on a scale 10x shorter than the others',
    and a sampler that blurs it misplaces both its mass and its covariance.
    """
    means = torch.tensor([[-1.0, -0.5], [1.2, 0.8], [0.8, -1.2]], dtype=torch.float64)
    covs = torch.tensor(
        [
            [[0.30, 0.12], [0.12, 0.20]],
            [[0.10, -0.04], [-0.04, 0.15]],
            [[0.0025, 0.0], [0.0, 0.0025]],
        ],
        dtype=torch.float64,
    )
    return GaussianMixture(means, covs, torch.tensor([0.55, 0.30, 0.15], dtype=torch.float64))


def anisotropic_64d(seed: int = 0) -> GaussianMixture:
    """Four 64-D modes with randomly rotated covariances of condition number ~300.

    Eigenvalues are log-spaced in ``[0.5·10^-2.5, 0.5]``; means are drawn ``N(0, 9/64 I)``;
    weights 0.4/0.3/0.2/0.1. Deterministic for a given ``seed``.
    """
    g = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    K, d = 4, 64
    means = 3.0 / math.sqrt(d) * torch.randn(K, d, generator=g, dtype=torch.float64)
    evals = 0.5 * torch.logspace(-2.5, 0.0, d, dtype=torch.float64)
    q, r = torch.linalg.qr(torch.randn(K, d, d, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    covs = q @ torch.diag_embed(evals.expand(K, d)) @ q.transpose(-1, -2)
    return GaussianMixture(means, covs, torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64))


def correlated_gaussian(d: int = 2, rho: float = 0.8) -> Gaussian:
    r"""A Gaussian with mean :math:`(0.5, -0.5, 0.5, \dots)` and AR(1) covariance :math:`\rho^{|i-j|}`."""
    d = check_int("d", d)
    rho = float(rho)
    if not -1.0 < rho < 1.0:
        raise ValueError(f"rho must lie in (-1, 1), got {rho}")
    idx = torch.arange(d, dtype=torch.float64)
    cov = rho ** (idx[:, None] - idx[None, :]).abs()
    mean = 0.5 * (1 - 2 * (torch.arange(d) % 2)).to(torch.float64)
    return Gaussian(mean, cov)


_NAMED = {
    "ring8": ring8,
    "imbalanced_2d": imbalanced_2d,
    "anisotropic_64d": anisotropic_64d,
    "correlated_gaussian": correlated_gaussian,
}


def target_names() -> list[str]:
    """Names accepted by :func:`make_target`."""
    return sorted(_NAMED)


def make_target(name: str) -> GaussianMixture:
    """Build a named reference target (see :func:`target_names`) with its default parameters."""
    if name not in _NAMED:
        raise ValueError(f"unknown target {name!r}; valid names: {', '.join(target_names())}")
    return _NAMED[name]()
