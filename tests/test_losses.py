"""Score-matching losses: minimisers, closed-form expectations, equivalences, unbiasedness, validation.

Statistical checks compare a Monte Carlo mean with its target within ``Z`` standard errors,
the SE estimated from the same per-sample values (``reduction="none"``); comparisons between two
losses use common random numbers (the same seed, hence the same draws) and the SE of the paired
per-sample differences. Every check is at a fixed seed.
"""

import math

import pytest
import torch

import scoresde as sd
from scoresde.losses import (
    _importance_times,
    ddpm_loss,
    dsm_loss,
    explicit_score_matching_loss,
    implicit_score_matching_loss,
    sliced_score_matching_loss,
)
from scoresde.nets import ScoreMLP, ScoreModel, UNet
from scoresde.samplers import EpsilonScore

Z = 4.0  # two-sided 4-SE band: a false alarm has probability ~6e-5 per check


def gen(seed):
    return torch.Generator().manual_seed(seed)


def mean_se(v):
    v = v.detach().double()
    return float(v.mean()), float(v.std() / math.sqrt(v.numel()))


TARGET = sd.Gaussian(torch.tensor([1.0, -0.5]), torch.tensor([[0.6, 0.25], [0.25, 0.4]]))
DELTA = 0.3  # constant perturbation of every score component


def perturbed(score_fn):
    return lambda x, t: score_fn(x, t) + DELTA


def expected_dsm(sde, weighting, eps, delta2=0.0):
    r"""Closed form of the DSM objective for the Gaussian TARGET and the score exact + δ.

    E‖s + z/σ‖² = d/σ² − tr C_t⁻¹ (C_t = s²Σ + σ²I) at the exact score, plus ‖δ‖² for a constant
    shift δ; averaged over t ~ U(eps, T) with a trapezoid rule on a geometric grid (the
    integrand behaves like 1/t near 0).
    """
    t = torch.logspace(math.log10(eps), math.log10(sde.T), 20001, dtype=torch.float64)
    s, var = sde.mean_coeff(t), sde.std(t) ** 2
    ell = torch.linalg.eigvalsh(TARGET.covariance)
    tr_cinv = (1.0 / (s[:, None] ** 2 * ell + var[:, None])).sum(-1)
    lam = {"sigma2": var, "g2": sde.g2(t), "none": torch.ones_like(t)}[weighting]
    f = lam * (TARGET.dim / var - tr_cinv + delta2)
    return float(torch.trapezoid(f, t)) / (sde.T - eps)


# -- denoising score matching ----------------------------------------------------------------------

# (weighting, importance_sampling, eps): the flat and uniform-g² weightings put a 1/t weight
# near t = 0, whose second moment ∫ dt/t² = 1/eps makes the SE meaningless at eps = 1e-5; they
# are checked at eps = 1e-3 (the importance-sampled estimator is fine at the default).
CASES = [("sigma2", False, 1e-5), ("g2", False, 1e-3), ("none", False, 1e-3), ("g2", True, 1e-5)]


@pytest.mark.parametrize(("weighting", "importance", "eps"), CASES)
def test_dsm_matches_closed_form_and_is_minimised_by_the_exact_score(weighting, importance, eps):
    sde = sd.VPSDE()
    n = 100_000
    x0 = TARGET.sample(n, generator=gen(0), dtype=torch.float64)
    exact = TARGET.score_fn(sde)
    kw = {"weighting": weighting, "eps": eps, "importance_sampling": importance, "reduction": "none"}
    le = dsm_loss(exact, sde, x0, generator=gen(1), **kw)
    lp = dsm_loss(perturbed(exact), sde, x0, generator=gen(1), **kw)  # same (t, z) draws
    m, se = mean_se(le)
    assert abs(m - expected_dsm(sde, weighting, eps)) <= Z * se
    gap, gap_se = mean_se(lp - le)
    # DSM = explicit SM + const (Vincent 2011): the gap is E λ(t) ‖δ‖² exactly
    expected_gap = expected_dsm(sde, weighting, eps, delta2=DELTA**2 * 2) - expected_dsm(sde, weighting, eps)
    assert abs(gap - expected_gap) <= Z * gap_se
    assert gap > 5 * gap_se  # the exact score is the better one by many SEs


