r"""Linear measurement operators :math:`y = A x + \sigma_y\varepsilon` and their SVD.

Every inverse-problem function of the package (:meth:`~scoresde.GaussianMixture.posterior`,
:mod:`scoresde.guidance`, :func:`scoresde.posterior_sample`) takes ``A`` as a dense ``(m, d)``
matrix acting on the *flattened* event (``x.reshape(n, -1) @ A.T``). This module builds the
matrices of the usual image problems and holds the one SVD that the samplers share:

- :func:`inpainting` — the rows of the identity that keep the pixels where a mask is true
  (Song et al. 2021, App. I; Lugmayr et al. 2022);
- :func:`colour_to_grey` — the luma of a channel-first RGB image (colourisation; Song et al.
  2021, App. I), ITU-R BT.601 weights by default;
- :func:`random_measurement` — an :math:`m \times d` matrix with Haar-random singular vectors
  and prescribed singular values (the Gaussian-mixture benchmarks of Cardoso et al. 2023);
- :class:`Measurement` — a validated ``(A, y, noise_std)`` with the SVD
  :math:`A = U \operatorname{diag}(\lambda) V^\top`, in which the measurement decouples into
  independent scalar problems :math:`\bar y_i = \lambda_i \bar x_i + \sigma_y\bar\varepsilon_i`
  (:math:`\bar y = U^\top y`, :math:`\bar x = V^\top x`), the basis of the replacement, RePaint
  and SMC samplers of :mod:`scoresde.inverse` (Kawar et al. 2022, §3).

References
----------
Song et al. (2021), *Score-based generative modeling through stochastic differential equations*,
ICLR. Lugmayr et al. (2022), *RePaint: inpainting using denoising diffusion probabilistic
models*, CVPR. Kawar, Elad, Ermon & Song (2022), *Denoising diffusion restoration models*,
NeurIPS. Cardoso, Janati El Idrissi, Le Corff & Moulines (2023), *Monte Carlo guided diffusion for
Bayesian linear inverse problems*, ICLR 2024.
"""

from __future__ import annotations

import math

import torch

from ._checks import check_int, check_positive

__all__ = ["Measurement", "inpainting", "colour_to_grey", "random_measurement"]


def inpainting(mask) -> torch.Tensor:
    r"""The ``(m, d)`` matrix that observes the entries where ``mask`` is true.

    :math:`A = (e_{i_1}, \dots, e_{i_m})^\top` for the flattened indices :math:`i_j` of the true
    entries, so ``A @ x.flatten()`` is ``x[mask]``.

    Parameters
    ----------
    mask : bool tensor or array, shaped like the event
        ``True`` where the pixel is known (at least one).

    Examples
    --------
    >>> import torch
    >>> from scoresde.operators import inpainting
    >>> mask = torch.tensor([[True, False], [False, True]])
    >>> inpainting(mask)
    tensor([[1., 0., 0., 0.],
            [0., 0., 0., 1.]], dtype=torch.float64)
    """
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor, got dtype {mask.dtype}")
    flat = mask.reshape(-1).cpu()
    idx = torch.nonzero(flat).reshape(-1)
    if idx.numel() == 0:
        raise ValueError("mask must keep at least one entry (all entries are False)")
    return torch.eye(flat.numel(), dtype=torch.float64)[idx]


def colour_to_grey(height: int, width: int, weights=(0.299, 0.587, 0.114)) -> torch.Tensor:
    r"""The ``(H W, 3 H W)`` matrix of grey = :math:`\sum_c w_c x_c` for ``(3, H, W)`` images.

    Colourisation observes the luma of each pixel (ITU-R BT.601 weights by default); the image
    is flattened channel-first, as ``x.reshape(n, -1)`` does for ``(n, 3, H, W)`` batches.

    Examples
    --------
    >>> from scoresde.operators import colour_to_grey
    >>> colour_to_grey(1, 2)
    tensor([[0.2990, 0.0000, 0.5870, 0.0000, 0.1140, 0.0000],
            [0.0000, 0.2990, 0.0000, 0.5870, 0.0000, 0.1140]], dtype=torch.float64)
    """
    h, w = check_int("height", height), check_int("width", width)
    wts = torch.as_tensor(weights, dtype=torch.float64)
    if wts.shape != (3,) or not bool(torch.isfinite(wts).all()) or float(wts.abs().sum()) == 0:
        raise ValueError(f"weights must be 3 finite numbers, not all zero, got {weights!r}")
    eye = torch.eye(h * w, dtype=torch.float64)
    return torch.cat([c * eye for c in wts], dim=1)


