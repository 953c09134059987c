"""The SDE family: closed-form marginals against simulation, Fokker–Planck, log-SNR, DDPM schedule."""

import math

import pytest
import torch

import scoresde as sd

ALL_SDES = {
    "ou": lambda: sd.OU(alpha=-1.0, sigma=1.0),
    "ou_scaled": lambda: sd.OU(alpha=-2.0, sigma=0.5),
    "vp": lambda: sd.VPSDE(),
    "subvp": lambda: sd.SubVPSDE(),
    "ve": lambda: sd.VESDE(),
    "cosine": lambda: sd.CosineVPSDE(),
    "edm": lambda: sd.EDMSDE(),
}


@pytest.fixture(params=sorted(ALL_SDES))
def sde(request):
    return ALL_SDES[request.param]()


def simulate_em(sde, x0, t_end, steps, generator):
    """Forward Euler–Maruyama of the SDE's own public drift/diffusion from 0 to t_end."""
    x = x0.clone()
    h = t_end / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), i * h, dtype=x.dtype)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = x + sde.drift(x, t) * h + sd.sde.bcast(sde.diffusion(t), x) * math.sqrt(h) * z
    return x


def em_moments(sde, m0, t_end, steps):
    """Exact mean and variance of the Euler–Maruyama chain of a linear SDE (no sampling):
    m ← (1 + a h) m,  v ← (1 + a h)² v + g² h."""
    h = t_end / steps
    grid = torch.arange(steps, dtype=torch.float64) * h
    a, g2 = sde.a(grid).tolist(), sde.g2(grid).tolist()
    m, v = m0, 0.0
    for ai, gi in zip(a, g2):
        m, v = (1 + ai * h) * m, (1 + ai * h) ** 2 * v + gi * h
    return m, v


def test_simulated_paths_match_the_euler_maruyama_moments(sde):
    # Monte-Carlo check of drift()/diffusion(): n paths of a 2-D state from a fixed x0 against
    # the exact moments of the same discrete chain, so only sampling error remains. Standard
    # errors: mean sqrt(v/n); variance (pooling 2n iid coordinates) v·sqrt(2/(2n)). Tolerance 5 SE.
    n, steps = 10_000, 200
    t = 0.9 * sde.T
    x0 = torch.tensor([[1.5, -0.5]], dtype=torch.float64)
    xt = simulate_em(sde, x0.expand(n, 2), t, steps, torch.Generator().manual_seed(1))
    m, v = em_moments(sde, x0[0], t, steps)
    assert torch.allclose(xt.mean(0), m, rtol=0, atol=5 * math.sqrt(v / n))
    assert abs(float(((xt - m) ** 2).mean()) - v) <= 5 * v * math.sqrt(2 / (2 * n))


@pytest.mark.parametrize("frac", [0.5, 0.9])
def test_euler_maruyama_moments_converge_to_the_closed_form_marginal(sde, frac):
    # Weak order 1: the discrete chain's mean and variance approach marginal() at rate O(h);
    # the error must shrink ~10x when the step shrinks 10x (we require at least 6x), and be
    # small in absolute terms at the fine step.
    t = frac * sde.T
    x0 = torch.tensor([1.5], dtype=torch.float64)
    mean, std = sde.marginal(x0[None], t)
    mean, var = float(mean), float(std) ** 2
    errs = []
    for steps in (1_000, 10_000):
        m, v = em_moments(sde, x0, t, steps)
        errs.append(abs(float(m) - mean) / (abs(mean) + 1e-12) + abs(v - var) / var)
    assert errs[1] < errs[0] / 6
    assert errs[1] < 5e-3


def _fokker_planck_residual(sde, target, x, t):
    """∂_t log p − [−a d − a x·∇log p + ½ g² (Δ log p + |∇ log p|²)] for p_t of a mixture."""
    logp_fn = target.log_prob_fn(sde)
    x = x.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    logp = logp_fn(x, t)
    grad_x, grad_t = torch.autograd.grad(logp.sum(), (x, t), create_graph=True)
    lap = torch.zeros_like(logp)
    for j in range(x.shape[1]):
        lap = lap + torch.autograd.grad(grad_x[:, j].sum(), x, retain_graph=True)[0][:, j]
    a, g2 = sde.a(t.detach()), sde.g2(t.detach())
    d = x.shape[1]
    rhs = -a * d - a * (x * grad_x).sum(1) + 0.5 * g2 * (lap + grad_x.pow(2).sum(1))
    return (grad_t - rhs).detach(), rhs.detach()


