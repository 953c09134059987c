"""Variational bounds against exact answers: the continuous-time ELBO and DDPM's discrete bound.

Reference targets have exact scores and exact marginals, so the truth is known: with the exact
score and the exact ``p_T`` the continuous bound is tight, the discrete bound lies below
``log p`` and approaches it as the chain gets finer, a wrong score lowers the bound. Every
statistical check uses fixed seeds and a tolerance in units of the reported standard error.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

import scoresde as sd
from scoresde.elbo import ELBOResult, _log_prob_bin

# the module itself: ``sd.elbo`` (and ``import scoresde.elbo as m``) is the function of that name
ELBO_MODULE = sys.modules["scoresde.elbo"]

SDE = sd.VPSDE()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def imb():
    target = sd.imbalanced_2d()
    x = target.sample(24, generator=_gen(0), dtype=torch.float64)
    return target, x


def _exact_prior(target):
    log_pT = target.log_prob_fn(SDE)
    return lambda xT: log_pT(xT, SDE.T)


# -- the continuous bound is tight with the exact score ----------------------------------------


@pytest.mark.parametrize("form, time_sampling", [("denoising", "importance"), ("denoising", "uniform"),
                                                 ("divergence", "uniform"), ("divergence", "importance")])
def test_exact_score_gives_the_exact_log_density(imb, form, time_sampling):
    target, x = imb
    n = {("denoising", "importance"): 256, ("denoising", "uniform"): 2048}.get((form, time_sampling), 512)
    res = sd.elbo(SDE, target.score_fn(SDE), x, form=form, time_sampling=time_sampling, n_samples=n,
                  prior_log_prob=_exact_prior(target), generator=_gen(1))
    assert res.elbo.shape == (24,) and res.elbo.dtype == torch.float64
    mean, se = res.mean()
    truth = float(target.log_prob(x).mean())
    assert abs(mean - truth) < 3 * se, (mean, truth, se)
    assert se < 0.15
    assert res.nfe == 2 * n


def test_hutchinson_divergence_is_unbiased(imb):
    target, x = imb
    res = sd.elbo(SDE, target.score_fn(SDE), x, form="divergence", trace="hutchinson", noise="gaussian",
                  n_samples=256, prior_log_prob=_exact_prior(target), generator=_gen(2))
    mean, se = res.mean()
    assert abs(mean - float(target.log_prob(x).mean())) < 3 * se


def test_default_prior_is_lower_by_the_prior_mismatch():
    """With the SDE's N(0, I) the bound drops by E[log p_T(x_T) - log pi(x_T)], computed here by Monte Carlo.

    A short VP SDE (beta_max = 5, s(T) = 0.28) and a target away from 0 make the mismatch visible.
    """
    sde = sd.VPSDE(beta_max=5.0)
    target = sd.Gaussian(torch.tensor([2.5, -2.0]), torch.tensor([[0.3, 0.1], [0.1, 0.2]]))
    x = target.sample(16, generator=_gen(3), dtype=torch.float64)
    res = sd.elbo(sde, target.score_fn(sde), x, n_samples=512, generator=_gen(3))
    s, sig = float(sde.mean_coeff(sde.T)), float(sde.std(sde.T))
    z = torch.randn(20000, *x.shape, generator=_gen(4), dtype=torch.float64)
    xT = (s * x + sig * z).reshape(-1, 2)
    gap = (target.log_prob_fn(sde)(xT, sde.T) - sde.prior_log_prob(xT)).reshape(20000, -1).mean(0)
    assert float(gap.mean()) > 0.3
    mean, se = res.mean()
    assert abs(mean - float((target.log_prob(x) - gap).mean())) < 3 * se + 2e-3
    assert mean < float(target.log_prob(x).mean()) - 5 * se


def test_the_decoder_term_vanishes_for_smooth_data(imb):
    target, x = imb
    kw = dict(n_samples=256, prior_log_prob=_exact_prior(target))
    with_dec = sd.elbo(SDE, target.score_fn(SDE), x, generator=_gen(5), **kw)
    without = sd.elbo(SDE, target.score_fn(SDE), x, decoder=False, generator=_gen(5), **kw)
    assert without.nfe == 256 and with_dec.nfe == 512
    (m1, se1), (m0, se0) = with_dec.mean(), without.mean()
    assert abs(m1 - m0) < 3 * math.hypot(se1, se0)


def test_control_variate_keeps_the_mean_and_cuts_the_variance(imb):
    target, x = imb
    kw = dict(n_samples=256, prior_log_prob=_exact_prior(target))
    on = sd.elbo(SDE, target.score_fn(SDE), x, generator=_gen(6), **kw)
    off = sd.elbo(SDE, target.score_fn(SDE), x, control_variate=False, generator=_gen(6), **kw)
    (m1, se1), (m0, se0) = on.mean(), off.mean()
    assert abs(m1 - m0) < 3 * math.hypot(se1, se0)
    assert se1 < 0.6 * se0


def test_wrong_scores_lower_the_bound_significantly(imb):
    target, x = imb
    kw = dict(n_samples=256, prior_log_prob=_exact_prior(target))
    exact = sd.elbo(SDE, target.score_fn(SDE), x, generator=_gen(7), **kw)
    exact_score = target.score_fn(SDE)
    scaled = sd.elbo(SDE, lambda y, t: 0.7 * exact_score(y, t), x, generator=_gen(7), **kw)
    fit = sd.Gaussian(x.mean(0), torch.cov(x.T))  # moment-matched Gaussian: a different model
    gauss = sd.elbo(SDE, fit.score_fn(SDE), x, generator=_gen(7), **kw)
    (me, see) = exact.mean()
    for wrong in (scaled, gauss):
        mw, sew = wrong.mean()
        assert mw < me - 5 * math.hypot(see, sew), (mw, me)


def test_elbo_is_below_the_flow_ode_log_likelihood(imb):
    """The same exact model (and a moment-matched Gaussian model): ELBO <= ODE log-likelihood within noise."""
    target, x = imb
    x = x[:8]
    for score_fn, exact_T in ((target.score_fn(SDE), _exact_prior(target)), (None, None)):
        if score_fn is None:
            fit = sd.Gaussian(torch.tensor([0.3, -0.2]), torch.eye(2) * 0.8)
            score_fn, exact_T = fit.score_fn(SDE), _exact_prior(fit)
        res = sd.elbo(SDE, score_fn, x, n_samples=512, prior_log_prob=exact_T, generator=_gen(8))
        ll = sd.log_likelihood(SDE, score_fn, x, prior_log_prob=exact_T)
        assert bool((res.elbo <= ll + 3.5 * res.stderr + 1e-2).all())
        mean, se = res.mean()
        assert abs(mean - float(ll.mean())) < 3 * se + 1e-2  # both models are exact: tight


def test_standard_error_is_calibrated():
    """z = (estimate - truth) / stderr over repeated runs and points is ~ N(0, 1)."""
    target = sd.Gaussian(torch.tensor([0.5, -0.5]), torch.tensor([[1.0, 0.3], [0.3, 0.5]]))
    x = target.sample(20, generator=_gen(9), dtype=torch.float64)
    truth = target.log_prob(x)
    zs = []
    for seed in range(12):
        res = sd.elbo(SDE, target.score_fn(SDE), x, n_samples=256, prior_log_prob=_exact_prior(target),
                      generator=_gen(100 + seed))
        zs.append((res.elbo - truth) / res.stderr)
    z = torch.cat(zs)
    n = z.numel()
    assert abs(float(z.mean())) < 3 / math.sqrt(n)
    assert 0.85 < float(z.std()) < 1.2      # measured 1.04 over 800 runs (0.95 for imbalanced_2d)
    assert float((z.abs() > 3).float().mean()) < 0.02


def test_unstratified_standard_error_is_calibrated():
    target = sd.Gaussian(torch.zeros(2), 0.5 * torch.eye(2))
    x = target.sample(20, generator=_gen(10), dtype=torch.float64)
    zs = [(r.elbo - target.log_prob(x)) / r.stderr for r in (
        sd.elbo(SDE, target.score_fn(SDE), x, n_samples=63, stratified=False,
                prior_log_prob=_exact_prior(target), generator=_gen(200 + s)) for s in range(8))]
    z = torch.cat(zs)
    assert abs(float(z.mean())) < 3 / math.sqrt(z.numel())
    assert 0.8 < float(z.std()) < 1.25


def test_same_seed_same_result_and_honest_nfe(imb, monkeypatch):
    target, x = imb
    rows = []
    score = target.score_fn(SDE)

    def counted(y, t):
        rows.append(y.shape[0])
        return score(y, t)

    monkeypatch.setattr(ELBO_MODULE, "_MAX_ROWS", 100)  # several chunks of points
    a = sd.elbo(SDE, counted, x, n_samples=16, generator=_gen(11))
    assert a.nfe == sum(rows) // x.shape[0] == 32
    b = sd.elbo(SDE, score, x, n_samples=16, generator=_gen(11))
    assert torch.equal(a.elbo, b.elbo) and torch.equal(a.stderr, b.stderr)
    rows.clear()
    d = sd.ddpm_elbo(SDE, counted, x, steps=30, n_samples=2, n_terms=5, generator=_gen(12))
    assert d.nfe == sum(rows) // x.shape[0] == 2 * 6


def test_image_shaped_data_and_float32():
    target = sd.Gaussian(torch.zeros(4), 0.3 * torch.eye(4))
    x = target.sample(6, generator=_gen(13)).reshape(6, 1, 2, 2)          # float32, event (1, 2, 2)
    seen = []

    def score(y, t):
        seen.append((tuple(y.shape[1:]), y.dtype))
        return target.score_fn(SDE)(y, t)

    res = sd.elbo(SDE, score, x, n_samples=128, prior_log_prob=_exact_prior(target), generator=_gen(14))
    assert res.dim == 4 and res.elbo.dtype == torch.float64
    assert set(seen) == {((1, 2, 2), torch.float32)}
    mean, se = res.mean()
    assert abs(mean - float(target.log_prob(x.double().reshape(6, 4)).mean())) < 3 * se + 1e-3
    div = sd.elbo(SDE, score, x, form="divergence", trace="hutchinson", n_samples=64, generator=_gen(15))
    assert torch.isfinite(div.elbo).all()


# -- bits per dimension of discrete data --------------------------------------------------------


def test_dequantised_bits_per_dim_match_the_exact_answer():
    """8-bit data in [-1, 1]: bpd = -(E_u log p(y) + d log(2/256)) / (d ln 2), i.e. 7 bits of offset."""
    target = sd.Gaussian(torch.tensor([0.2, -0.1]), torch.tensor([[0.09, 0.02], [0.02, 0.04]]))
    levels = ((target.sample(16, generator=_gen(16), dtype=torch.float64) + 1) * 127.5).round().clamp(0, 255)
    x8 = levels / 127.5 - 1
    res = sd.elbo(SDE, target.score_fn(SDE), x8, n_samples=256, n_bins=256, prior_log_prob=_exact_prior(target),
                  generator=_gen(17))
    u = torch.rand(4000, *x8.shape, generator=_gen(18), dtype=torch.float64)
    y = -1 + (levels + u) * (2 / 256)
    exact_logp = target.log_prob(y.reshape(-1, 2)).reshape(4000, -1).mean(0)
    exact_bpd = -exact_logp / (2 * math.log(2)) + 7
    assert bool((res.elbo < 0).all())            # a bound on a probability of discrete levels
    diff = res.bits_per_dim - exact_bpd
    assert abs(float(diff.mean())) < 3 * float(res.bits_per_dim_stderr.square().sum().sqrt()) / 16 + 2e-3
    # without dequantisation the 'bits per dimension' of a continuous density is negative here
    assert float((-target.log_prob(x8) / (2 * math.log(2))).mean()) < 0 < float(res.bits_per_dim.mean())


def test_discrete_levels_are_checked():
    x = torch.tensor([[0.1234, 0.0]], dtype=torch.float64)
    exact = sd.Gaussian(torch.zeros(2), torch.eye(2)).score_fn(SDE)
    with pytest.raises(ValueError, match="levels"):
        sd.elbo(SDE, exact, x, n_bins=256)
    with pytest.raises(ValueError, match="data_range"):
        sd.elbo(SDE, exact, torch.zeros(1, 2), n_bins=256, data_range=(1.0, -1.0))
    with pytest.raises(TypeError, match="data_range"):
        sd.elbo(SDE, exact, torch.zeros(1, 2), n_bins=256, data_range="wide")


def test_result_conversions():
    res = ELBOResult(torch.tensor([-4 * math.log(2), -2 * math.log(2)], dtype=torch.float64),
                     torch.tensor([0.3, 0.4], dtype=torch.float64), nfe=3, dim=2)
    assert res.bits_per_dim.tolist() == pytest.approx([2.0, 1.0])
    assert res.bits_per_dim_stderr.tolist() == pytest.approx([0.3 / (2 * math.log(2)), 0.4 / (2 * math.log(2))])
    assert res.mean() == pytest.approx((-3 * math.log(2), 0.25))


# -- the discrete DDPM bound --------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddpm_runs(imb):
    target, x = imb
    x = x[:16]
    out = {}
    for N in (25, 100, 1000):
        out[N] = sd.ddpm_elbo(SDE, target.score_fn(SDE), x, steps=N, generator=_gen(N))
    return target, x, out


def test_ddpm_bound_is_a_bound_and_tightens_with_steps(ddpm_runs):
    target, x, runs = ddpm_runs
    truth = float(target.log_prob(x).mean())
    gaps = {}
    for N, res in runs.items():
        mean, se = res.mean()
        assert mean < truth + 3 * se, (N, mean, truth)
        gaps[N] = (truth - mean, se)
        assert res.nfe == 8 * N
    # measured: 25 steps lose nats, 1000 steps are within ~0.1 nats of log p (= the tight continuous bound)
    assert gaps[25][0] > gaps[100][0] + 3 * math.hypot(gaps[25][1], gaps[100][1])
    assert gaps[100][0] > gaps[1000][0] - 3 * math.hypot(gaps[100][1], gaps[1000][1])
    assert gaps[1000][0] < 0.3


def test_beta_tilde_variance_is_looser_for_smooth_data(ddpm_runs):
    target, x, runs = ddpm_runs
    tilde = sd.ddpm_elbo(SDE, target.score_fn(SDE), x, steps=100, variance="beta_tilde", generator=_gen(19))
    (mb, seb), (mt, set_) = runs[100].mean(), tilde.mean()
    assert mt < mb - 3 * math.hypot(seb, set_)


def test_ddpm_control_variate_keeps_the_mean_and_cuts_the_variance(ddpm_runs):
    target, x, runs = ddpm_runs
    off = sd.ddpm_elbo(SDE, target.score_fn(SDE), x, steps=1000, control_variate=False, generator=_gen(30))
    (m1, se1), (m0, se0) = runs[1000].mean(), off.mean()
    assert abs(m1 - m0) < 3 * math.hypot(se1, se0)
    assert se1 < 0.5 * se0


def test_stratified_sum_over_steps_is_unbiased(ddpm_runs):
    target, x, runs = ddpm_runs
    strat = sd.ddpm_elbo(SDE, target.score_fn(SDE), x, steps=1000, n_terms=50, n_samples=16, generator=_gen(20))
    assert strat.nfe == 16 * 51
    (m1, se1), (m0, se0) = strat.mean(), runs[1000].mean()
    assert abs(m1 - m0) < 3 * math.hypot(se1, se0)
    same = sd.ddpm_elbo(SDE, target.score_fn(SDE), x, steps=25, n_terms=24, generator=_gen(25))
    assert torch.equal(same.elbo, runs[25].elbo)      # as many strata as terms: the exact sum


def test_ddpm_score_time_grid_and_cosine_schedule(imb):
    target, x = imb
    res = sd.ddpm_elbo(SDE, target.score_fn(SDE), x[:8], steps=200, score_time="grid", generator=_gen(21))
    mean, se = res.mean()
    assert mean < float(target.log_prob(x[:8]).mean()) + 3 * se
    cos = sd.CosineVPSDE()
    res = sd.ddpm_elbo(cos, target.score_fn(cos), x[:8], steps=200, generator=_gen(22))
    mean, se = res.mean()
    assert mean < float(target.log_prob(x[:8]).mean()) + 3 * se


def test_ddpm_prior_term_by_monte_carlo_matches_the_closed_form(imb):
    class CustomPriorVP(sd.VPSDE):
        def prior_log_prob(self, x):
            return super().prior_log_prob(x)

    target, x = imb
    a = sd.ddpm_elbo(SDE, target.score_fn(SDE), x[:8], steps=50, n_samples=16, generator=_gen(23))
    sde = CustomPriorVP()
    b = sd.ddpm_elbo(sde, target.score_fn(sde), x[:8], steps=50, n_samples=16, generator=_gen(23))
    (ma, sea), (mb, seb) = a.mean(), b.mean()
    assert abs(ma - mb) < 3 * math.hypot(sea, seb)
    c = sd.elbo(sde, target.score_fn(sde), x[:8], n_samples=128, generator=_gen(24))   # MC prior in elbo
    assert torch.isfinite(c.elbo).all()


def test_discretised_decoder_bin_masses():
    x0 = torch.tensor([-1.0, -1.0 + 2 / 255, 0.0, 1.0], dtype=torch.float64)
    mean = torch.tensor([-0.99, 0.5, 0.003, 0.9], dtype=torch.float64)
    std, half = 0.01, 1 / 255
    got = _log_prob_bin(x0, mean, std, half, -1.0, 1.0).exp()
    normal = torch.distributions.Normal(mean, std)
    want = normal.cdf(x0 + half) - normal.cdf(x0 - half)
    want[0] = normal.cdf(x0 + half)[0]                                   # the outer bins are open
    want[3] = torch.special.log_ndtr((mean - x0 + half) / std)[3].exp()  # 1 - Φ, without cancellation
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-300)
    far = _log_prob_bin(torch.tensor([0.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64),
                        0.01, half, -1.0, 1.0)
    assert torch.isfinite(far).all() and float(far) < -1000    # 50 std away, still a finite log


def test_ddpm_on_8_bit_data_bounds_the_discrete_probability():
    target = sd.Gaussian(torch.tensor([0.2, -0.1]), torch.tensor([[0.09, 0.02], [0.02, 0.04]]))
    levels = ((target.sample(16, generator=_gen(26), dtype=torch.float64) + 1) * 127.5).round().clamp(0, 255)
    x8 = levels / 127.5 - 1
    disc = sd.ddpm_elbo(SDE, target.score_fn(SDE), x8, steps=200, decoder="discretized", generator=_gen(27))
    deq = sd.ddpm_elbo(SDE, target.score_fn(SDE), x8, steps=200, n_bins=256, generator=_gen(28))
    cont = sd.elbo(SDE, target.score_fn(SDE), x8, n_bins=256, n_samples=128, generator=_gen(29))
    for res in (disc, deq):
        assert bool((res.elbo < 3 * res.stderr).all())
        # both map the same density to the 256 levels: within a few tenths of a bit of the continuous bound
        assert abs(float(res.bits_per_dim.mean() - cont.bits_per_dim.mean())) < 0.3


# -- bad input --------------------------------------------------------------------------------


def test_bad_input_is_rejected():
    exact = sd.Gaussian(torch.zeros(2), torch.eye(2)).score_fn(SDE)
    x = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="x contains non-finite"):
        sd.elbo(SDE, exact, torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="x must have at least 2"):
        sd.elbo(SDE, exact, torch.zeros(3))
    with pytest.raises(ValueError, match="non-empty"):
        sd.elbo(SDE, exact, torch.zeros(0, 2))
    with pytest.raises(ValueError, match="score_fn must return a tensor shaped like x"):
        sd.elbo(SDE, lambda y, t: y[:, :1], x)
    with pytest.raises(TypeError, match="sde"):
        sd.elbo("vp", exact, x)
    with pytest.raises(TypeError, match="score_fn"):
        sd.elbo(SDE, None, x)
    with pytest.raises(TypeError, match="generator"):
        sd.elbo(SDE, exact, x, generator=0)
    with pytest.raises(ValueError, match="form"):
        sd.elbo(SDE, exact, x, form="dsm")
    with pytest.raises(ValueError, match="n_samples must be even"):
        sd.elbo(SDE, exact, x, n_samples=7)
    with pytest.raises(ValueError, match="n_samples"):
        sd.elbo(SDE, exact, x, n_samples=1)
    with pytest.raises(ValueError, match="eps"):
        sd.elbo(SDE, exact, x, eps=2.0)
    with pytest.raises(TypeError, match="prior_log_prob"):
        sd.elbo(SDE, exact, x, prior_log_prob=3)
    with pytest.raises(ValueError, match="prior_log_prob must return"):
        sd.elbo(SDE, exact, x, prior_log_prob=lambda xT: xT)
    with pytest.raises(ValueError, match="differentiable"):
        sd.elbo(SDE, lambda y, t: exact(y, t).detach(), x, form="divergence")
    with pytest.raises(ValueError, match="steps=10 is too small"):
        sd.ddpm_elbo(SDE, exact, x, steps=10)
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        sd.ddpm_elbo(SDE, exact, x, steps=1)
    with pytest.raises(TypeError, match="discretize"):
        sd.ddpm_elbo(sd.VESDE(), exact, x, steps=100)
    with pytest.raises(ValueError, match="variance"):
        sd.ddpm_elbo(SDE, exact, x, steps=100, variance="learned")
    with pytest.raises(ValueError, match="levels"):
        sd.ddpm_elbo(SDE, exact, x + 0.001, steps=100, decoder="discretized")
    with pytest.raises(ValueError, match="n_terms"):
        sd.ddpm_elbo(SDE, exact, x, steps=100, n_terms=0)