@pytest.mark.parametrize(
    "sde", [sd.VPSDE(), sd.VESDE(), sd.SubVPSDE(), sd.OU(alpha=-1.0)], ids=lambda s: type(s).__name__
)
def test_importance_sampled_likelihood_weighting_is_unbiased(sde):
    # Independent draws: uniform-t and importance-sampled estimates of the λ = g² objective at a
    # non-optimal score must agree within Z combined SEs, and agree with the closed form.
    eps = 1e-3
    n = 100_000
    x0 = TARGET.sample(n, generator=gen(0), dtype=torch.float64)
    score = perturbed(TARGET.score_fn(sde))
    lu = dsm_loss(score, sde, x0, weighting="g2", eps=eps, reduction="none", generator=gen(1))
    li = dsm_loss(score, sde, x0, weighting="g2", eps=eps, importance_sampling=True, reduction="none", generator=gen(2))
    (mu, seu), (mi, sei) = mean_se(lu), mean_se(li)
    assert abs(mu - mi) <= Z * math.hypot(seu, sei)
    assert abs(mi - expected_dsm(sde, "g2", eps, delta2=DELTA**2 * 2)) <= Z * sei
    # the point of importance sampling: near the optimum λ/q ∝ σ² makes the summand ‖σ s + z‖²
    # O(d) at every t, instead of the 1/t-weighted uniform-t summand
    exact = TARGET.score_fn(sde)
    lu = dsm_loss(exact, sde, x0, weighting="g2", eps=eps, reduction="none", generator=gen(1))
    li = dsm_loss(exact, sde, x0, weighting="g2", eps=eps, importance_sampling=True, reduction="none", generator=gen(2))
    assert float(li.std()) < 0.5 * float(lu.std())


def test_importance_times_are_uniform_in_log_snr():
    sde, eps, n = sd.VPSDE(), 1e-5, 50_000
    like = torch.zeros(1, dtype=torch.float64)
    t, Zn = _importance_times(sde, n, eps, like, gen(0))
    assert t.dtype == torch.float64 and float(t.min()) >= eps and float(t.max()) <= sde.T
    lam = sde.log_snr(t)
    lo, hi = float(sde.log_snr(sde.T)), float(sde.log_snr(eps))
    assert Zn == pytest.approx(2 * (hi - lo))
    u = (hi - lam) / (hi - lo)  # must be U(0, 1): mean 1/2, variance 1/12
    assert abs(float(u.mean()) - 0.5) <= Z * math.sqrt(1 / 12 / n)
    assert abs(float(u.var()) - 1 / 12) <= Z * math.sqrt(1 / 180 / n)  # Var((U - ½)²) = 1/80 - 1/144 = 1/180


def test_dsm_reproducible_and_default_generator():
    sde = sd.VESDE()
    x0 = TARGET.sample(64, generator=gen(0))
    score = TARGET.score_fn(sde)
    a = dsm_loss(score, sde, x0, generator=gen(3))
    assert torch.equal(a, dsm_loss(score, sde, x0, generator=gen(3)))
    assert not torch.equal(a, dsm_loss(score, sde, x0, generator=gen(4)))
    assert a.ndim == 0 and a.dtype == torch.float32
    assert dsm_loss(score, sde, x0).ndim == 0
    assert dsm_loss(score, sde, x0, reduction="none").shape == (64,)


def test_dsm_is_differentiable_in_model_parameters_on_images():
    sde = sd.VPSDE()
    model = ScoreModel(UNet(1, base_channels=8, embed_dim=8, generator=gen(0)), sde)
    loss = dsm_loss(model, sde, torch.randn(4, 1, 8, 8, generator=gen(1)), generator=gen(2))
    loss.backward()
    assert model.net.conv_out.weight.grad is not None
    # a zero-initialised ε-network: the σ²-weighted loss is E‖z‖² = d at initialisation
    assert float(loss.detach()) == pytest.approx(64, rel=0.25)


# -- DDPM -------------------------------------------------------------------------------------------


def test_ddpm_loss_equals_dsm_sigma2_on_the_discretised_vp():
    # Exact identity for the same draws: ‖ε − ε_θ‖² = σ_i² ‖s_θ + ε/σ_i‖², s_θ = −ε_θ/σ_i.
    N, n = 1000, 256
    sched = sd.VPSDE().discretize(N)
    x0 = TARGET.sample(n, generator=gen(0), dtype=torch.float64)

    def eps_model(x, i):
        return torch.tanh(x) * (i[:, None] + 1).to(x.dtype) / N + 0.1

    per = ddpm_loss(eps_model, sched, x0, reduction="none", generator=gen(7))
    g = gen(7)  # replay the documented draw order: i, then ε
    i = torch.randint(N, (n,), generator=g)
    noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    abar = sched.alphas_cumprod[i]
    sigma = torch.sqrt(1 - abar)[:, None]
    x_i = abar.sqrt()[:, None] * x0 + sigma * noise
    s_theta = EpsilonScore(eps_model, sched)(x_i, sched.times[i])
    dsm = (sigma**2 * (s_theta + noise / sigma).square()).sum(-1)
    torch.testing.assert_close(per, dsm, rtol=1e-10, atol=1e-10)
    assert float(ddpm_loss(eps_model, sched, x0, generator=gen(7))) == pytest.approx(float(per.mean()))