@pytest.mark.parametrize("target", [sd.imbalanced_2d(), sd.correlated_gaussian(d=3, rho=0.5)])
def test_marginal_density_solves_fokker_planck(sde, target):
    # ∂_t p = −∇·(f p) + ½ g² Δp, written for log p to stay well-scaled; exact up to float64.
    g = torch.Generator().manual_seed(0)
    n = 64
    t = sde.T * (0.05 + 0.9 * torch.rand(n, generator=g, dtype=torch.float64))
    x0 = target.sample(n, generator=g, dtype=torch.float64)
    mean, std = sde.marginal(x0, t)
    x = mean + std[:, None] * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    res, rhs = _fokker_planck_residual(sde, target, x, t)
    assert float(res.abs().max()) <= 1e-7 * (1 + float(rhs.abs().max()))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_exact_score_equals_autograd_of_log_density(sde, dtype, tol):
    target = sd.imbalanced_2d()
    g = torch.Generator().manual_seed(2)
    x = 2 * torch.randn(50, 2, generator=g, dtype=dtype)
    t = sde.T * torch.rand(50, generator=g, dtype=dtype).clamp_min(1e-3)
    xr = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(target.log_prob_fn(sde)(xr, t).sum(), xr)
    exact = target.score_fn(sde)(x, t)
    assert exact.dtype == dtype
    scale = 1 + float(auto.abs().max())
    assert float((exact - auto).abs().max()) <= tol * scale


def test_score_accepts_image_shaped_batches():
    sde = sd.VPSDE()
    target = sd.correlated_gaussian(d=4)
    x = torch.randn(5, 1, 2, 2, dtype=torch.float64)
    s_img = target.score_fn(sde)(x, 0.3)
    s_flat = target.score_fn(sde)(x.reshape(5, 4), 0.3)
    assert s_img.shape == x.shape
    torch.testing.assert_close(s_img.reshape(5, 4), s_flat)
    mean, std = sde.marginal(x, 0.3)
    assert mean.shape == x.shape and std.shape == (5,)
    assert sde.drift(x, 0.3).shape == x.shape


def test_prior_log_prob_integrates_to_one(sde):
    # 2-D trapezoid over ±9 prior standard deviations: the tails beyond hold < 1e-17 mass.
    L = 9 * sde.prior_std
    u = torch.linspace(-L, L, 721, dtype=torch.float64)
    xx, yy = torch.meshgrid(u, u, indexing="ij")
    p = sde.prior_log_prob(torch.stack([xx.ravel(), yy.ravel()], 1)).exp().reshape(721, 721)
    mass = torch.trapezoid(torch.trapezoid(p, u, dim=1), u)
    assert abs(float(mass) - 1.0) < 1e-6


def test_prior_sample_moments_and_reproducibility(sde):
    g = torch.Generator().manual_seed(3)
    x = sde.prior_sample((20_000, 2), generator=g, dtype=torch.float64)
    # std estimate: relative standard error sqrt(1/(2·40000)) ≈ 0.35%; tolerance 5 SE
    assert abs(float(x.std()) / sde.prior_std - 1) < 5 * math.sqrt(1 / (2 * x.numel()))
    again = sde.prior_sample((20_000, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(x, again)


def test_marginal_at_T_is_close_to_the_prior(sde):
    # the signal left at T is small against the prior's spread (VE keeps s = 1 but σ_max = 50)
    ones = torch.ones(1, 1, dtype=torch.float64)
    mean, std = sde.marginal(ones, sde.T)
    assert float(mean.abs()) < 0.03 * sde.prior_std
    assert abs(float(std) / sde.prior_std - 1) < 1e-4


def test_log_snr_round_trips_and_decreases(sde):
    t = torch.linspace(1e-4, 1, 200, dtype=torch.float64) * sde.T
    lam = sde.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all())
    torch.testing.assert_close(sde.t_from_log_snr(lam), t, atol=1e-9, rtol=0)
    # the generic bisection of LinearSDE agrees with each closed form
    torch.testing.assert_close(sd.LinearSDE._t_from_log_snr(sde, lam), t, atol=1e-9, rtol=0)
    assert float(sde.t_from_log_snr(lam[-1] - 5.0)) == pytest.approx(sde.T)
    assert math.isinf(float(sde.log_snr(0.0))) or sde.log_snr(0.0) > 10


def test_log_snr_float_input_and_nan():
    sde = sd.VPSDE()
    assert float(sde.t_from_log_snr(float(sde.log_snr(0.5)))) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="lam"):
        sde.t_from_log_snr(torch.tensor([float("nan")]))


