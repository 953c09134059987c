"""Exact conditional truth (posterior, component, noisy classifier) and the guidance transforms.

Everything is checked against closed forms: the posterior formula against self-normalised
importance sampling of the prior; classifier guidance with the exact noisy classifier against the
component's exact score; ΠGDM against the exact posterior score of an isotropic Gaussian prior
(where it is exact) and the biases of DPS/ΠGDM pinned on Gaussian priors, where the sampled
distribution of a deterministic flow is an affine image of the prior and so is computed exactly
from d + 1 solves.
"""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.operators import Measurement, colour_to_grey, inpainting, random_measurement

F64 = torch.float64
SDE = sd.VPSDE()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------
# exact truth
# --------------------------------------------------------------------------------------
def test_posterior_matches_importance_sampling_of_the_prior():
    prior = sd.imbalanced_2d()
    A = torch.tensor([[1.0, 0.5]], dtype=F64)
    y = torch.tensor([0.9], dtype=F64)
    sy = 0.2
    post = prior.posterior(A, y, sy)
    x = prior.sample(200_000, generator=gen(0), dtype=F64)
    logw = -0.5 * ((y - x @ A.T) ** 2).sum(-1) / sy**2
    w = torch.softmax(logw, 0)
    ess = float(1.0 / (w**2).sum())
    exact_mean = (post.weights[:, None] * post.means).sum(0)
    diff = x - exact_mean
    exact_cov = sum(post.weights[k] * (post.covariances[k] + torch.outer(post.means[k] - exact_mean,
                                                                         post.means[k] - exact_mean))
                    for k in range(post.n_components))
    is_mean = (w[:, None] * x).sum(0)
    se = (exact_cov.diagonal() / ess).sqrt()
    assert ((is_mean - exact_mean).abs() / se).max() < 5.0
    is_cov = torch.einsum("n,ni,nj->ij", w, diff, diff)
    assert torch.allclose(is_cov, exact_cov, atol=6.0 * float(exact_cov.abs().max()) / math.sqrt(ess))
    # posterior component probabilities: prior responsibilities reweighted by the likelihood
    is_weights = (w[:, None] * prior.responsibilities(x)).sum(0)
    assert torch.allclose(is_weights, post.weights, atol=5.0 / math.sqrt(ess))


def test_posterior_with_zero_operator_is_the_prior_and_gaussian_stays_gaussian():
    prior = sd.imbalanced_2d()
    post = prior.posterior(torch.zeros(2, 2), torch.zeros(2), 0.1)
    assert torch.equal(post.means, prior.means)
    assert torch.allclose(post.covariances, prior.covariances, atol=0, rtol=0)
    assert torch.allclose(post.weights, prior.weights)
    g = sd.Gaussian(torch.zeros(2), torch.eye(2)).posterior(torch.tensor([[1.0, 0.0]]),
                                                            torch.tensor([2.0]), 1.0)
    assert isinstance(g, sd.Gaussian)
    assert torch.allclose(g.mean, torch.tensor([1.0, 0.0], dtype=F64))


def test_posterior_is_stable_for_tight_measurements_in_float32_and_float64():
    prior = sd.ring8()
    A = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    post = prior.posterior(A, torch.tensor([2.0, 0.01]), 1e-3)  # far from most modes, tight
    assert post.weights[0] > 0.999999 and bool(torch.isfinite(post.covariances).all())
    assert torch.allclose(post.covariances[0].diagonal(), torch.full((2,), 1e-6, dtype=F64), rtol=1e-3)
    x = torch.tensor([[2.0, 0.0], [1.99, 0.02]])
    for dtype in (torch.float32, F64):
        for t in (1e-3, 0.5, 1.0):
            s = post.score_fn(SDE)(x.to(dtype), t)
            assert s.dtype == dtype and bool(torch.isfinite(s).all())
        lp = post.class_log_prob(SDE)(x.to(dtype), 1e-3)
        assert bool(torch.isfinite(lp).all())


def test_posterior_bad_input():
    prior = sd.ring8()
    A = torch.ones(1, 2)
    with pytest.raises(ValueError, match="y must have shape"):
        prior.posterior(A, torch.zeros(2), 0.1)
    with pytest.raises(ValueError, match=r"A must have shape \(m, d\) = \(m, 2\)"):
        prior.posterior(torch.ones(1, 3), torch.zeros(1), 0.1)
    with pytest.raises(ValueError, match="noise_std must be finite and >= 0"):
        prior.posterior(A, torch.zeros(1), -0.1)
    with pytest.raises(ValueError, match="noise_std must be > 0 here"):
        prior.posterior(A, torch.zeros(1), 0.0)
    with pytest.raises(ValueError, match="A contains non-finite"):
        prior.posterior(torch.full((1, 2), math.nan), torch.zeros(1), 0.1)
    with pytest.raises(ValueError, match=r"k must lie in \[0, 7\]"):
        prior.component(8)