def test_ddpm_loss_of_the_exact_eps_matches_continuous_dsm():
    # The exact ε of the continuous VP at t_i, fed through the discrete chain: N = 1000 makes the
    # two marginals agree to O(1/N), far below the Monte Carlo error of n = 50000 draws.
    sde, N, n = sd.VPSDE(), 1000, 50_000
    sched = sde.discretize(N)
    exact = TARGET.score_fn(sde)
    times = sched.times.to(torch.float64)

    def eps_model(x, i):
        t = times[i]
        return -sde.std(t)[:, None] * exact(x, t)

    x0 = TARGET.sample(n, generator=gen(0), dtype=torch.float64)
    m, se = mean_se(ddpm_loss(eps_model, sched, x0, reduction="none", generator=gen(1)))
    assert abs(m - expected_dsm(sde, "sigma2", 1.0 / N)) <= Z * se + 0.01


# -- data-only objectives -------------------------------------------------------------------------------


def data_score(x):
    return TARGET.score(x)


def pert_score(x):
    return TARGET.score(x) + DELTA * torch.tanh(x)  # non-constant: a non-zero divergence term


def test_ism_equals_esm_up_to_a_constant_and_is_minimised_by_the_exact_score():
    n = 40_000
    x = TARGET.sample(n, generator=gen(0), dtype=torch.float64)
    ism_e = implicit_score_matching_loss(data_score, x, reduction="none")
    ism_p = implicit_score_matching_loss(pert_score, x, reduction="none")
    esm_e = explicit_score_matching_loss(data_score, x, TARGET.score, reduction="none")
    esm_p = explicit_score_matching_loss(pert_score, x, TARGET.score(x), reduction="none")
    assert float(esm_e.abs().max()) == 0.0
    # seed 003: J = K + const, so ISM(p) − ISM(e) − [ESM(p) − ESM(e)] has mean 0 (Stein's identity)
    m, se = mean_se((ism_p - ism_e) - (esm_p - esm_e))
    assert abs(m) <= Z * se
    gap, gap_se = mean_se(ism_p - ism_e)
    assert gap > 5 * gap_se
    # the constant itself: ISM(exact) = −½ E‖∇log p‖² = −½ tr Σ⁻¹ for a Gaussian
    m, se = mean_se(ism_e)
    assert abs(m + 0.5 * float(torch.linalg.inv(TARGET.covariance).trace())) <= Z * se


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_sliced_matches_implicit_in_expectation(noise):
    n = 20_000
    x = TARGET.sample(n, generator=gen(0), dtype=torch.float64)
    for score in (data_score, pert_score):
        ssm = sliced_score_matching_loss(score, x, n_projections=8, noise=noise, reduction="none", generator=gen(1))
        ism = implicit_score_matching_loss(score, x, reduction="none")
        m, se = mean_se(ssm - ism)
        assert abs(m) <= Z * se
    # same projections for both scores (common random numbers)
    ssm_e = sliced_score_matching_loss(data_score, x, 8, noise=noise, reduction="none", generator=gen(2))
    ssm_p = sliced_score_matching_loss(pert_score, x, 8, noise=noise, reduction="none", generator=gen(2))
    gap, gap_se = mean_se(ssm_p - ssm_e)
    assert gap > 5 * gap_se


def test_data_objectives_train_a_time_conditioned_model_at_fixed_t():
    sde = sd.VPSDE()
    model = ScoreModel(ScoreMLP(2, hidden=16, n_blocks=1, generator=gen(0)), sde)
    with torch.no_grad():
        model.net.out.weight.normal_(0, 0.1, generator=gen(1))
    x = TARGET.sample(32, generator=gen(2))
    t0 = 1e-3
    for loss in (
        sliced_score_matching_loss(lambda x: model(x, t0), x, n_projections=2, generator=gen(3)),
        implicit_score_matching_loss(lambda x: model(x, t0), x),
        explicit_score_matching_loss(lambda x: model(x, t0), x, TARGET.score),
    ):
        model.zero_grad()
        loss.backward()
        assert float(model.net.inp.weight.grad.abs().sum()) > 0