class ConstantRateSDE(sd.LinearSDE):
    """A user-defined linear SDE (dx = −x/2 dt + dW) relying on the generic bisection for t(λ)."""

    @property
    def prior_std(self):
        return 1.0

    def _a(self, t):
        return torch.full_like(t, -0.5)

    def _g2(self, t):
        return torch.ones_like(t)

    def _log_mean_coeff(self, t):
        return -0.5 * t

    def _var(self, t):
        return -torch.expm1(-t)


def test_user_defined_linear_sde_uses_the_generic_inverse():
    sde = ConstantRateSDE(T=10.0)
    t = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    torch.testing.assert_close(sde.t_from_log_snr(sde.log_snr(t)), t, atol=1e-9, rtol=0)
    vp = sd.VPSDE(beta_min=1.0, beta_max=1.0, T=10.0)  # the same process
    torch.testing.assert_close(sde.std(t), vp.std(t))
    assert repr(sde) == "ConstantRateSDE(T=10)"


def test_reverse_and_probability_flow_drifts():
    sde = sd.VPSDE()
    target = sd.imbalanced_2d()
    score = target.score_fn(sde)
    x = torch.randn(8, 2, dtype=torch.float64)
    t = torch.full((8,), 0.4, dtype=torch.float64)
    f, g2, s = sde.drift(x, t), sde.g2(t)[:, None], score(x, t)
    torch.testing.assert_close(sde.reverse(score).drift(x, t), f - g2 * s)
    torch.testing.assert_close(sde.probability_flow(score).drift(x, t), f - 0.5 * g2 * s)
    torch.testing.assert_close(sde.reverse(score).diffusion(t), sde.diffusion(t))
    assert bool((sde.probability_flow(score).diffusion(t) == 0).all())
    with pytest.raises(TypeError, match="score_fn"):
        sde.reverse("not callable")


@pytest.mark.parametrize(
    "sde,expected",
    [
        (sd.OU(), {"a": -1.0, "g2": 1.0}),
        (sd.VESDE(sigma_min=0.01, sigma_max=50.0), {"a": 0.0}),
    ],
)
def test_coefficients_in_closed_form(sde, expected):
    t = torch.tensor([0.1, 0.5], dtype=torch.float64)
    for name, value in expected.items():
        torch.testing.assert_close(getattr(sde, name)(t), torch.full_like(t, value))


def test_table_of_theory_closed_forms():
    # THEORY §1: OU σ² = c²(e^{2αt} − 1)/(2α); VE σ² = σmin²((σmax/σmin)^{2t} − 1); sub-VP σ = 1 − s².
    t = torch.tensor([0.3], dtype=torch.float64)
    ou = sd.OU(alpha=-2.0, sigma=0.5)
    assert float(ou.std(t) ** 2) == pytest.approx(0.25 * (math.exp(-1.2) - 1) / -4.0)
    assert float(ou.mean_coeff(t)) == pytest.approx(math.exp(-0.6))
    ve = sd.VESDE(sigma_min=0.01, sigma_max=50.0)
    assert float(ve.std(t) ** 2) == pytest.approx(1e-4 * ((5000.0) ** 0.6 - 1))
    vp, sub = sd.VPSDE(), sd.SubVPSDE()
    s = float(vp.mean_coeff(t))
    assert s == pytest.approx(math.exp(-0.25 * 0.09 * 19.9 - 0.5 * 0.3 * 0.1))
    assert float(vp.std(t)) == pytest.approx(math.sqrt(1 - s**2))
    assert float(sub.std(t)) == pytest.approx(1 - s**2)
    assert sd.OU(alpha=-1.0).prior_std == pytest.approx(math.sqrt(0.5))