def test_component_and_exact_noisy_classifier():
    prior = sd.imbalanced_2d()
    comp = prior.component(2)
    assert torch.equal(comp.mean, prior.means[2]) and torch.equal(comp.covariance, prior.covariances[2])
    cls = prior.class_log_prob(SDE)
    x = torch.randn(64, 2, generator=gen(1), dtype=F64)
    for t in (1e-3, 0.3, 1.0):
        lp = cls(x, t)
        assert lp.shape == (64, 3)
        assert torch.allclose(torch.logsumexp(lp, 1), torch.zeros(64, dtype=F64), atol=1e-12)
        # Bayes: log p_t(k|x) = log w_k + log p_t(x|k) - log p_t(x)
        comp_lp = torch.stack([prior.component(k).log_prob_fn(SDE)(x, t) for k in range(3)], 1)
        ref = torch.log(prior.weights) + comp_lp - prior.log_prob_fn(SDE)(x, t)[:, None]
        assert torch.allclose(lp, ref, atol=1e-10)


# --------------------------------------------------------------------------------------
# guidance
# --------------------------------------------------------------------------------------
def test_classifier_guidance_with_the_exact_classifier_is_the_component_score_and_distribution():
    prior = sd.imbalanced_2d()
    cls = prior.class_log_prob(SDE)
    guided = sd.guidance.classifier(prior.score_fn(SDE), lambda x, t: cls(x, t)[:, 2], scale=1.0)
    exact = prior.component(2).score_fn(SDE)
    x = 2 * torch.randn(128, 2, generator=gen(2), dtype=F64)
    for t in (1e-3, 0.1, 0.6, 1.0):
        assert torch.allclose(guided(x, t), exact(x, t), atol=1e-8, rtol=1e-8)
    # and sampling it (inside sd.sample, which runs without autograd) gives the component
    n = 2000
    out = sd.sample(SDE, guided, (n, 2), sampler="heun", steps=50, generator=gen(3), dtype=F64)
    comp = prior.component(2)
    err = (out.samples.mean(0) - comp.mean).abs()
    assert bool((err < 5 * (comp.covariance.diagonal() / n).sqrt() + 2e-3).all())
    assert out.samples.std(0).max() < 0.07  # the component's std is 0.05; others are ~0.4


def test_classifier_guidance_scale_and_errors():
    prior = sd.ring8()
    score = prior.score_fn(SDE)
    cls = prior.class_log_prob(SDE)
    x = torch.randn(8, 2, generator=gen(4), dtype=F64)
    zero = sd.guidance.classifier(score, lambda x, t: cls(x, t)[:, 0], scale=0.0)
    assert torch.equal(zero(x, 0.4), score(x, 0.4))
    two = sd.guidance.classifier(score, lambda x, t: cls(x, t)[:, 0], scale=2.0)
    one = sd.guidance.classifier(score, lambda x, t: cls(x, t)[:, 0])
    assert torch.allclose(two(x, 0.4) - score(x, 0.4), 2 * (one(x, 0.4) - score(x, 0.4)))
    with pytest.raises(ValueError, match=r"log_likelihood must return a tensor of shape \(batch,\)"):
        sd.guidance.classifier(score, lambda x, t: cls(x, t))(x, 0.4)
    bad = sd.guidance.classifier(score, lambda x, t: (x * math.inf).sum(1))
    with pytest.raises(sd.NonFiniteError, match="log_likelihood: non-finite guidance gradient"):
        bad(x, 0.4)
    with pytest.raises(ValueError, match="scale must be finite and >= 0"):
        sd.guidance.classifier(score, lambda x, t: x.sum(1), scale=-1.0)
    with pytest.raises(TypeError, match="log_likelihood must be callable"):
        sd.guidance.classifier(score, None)


def test_classifier_free_guidance():
    prior = sd.imbalanced_2d()
    cond, uncond = prior.component(0).score_fn(SDE), prior.score_fn(SDE)
    x = torch.randn(16, 2, generator=gen(5), dtype=F64)
    assert torch.equal(sd.guidance.classifier_free(cond, uncond, 0.0)(x, 0.3), cond(x, 0.3))
    cfg = sd.guidance.classifier_free(cond, uncond, 2.0)
    assert torch.allclose(cfg(x, 0.3), 3 * cond(x, 0.3) - 2 * uncond(x, 0.3))
    assert torch.allclose(sd.guidance.classifier_free(cond, uncond, -1.0)(x, 0.3), uncond(x, 0.3))
    with pytest.raises(ValueError, match="weight must be >= -1"):
        sd.guidance.classifier_free(cond, uncond, -2.0)
    with pytest.raises(ValueError, match="weight must be finite"):
        sd.guidance.classifier_free(cond, uncond, math.nan)
    with pytest.raises(TypeError, match="weight must be a real number"):
        sd.guidance.classifier_free(cond, uncond, "big")


