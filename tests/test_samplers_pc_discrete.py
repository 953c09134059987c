"""Predictor–corrector, annealed Langevin, DDPM and DDIM samplers against exact scores.

Statistical tolerances are derived from the sample size ``n`` (standard errors of the mode
statistics of :func:`scoresde.metrics.mode_statistics`, see ``_check_mixture``) plus an
explicit allowance for the sampler's own bias (time discretisation, the noise left at
``eps``, the O(ε) bias of unadjusted Langevin). Seeds are fixed.
"""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.metrics import mean_log_density, mode_statistics
from scoresde.samplers import (
    DDIM,
    DDPM,
    AnnealedLangevin,
    EpsilonScore,
    LangevinCorrector,
    PredictorCorrector,
    ReverseDiffusion,
)

N = 3000  # samples per distributional check


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The score of a 2-D mixture is a handful of tiny kernels: with intra-op threads on a
    # machine whose cores are shared with other test processes they spin and wait (measured
    # 40x slower). One thread keeps this module well under its time budget.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def target():
    return sd.imbalanced_2d()


@pytest.fixture(scope="module")
def expected_log_density(target):
    # E_p[log p] from 200 000 exact draws: its standard error (sd(log p) / 450 ≈ 0.003) is
    # negligible next to that of an n = 3000 sample.
    x = target.sample(200_000, generator=gen(11), dtype=torch.float64)
    logp = target.log_prob(x)
    return float(logp.mean()), float(logp.std())


def gaussian_2d() -> sd.Gaussian:
    """A correlated, anisotropic Gaussian (eigenvalues ≈ 0.34 and 0.016)."""
    return sd.Gaussian(torch.tensor([0.5, -0.3]), torch.tensor([[0.3, 0.1], [0.1, 0.05]]))


def _check_mixture(x, target, logp_ref, *, w_allow=0.01, m_allow=0.02, c_allow=0.1,
                   logp_allow=0.04):
    """Mode weights, means, covariances and mean log-density of ``x`` against ``target``.

    For exact samples and a mode of weight w, mean μ and covariance Σ (d = 2):

    - ŵ is a mean of n responsibilities in [0, 1]: SE ≤ sqrt(w(1-w)/n)            -> 4 SE;
    - m̂ averages ≈ n w points: E‖m̂ - μ‖² = tr Σ / (n w)                            -> 4 RMS;
    - Ĉ from ≈ n w Gaussian points: E‖Ĉ - Σ‖_F² = ((tr Σ)² + ‖Σ‖_F²) / (n w), a weighted χ²
      with 3 degrees of freedom, so 3 RMS is exceeded with probability ~1e-5;
    - the mean log-density has SE sd(log p)/sqrt(n)                                 -> 4 SE.

    The ``*_allow`` terms are the sampler's bias budget (weak order-1 time discretisation,
    the noise σ(eps) left at eps = 1e-3 — 0.01 for VP, which alone widens the tight mode by
    4% — and the unadjusted-Langevin bias of correctors). The tight mode (w = 0.15, std 0.05)
    is the sensitive one: its covariance error is the first to grow when a sampler blurs it
    (e.g. 0.45-0.55 for PC at the default snr against a tolerance of 0.35). At the settings of
    CASES every statistic stays below ~60% of its tolerance.
    """
    n = x.shape[0]
    stats = mode_statistics(x.double(), target)
    w = target.weights
    tol_w = 4 * torch.sqrt(w * (1 - w) / n) + w_allow
    assert bool(((stats["weights"] - w).abs() <= tol_w).all()), (stats["weights"], tol_w)
    tr = torch.diagonal(target.covariances, dim1=-2, dim2=-1).sum(-1)
    fro = torch.linalg.matrix_norm(target.covariances)
    tol_m = 4 * torch.sqrt(tr / (n * w)) + m_allow
    assert bool((stats["mean_error"] <= tol_m).all()), (stats["mean_error"], tol_m)
    tol_c = 3 * torch.sqrt((tr**2 + fro**2) / (n * w)) / fro + c_allow
    assert bool((stats["cov_error"] <= tol_c).all()), (stats["cov_error"], tol_c)
    mean_ref, sd_ref = logp_ref
    gap = abs(float(mean_log_density(x, target)) - mean_ref)
    assert gap <= 4 * sd_ref / math.sqrt(n) + logp_allow, gap
    return stats