def test_ou_default_horizon_matches_stationary_law():
    for alpha in (-0.5, -1.0, -3.0):
        sde = sd.OU(alpha=alpha, sigma=2.0)
        assert float(sde.mean_coeff(sde.T)) == pytest.approx(1e-3)
        assert abs(float(sde.std(sde.T)) / sde.prior_std - 1) < 1e-6


def test_discrete_vp_schedule_is_ddpm_linear_schedule():
    sched = sd.VPSDE(beta_min=0.1, beta_max=20.0).discretize(1000)
    ddpm = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    torch.testing.assert_close(sched.betas, ddpm, atol=1e-15, rtol=0)
    torch.testing.assert_close(sched.alphas_cumprod, torch.cumprod(1 - ddpm, 0))
    assert sched.N == 1000 and float(sched.times[-1]) == 1.0
    # β̃_i = β_i (1 − ᾱ_{i−1})/(1 − ᾱ_i), with β̃_1 = 0
    abar = sched.alphas_cumprod
    torch.testing.assert_close(sched.posterior_variance[1:], ddpm[1:] * (1 - abar[:-1]) / (1 - abar[1:]))
    assert float(sched.posterior_variance[0]) == 0.0
    # the discrete chain is close to the continuous marginal, ᾱ_i ≈ s(t_i)², to O(1/N): the
    # Riemann sum of β_i against ∫β and the Σβ²/2 of log(1 − β)
    vp = sd.VPSDE()
    torch.testing.assert_close(abar, vp.mean_coeff(sched.times) ** 2, rtol=0, atol=1.5e-3)


