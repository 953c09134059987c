"""SMC on a tight, correlated measurement, and DDRM, against exact posteriors.

The hard problem: a strongly correlated Gaussian prior (correlation 0.95, standard deviation 20)
in d = 6, observed through m = 6 unit-norm rows of a matrix with condition number ~70 with noise
std 0.3: the posterior is ~10^4 times tighter than the prior along the best-observed direction.
The errors are whitened by the exact posterior covariance :math:`C`: the mean error
:math:`\\lVert C^{-1/2}(\\hat m - m)\\rVert` (about :math:`\\sqrt{d / n_{\\rm eff}}` for Monte
Carlo noise alone) and the covariance error :math:`\\lVert C^{-1/2}\\hat C C^{-1/2} - I\\rVert_F`.
"""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd

F64 = torch.float64
SDE = sd.VPSDE()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def hard_problem(d: int = 6, m: int = 6, noise_std: float = 0.3, rho: float = 0.95,
                 scale: float = 20.0):
    g = gen(0)
    C = ((1 - rho) * torch.eye(d, dtype=F64) + rho * torch.ones(d, d, dtype=F64)) * scale**2
    prior = sd.Gaussian(torch.full((d,), scale, dtype=F64), C)
    A = torch.randn(1, d, generator=g, dtype=F64) + torch.randn(m, d, generator=g, dtype=F64)
    A = A / A.norm(dim=1, keepdim=True)
    x = prior.sample(1, generator=g, dtype=F64)[0]
    y = A @ x + noise_std * torch.randn(m, generator=g, dtype=F64)
    return prior, A, y, noise_std, prior.posterior(A, y, noise_std)


def whitened_errors(x: torch.Tensor, post) -> tuple[float, float]:
    ev, Q = torch.linalg.eigh(post.covariance)
    W = Q @ torch.diag(ev.rsqrt()) @ Q.T
    z = (x.to(F64) - post.mean) @ W
    eye = torch.eye(x.shape[1], dtype=F64)
    return float(z.mean(0).norm()), float((torch.cov(z.T) - eye).norm())


def test_tds_error_falls_with_particles_on_the_hard_problem():
    """TDS: the whitened mean error against the exact posterior falls like P^-1/2; no collapse."""
    prior, A, y, sy, post = hard_problem()
    score = prior.score_fn(SDE)
    sizes, seeds = (128, 512, 2048), range(3)
    rms, min_ess = [], []
    for P in sizes:
        errs = []
        for seed in seeds:
            out = sd.posterior_sample(SDE, score, A, y, sy, (P, 6), method="tds", steps=100,
                                      generator=gen(seed), dtype=F64, data_var=scale_var())
            errs.append(whitened_errors(out.samples, post)[0])
            min_ess.append(float(out.ess.min()) / P)
        rms.append(math.sqrt(sum(e * e for e in errs) / len(errs)))
    rate = (math.log(rms[-1]) - math.log(rms[0])) / (math.log(sizes[-1]) - math.log(sizes[0]))
    msg = f"tds whitened mean error {rms} at P = {sizes}: measured rate P^{rate:.2f}"
    assert rate < -0.3 and rms[-1] < 0.15, msg
    assert min(min_ess) > 0.1, f"smallest ESS / P = {min(min_ess):.3f}; {msg}"


def scale_var() -> float:
    return 400.0  # the prior's variance per coordinate (scale 20)


