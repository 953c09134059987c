"""Reference targets: sampling, densities, exact scores under linear SDEs, named targets, validation."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

import scoresde as sd


def mixture_log_prob_reference(gm, x):
    comps = [
        MultivariateNormal(gm.means[k], gm.covariances[k]).log_prob(x) + math.log(float(gm.weights[k]))
        for k in range(gm.n_components)
    ]
    return torch.logsumexp(torch.stack(comps, -1), -1)


@pytest.mark.parametrize("name", sd.target_names())
def test_log_prob_matches_torch_distributions(name):
    gm = sd.make_target(name)
    x = gm.sample(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(gm.log_prob(x), mixture_log_prob_reference(gm, x))


def test_sample_moments_of_a_gaussian():
    # n = 40000 draws: mean SE = sqrt(Σ_ii/n); covariance entry SE ≤ sqrt((Σ_ii Σ_jj + Σ_ij²)/n).
    target = sd.correlated_gaussian(d=3, rho=0.6)
    n = 40_000
    x = target.sample(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cov = target.covariance
    se_mean = torch.sqrt(torch.diagonal(cov) / n)
    assert bool(((x.mean(0) - target.mean).abs() <= 5 * se_mean).all())
    d = torch.diagonal(cov)
    se_cov = torch.sqrt((d[:, None] * d[None, :] + cov**2) / n)
    assert bool(((torch.cov(x.T) - cov).abs() <= 5 * se_cov).all())


def test_sample_mixture_weights():
    # component frequencies: binomial SE sqrt(w(1−w)/n); responsibilities average to w_k in expectation
    gm = sd.imbalanced_2d()
    n = 30_000
    x = gm.sample(n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    w_hat = gm.responsibilities(x).mean(0)
    se = torch.sqrt(gm.weights * (1 - gm.weights) / n)
    assert bool(((w_hat - gm.weights).abs() <= 5 * se).all())


def test_sample_is_reproducible_and_respects_dtype():
    gm = sd.ring8()
    a = gm.sample(100, generator=torch.Generator().manual_seed(7))
    b = gm.sample(100, generator=torch.Generator().manual_seed(7))
    c = gm.sample(100, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.get_default_dtype()
    assert gm.sample(5, dtype=torch.float64, device="cpu").dtype == torch.float64


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(), sd.OU(alpha=-0.7, sigma=1.3), sd.SubVPSDE()])
def test_marginal_mixture_agrees_with_log_prob_fn(sde):
    gm = sd.imbalanced_2d()
    t = 0.37 * sde.T
    x = torch.randn(20, 2, dtype=torch.float64)
    pt = gm.marginal(sde, t)
    torch.testing.assert_close(pt.log_prob(x), gm.log_prob_fn(sde)(x, t))
    torch.testing.assert_close(pt.score(x), gm.score_fn(sde)(x, t))
    # at t = 0 the marginal is the data distribution itself
    torch.testing.assert_close(gm.log_prob_fn(sde)(x, 0.0), gm.log_prob(x))


def test_data_score_equals_autograd():
    gm = sd.anisotropic_64d()
    x = gm.sample(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_(True)
    (auto,) = torch.autograd.grad(gm.log_prob(x).sum(), x)
    torch.testing.assert_close(gm.score(x.detach()), auto)


def test_responsibilities_are_a_distribution():
    gm = sd.ring8()
    r = gm.responsibilities(torch.randn(50, 2))
    assert r.shape == (50, 8)
    torch.testing.assert_close(r.sum(1), torch.ones(50))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stable_far_from_every_mode(dtype):
    gm = sd.imbalanced_2d()
    sde = sd.VPSDE()
    x = torch.tensor([[1e3, -1e3], [50.0, 50.0], [0.8, -1.2]], dtype=dtype)
    for t in (0.0, 1e-3, 0.5):
        s = gm.score_fn(sde)(x, t)
        lp = gm.log_prob_fn(sde)(x, t)
        assert bool(torch.isfinite(s).all()) and bool(torch.isfinite(lp).all())


def test_float32_agrees_with_float64():
    gm = sd.imbalanced_2d()
    sde = sd.VPSDE()
    x64 = 1.5 * torch.randn(100, 2, dtype=torch.float64)
    t64 = torch.rand(100, dtype=torch.float64).clamp_min(0.01)
    s64 = gm.score_fn(sde)(x64, t64)
    s32 = gm.score_fn(sde)(x64.float(), t64.float())
    assert s32.dtype == torch.float32
    torch.testing.assert_close(s32.double(), s64, rtol=1e-3, atol=1e-3 * float(s64.abs().max()))


def test_named_targets():
    assert sd.target_names() == ["anisotropic_64d", "correlated_gaussian", "imbalanced_2d", "ring8"]
    a = sd.anisotropic_64d()
    assert (a.n_components, a.dim) == (4, 64)
    ev = torch.linalg.eigvalsh(a.covariances)
    assert float(ev.max() / ev.min()) == pytest.approx(10**2.5, rel=1e-6)
    assert torch.equal(a.means, sd.anisotropic_64d().means)
    assert not torch.equal(a.means, sd.anisotropic_64d(seed=1).means)
    ring = sd.ring8(radius=3.0)
    torch.testing.assert_close(ring.means.norm(dim=1), torch.full((8,), 3.0, dtype=torch.float64))
    g = sd.correlated_gaussian(d=4, rho=-0.5)
    assert float(g.covariance[0, 2]) == pytest.approx(0.25)
    torch.testing.assert_close(g.mean, torch.tensor([0.5, -0.5, 0.5, -0.5], dtype=torch.float64))
    imb = sd.imbalanced_2d()
    assert float(imb.weights.min()) == pytest.approx(0.15)
    assert repr(imb) == "GaussianMixture(n_components=3, dim=2)"


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: sd.GaussianMixture(torch.zeros(2), torch.eye(2)[None]), ValueError, "means"),
        (lambda: sd.GaussianMixture(torch.zeros(1, 2), torch.eye(3)[None]), ValueError, "covariances"),
        (
            lambda: sd.GaussianMixture(torch.zeros(1, 2), torch.tensor([[[1.0, 0.5], [0.0, 1.0]]])),
            ValueError,
            r"covariances\[0\] is not symmetric",
        ),
        (
            lambda: sd.GaussianMixture(torch.zeros(2, 2), torch.stack([torch.eye(2), -torch.eye(2)])),
            ValueError,
            r"covariances\[1\] is not positive definite",
        ),
        (
            lambda: sd.GaussianMixture(torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2), [1.5, -0.5]),
            ValueError,
            "weights must be non-negative",
        ),
        (
            lambda: sd.GaussianMixture(torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2), [0.5, 0.6]),
            ValueError,
            "weights must sum to 1",
        ),
        (
            lambda: sd.GaussianMixture(torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2), [1.0]),
            ValueError,
            "weights must have shape",
        ),
        (lambda: sd.GaussianMixture([[float("nan"), 0.0]], [[[1.0, 0], [0, 1.0]]]), ValueError, "means"),
        (lambda: sd.GaussianMixture("abc", torch.eye(2)[None]), TypeError, "means"),
        (lambda: sd.GaussianMixture(torch.zeros(0, 2), torch.zeros(0, 2, 2)), ValueError, "means"),
        (lambda: sd.Gaussian(torch.zeros(2, 1), torch.eye(2)), ValueError, "mean"),
        (lambda: sd.Gaussian(torch.zeros(2), torch.eye(3)), ValueError, "covariance"),
        (lambda: sd.make_target("swissroll"), ValueError, "valid names: anisotropic_64d"),
        (lambda: sd.ring8(radius=-1.0), ValueError, "radius"),
        (lambda: sd.correlated_gaussian(rho=1.0), ValueError, "rho"),
        (lambda: sd.correlated_gaussian(d=0), ValueError, "d"),
        (lambda: sd.anisotropic_64d(seed=-1), ValueError, "seed"),
        (lambda: sd.ring8().sample(0), ValueError, "n"),
    ],
)
def test_invalid_targets(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bad_inputs_to_evaluations():
    gm = sd.imbalanced_2d()
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        gm.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="x must have at least 2"):
        gm.score(torch.zeros(2))
    with pytest.raises(ValueError, match="x contains non-finite"):
        gm.responsibilities(torch.tensor([[float("inf"), 0.0]]))
    with pytest.raises(TypeError, match="sde must be a LinearSDE"):
        gm.score_fn("vp")(torch.zeros(1, 2), 0.5)
    with pytest.raises(TypeError, match="sde must be a LinearSDE"):
        gm.marginal(object(), 0.5)
    with pytest.raises(ValueError, match="t must lie in"):
        gm.score_fn(sd.VPSDE())(torch.zeros(1, 2), 2.0)


def test_arguments_in_the_wrong_order_say_the_order():
    means, covs, w = torch.zeros(2, 3), torch.eye(3).repeat(2, 1, 1), torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match=r"means \(K, d\), covariances \(K, d, d\), weights \(K,\).*wrong order"):
        sd.GaussianMixture(covs, means, w)
    with pytest.raises(ValueError, match="swapped"):
        sd.GaussianMixture(means, w, covs)
    sd.GaussianMixture(means, covs, w)  # the right order works
