"""DiscreteVPSDE: a discrete table as a VP SDE, exact at the table, consistent in between."""

import math

import pytest
import torch

import scoresde as sd

F64 = torch.float64


def _sde(N=50):
    # a short table that still reaches the prior (alpha-bar_{N-1} ≈ e^-10)
    return sd.DiscreteVPSDE.from_schedule("linear", N=N, beta_start=1e-3, beta_end=0.4)


def test_exact_at_the_table_and_at_zero():
    sde = _sde()
    tau = torch.arange(sde.N)
    t = sde.timestep_to_time(tau)
    assert t.dtype == F64 and torch.equal(t, (tau + 1).double() / sde.N)
    s, sigma = sde.scale_std(t)
    assert torch.allclose(s**2, sde.alphas_cumprod, rtol=1e-13, atol=0)
    assert torch.allclose(sigma**2, 1 - sde.alphas_cumprod, rtol=1e-13, atol=0)
    s0, sig0 = sde.scale_std(torch.zeros(1, dtype=F64))
    assert float(s0) == 1.0 and float(sig0) == 0.0
    assert float(sde.log_snr(0.0)) == math.inf
    assert sde.prior_std == 1.0 and sde.T == 1.0


def test_continuous_and_strictly_monotone_between_steps():
    sde = _sde()
    t = torch.linspace(0, 1, 20_001, dtype=F64)
    s, sigma = sde.scale_std(t)
    assert bool((s[1:] < s[:-1]).all()) and bool((sigma[1:] > sigma[:-1]).all())
    knots = torch.arange(1, sde.N, dtype=F64) / sde.N
    for side in (-1e-12, 1e-12):  # left and right limits at every knot agree
        sl, _ = sde.scale_std(knots + side)
        sk, _ = sde.scale_std(knots)
        assert float((sl - sk).abs().max()) < 1e-9


