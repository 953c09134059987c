"""The scipy flow-ODE sampler ("ode") and the torchsde backend ("torchsde") against exact scores.

Statistical tolerances follow from the sample size ``n`` (fixed seeds throughout). For a mode
of weight ``w``, covariance ``Σ`` and so ``m = n·w`` samples, the soft-assignment estimators of
:func:`scoresde.metrics.mode_statistics` have standard errors

- weight:      sqrt(w(1 - w)/n)                                   (binomial),
- mean:        sqrt(tr Σ / m)                                     (RMS of ‖m̂ - μ‖),
- covariance:  sqrt(Σ_ij (Σ_ii Σ_jj + Σ_ij²) / m) / ‖Σ‖_F         (RMS of ‖Ĉ - Σ‖_F / ‖Σ‖_F,
               from Var Ĉ_ij = (Σ_ii Σ_jj + Σ_ij²)/m for Gaussian data),

and a correct sampler must land within 4 standard errors (a 4σ band misses with probability
~1e-4 per statistic) plus an allowance for the sampler's discretisation error, stated at each
test. The reference is the exact law at the end time ``eps`` (``target.marginal(sde, eps)``), so
the ``σ(eps)²`` blur every sampler stops at is not mistaken for an error.
"""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde import metrics
from scoresde.samplers import NonFiniteError, ProbabilityFlowODE, TorchSDE, time_grid