def test_data_objectives_of_a_constant_score():
    # a score that ignores x has zero Jacobian: the losses reduce to their ½‖s‖² parts
    x = torch.randn(10, 3, generator=gen(0))
    c = torch.tensor([1.0, 2.0, 2.0])
    const = lambda x: c.expand_as(x)  # noqa: E731
    assert float(implicit_score_matching_loss(const, x)) == pytest.approx(4.5)
    v = sliced_score_matching_loss(const, x, n_projections=3, generator=gen(1), reduction="none")
    assert v.shape == (10,) and bool((v >= 0).all())
    # x enters the graph but the gradient is not connected to it
    assert float(implicit_score_matching_loss(lambda x: 0 * x.detach() + c, x)) == pytest.approx(4.5)


def test_sliced_reproducible():
    x = torch.randn(50, 2, generator=gen(0))
    a = sliced_score_matching_loss(pert_score, x, generator=gen(1))
    assert torch.equal(a, sliced_score_matching_loss(pert_score, x, generator=gen(1)))
    assert torch.isfinite(sliced_score_matching_loss(pert_score, x))


# -- validation ---------------------------------------------------------------------------------------


def test_bad_inputs_name_the_argument():
    sde = sd.VPSDE()
    x = torch.randn(8, 2)
    score = TARGET.score_fn(sde)
    cases = [
        (ValueError, "weighting", lambda: dsm_loss(score, sde, x, weighting="likelihood")),
        (ValueError, "eps", lambda: dsm_loss(score, sde, x, eps=1.0)),
        (ValueError, "eps", lambda: dsm_loss(score, sde, x, eps=0.0)),
        (ValueError, "importance_sampling", lambda: dsm_loss(score, sde, x, importance_sampling=True)),
        (ValueError, "reduction", lambda: dsm_loss(score, sde, x, reduction="sum")),
        (ValueError, "x0", lambda: dsm_loss(score, sde, torch.randn(8))),
        (ValueError, "x0", lambda: dsm_loss(score, sde, torch.full((8, 2), float("nan")))),
        (TypeError, "x0", lambda: dsm_loss(score, sde, [[0.0, 1.0]])),
        (TypeError, "model_or_score_fn", lambda: dsm_loss(None, sde, x)),
        (TypeError, "sde", lambda: dsm_loss(score, "vp", x)),
        (ValueError, "model_or_score_fn", lambda: dsm_loss(lambda x, t: x[:, 0], sde, x)),
        (TypeError, "schedule", lambda: ddpm_loss(lambda x, i: x, sde, x)),
        (TypeError, "eps_model", lambda: ddpm_loss(1, sde.discretize(100), x)),
        (ValueError, "eps_model", lambda: ddpm_loss(lambda x, i: x.sum(), sde.discretize(100), x)),
        (ValueError, "n_projections", lambda: sliced_score_matching_loss(data_score, x, n_projections=0)),
        (TypeError, "n_projections", lambda: sliced_score_matching_loss(data_score, x, n_projections=1.5)),
        (ValueError, "noise", lambda: sliced_score_matching_loss(data_score, x, noise="uniform")),
        (ValueError, "x", lambda: implicit_score_matching_loss(data_score, torch.full((2, 2), float("inf")))),
        (TypeError, "score_fn", lambda: implicit_score_matching_loss("s", x)),
        (ValueError, "score_fn", lambda: implicit_score_matching_loss(lambda x: x[:1], x)),
        (ValueError, "true_score", lambda: explicit_score_matching_loss(data_score, x, torch.zeros(3, 2))),
        (ValueError, "true_score", lambda: explicit_score_matching_loss(data_score, x, 0.0)),
        (ValueError, "reduction", lambda: explicit_score_matching_loss(data_score, x, data_score, reduction="x")),
    ]
    for exc, name, call in cases:
        with pytest.raises(exc, match=name):
            call()


def test_importance_sampling_needs_a_linear_sde():
    class Opaque(sd.SDE):  # an SDE known only through the generic interface
        def __init__(self):
            super().__init__(1.0)
            self.vp = sd.VPSDE()

        def _drift(self, x, t):
            return self.vp._drift(x, t)

        def _diffusion(self, t):
            return self.vp._diffusion(t)

        def _marginal(self, x0, t):
            return self.vp._marginal(x0, t)

        prior_std = 1.0

    sde = Opaque()
    x = torch.randn(8, 2)
    assert dsm_loss(TARGET.score_fn(sd.VPSDE()), sde, x, weighting="g2").ndim == 0
    with pytest.raises(TypeError, match="importance_sampling needs"):
        dsm_loss(TARGET.score_fn(sd.VPSDE()), sde, x, weighting="g2", importance_sampling=True)