def test_drift_and_diffusion_are_consistent_with_the_marginals():
    # d log s/dt = a(t) and d sigma²/dt = 2 a sigma² + g² (Särkkä & Solin, eq. 6.2), checked by
    # central differences inside each segment; g² = beta = -d log alpha-bar/dt > 0.
    sde = _sde()
    k = torch.arange(sde.N, dtype=F64)
    t = (k + torch.rand(sde.N, dtype=F64, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1) / sde.N
    h = 1e-7
    s_p, v_p = (q for q in sde.scale_std(t + h))
    s_m, v_m = (q for q in sde.scale_std(t - h))
    dlogs = (torch.log(s_p) - torch.log(s_m)) / (2 * h)
    dvar = (v_p**2 - v_m**2) / (2 * h)
    a, g2 = sde.a(t), sde.g2(t)
    _, sig = sde.scale_std(t)
    assert torch.allclose(dlogs, a, rtol=1e-6, atol=0)
    assert torch.allclose(dvar, 2 * a * sig**2 + g2, rtol=1e-5, atol=0)
    assert bool((g2 > 0).all()) and torch.allclose(sde.diffusion(t) ** 2, g2)
    # the rate of segment k integrates to -log alpha_k: the one-step transition is the chain's
    betas = sde.discretize(sde.N).betas
    assert torch.allclose(g2 / sde.N, -torch.log1p(-betas), rtol=1e-12)


def test_a_fine_table_of_the_vp_sde_is_that_sde():
    vp = sd.VPSDE()
    N = 1000
    knots = torch.arange(1, N + 1, dtype=F64) / N
    sde = sd.DiscreteVPSDE(vp.mean_coeff(knots) ** 2)
    t = torch.rand(500, dtype=F64, generator=torch.Generator().manual_seed(1))
    for got, want in zip(sde.scale_std(t), vp.scale_std(t)):  # sigma is steepest near t = 0
        assert float((got - want).abs().max()) < 1e-4
    # piecewise-constant beta: within half a segment's change of the linear rate
    assert float((sde.g2(t) - vp.g2(t)).abs().max()) <= 0.5 * (vp.beta_max - vp.beta_min) / N + 1e-9


def test_log_snr_inverse_and_timesteps_both_ways():
    sde = _sde()
    t = torch.rand(1000, dtype=F64, generator=torch.Generator().manual_seed(2))
    assert float((sde.t_from_log_snr(sde.log_snr(t)) - t).abs().max()) < 1e-12
    lam_T = float(sde.log_snr(1.0))
    ends = sde.t_from_log_snr(torch.tensor([math.inf, lam_T - 5.0, lam_T], dtype=F64))
    assert ends.tolist()[:2] == [0.0, 1.0] and abs(float(ends[2]) - 1.0) < 1e-12
    tau = torch.tensor([-1.0, -0.5, 0.0, 12.25, 49.0], dtype=F64)
    back = sde.time_to_timestep(sde.timestep_to_time(tau))
    assert torch.allclose(back, tau, rtol=0, atol=1e-12)
    assert sde.timestep_to_time(torch.tensor([3.0], dtype=torch.float32)).dtype == torch.float32
    assert sde.time_to_timestep(0.5).ndim == 0 and float(sde.time_to_timestep(0.5)) == 24.0
    assert sde.time_to_timestep(torch.ones(2, 3)).shape == (2, 3)
    assert float(sde.timestep_to_time(0)) == 1 / 50
    assert sde.timestep_to_time(torch.tensor([], dtype=torch.int64)).numel() == 0
    assert sde.time_to_timestep(torch.tensor([])).numel() == 0


@pytest.mark.parametrize("call, match", [
    (lambda s: s.timestep_to_time(torch.tensor([50])), r"timesteps must lie in \[-1, N - 1\]"),
    (lambda s: s.timestep_to_time(torch.tensor([-2])), "timesteps must lie"),
    (lambda s: s.timestep_to_time(torch.tensor([float("nan")])), "timesteps must lie"),
    (lambda s: s.time_to_timestep(1.5), r"t must lie in \[0, T\]"),
    (lambda s: s.time_to_timestep(torch.tensor([-0.1])), "t must lie"),
    (lambda s: s.discretize(51), r"N must be an int in \[2, 50\]"),
    (lambda s: s.discretize(1), "N must be an int >= 2"),
])
def test_conversions_refuse_out_of_range(call, match):
    with pytest.raises(ValueError, match=match):
        call(_sde())


def test_conversions_refuse_bad_types():
    sde = _sde()
    with pytest.raises(TypeError, match="timesteps must be real"):
        sde.timestep_to_time(torch.tensor([True]))
    with pytest.raises(TypeError, match="t must be real"):
        sde.time_to_timestep(torch.tensor([True]))
    with pytest.raises(TypeError, match="t must be a float or a torch.Tensor"):
        sde.time_to_timestep("0.5")
    assert sde.time_to_timestep(torch.tensor([1])).dtype == torch.get_default_dtype()


def test_discretize_is_the_chain_on_a_subsampled_table():
    sde = _sde(N=50)
    full = sde.discretize(50)
    assert torch.allclose(full.alphas_cumprod, sde.alphas_cumprod, rtol=1e-13, atol=0)
    assert torch.allclose(full.times, sde.timestep_to_time(torch.arange(50)))
    sub = sde.discretize(7)  # steps round(i·50/7) - 1: uneven, last one at the table's end
    tau = [round(i * 50 / 7) - 1 for i in range(1, 8)]
    assert tau[-1] == 49
    assert torch.allclose(sub.alphas_cumprod, sde.alphas_cumprod[tau], rtol=1e-13, atol=0)
    assert torch.allclose(sub.times, torch.tensor(tau, dtype=F64).add(1) / 50)


def test_from_betas_and_named_schedules():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    sde = sd.DiscreteVPSDE.from_schedule("linear")
    assert torch.allclose(sde.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=1e-12)
    scaled = sd.DiscreteVPSDE.from_schedule("scaled_linear", N=10, beta_start=0.00085, beta_end=0.012)
    b = torch.linspace(0.00085**0.5, 0.012**0.5, 10, dtype=F64) ** 2
    assert torch.allclose(scaled.alphas_cumprod, torch.cumprod(1 - b, 0), rtol=1e-12)
    cos = sd.DiscreteVPSDE.from_schedule("squaredcos_cap_v2", N=1000)

    def f(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    assert abs(float(cos.alphas_cumprod[499]) / (f(0.5) / f(0.0)) - 1) < 1e-12
    assert "N=1000" in repr(cos)


@pytest.mark.parametrize("table, exc, match", [
    ([0.9, 0.5, 0.0], ValueError, "zero-terminal-SNR"),
    ([0.9, 0.95, 0.5], ValueError, r"strictly decreasing, but alphas_cumprod\[1\]"),
    ([1.0, 0.5], ValueError, r"must lie in \(0, 1\)"),
    ([0.9, -0.1], ValueError, r"must lie in \(0, 1\)"),
    ([0.5], ValueError, "at least 2 values"),
    ([[0.9, 0.5]], ValueError, "1-D table"),
    ([0.9, float("nan")], ValueError, "finite"),
    ("abc", TypeError, "1-D tensor or sequence"),
    (torch.tensor([True, False]), TypeError, "real tensor"),
])
def test_bad_tables_are_refused(table, exc, match):
    with pytest.raises(exc, match=match):
        sd.DiscreteVPSDE(table)


@pytest.mark.parametrize("kw, match", [
    ({"name": "sigmoid"}, "name must be one of"),
    ({"beta_end": 1.5}, r"beta_end must lie in \(0, 1\)"),
    ({"beta_start": 0.0}, "beta_start must be finite and > 0"),
    ({"N": 1}, "N must be an int >= 2"),
])
def test_bad_schedules_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        sd.DiscreteVPSDE.from_schedule(**kw)
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\)"):
        sd.DiscreteVPSDE.from_betas([0.5, 1.0])


def test_coefficients_follow_the_dtype_and_the_batch_shape():
    sde = _sde()
    t32 = torch.tensor([0.0, 0.3, 1.0])
    s, sigma = sde.scale_std(t32)
    assert s.dtype == torch.float32 and sigma.dtype == torch.float32
    assert sde.a(t32).dtype == torch.float32 and sde.drift(torch.ones(3, 2), t32).shape == (3, 2)


TARGET = sd.Gaussian(torch.tensor([1.0, -0.5], dtype=F64),
                     torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=F64))