def test_registered():
    for name, cls in [("reverse_diffusion", ReverseDiffusion), ("langevin", LangevinCorrector),
                      ("pc", PredictorCorrector), ("annealed_langevin", AnnealedLangevin),
                      ("ddpm", DDPM), ("ddim", DDIM)]:
        assert sd.samplers.SAMPLERS[name] is cls
        assert cls.name == name
        assert cls.__name__ in sd.samplers.__all__
    assert "EpsilonScore" in sd.samplers.__all__
    assert DDIM().stochastic is False and DDIM(eta=0.5).stochastic is True


# -- distributional checks on imbalanced_2d ------------------------------------------------
# The correctors run at snr = 0.05: at the default 0.16 the batch-averaged Langevin step is
# sized for the broad modes and, being unadjusted, widens the tight one by ~50% (THEORY §4;
# see test_default_snr_widens_tight_mode). Annealed Langevin is NCSN's setting (VE) with a
# larger snr and two steps per level: with less Langevin work per level the chain lags behind
# the shrinking p_t and the broad modes come out too wide.
CASES = [
    ("VPSDE", "reverse_diffusion", 500, {}),
    ("VPSDE", "pc", 300, {"snr": 0.05}),
    ("VPSDE", "pc", 300, {"snr": 0.05, "predictor": "euler_maruyama"}),
    ("SubVPSDE", "pc", 300, {"snr": 0.05}),
    ("VESDE", "pc", 300, {"snr": 0.05}),
    ("VESDE", "pc", 300, {"corrector": "annealed_langevin"}),
    ("VPSDE", "ddpm", 1000, {}),
    ("VPSDE", "ddpm", 1000, {"variance": "beta_tilde"}),
    ("CosineVPSDE", "ddpm", 1000, {}),
    ("VPSDE", "ddim", 200, {}),
    ("VPSDE", "ddim", 500, {"eta": 1.0}),
    ("VESDE", "annealed_langevin", 500, {"snr": 0.3, "n_steps": 2}),
]