def test_cosine_discretisation_hits_the_continuous_marginal():
    sde = sd.CosineVPSDE()
    sched = sde.discretize(50)
    torch.testing.assert_close(sched.alphas_cumprod, sde.mean_coeff(sched.times) ** 2)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: sd.OU(alpha=0.0), "alpha"),
        (lambda: sd.OU(alpha=1.0), "alpha"),
        (lambda: sd.OU(alpha=-1.0, sigma=0.0), "sigma"),
        (lambda: sd.OU(alpha=-1.0, T=-1.0), "T"),
        (lambda: sd.VPSDE(beta_min=5.0, beta_max=1.0), "beta_min"),
        (lambda: sd.VPSDE(beta_min=-0.1), "beta_min"),
        (lambda: sd.VPSDE(beta_max=float("nan")), "beta_max"),
        (lambda: sd.SubVPSDE(beta_min=2.0, beta_max=1.0), "beta_min"),
        (lambda: sd.VESDE(sigma_min=0.0), "sigma_min"),
        (lambda: sd.VESDE(sigma_min=60.0, sigma_max=50.0), "sigma_min"),
        (lambda: sd.CosineVPSDE(T=1.0), "T"),
        (lambda: sd.CosineVPSDE(s=-1.0), "s"),
        (lambda: sd.VPSDE().discretize(1), "N"),
        (lambda: sd.VPSDE().discretize(2), "N"),
    ],
)
def test_invalid_parameters_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: sd.OU(alpha="fast"), "alpha"),
        (lambda: sd.VPSDE(beta_min=None), "beta_min"),
        (lambda: sd.VPSDE().discretize(10.5), "N"),
        (lambda: sd.VPSDE().discretize(True), "N"),
    ],
)
def test_invalid_parameter_types_raise_type_error(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_bad_times_and_states():
    sde = sd.VPSDE()
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\]"):
        sde.drift(x, 1.5)
    with pytest.raises(ValueError, match="t must lie"):
        sde.marginal(x, torch.tensor([0.1, -0.2, 0.3]))
    with pytest.raises(ValueError, match=r"t must have shape \(3,\)"):
        sde.drift(x, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="t must be a float or a"):
        sde.drift(x, torch.zeros(3, 1))
    with pytest.raises(ValueError, match="t contains non-finite"):
        sde.diffusion(torch.tensor([float("nan")]))
    with pytest.raises(TypeError, match="t must be"):
        sde.diffusion("0.5")
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        sde.drift([[0.0, 0.0]], 0.5)
    with pytest.raises(TypeError, match="x0 must be a floating-point"):
        sde.marginal(torch.zeros(3, 2, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="x contains non-finite"):
        sde.prior_log_prob(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="x must have at least"):
        sde.drift(torch.tensor(1.0), 0.5)
    for bad in [(0, 2), (4,), (2.0, 3)]:
        with pytest.raises(ValueError, match="shape"):
            sde.prior_sample(bad)
    with pytest.raises(TypeError, match="shape"):
        sde.prior_sample(5)
    # a float32 rounding of T itself is accepted and clamped
    ou = sd.OU()
    t32 = torch.tensor([ou.T], dtype=torch.float32)
    assert float(ou.std(t32)) == pytest.approx(float(ou.std(ou.T)), rel=1e-5)
    # an integer tensor time is accepted
    assert sde.diffusion(torch.tensor([0, 1])).dtype == torch.get_default_dtype()


def test_reprs():
    assert repr(sd.VPSDE()) == "VPSDE(beta_min=0.1, beta_max=20, T=1)"
    assert repr(sd.OU(alpha=-2.0)).startswith("OU(alpha=-2, sigma=1, T=3.45")
    assert "sigma_max=50" in repr(sd.VESDE())
    assert "s=0.008" in repr(sd.CosineVPSDE())


def test_discrete_schedule_validation():
    t = torch.linspace(0.1, 1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="betas"):
        sd.DiscreteSchedule(betas=torch.tensor([0.1, 1.5, 0.2]), times=t)
    with pytest.raises(ValueError, match="betas"):
        sd.DiscreteSchedule(betas=torch.zeros(0), times=torch.zeros(0))
    with pytest.raises(ValueError, match="times"):
        sd.DiscreteSchedule(betas=torch.full((3,), 0.1), times=t[:2])


def test_scale_std_is_the_transition_of_marginal(sde):
    # marginal() is built on scale_std: mean = s(t) x0, std = σ(t), for every time and dtype
    t = torch.linspace(0.0, sde.T, 9, dtype=torch.float64)
    s, sigma = sde.scale_std(t)
    assert s.shape == sigma.shape == (9,) and s.dtype == sigma.dtype == torch.float64
    x0 = torch.randn(9, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, std = sde.marginal(x0, t)
    assert torch.equal(mean, s[:, None] * x0) and torch.equal(std, sigma)
    torch.testing.assert_close(s, sde.mean_coeff(t))
    torch.testing.assert_close(sigma, sde.std(t))
    assert float(s[0]) == 1.0 and float(sigma[0]) == 0.0  # no noise at t = 0
    # closed form at one time, from the table of the forward SDEs
    lam = sde.log_snr(t[1:])
    torch.testing.assert_close(torch.log(s[1:] / sigma[1:]), lam)
    # a float is a (1,) tensor of the default dtype
    s1, sig1 = sde.scale_std(0.5 * sde.T)
    assert s1.shape == sig1.shape == (1,) and s1.dtype == torch.get_default_dtype()
    torch.testing.assert_close(s1.double(), sde.mean_coeff(torch.tensor([0.5 * sde.T], dtype=torch.float64)))


def test_scale_std_validates_its_times():
    vp = sd.VPSDE()
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\]"):
        vp.scale_std(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="t contains non-finite"):
        vp.scale_std(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="t must be a float or a"):
        vp.scale_std(torch.zeros(2, 2))
    with pytest.raises(TypeError, match="t must be"):
        vp.scale_std("0.5")
    s, sigma = vp.scale_std(torch.tensor([1.0 + 1e-7]))  # float32 rounding of T is clamped
    torch.testing.assert_close((s, sigma), vp.scale_std(torch.tensor([1.0])))


@pytest.mark.parametrize("beta_max", [20.0, 10.0])
def test_discretize_names_the_smallest_N_that_works(beta_max):
    import math
    import re

    sde = sd.VPSDE(beta_max=beta_max)
    with pytest.raises(ValueError, match="smallest N that works") as info:
        sde.discretize(10)
    n_min = int(re.search(r"smallest N that works is (\d+)", str(info.value)).group(1))
    assert n_min == math.ceil(beta_max / 0.999)
    sde.discretize(n_min)  # works
    with pytest.raises(ValueError):
        sde.discretize(n_min - 1)