def random_measurement(m: int, d: int, singular_values=None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    r"""An ``(m, d)`` matrix :math:`U \operatorname{diag}(\lambda) V^\top` with Haar-random ``U``, ``V``.

    Parameters
    ----------
    m, d : int
        ``1 <= m <= d``.
    singular_values : array_like, shape (m,), optional
        :math:`\lambda`; default uniform on :math:`[0.5, 1]` (drawn from ``generator``).
    generator : torch.Generator, optional

    Examples
    --------
    >>> import torch
    >>> from scoresde.operators import random_measurement
    >>> A = random_measurement(2, 5, [1.0, 0.5], torch.Generator().manual_seed(0))
    >>> torch.linalg.svdvals(A)
    tensor([1.0000, 0.5000], dtype=torch.float64)
    """
    m, d = check_int("m", m), check_int("d", d)
    if m > d:
        raise ValueError(f"m must be <= d = {d}, got {m}")

    def haar(k: int) -> torch.Tensor:
        z = torch.randn(k, k, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(z)
        return q * torch.sign(torch.diagonal(r))[None, :]

    if singular_values is None:
        lam = 0.5 + 0.5 * torch.rand(m, generator=generator, dtype=torch.float64)
    else:
        lam = torch.as_tensor(singular_values, dtype=torch.float64).reshape(-1)
        if lam.shape != (m,) or not bool(torch.isfinite(lam).all()) or bool((lam <= 0).any()):
            raise ValueError(f"singular_values must be {m} finite positive numbers, got "
                             f"{singular_values!r}")
    U, V = haar(m), haar(d)
    return U @ torch.diag(lam) @ V[:, :m].T


class Measurement:
    r"""A validated linear-Gaussian measurement :math:`y = A x + \sigma_y\varepsilon` and its SVD.

    Parameters
    ----------
    A : array_like, shape (m, d)
        Dense matrix on the flattened event (:func:`inpainting`, :func:`colour_to_grey`, ...).
    y : array_like, shape (m,)
    noise_std : float
        :math:`\sigma_y \ge 0`.
    allow_zero : bool
        Whether :math:`\sigma_y = 0` is accepted (the caller supports noiseless data).
    rtol : float
        Singular values below ``rtol * max(lambda)`` count as zero (the rank).

    Attributes
    ----------
    A, y : Tensor
        float64 CPU copies.
    noise_std : float
    dim, m, rank : int
    U : Tensor, shape (m, m)
        Left singular vectors.
    V : Tensor, shape (d, d)
        Right singular vectors (columns), the first ``rank`` of them observed.
    lam : Tensor, shape (rank,)
        The non-zero singular values :math:`\lambda_1 \ge \dots \ge \lambda_r > 0`.
    lam_full : Tensor, shape (m,)
        :math:`\lambda` padded with zeros to length ``m``.
    y_bar : Tensor, shape (rank,)
        :math:`(U^\top y)_{1..r}`, the measured values of :math:`\lambda_i \bar x_i`.

    Examples
    --------
    >>> import torch
    >>> from scoresde.operators import Measurement
    >>> meas = Measurement(torch.tensor([[2.0, 0.0]]), torch.tensor([1.0]), 0.1)
    >>> meas.rank, meas.lam, meas.y_bar / meas.lam     # x_1 = 0.5 observed
    (1, tensor([2.], dtype=torch.float64), tensor([0.5000], dtype=torch.float64))
    """

    def __init__(self, A, y, noise_std: float, *, allow_zero: bool = True, rtol: float = 1e-10):
        from .targets import check_measurement

        A = torch.as_tensor(A) if not isinstance(A, torch.Tensor) else A
        if A.ndim != 2:
            raise ValueError(f"A must have shape (m, d), got {tuple(A.shape)}")
        self.A, self.y, self.noise_std = check_measurement(A, y, noise_std, A.shape[1],
                                                           allow_zero=allow_zero)
        rtol = check_positive("rtol", rtol)
        self.m, self.dim = self.A.shape
        U, S, Vh = torch.linalg.svd(self.A, full_matrices=True)
        top = float(S[0]) if S.numel() else 0.0
        r = int((S > rtol * top).sum()) if top > 0 else 0
        self.U, self.V, self.rank = U, Vh.T, r
        self.lam = S[:r].clone()
        self.lam_full = torch.cat([self.lam, torch.zeros(self.m - r, dtype=torch.float64)])
        self.y_bar = (U.T @ self.y)[:r]
        if self.noise_std == 0.0 and r < self.m:
            resid = (U.T @ self.y)[r:]
            if float(resid.abs().max()) > 1e-8 * max(1.0, float(self.y.abs().max())):
                raise ValueError("y must lie in the range of A when noise_std = 0 (A has rank "
                                 f"{r} < m = {self.m} and y has a component outside it)")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(m={self.m}, dim={self.dim}, rank={self.rank}, "
                f"noise_std={self.noise_std:g})")

    def check_dim(self, d: int, name: str = "shape") -> None:
        """ValueError unless the event has ``d == dim`` entries."""
        if d != self.dim:
            raise ValueError(f"{name} must have {self.dim} entries per sample to match A of shape "
                             f"({self.m}, {self.dim}), got {d}")

    def log_evidence_constant(self) -> float:
        r"""The part of :math:`\log p(y)` that no ``x`` explains.

        :math:`\log\mathcal N(\bar y_{r+1..m}; 0, \sigma_y^2 I)` (0 when ``rank == m`` or noiseless).
        """
        k = self.m - self.rank
        if k == 0 or self.noise_std == 0.0:  # noiseless: y lies in the range of A
            return 0.0
        rest = (self.U.T @ self.y)[self.rank:]
        var = self.noise_std**2
        return float(-0.5 * (rest.square().sum() / var + k * math.log(2 * math.pi * var)))
