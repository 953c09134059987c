"""posterior_sample: every method against exact posteriors, honest cost, bad input.

Exact answers: with ``A = 0`` every method must return the prior (replacement and DPS/ΠGDM
reduce *exactly* to the ancestral DDIM chain); the SMC sampler's particle estimates converge
as particles grow (rate measured against a 64k-particle run) and its result approaches the
exact posterior as steps grow; sampling the exact posterior score gives the posterior.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import scoresde as sd
from scoresde.inverse import (
    METHODS,
    ParticleCollapseError,
    make_problem,
    method_cost,
    problem_names,
)

F64 = torch.float64
SDE = sd.VPSDE()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_public_surface():
    assert sd.inverse.methods() == ["smc", "replacement", "repaint", "dps", "pigdm", "ddrm", "tds"]
    assert set(METHODS) >= {"smc", "dps", "pigdm", "replacement", "repaint"}
    assert sd.posterior_sample is sd.inverse.posterior_sample
    assert problem_names()[:2] == ["bimodal_2d", "mixture_10d"]
    assert {"grid25_d8_m1", "grid25_d8_m2", "grid25_d8_m4"} <= set(problem_names())


@pytest.mark.parametrize("method", METHODS)
def test_zero_operator_returns_the_prior(method):
    prior = sd.imbalanced_2d()
    A, y = torch.zeros(1, 2), torch.zeros(1)
    opts = {"steps": 30}
    if method == "repaint":
        opts.update(jump_length=5, jump_n_sample=2)
    n = 2000
    out = sd.posterior_sample(SDE, prior.score_fn(SDE), A, y, 0.5, (n, 2), method=method,
                              generator=gen(1), dtype=F64, **opts)
    stats = sd.metrics.mode_statistics(out.samples, prior)
    assert float(stats["weight_error"]) < 0.05
    # the unconditional ancestral chain at the same steps, independent noise: same law
    steps = opts["steps"]
    ref = sd.sample(SDE, prior.score_fn(SDE), (n, 2), sampler=sd.samplers.DDIM(eta=1.0),
                    steps=steps, generator=gen(2), dtype=F64)
    ref_stats = sd.metrics.mode_statistics(ref.samples, prior)
    assert (stats["means"] - ref_stats["means"]).norm(dim=1).max() < 0.06
    assert (stats["weights"] - ref_stats["weights"]).abs().max() < 0.06
    if method in ("smc", "tds"):  # uniform weights: nothing to resample
        assert out.resamplings == 0 and torch.allclose(out.ess, torch.full_like(out.ess, n))
    if method in ("replacement", "dps", "pigdm"):  # exactly the ancestral chain
        ref = sd.sample(SDE, prior.score_fn(SDE), (n, 2), sampler=sd.samplers.DDIM(eta=1.0),
                        steps=steps, generator=gen(1), dtype=F64)
        assert torch.allclose(out.samples, ref.samples, atol=1e-12)


def test_cost_is_honest_for_every_method():
    prior = sd.ring8()
    A, y = torch.tensor([[1.0, 0.0]]), torch.tensor([0.0])
    for method in METHODS:
        opts = {"jump_length": 3, "jump_n_sample": 3} if method == "repaint" else {}
        if method in ("smc", "tds"):
            opts["particles"] = 64
        calls = []

        def score(x, t, calls=calls):
            calls.append(x.shape[0])
            return prior.score_fn(SDE)(x, t)

        out = sd.posterior_sample(SDE, score, A, y, 0.3, (32, 2), method=method, steps=10,
                                  generator=gen(2), **opts)
        assert out.nfe == len(calls) and out.score_evaluations == sum(calls)
        assert out.nfe_per_sample == sum(calls) / 32
        cost = method_cost(method, 10, particles=opts.get("particles", 1), n=32, **{
            k: v for k, v in opts.items() if k != "particles"})
        assert cost == {"nfe": out.nfe, "nfe_per_sample": out.nfe_per_sample, "vjp": out.vjp}
        assert out.samples.shape == (32, 2) and out.method == method and out.steps == 10
    assert method_cost("repaint", 20, jump_length=10, jump_n_sample=10)["nfe"] == 20 + 9 * 10


def test_smc_defaults_reproduce_the_bimodal_posterior():
    pb = make_problem("bimodal_2d")
    post = pb.posterior
    n = 2000
    out = sd.posterior_sample(SDE, pb.prior.score_fn(SDE), pb.A, pb.y, pb.noise_std, (n, 2),
                              generator=gen(3), dtype=F64)
    assert out.nfe == 100 and out.particles == n and out.ess.shape == (100,)
    upper = float((out.samples[:, 1] > 0).double().mean())
    assert abs(upper - 0.5) < 0.06                      # two symmetric main modes
    exact = post.sample(n, generator=gen(4), dtype=F64)
    sw = sd.metrics.sliced_wasserstein(out.samples, exact, 128, gen(5))
    floor = sd.metrics.sliced_wasserstein(post.sample(n, generator=gen(6), dtype=F64), exact, 128,
                                          gen(5))
    assert float(sw) < 3 * float(floor) + 0.05
    # the evidence estimate: log p(y) in closed form
    S = pb.A @ pb.prior.covariances @ pb.A.T + pb.noise_std**2
    logz = torch.logsumexp(torch.log(pb.prior.weights) - 0.5 * (
        (pb.y - pb.prior.means @ pb.A.T) ** 2 / S[:, :, 0] + torch.log(2 * math.pi * S[:, :, 0])
    ).sum(-1), 0)
    assert abs(out.log_evidence - float(logz)) < 0.3


def test_smc_converges_as_particles_grow():
    """Error of the particle estimate of P(x_2 > 0) against a 64k-particle run: rate ~ P^-1/2."""
    prior = sd.imbalanced_2d()
    A, y, sy = torch.tensor([[1.0, 1.0]], dtype=F64), torch.tensor([0.3], dtype=F64), 0.3
    score = prior.score_fn(SDE)

    def estimate(P, seed):
        out = sd.posterior_sample(SDE, score, A, y, sy, (P, 2), steps=20, generator=gen(seed),
                                  dtype=F64)
        return float((out.samples[:, 0] > 0.4).double().mean())

    ref = estimate(65536, 100)
    sizes = (64, 256, 1024)
    rmse = []
    for P in sizes:
        errs = [estimate(P, seed) - ref for seed in range(12)]
        rmse.append(math.sqrt(sum(e * e for e in errs) / len(errs)))
    slope = (math.log(rmse[-1]) - math.log(rmse[0])) / (math.log(sizes[-1]) - math.log(sizes[0]))
    assert -0.9 < slope < -0.3, (rmse, slope)


def test_smc_approaches_the_exact_posterior_as_steps_grow():
    prior = sd.Gaussian(torch.tensor([0.5, -0.5]), torch.tensor([[1.0, 0.3], [0.3, 0.5]]))
    A, y, sy = torch.tensor([[1.0, 0.5]]), torch.tensor([1.5]), 0.3
    post = prior.posterior(A, y, sy)
    errs = []
    for steps in (10, 40, 160):
        out = sd.posterior_sample(SDE, prior.score_fn(SDE), A, y, sy, (8000, 2), steps=steps,
                                  generator=gen(7), dtype=F64)
        cov = torch.cov(out.samples.T)
        errs.append(float((cov - post.covariance).norm() / post.covariance.norm()))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.08, errs
    # the ancestral chain's own variance c^2 (DDPM's beta-tilde) is under-dispersed
    out = sd.posterior_sample(SDE, prior.score_fn(SDE), A, y, sy, (8000, 2), steps=40,
                              generator=gen(7), dtype=F64, variance="ddpm")
    ddpm_cov = torch.cov(out.samples.T)
    assert float((ddpm_cov - post.covariance).norm() / post.covariance.norm()) > 2 * errs[1]
    assert float(torch.linalg.det(ddpm_cov)) < float(torch.linalg.det(post.covariance))


def test_sampling_the_exact_posterior_score_gives_the_posterior():
    pb = make_problem("bimodal_2d")
    post = pb.posterior
    n = 2000
    out = sd.sample(SDE, post.score_fn(SDE), (n, 2), sampler="heun", steps=100, generator=gen(8),
                    dtype=F64)
    keep = post.weights > 0.01
    main = sd.GaussianMixture(post.means[keep], post.covariances[keep],
                              post.weights[keep] / post.weights[keep].sum())
    stats = sd.metrics.mode_statistics(out.samples, main)
    assert float(stats["weight_error"]) < 0.05
    assert float(stats["mean_error"].max()) < 0.1


def test_noiseless_measurements_for_the_methods_that_support_them():
    prior = sd.ring8()
    A, y = torch.tensor([[1.0, 0.0]]), torch.tensor([2.0])  # x_1 = 2 exactly: the mode at (2, 0)
    for method in ("smc", "replacement", "pigdm"):
        out = sd.posterior_sample(SDE, prior.score_fn(SDE), A, y, 0.0, (500, 2), method=method,
                                  steps=50, generator=gen(9), dtype=F64)
        assert (out.samples[:, 0] - 2.0).abs().mean() < 0.1, method
        if method == "smc":  # the approximations keep x_1 but put mass at (1.4, ±1.4)
            assert out.samples[:, 1].abs().mean() < 0.35, method
    with pytest.raises(ValueError, match="noise_std must be > 0 here"):
        sd.posterior_sample(SDE, prior.score_fn(SDE), A, y, 0.0, (10, 2), method="dps")


def test_repaint_and_guided_methods_on_inpainting_shapes():
    """Image-shaped events and a mask operator: the observed pixels are reproduced."""
    prior = sd.Gaussian(torch.zeros(4), 0.5 * torch.eye(4) + 0.5)
    mask = torch.tensor([[True, False], [False, True]])
    A = sd.operators.inpainting(mask)
    y = torch.tensor([1.0, -1.0], dtype=F64)
    post = prior.posterior(A, y, 0.05)
    for method, opts in (("repaint", {"jump_length": 3, "jump_n_sample": 2}),
                         ("pigdm", {"sampler": "euler_maruyama"}), ("smc", {"particles": 3000})):
        out = sd.posterior_sample(SDE, prior.score_fn(SDE), A, y, 0.05, (300, 1, 2, 2),
                                  method=method, steps=40, generator=gen(10), dtype=F64, **opts)
        assert out.samples.shape == (300, 1, 2, 2)
        flat = out.samples.reshape(300, -1)
        assert torch.allclose(flat[:, [0, 3]].mean(0), y, atol=0.1), method
        if method == "smc":
            # a tight measurement of correlated pixels: the weights degenerate late, so the
            # 300 draws from 3000 particles hold fewer independent ones (spread ~0.06)
            assert torch.allclose(flat[:, 1].mean(), post.mean[1], atol=0.2)
            assert abs(float(flat[:, 1].var()) - float(post.covariance[1, 1])) < 0.2


def test_bad_input():
    prior = sd.ring8()
    score = prior.score_fn(SDE)
    A, y = torch.tensor([[1.0, 0.0]]), torch.tensor([0.0])
    with pytest.raises(ValueError, match="y must have shape"):
        sd.posterior_sample(SDE, score, A, torch.zeros(2), 0.1, (4, 2))
    with pytest.raises(ValueError, match="shape must have 2 entries per sample"):
        sd.posterior_sample(SDE, score, A, y, 0.1, (4, 3))
    with pytest.raises(ValueError, match="noise_std must be finite and >= 0"):
        sd.posterior_sample(SDE, score, A, y, -1.0, (4, 2))
    with pytest.raises(ValueError, match="method must be one of smc"):
        sd.posterior_sample(SDE, score, A, y, 0.1, (4, 2), method="nope")
    with pytest.raises(TypeError, match="unknown option.*particles"):
        sd.posterior_sample(SDE, score, A, y, 0.1, (4, 2), method="dps", particles=3)
    with pytest.raises(ValueError, match="particles must be >= n"):
        sd.posterior_sample(SDE, score, A, y, 0.1, (4, 2), particles=3)
    with pytest.raises(ValueError, match=r"ess_threshold must lie in \(0, 1\]"):
        sd.posterior_sample(SDE, score, A, y, 0.1, (4, 2), ess_threshold=2.0)
    with pytest.raises(ValueError, match="variance must be 'analytic' or 'ddpm'"):
        sd.posterior_sample(SDE, score, A, y, 0.1, (4, 2), variance="beta")
    with pytest.raises(ValueError, match="grid must end at t > 0"):
        sd.posterior_sample(SDE, score, A, y, 0.1, (4, 2), grid=torch.tensor([1.0, 0.5, 0.0]))
    with pytest.raises(TypeError, match="sde must be a LinearSDE"):
        sd.posterior_sample(object(), score, A, y, 0.1, (4, 2))
    with pytest.raises(TypeError, match="score_fn must be callable"):
        sd.posterior_sample(SDE, None, A, y, 0.1, (4, 2))
    with pytest.raises(TypeError, match="check_finite must be a bool"):
        sd.posterior_sample(SDE, score, A, y, 0.1, (4, 2), check_finite=1)
    with pytest.raises(sd.NonFiniteError, match=r"posterior_sample\[smc\]: non-finite score"):
        sd.posterior_sample(SDE, lambda x, t: x * math.nan, A, y, 0.1, (4, 2), steps=3)
    with pytest.raises(ValueError, match="unknown inverse problem"):
        make_problem("nope")


def test_particle_collapse_is_reported():
    prior = sd.ring8()
    A, y = torch.tensor([[1.0, 0.0]], dtype=F64), torch.tensor([1e160], dtype=F64)
    with pytest.raises(ParticleCollapseError, match="smc: particle system collapsed at step 0"):
        sd.posterior_sample(SDE, prior.score_fn(SDE), A, y, 0.1, (8, 2), steps=5, dtype=F64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sd.posterior_sample(SDE, prior.score_fn(SDE), A, torch.tensor([1.0], dtype=F64), 0.01,
                            (2, 2), steps=5, generator=gen(11), dtype=F64)
    assert any("effective sample size" in str(w.message) for w in caught)


def test_named_problems_are_deterministic_and_have_posteriors():
    for name in problem_names():
        a, b = make_problem(name, seed=1), make_problem(name, seed=1)
        assert torch.equal(a.A, b.A) and torch.equal(a.y, b.y)
        post = a.posterior
        assert post.dim == a.dim and abs(float(post.weights.sum()) - 1) < 1e-12
    pb = make_problem("grid25_d8_m4")
    assert pb.prior.n_components == 25 and pb.A.shape == (4, 8) and pb.x_true.shape == (8,)