def test_tds_reproduces_the_bimodal_posterior_and_counts_its_backward_passes():
    pb = sd.inverse.make_problem("bimodal_2d")
    n = 1000
    out = sd.posterior_sample(SDE, pb.prior.score_fn(SDE), pb.A, pb.y, pb.noise_std, (n, 2),
                              method="tds", steps=50, generator=gen(3), dtype=F64)
    assert out.nfe == 50 and out.vjp == 50 and out.nfe_per_sample == 50 and out.particles == n
    assert abs(float((out.samples[:, 1] > 0).double().mean()) - 0.5) < 0.07
    exact = pb.posterior.sample(n, generator=gen(4), dtype=F64)
    floor = sd.metrics.sliced_wasserstein(pb.posterior.sample(n, generator=gen(6), dtype=F64),
                                          exact, 128, gen(5))
    sw = sd.metrics.sliced_wasserstein(out.samples, exact, 128, gen(5))
    assert float(sw) < 3 * float(floor) + 0.05, (float(sw), float(floor))
    # noiseless data: the observed coordinate is reproduced
    out = sd.posterior_sample(SDE, pb.prior.score_fn(SDE), pb.A, torch.tensor([2.0]), 0.0,
                              (300, 2), method="tds", steps=30, generator=gen(5), dtype=F64)
    assert (out.samples[:, 0] - 2.0).abs().mean() < 0.1


def test_ddrm_bias_on_a_gaussian_prior_is_pinned():
    """DDRM (eta = 0.85, eta_b = 1) on a Gaussian prior: mean right, covariance too narrow.

    Measured with n = 20000 (Monte Carlo std of the variances ~1e-3): the posterior variances
    come out ~45 % (x_1) and ~32 % (x_2) low at 50 steps. The bounds pin this bias.
    """
    prior = sd.Gaussian(torch.tensor([0.5, -0.5]), torch.tensor([[1.0, 0.3], [0.3, 0.5]]))
    A, y, sy = torch.tensor([[1.0, 0.5]]), torch.tensor([1.5]), 0.3
    post = prior.posterior(A, y, sy)
    out = sd.posterior_sample(SDE, prior.score_fn(SDE), A, y, sy, (20000, 2), method="ddrm",
                              steps=50, generator=gen(0), dtype=F64)
    assert out.nfe == 50 and out.vjp == 0 and out.particles is None
    mean_err = (out.samples.mean(0) - post.mean).abs()
    rel_var = torch.cov(out.samples.T).diagonal() / post.covariance.diagonal() - 1
    assert float(mean_err.max()) < 0.02, mean_err
    assert -0.55 < float(rel_var[0]) < -0.35 and -0.42 < float(rel_var[1]) < -0.22, rel_var
    # eta = 1 for the unobserved part and eta_b = 0 (no measurement at all) is the prior chain
    noiseless = sd.posterior_sample(SDE, prior.score_fn(SDE), A, y, 0.0, (500, 2),
                                    method="ddrm", steps=30, generator=gen(1), dtype=F64)
    assert float((noiseless.samples @ A.T.to(F64) - y.to(F64)).abs().max()) < 0.05


def test_ddrm_and_tds_bad_options():
    prior = sd.ring8()
    score = prior.score_fn(SDE)
    A, y = torch.tensor([[1.0, 0.0]]), torch.tensor([0.0])
    with pytest.raises(ValueError, match=r"eta and eta_b must lie in \[0, 1\]"):
        sd.posterior_sample(SDE, score, A, y, 0.1, (4, 2), method="ddrm", eta=1.5)
    with pytest.raises(ValueError, match="eta_b must be"):
        sd.posterior_sample(SDE, score, A, y, 0.1, (4, 2), method="ddrm", eta_b=-1.0)
    with pytest.raises(ValueError, match="data_var must be"):
        sd.posterior_sample(SDE, score, A, y, 0.1, (4, 2), method="tds", data_var=0.0)
    with pytest.raises(ValueError, match="particles must be >= n"):
        sd.posterior_sample(SDE, score, A, y, 0.1, (4, 2), method="tds", particles=2)
    with pytest.raises(sd.NonFiniteError, match="twist gradient"):
        sd.posterior_sample(SDE, lambda x, t: -x * x.abs().sqrt() * 1e308 * 1e10 + x, A, y, 0.1,
                            (4, 2), method="tds", steps=2, check_finite=False)