@pytest.mark.parametrize(("sde_name", "sampler", "steps", "options"), CASES,
                         ids=[f"{c[1]}-{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_reproduces_imbalanced_2d(target, expected_log_density, sde_name, sampler, steps, options):
    sde = getattr(sd, sde_name)()
    out = sd.sample(sde, target.score_fn(sde), (N, 2), sampler=sampler, steps=steps,
                    generator=gen(0), **options)
    assert out.samples.shape == (N, 2)
    _check_mixture(out.samples, target, expected_log_density)


def test_default_snr_widens_tight_mode(target):
    # Unadjusted Langevin's O(ε) bias: the batch-averaged step at snr = 0.16 is about the tight
    # mode's variance, whose covariance then comes out ~50% too large; at snr = 0.05 (ε ten
    # times smaller) the bias drops below the sampling error. This is why CASES use 0.05.
    sde = sd.VPSDE()
    errs = {}
    for snr in (0.16, 0.05):
        out = sd.sample(sde, target.score_fn(sde), (N, 2), sampler="pc", steps=300, snr=snr,
                        generator=gen(0))
        errs[snr] = float(mode_statistics(out.samples, target)["cov_error"][2])
    assert errs[0.16] > 0.3 > errs[0.05]


# -- Langevin leaves p_t invariant (seed 002/003) ------------------------------------------
@pytest.mark.parametrize("corrector", [LangevinCorrector(snr=0.05, n_steps=500),
                                       AnnealedLangevin(snr=0.16, n_steps=500)], ids=repr)
def test_langevin_leaves_marginal_invariant(target, corrector):
    # Exact samples of p_t at t = 0.05 on VP, then 500 corrector steps with the exact score.
    # ULA's stationary variance along a direction of variance v is v / (1 - ε/(2v)): the
    # relative bias ε/(2v) is ~1% for LangevinCorrector at snr 0.05 (ε ≈ 7e-4, tightest
    # v ≈ 0.03) and at most snr² = 2.6% for AnnealedLangevin; c_allow = 0.04 covers both.
    sde = sd.VPSDE()
    t = 0.05
    p_t = target.marginal(sde, t)
    x0 = p_t.sample(N, generator=gen(2), dtype=torch.float64)
    x = corrector.correct(sde, target.score_fn(sde), x0.clone(), t, t - 0.002, generator=gen(3))
    logp = p_t.log_prob(p_t.sample(200_000, generator=gen(4), dtype=torch.float64))
    _check_mixture(x, p_t, (float(logp.mean()), float(logp.std())), w_allow=0.005,
                   m_allow=0.01, c_allow=0.04, logp_allow=0.02)
    # not vacuous: within each mode the chain moved about as far as the mode is wide
    resp = p_t.responsibilities(x0)
    moved = ((x - x0).norm(dim=1)[:, None] * resp).sum(0) / resp.sum(0)
    width = torch.diagonal(p_t.covariances, dim1=-2, dim2=-1).sum(-1).sqrt()
    assert bool((moved > 0.5 * width).all()), (moved, width)


def test_langevin_standalone_is_annealed_langevin_with_its_step_rule():
    # "langevin" as a sampler: the annealing loop over the grid, NFE = steps · n_steps; on a
    # Gaussian under VP (where the batch-averaged step is well behaved) it lands close to
    # the target (lag + ULA bias: loose tolerance).
    sde = sd.VPSDE()
    g = gaussian_2d()
    out = sd.sample(sde, g.score_fn(sde), (N, 2), sampler="langevin", steps=300, n_steps=2,
                    generator=gen(5))
    assert out.nfe == 600
    stats = mode_statistics(out.samples, g)
    assert float(stats["mean_error"][0]) < 0.1
    assert float(stats["cov_error"][0]) < 0.35


# -- DDPM, reverse diffusion, DDIM: pathwise comparisons ----------------------------------
def _rates(errors):
    return [errors[k] / errors[k + 1] for k in range(len(errors) - 1)]


def test_ddpm_matches_reverse_diffusion_first_order():
    # Same grid (DDPM's), same prior draw and noise. Per step the two differ at O(β_i²)
    # (1/sqrt(α_i) against 2 - sqrt(α_i), and the discrete β_i against the continuous
    # 1 - r²), so after N steps by O(1/N). Compared at t_1, before DDPM's noise-free last
    # step (reverse diffusion adds noise there too). Float64; a Gaussian target keeps the
    # flows contractive so the max over samples is a clean measure.
    sde = sd.VPSDE()
    score = gaussian_2d().score_fn(sde)
    x_T = sde.prior_sample((500, 2), generator=gen(6), dtype=torch.float64)
    errors = []
    for steps in (50, 100, 200):
        times = DDPM().grid(sde, steps, 1e-3, "uniform")
        states = {}

        def keep(name, steps=steps, states=states):
            def callback(i, t, x):
                if i == steps - 2:
                    states[name] = x.clone()
            return callback

        DDPM().run(sde, score, x_T.clone(), times, generator=gen(7), callback=keep("ddpm"))
        ReverseDiffusion().run(sde, score, x_T.clone(), times, generator=gen(7),
                               callback=keep("rd"))
        errors.append(float((states["ddpm"] - states["rd"]).abs().max()))
    assert errors[0] < 0.2, errors
    assert all(r > 1.7 for r in _rates(errors)), errors


def test_ddim_eta1_is_ddpm_with_posterior_variance():
    # With eta = 1, c² is the posterior variance and the DDIM step is DDPM's ancestral step
    # with beta_tilde (neither adds noise on the last step). On the same grid and noise they
    # differ only through continuous vs discrete schedule, O(1/N).
    sde = sd.VPSDE()
    score = gaussian_2d().score_fn(sde)
    x_T = sde.prior_sample((500, 2), generator=gen(8), dtype=torch.float64)
    errors = []
    for steps in (50, 100, 200):
        times = DDPM().grid(sde, steps, 1e-3, "uniform")
        a = DDPM(variance="beta_tilde").run(sde, score, x_T.clone(), times, generator=gen(9))
        b = DDIM(eta=1.0).run(sde, score, x_T.clone(), times, generator=gen(9))
        errors.append(float((a - b).abs().max()))
    assert errors[0] < 0.2, errors
    assert all(r > 1.7 for r in _rates(errors)), errors


def test_ddim_converges_to_flow_ode_first_order(target):
    # eta = 0 is a first-order solver of the probability-flow ODE: from the same prior draw
    # its endpoint approaches the ODE solution (Heun, 1000 steps: error ~1e-4) at rate ~1/N.
    # The median over samples ignores the few trajectories that pass close to a boundary
    # between modes, where the flow separates nearby points.
    sde = sd.VPSDE()
    score = target.score_fn(sde)
    x_T = sde.prior_sample((500, 2), generator=gen(10), dtype=torch.float64)
    ref = sd.sample(sde, score, (500, 2), sampler="heun", steps=1000, x_init=x_T).samples
    errors = []
    for steps in (25, 50, 100):
        out = sd.sample(sde, score, (500, 2), sampler="ddim", steps=steps, x_init=x_T)
        errors.append(float((out.samples - ref).abs().median()))
    assert errors[0] < 0.05, errors
    assert all(1.7 < r < 2.5 for r in _rates(errors)), errors


# -- the update rules, one step at a time --------------------------------------------------
def _one_step(sampler, sde, score_value, times, seed=12):
    x = torch.tensor([[0.3, -0.7], [1.1, 0.2]], dtype=torch.float64)
    first = {}

    def callback(i, t, x_now):
        if i == 0:
            first["x"] = x_now.clone()

    sampler.run(sde, lambda x_, t_: torch.full_like(x_, score_value), x.clone(), times,
                generator=gen(seed), callback=callback)
    z = torch.randn(x.shape, generator=gen(seed), dtype=torch.float64)
    return x, first["x"], z


def test_reverse_diffusion_step_vp_and_ve():
    times = torch.tensor([0.6, 0.55, 0.5], dtype=torch.float64)
    vp = sd.VPSDE()
    x, got, z = _one_step(ReverseDiffusion(), vp, 0.4, times)
    # VP: r = sqrt(alpha), G² = beta = 1 - alpha with alpha = exp(-∫β) over the step
    r = float(vp.mean_coeff(0.6) / vp.mean_coeff(0.55))
    beta = 1 - r**2
    torch.testing.assert_close(got, (2 - r) * x + beta * 0.4 + math.sqrt(beta) * z)
    ve = sd.VESDE()
    x, got, z = _one_step(ReverseDiffusion(), ve, 0.4, times)
    g2 = float(ve.std(0.6)) ** 2 - float(ve.std(0.55)) ** 2  # r = 1
    torch.testing.assert_close(got, x + g2 * 0.4 + math.sqrt(g2) * z, rtol=1e-5, atol=1e-8)


def test_ddim_step_is_eq12_for_vp():
    sde = sd.VPSDE()
    times = torch.tensor([0.6, 0.5, 0.4], dtype=torch.float64)
    ab, ab_next = (float(sde.mean_coeff(t)) ** 2 for t in (0.6, 0.5))
    for eta in (0.0, 0.7):
        x, got, z = _one_step(DDIM(eta=eta), sde, 0.4, times)
        eps_hat = -math.sqrt(1 - ab) * 0.4
        x0_hat = (x - math.sqrt(1 - ab) * eps_hat) / math.sqrt(ab)
        sig = eta * math.sqrt((1 - ab_next) / (1 - ab)) * math.sqrt(1 - ab / ab_next)
        want = math.sqrt(ab_next) * x0_hat + math.sqrt(1 - ab_next - sig**2) * eps_hat
        if eta > 0:
            want = want + sig * z
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_ddpm_step_is_algorithm_2():
    sde = sd.VPSDE()
    sched = sde.discretize(50)
    times = DDPM().grid(sde, 50, 1e-3, "uniform")
    assert times[0] == sde.T and times[-1] == 0.0 and len(times) == 51
    for variance, var in (("beta", sched.betas), ("beta_tilde", sched.posterior_variance)):
        x, got, z = _one_step(DDPM(variance=variance), sde, 0.4, times)
        b, a = float(sched.betas[-1]), float(sched.alphas[-1])
        eps = -math.sqrt(1 - float(sched.alphas_cumprod[-1])) * 0.4
        want = (x - b / math.sqrt(1 - float(sched.alphas_cumprod[-1])) * eps) / math.sqrt(a)
        torch.testing.assert_close(got, want + math.sqrt(float(var[-1])) * z)


def test_pc_without_corrector_is_its_predictor():
    sde = sd.VPSDE()
    score = gaussian_2d().score_fn(sde)
    a = sd.sample(sde, score, (64, 2), sampler="pc", corrector=None, steps=20, generator=gen(13))
    b = sd.sample(sde, score, (64, 2), sampler="reverse_diffusion", steps=20, generator=gen(13))
    assert a.nfe == b.nfe == 20
    torch.testing.assert_close(a.samples, b.samples)


def test_pc_with_sampler_objects():
    # predictor and corrector given as objects (a deterministic predictor, NCSN's corrector)
    sde = sd.VESDE()
    score = gaussian_2d().score_fn(sde)
    pc = PredictorCorrector(predictor=sd.samplers.EulerODE(),
                            corrector=AnnealedLangevin(snr=0.2, n_steps=2))
    assert "AnnealedLangevin(snr=0.2, n_steps=2)" in repr(pc)
    out = sd.sample(sde, score, (64, 2), sampler=pc, steps=30, generator=gen(15))
    assert out.nfe == 90 and bool(torch.isfinite(out.samples).all())
    # correct() takes its alpha from the grid step whichever way t_next lies
    x = torch.randn(8, 2, generator=gen(16))
    c = LangevinCorrector(snr=0.1)
    vp = sd.VPSDE()
    a = c.correct(vp, score, x, 0.5, 0.49, generator=gen(17))
    b = c.correct(vp, score, x, 0.5, 0.51, generator=gen(17))
    assert not torch.equal(a, b)  # different steps: (s(0.5)/s(0.49))² vs (s(0.51)/s(0.5))²


# -- EpsilonScore ---------------------------------------------------------------------------
def test_epsilon_score_feeds_ddpm(target):
    sde = sd.VPSDE()
    sched = sde.discretize(100)
    score = target.score_fn(sde)
    seen = []

    def eps_model(x, i):  # the exact ε-model of this schedule: ε = -sqrt(1 - ᾱ_i) · score
        seen.append(i)
        t = sched.times[i].to(x.dtype)
        return -torch.sqrt(1 - sched.alphas_cumprod[i]).to(x.dtype)[:, None] * score(x, t)

    wrapped = EpsilonScore(eps_model, sched)
    a = sd.sample(sde, wrapped, (200, 2), sampler="ddpm", steps=100, generator=gen(14),
                  dtype=torch.float64)
    b = sd.sample(sde, score, (200, 2), sampler="ddpm", steps=100, generator=gen(14),
                  dtype=torch.float64)
    torch.testing.assert_close(a.samples, b.samples)
    assert a.nfe == 100
    assert seen[0].dtype == torch.long and seen[0].shape == (200,)
    assert bool((seen[0] == 99).all()) and bool((seen[-1] == 0).all())
    # float32 times on the grid are recognised
    x = torch.zeros(3, 2)
    assert wrapped(x, torch.full((3,), 0.37)).shape == (3, 2)
    for bad in (0.375, 0.0):
        with pytest.raises(ValueError, match="t="):
            wrapped(x, bad)
    assert "N=100" in repr(wrapped)
    with pytest.raises(ValueError, match="t="):  # DDIM's default grid ends at eps = 1e-3
        sd.sample(sde, wrapped, (8, 2), sampler="ddim", steps=10, generator=gen(0))


# -- honest NFE, reproducibility ---------------------------------------------------------
@pytest.mark.parametrize(("sampler", "options", "per_step"), [
    ("pc", {"n_steps": 2}, 3),
    ("pc", {"predictor": "heun"}, 3),
    ("pc", {"corrector": "annealed_langevin", "n_steps": 3}, 4),
    ("reverse_diffusion", {}, 1),
    ("ddpm", {}, 1),
    ("ddim", {"eta": 0.5}, 1),
    ("annealed_langevin", {"n_steps": 3}, 3),
    ("langevin", {"n_steps": 2}, 2),
])
def test_nfe_and_reproducibility(sampler, options, per_step):
    sde = sd.VPSDE()
    score = gaussian_2d().score_fn(sde)
    # 40 steps: the discretised VP needs beta_max / N < 1
    runs = [sd.sample(sde, score, (32, 2), sampler=sampler, steps=40, generator=gen(seed),
                      **options) for seed in (1, 1, 2)]
    assert runs[0].nfe == 40 * per_step
    assert torch.equal(runs[0].samples, runs[1].samples)
    assert not torch.equal(runs[0].samples, runs[2].samples)


def test_trajectory_times():
    sde = sd.VPSDE()
    score = gaussian_2d().score_fn(sde)
    out = sd.sample(sde, score, (16, 2), sampler="ddpm", steps=50, trajectory=True,
                    generator=gen(0))
    assert out.trajectory.shape == (51, 16, 2)
    assert out.times[0] == sde.T and out.times[-1] == 0.0
    out = sd.sample(sde, score, (16, 2), sampler="pc", steps=20, trajectory=True, generator=gen(0))
    assert out.times[-1] == pytest.approx(1e-3)


# -- validation -----------------------------------------------------------------------------
@pytest.mark.parametrize(("make", "exc", "match"), [
    (lambda: LangevinCorrector(snr=0.0), ValueError, "snr"),
    (lambda: AnnealedLangevin(snr=-1.0), ValueError, "snr"),
    (lambda: PredictorCorrector(snr=float("nan")), ValueError, "snr"),
    (lambda: LangevinCorrector(n_steps=0), ValueError, "n_steps"),
    (lambda: PredictorCorrector(n_steps=1.5), TypeError, "n_steps"),
    (lambda: PredictorCorrector(predictor="nope"), ValueError, "predictor.*reverse_diffusion"),
    (lambda: PredictorCorrector(predictor=3), TypeError, "predictor"),
    (lambda: PredictorCorrector(predictor="ddpm"), ValueError, "predictor"),
    (lambda: PredictorCorrector(corrector="nope"), ValueError, "corrector.*langevin"),
    (lambda: PredictorCorrector(corrector=object()), TypeError, "corrector"),
    (lambda: DDIM(eta=-0.1), ValueError, "eta"),
    (lambda: DDPM(variance="large"), ValueError, "variance"),
    (lambda: EpsilonScore(3, sd.VPSDE().discretize(10 * 10)), TypeError, "eps_model"),
    (lambda: EpsilonScore(lambda x, i: x, sd.VPSDE()), TypeError, "schedule"),
])
def test_bad_options(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bad_runs():
    g = gaussian_2d()
    ve = sd.VESDE()
    with pytest.raises(TypeError, match="discretize"):
        sd.sample(ve, g.score_fn(ve), (4, 2), sampler="ddpm", steps=10)
    vp = sd.VPSDE()
    score = g.score_fn(vp)
    with pytest.raises(ValueError, match="kind"):
        sd.sample(vp, score, (4, 2), sampler="ddpm", steps=10, grid="log_snr")
    with pytest.raises(ValueError, match="steps"):
        sd.sample(vp, score, (4, 2), sampler="ddpm", steps=1)
    with pytest.raises(ValueError, match="times"):
        DDPM().run(vp, score, torch.zeros(4, 2), sd.samplers.time_grid(vp, 40))
    with pytest.raises(ValueError, match="times"):
        DDPM().run(vp, score, torch.zeros(4, 2), torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="eta"):  # c > sigma(t') on a coarse grid
        sd.sample(vp, score, (4, 2), sampler="ddim", steps=2, eta=3.0)