EPS = 1e-3


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _Counter:
    """A score function that counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


@pytest.fixture(scope="module")
def vp():
    return sd.VPSDE()


@pytest.fixture(scope="module")
def imbalanced(vp):
    target = sd.imbalanced_2d()
    return target, target.score_fn(vp), target.marginal(vp, EPS)


def _assert_modes(x, ref, *, weight_slack, mean_slack, cov_slack):
    """Per-mode weights, means and covariances within 4 standard errors + the slack."""
    n = x.shape[0]
    stats = metrics.mode_statistics(x, ref)
    w = ref.weights
    for k in range(ref.n_components):
        cov = ref.covariances[k]
        m = n * float(w[k])
        se_w = math.sqrt(float(w[k] * (1 - w[k])) / n)
        se_mean = math.sqrt(float(torch.trace(cov)) / m)
        var_entries = torch.outer(cov.diagonal(), cov.diagonal()) + cov**2
        se_cov = math.sqrt(float(var_entries.sum()) / m) / float(torch.linalg.matrix_norm(cov))
        got_w = float(stats["weights"][k])
        assert abs(got_w - float(w[k])) <= 4 * se_w + weight_slack, (k, got_w, float(w[k]))
        assert float(stats["mean_error"][k]) <= 4 * se_mean + mean_slack, (k, stats["mean_error"])
        assert float(stats["cov_error"][k]) <= 4 * se_cov + cov_slack, (k, stats["cov_error"])


# ---------------------------------------------------------------------------------------
# scipy probability-flow ODE
# ---------------------------------------------------------------------------------------
def test_ode_reproduces_imbalanced_2d(vp, imbalanced):
    target, score, ref = imbalanced
    n = 3000
    out = sd.sample(vp, score, (n, 2), sampler="ode", steps=1, generator=_gen(0), eps=EPS)
    assert out.samples.shape == (n, 2) and out.samples.dtype == torch.float32
    assert 30 < out.nfe < 1000
    # At rtol = atol = 1e-5 the flow map is accurate to ~2e-3 in the worst sample (measured
    # against rtol = 1e-9), a few % of the tight mode's std 0.05: allowances well below the
    # 4σ bands (0.036 for the weights, 0.014 for the tight mode's mean).
    _assert_modes(out.samples, ref, weight_slack=0.005, mean_slack=0.005, cov_slack=0.03)

    # mean log-density against the exact value: E_ref[log p] estimated from 5e4 exact draws
    # (SE ~0.007); the sampler's average of n values has SE std(log p)/sqrt(n) ≈ 0.027.
    exact = ref.log_prob(ref.sample(50_000, generator=_gen(1), dtype=torch.float64))
    se = float(exact.std()) * math.sqrt(1 / n + 1 / exact.numel())
    got = float(metrics.mean_log_density(out.samples, ref))
    assert abs(got - float(exact.mean())) <= 4 * se + 0.01


def _flow_map(vp, mu, var, x_T, t):
    """Closed-form probability-flow map of N(mu, diag(var)) data: x_T -> x_t (float64)."""

    def coeffs(s_time):
        tt = torch.tensor(s_time, dtype=torch.float64)
        s = vp.mean_coeff(tt)
        return s, s**2 * var + vp.std(tt) ** 2

    s_T, c_T = coeffs(vp.T)
    s_t, c_t = coeffs(t)
    # all matrices diagonal, hence commuting: x_t - s_t μ = C_t^{1/2} C_T^{-1/2} (x_T - s_T μ)
    return s_t * mu + (c_t / c_T).sqrt() * (x_T - s_T * mu)


def test_ode_is_the_closed_form_flow_map(vp):
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    var = torch.tensor([0.04, 1.0, 2.25], dtype=torch.float64)
    score = sd.Gaussian(mu, torch.diag(var)).score_fn(vp)
    x_T = torch.randn(256, 3, generator=_gen(3), dtype=torch.float64)
    exact = _flow_map(vp, mu, var, x_T, EPS)
    scale = 1.0 + float(exact.abs().max())

    errors = {}
    for tol in (1e-3, 1e-6):
        out = sd.sample(vp, score, x_T.shape, sampler="ode", steps=4, x_init=x_T, eps=EPS,
                        rtol=tol, atol=tol, trajectory=True)
        assert out.samples.dtype == torch.float64
        errors[tol] = float((out.samples - exact).abs().max())
        # local error control at rtol: global error a small multiple of rtol (measured ~0.4)
        assert errors[tol] <= 10 * tol * scale, (tol, errors[tol])
        # the dense output at every grid time follows the flow map too
        grid = time_grid(vp, 4, eps=EPS)
        torch.testing.assert_close(out.times, grid)
        for state, t in zip(out.trajectory[1:], grid[1:].tolist(), strict=True):
            expected = _flow_map(vp, mu, var, x_T, t)
            assert float((state - expected).abs().max()) <= 10 * tol * scale
    assert errors[1e-6] < errors[1e-3] / 100


@pytest.fixture(scope="module")
def small_rk45(vp, imbalanced):
    _, score, _ = imbalanced
    x_T = torch.randn(16, 2, generator=_gen(5), dtype=torch.float64)
    out = sd.sample(vp, score, x_T.shape, sampler="ode", steps=1, x_init=x_T, rtol=1e-6, atol=1e-6)
    return x_T, out.samples


@pytest.mark.parametrize("method", ["RK23", "RK45", "DOP853", "Radau", "BDF", "LSODA"])
def test_ode_methods_agree_and_count_nfe(vp, imbalanced, small_rk45, method):
    _, score, _ = imbalanced
    x_T, reference = small_rk45
    counted = _Counter(score)
    sampler = ProbabilityFlowODE(method=method, rtol=1e-6, atol=1e-6)
    out = sd.sample(vp, counted, x_T.shape, sampler=sampler, steps=1, x_init=x_T)
    # every method is accurate to ~1e-5 at this tolerance (measured); 1e-3 is the loose bar
    assert float((out.samples - reference).abs().max()) < 1e-3
    assert out.nfe == counted.calls > 10


def test_ode_runs_directly_without_callback(vp, imbalanced):
    _, score, ref = imbalanced
    x = vp.prior_sample((64, 2), generator=_gen(2))
    times = time_grid(vp, 3, eps=EPS)
    with torch.no_grad():
        y = ProbabilityFlowODE(rtol=1e-4, atol=1e-4).run(vp, score, x, times)
    assert y.shape == x.shape and y.dtype == x.dtype and bool(torch.isfinite(y).all())


def test_ode_nonfinite_and_failed_solve(vp):
    def nan_score(x, t):
        return torch.full_like(x, float("nan"))

    with pytest.raises(NonFiniteError, match=r"t=1\b"):
        sd.sample(vp, nan_score, (4, 2), sampler="ode", steps=2)
    # called directly (no driver checking the score), the sampler stops on its own
    with torch.no_grad(), pytest.raises(NonFiniteError, match=r"non-finite drift at t=1\b"):
        ProbabilityFlowODE().run(vp, nan_score, torch.zeros(4, 2), time_grid(vp, 2))

    def wild_score(x, t):  # finite but varying on a scale no step size can resolve
        return (1e30 * torch.sin(1e30 * t))[:, None].expand_as(x)

    with pytest.raises(RuntimeError, match="solve_ivp .*failed"):
        sd.sample(vp, wild_score, (4, 1), sampler="ode", steps=2, dtype=torch.float64)


def test_ode_cost_does_not_depend_on_steps_without_callback(vp, imbalanced, monkeypatch):
    """Without a callback only the end point is asked of scipy (no dense output on the grid)."""
    import scipy.integrate

    real, asked = scipy.integrate.solve_ivp, []

    def spy(*args, **kwargs):
        asked.append(len(kwargs["t_eval"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(scipy.integrate, "solve_ivp", spy)
    _, score, _ = imbalanced
    x = vp.prior_sample((32, 2), generator=_gen(4), dtype=torch.float64)
    runs = {}
    for steps in (1, 500):
        counted = _Counter(score)
        with torch.no_grad():
            y = ProbabilityFlowODE().run(vp, counted, x, time_grid(vp, steps, eps=EPS))
        runs[steps] = y, counted.calls
    assert asked == [1, 1]
    assert torch.equal(runs[1][0], runs[500][0]) and runs[1][1] == runs[500][1]
    # with a callback: the dense solution at every grid time, the same end point
    seen = []
    grid = time_grid(vp, 500, eps=EPS)
    with torch.no_grad():
        y = ProbabilityFlowODE().run(vp, score, x, grid, callback=lambda i, t, s: seen.append((i, t)))
    assert asked[-1] == 501
    assert [i for i, _ in seen] == list(range(500)) and [t for _, t in seen] == grid[1:].tolist()
    torch.testing.assert_close(y, runs[1][0], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------
# torchsde backend
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "steps", "nfe_per_step"), [("euler", 100, 1), ("srk", 25, 4)])
def test_torchsde_reproduces_imbalanced_2d(vp, imbalanced, method, steps, nfe_per_step):
    _, score, ref = imbalanced
    out = sd.sample(vp, score, (2000, 2), sampler="torchsde", method=method, steps=steps,
                    grid="quadratic", generator=_gen(11))
    assert out.nfe == nfe_per_step * steps
    # 100 (euler) / 25 (srk) quadratic-grid steps: measured discretisation errors ≤ 0.02 in
    # weights, ≤ 0.01 in means and ≤ 0.15 in the tight mode's covariance (4σ band there: 0.4).
    _assert_modes(out.samples, ref, weight_slack=0.02, mean_slack=0.01, cov_slack=0.05)


def test_torchsde_milstein_is_euler_for_additive_noise(vp, imbalanced):
    _, score, _ = imbalanced
    runs = {
        m: sd.sample(vp, score, (256, 2), sampler="torchsde", method=m, steps=20, generator=_gen(4))
        for m in ("euler", "milstein")
    }
    torch.testing.assert_close(runs["milstein"].samples, runs["euler"].samples, rtol=0, atol=1e-6)
    assert runs["milstein"].nfe == runs["euler"].nfe == 20


def test_torchsde_same_seed_same_samples(vp, imbalanced):
    _, score, _ = imbalanced

    def draw(seed, method="srk"):
        return sd.sample(vp, score, (128, 2), sampler="torchsde", method=method, steps=10,
                         generator=_gen(seed)).samples

    assert torch.equal(draw(7), draw(7))
    assert torch.equal(draw(7, "euler"), draw(7, "euler"))
    assert not torch.allclose(draw(7), draw(8))
    # and the noise, not only the prior draw, comes from the generator
    x_T = vp.prior_sample((128, 2), generator=_gen(0))
    a, b = (sd.sample(vp, score, x_T.shape, sampler="torchsde", steps=10, x_init=x_T,
                      generator=_gen(s)).samples for s in (1, 2))
    assert not torch.allclose(a, b)


def test_torchsde_adaptive_runs_and_counts(vp, imbalanced):
    _, score, ref = imbalanced
    counted = _Counter(score)
    out = sd.sample(vp, counted, (512, 2), sampler="torchsde", adaptive=True, rtol=1e-2,
                    atol=1e-2, steps=5, generator=_gen(3), trajectory=True)
    assert out.nfe == counted.calls > 10
    assert out.trajectory.shape == (6, 512, 2)
    torch.testing.assert_close(out.times, time_grid(vp, 5, eps=EPS))
    assert bool(torch.isfinite(out.samples).all())
    assert float(metrics.mode_statistics(out.samples, ref)["weight_error"]) < 0.1


def test_torchsde_dt_splits_grid_intervals(vp, imbalanced):
    _, score, _ = imbalanced
    dt = (vp.T - EPS) / 40
    out = sd.sample(vp, score, (64, 2), sampler="torchsde", steps=10, dt=dt, generator=_gen(0))
    assert out.nfe == 40  # each of the 10 intervals split into 4 steps
    # direct calls, without a callback (fixed and adaptive), and a grid that is not decreasing
    x = vp.prior_sample((64, 2), generator=_gen(1))
    grid = time_grid(vp, 5)
    with torch.no_grad():
        for sampler in (TorchSDE(method="euler"), TorchSDE(adaptive=True, rtol=0.05, atol=0.05)):
            y = sampler.run(vp, score, x, grid, generator=_gen(2))
            assert y.shape == x.shape and bool(torch.isfinite(y).all())
        with pytest.raises(ValueError, match="times must be strictly decreasing"):
            TorchSDE().run(vp, score, x, grid.flip(0), generator=_gen(2))


def test_torchsde_euler_and_euler_maruyama_agree_in_distribution(vp, imbalanced):
    _, score, ref = imbalanced
    n = 2000
    runs = {
        s: sd.sample(vp, score, (n, 2), sampler=s, steps=100, grid="quadratic",
                     generator=_gen(21)).samples
        for s in ("torchsde", "euler_maruyama")
    }
    for x in runs.values():
        _assert_modes(x, ref, weight_slack=0.02, mean_slack=0.01, cov_slack=0.05)
    # two independent samples: weights differ by at most 4·sqrt(2 w(1-w)/n) + twice the slack
    w = [metrics.mode_statistics(x, ref)["weights"] for x in runs.values()]
    bound = 4 * torch.sqrt(2 * ref.weights * (1 - ref.weights) / n) + 0.04
    assert bool(((w[0] - w[1]).abs() <= bound.to(w[0].dtype)).all())


def test_torchsde_weak_convergence_of_second_moment(vp):
    # 1-D Gaussian data N(0.5, 0.04): E[x_eps²] = s²(μ² + v) + σ², closed form.
    mu, v = 0.5, 0.04
    score = sd.Gaussian(torch.tensor([mu]), torch.tensor([[v]])).score_fn(vp)
    t = torch.tensor(EPS, dtype=torch.float64)
    s, sigma = float(vp.mean_coeff(t)), float(vp.std(t))
    m2 = s**2 * (mu**2 + v) + sigma**2
    n = 10_000
    errors, ses = [], []
    for steps in (8, 16, 32, 64):
        x = sd.sample(vp, score, (n, 1), sampler="torchsde", steps=steps, generator=_gen(0),
                      dtype=torch.float64).samples
        errors.append(abs(float(x.square().mean()) - m2))
        ses.append(float(x.square().std()) / math.sqrt(n))
    # Euler–Maruyama has weak order 1: the bias falls by ~2x per doubling (faster here,
    # pre-asymptotically: measured 0.5, 0.05, 0.011, 0.004). Monte Carlo SE ≈ 0.0015.
    assert errors[0] > errors[1] > errors[2]
    assert errors[3] < errors[2] + 3 * ses[3]
    assert errors[2] < errors[0] / 8


# ---------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "kwargs", "error", "name"),
    [
        (ProbabilityFlowODE, {"method": "rk45"}, ValueError, "method"),
        (ProbabilityFlowODE, {"method": 45}, ValueError, "method"),
        (ProbabilityFlowODE, {"rtol": 0.0}, ValueError, "rtol"),
        (ProbabilityFlowODE, {"atol": -1e-6}, ValueError, "atol"),
        (ProbabilityFlowODE, {"rtol": "tight"}, TypeError, "rtol"),
        (TorchSDE, {"method": "heun"}, ValueError, "method"),
        (TorchSDE, {"adaptive": 1}, TypeError, "adaptive"),
        (TorchSDE, {"rtol": 1e-3}, ValueError, "adaptive=True"),
        (TorchSDE, {"atol": 1e-3}, ValueError, "adaptive=True"),
        (TorchSDE, {"adaptive": True, "rtol": 0.0}, ValueError, "rtol"),
        (TorchSDE, {"adaptive": True, "atol": float("inf")}, ValueError, "atol"),
        (TorchSDE, {"dt": 0.0}, ValueError, "dt"),
    ],
)
def test_bad_options_name_the_argument(cls, kwargs, error, name):
    with pytest.raises(error, match=name):
        cls(**kwargs)


def test_registered_names_and_options_through_sample(vp):
    assert sd.samplers.SAMPLERS["ode"] is ProbabilityFlowODE
    assert sd.samplers.SAMPLERS["torchsde"] is TorchSDE
    assert not ProbabilityFlowODE.stochastic and TorchSDE.stochastic
    score = sd.Gaussian(torch.zeros(2), torch.eye(2)).score_fn(vp)
    with pytest.raises(ValueError, match="method"):
        sd.sample(vp, score, (4, 2), sampler="ode", method="euler")
    with pytest.raises(ValueError, match="method"):
        sd.sample(vp, score, (4, 2), sampler="torchsde", method="RK45")
    assert "method='srk'" in repr(TorchSDE(method="srk"))