@pytest.mark.parametrize("sampler, kw", [("ddpm", {"steps": 50}), ("euler_maruyama", {"steps": 200}),
                                         ("pc", {"steps": 50, "snr": 0.05}), ("dpm_solver_pp", {"steps": 20})])
def test_samplers_reach_the_target_on_the_discrete_sde(sampler, kw):
    # exact scores of a Gaussian under the discrete SDE; mean error tolerance 5 standard errors
    # plus the solver's bias, covariance within 5 SE of its entries (n = 4000)
    sde = _sde()
    n = 4000
    out = sd.sample(sde, TARGET.score_fn(sde), (n, 2), sampler=sampler, dtype=F64,
                    generator=torch.Generator().manual_seed(3), **kw)
    x = out.samples
    cov = TARGET.covariance
    se_mean = torch.sqrt(torch.diagonal(cov) / n)
    assert bool(((x.mean(0) - TARGET.mean).abs() <= 5 * se_mean + 0.02).all()), x.mean(0)
    se_cov = torch.sqrt((cov**2 + torch.outer(torch.diagonal(cov), torch.diagonal(cov))) / n)
    assert bool(((torch.cov(x.T) - cov).abs() <= 5 * se_cov + 0.02).all()), torch.cov(x.T)


def test_the_likelihood_on_the_discrete_sde_is_the_exact_log_density():
    # with the exact p_T as prior only the ODE error is left (measured 3e-4 at rtol 1e-5; the
    # rate's jumps at the 50 knots cost the adaptive solver ~600 evaluations)
    sde = _sde()
    x = TARGET.sample(4, generator=torch.Generator().manual_seed(4)).double()
    p_T = TARGET.marginal(sde, 1.0)
    # scipy's RK45: the torch dopri5 default (per-sample error control) is ~30x less accurate
    # across the rate's jumps at equal tolerance (1e-2 at 1e-5, 2e-3 at 1e-6), a known issue
    logp = sd.log_likelihood(sde, TARGET.score_fn(sde), x, rtol=1e-5, atol=1e-5, prior_log_prob=p_T.log_prob,
                             method="RK45")
    assert float((logp - TARGET.log_prob(x)).abs().max()) < 2e-3