def _flow_gaussian(score, d: int, steps: int = 100):
    """Mean and covariance of a deterministic sampler's output from the VP prior N(0, I).

    For a score affine in x the Heun flow is an affine map x_T -> Phi x_T + c, so its output
    law is N(c, Phi Phi^T), computed exactly from the images of 0 and the unit vectors.
    """
    xs = torch.cat([torch.zeros(1, d, dtype=F64), torch.eye(d, dtype=F64)])
    out = sd.sample(SDE, score, (d + 1, d), sampler="heun", steps=steps, x_init=xs).samples
    c = out[0]
    phi = (out[1:] - c).T
    return c, phi @ phi.T


def _gaussian_problem(cov):
    prior = sd.Gaussian(torch.tensor([0.5, -0.5]), torch.tensor(cov))
    A, y, sy = torch.tensor([[1.0, 0.5]]), torch.tensor([1.2]), 0.3
    return prior, A, y, sy, prior.posterior(A, y, sy)


def test_pigdm_is_exact_for_an_isotropic_gaussian_prior_and_dps_is_not():
    prior, A, y, sy, post = _gaussian_problem([[1.0, 0.0], [0.0, 1.0]])
    pig = sd.guidance.pigdm(SDE, prior.score_fn(SDE), A, y, sy)
    dps = sd.guidance.dps(SDE, prior.score_fn(SDE), A, y, sy)
    exact = post.score_fn(SDE)
    x = torch.randn(32, 2, generator=gen(6), dtype=F64)
    for t in (1e-3, 0.2, 0.7, 1.0):
        assert torch.allclose(pig(x, t), exact(x, t), atol=1e-9, rtol=1e-9)
        # DPS's error in closed form: J^T A^T [1/sy^2 - (sy^2 + A P A^T)^-1] (y - A x0_hat)
        s, sigma = (float(v) for v in SDE.scale_std(torch.tensor([t], dtype=F64)))
        var_post = (sigma / s) ** 2 / (1 + (sigma / s) ** 2)        # Var[x0 | x_t] (unit prior)
        x0 = (x + sigma**2 * prior.score_fn(SDE)(x, t)) / s
        jac = s * var_post / sigma**2                                # d x0_hat / d x (isotropic)
        resid = y.double() - x0 @ A.double().T
        gap = 1 / sy**2 - 1 / (sy**2 + var_post * float(A.square().sum()))
        expected = jac * gap * resid @ A.double()
        assert torch.allclose(dps(x, t) - exact(x, t), expected, atol=1e-9, rtol=1e-7)


def test_dps_and_pigdm_biases_are_pinned_on_gaussian_priors():
    # the law each guided flow samples, against the same flow with the exact posterior score
    measured = {}
    for name, cov in (("iso", [[1.0, 0.0], [0.0, 1.0]]), ("aniso", [[0.5, 0.3], [0.3, 0.4]])):
        prior, A, y, sy, post = _gaussian_problem(cov)
        m0, c0 = _flow_gaussian(post.score_fn(SDE), 2)
        for label, fn in (("dps", sd.guidance.dps), ("pigdm", sd.guidance.pigdm)):
            m, c = _flow_gaussian(fn(SDE, prior.score_fn(SDE), A, y, sy), 2)
            measured[name, label] = (float((m - m0).norm()), float((c - c0).norm() / c0.norm()))
    # pinned (VP, Heun 100 steps; the values move by < 1e-3 between 100 and 400 steps)
    assert measured["iso", "pigdm"][0] < 1e-8 and measured["iso", "pigdm"][1] < 1e-8
    assert measured["iso", "dps"] == pytest.approx((0.1396, 0.0669), abs=5e-3)
    assert measured["aniso", "dps"] == pytest.approx((0.2365, 0.4212), abs=5e-3)
    assert measured["aniso", "pigdm"] == pytest.approx((0.0524, 0.0926), abs=5e-3)


def test_measurement_guidance_inside_sample_and_errors():
    prior = sd.ring8()
    A, y = torch.tensor([[1.0, 0.0]]), torch.tensor([0.0])
    g = sd.guidance.dps(SDE, prior.score_fn(SDE), A, y, 0.3)
    out = sd.sample(SDE, g, (256, 2), sampler="ddim", steps=20, generator=gen(7))
    assert bool(torch.isfinite(out.samples).all()) and out.nfe == 20
    assert out.samples[:, 0].abs().mean() < 0.6            # pulled towards x_1 = 0
    with pytest.raises(ValueError, match="noise_std must be > 0 here"):
        sd.guidance.dps(SDE, prior.score_fn(SDE), A, y, 0.0)
    noiseless = sd.guidance.pigdm(SDE, prior.score_fn(SDE), A, y, 0.0)   # supported
    assert bool(torch.isfinite(noiseless(torch.randn(4, 2), 0.5)).all())
    with pytest.raises(ValueError, match="x must have 2 entries per sample"):
        g(torch.randn(4, 3), 0.5)
    with pytest.raises(ValueError, match="data_var must be finite and > 0"):
        sd.guidance.pigdm(SDE, prior.score_fn(SDE), A, y, 0.1, data_var=0.0)
    with pytest.raises(TypeError, match="needs a LinearSDE"):
        sd.guidance.dps(object(), prior.score_fn(SDE), A, y, 0.1)
    nan_score = sd.guidance.dps(SDE, lambda x, t: x * math.nan, A, y, 0.3)
    with pytest.raises(sd.NonFiniteError, match="dps: non-finite guidance gradient"):
        nan_score(torch.randn(4, 2), 0.5)


def test_measurement_guidance_uses_native_x0_predictions():
    prior = sd.imbalanced_2d()

    class X0Model:
        parameterization = "x0"
        calls = 0

        def predict(self, x, t):
            X0Model.calls += 1
            s, sigma = SDE.scale_std(t)
            return (x + sigma[:, None] ** 2 * prior.score_fn(SDE)(x, t)) / s[:, None]

        def __call__(self, x, t):
            raise AssertionError("the adapter must use predict")

    A, y = torch.tensor([[1.0, 0.0]], dtype=F64), torch.tensor([0.5], dtype=F64)
    x = torch.randn(8, 2, generator=gen(8), dtype=F64)
    ref = sd.guidance.pigdm(SDE, prior.score_fn(SDE), A, y, 0.2)(x, 0.4)
    got = sd.guidance.pigdm(SDE, X0Model(), A, y, 0.2)(x, 0.4)
    assert X0Model.calls == 1 and torch.allclose(got, ref, atol=1e-10)


# --------------------------------------------------------------------------------------
# operators
# --------------------------------------------------------------------------------------
def test_operators_and_measurement():
    mask = torch.zeros(2, 3, dtype=torch.bool)
    mask[0] = True
    A = inpainting(mask)
    x = torch.arange(6, dtype=F64)
    assert torch.equal(A @ x, x.reshape(2, 3)[mask])
    with pytest.raises(ValueError, match="mask must keep at least one entry"):
        inpainting(torch.zeros(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a boolean tensor"):
        inpainting(torch.ones(3))
    G = colour_to_grey(2, 2)
    img = torch.rand(3, 2, 2, generator=gen(9), dtype=F64)
    grey = (torch.tensor([0.299, 0.587, 0.114], dtype=F64)[:, None, None] * img).sum(0)
    assert torch.allclose(G @ img.reshape(-1), grey.reshape(-1))
    with pytest.raises(ValueError, match="weights must be 3 finite numbers"):
        colour_to_grey(2, 2, weights=(1.0, 2.0))
    R = random_measurement(3, 6, generator=gen(10))
    sv = torch.linalg.svdvals(R)
    assert R.shape == (3, 6) and bool(((sv >= 0.5) & (sv <= 1.0)).all())
    with pytest.raises(ValueError, match="m must be <= d"):
        random_measurement(4, 3)
    with pytest.raises(ValueError, match="singular_values must be 2 finite positive"):
        random_measurement(2, 3, [1.0, -1.0])
    # rank-deficient A: two equal rows
    meas = Measurement(torch.ones(2, 3), torch.tensor([1.0, 1.0]), 0.1)
    assert meas.rank == 1 and meas.lam_full.shape == (2,) and meas.lam_full[1] == 0
    assert math.isfinite(meas.log_evidence_constant())
    with pytest.raises(ValueError, match="y must lie in the range of A when noise_std = 0"):
        Measurement(torch.ones(2, 3), torch.tensor([1.0, 0.0]), 0.0)
    with pytest.raises(ValueError, match=r"A must have shape \(m, d\)"):
        Measurement(torch.ones(3), torch.ones(3), 0.1)
    assert "rank=1" in repr(meas)
