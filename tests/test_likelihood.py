"""Flow-ODE likelihoods checked against the exact log-densities of reference targets (THEORY §7-8).

With the exact score of a Gaussian mixture and its exact ``p_T``, the augmented flow ODE
reproduces ``log p_eps(x)`` up to the ODE solver's error only, so the tolerances below are
solver tolerances. Everything runs in float64 with fixed seeds.
"""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.likelihood import (
    ADAPTIVE_METHODS,
    METHODS,
    LikelihoodResult,
    bits_per_dim,
    flow_likelihood,
    log_likelihood,
)
from scoresde.samplers import NonFiniteError

EPS = 1e-5


def mixture_10d() -> sd.GaussianMixture:
    """Three 10-D modes, random SPD covariances (eigenvalues ~0.05..1.8), weights 0.5/0.3/0.2."""
    g = torch.Generator().manual_seed(10)
    K, d = 3, 10
    means = 1.5 * torch.randn(K, d, generator=g, dtype=torch.float64)
    a = torch.randn(K, d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    covs = 0.5 * a @ a.transpose(-1, -2) + 0.05 * torch.eye(d, dtype=torch.float64)
    return sd.GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))


def exact_prior(target, sde):
    """The target's exact log p_T, to use in place of the prior (no prior mismatch)."""
    log_p = target.log_prob_fn(sde)
    return lambda x_T: log_p(x_T, sde.T)


def points_2d(n: int = 10) -> torch.Tensor:
    """Samples of imbalanced_2d (some in the tight mode) plus two points between the modes."""
    gen = torch.Generator().manual_seed(0)
    x = sd.imbalanced_2d().sample(n, generator=gen, dtype=torch.float64)
    extra = torch.tensor([[0.0, 0.0], [0.8, -1.15]], dtype=torch.float64)
    return torch.cat([x, extra])


SDES = {"vp": sd.VPSDE, "ve": sd.VESDE, "subvp": sd.SubVPSDE}


# -- exact scores: agreement with the true density ----------------------------------------


@pytest.mark.parametrize("kind", sorted(SDES))
def test_exact_trace_matches_true_density_2d(kind):
    sde, target = SDES[kind](), sd.imbalanced_2d()
    x = points_2d()
    logp = log_likelihood(sde, target.score_fn(sde), x, prior_log_prob=exact_prior(target, sde))
    truth = target.log_prob_fn(sde)(x, EPS)
    # Only ODE-solver error remains: RK45 at rtol = atol = 1e-5 over |Δ| ≲ 10 nats gives
    # ~1e-4 (measured ≤ 2e-4); 2e-3 leaves a 10x margin and is 5x inside the 0.01 of the issue.
    assert (logp - truth).abs().max() < 2e-3
    # p_eps vs p_0: sigma(eps)^2 ≤ 1e-6 against a tight-mode variance 2.5e-3 moves log p by
    # ≲ d/2 · 4e-4 (measured 3e-4 for VP).
    assert (logp - target.log_prob(x)).abs().max() < 0.01


def test_default_prior_mismatch_is_as_documented():
    """VP with the N(0, I) prior: error = -(log p_T - log π)(x_T) ≈ -s(T) x_Tᵀ E[x_0]."""
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    x = points_2d()
    seen = []

    def prior(x_T):
        seen.append(x_T)
        return sde.prior_log_prob(x_T)

    logp = log_likelihood(sde, target.score_fn(sde), x, prior_log_prob=prior)
    truth = target.log_prob_fn(sde)(x, EPS)
    assert (logp - truth).abs().max() < 0.01  # the bound holds with the plain prior too
    x_T = seen[0]
    mismatch = target.log_prob_fn(sde)(x_T, sde.T) - sde.prior_log_prob(x_T)
    s_T = float(sde.mean_coeff(sde.T))
    assert s_T == pytest.approx(6.57e-3, rel=1e-2)
    m = target.weights @ target.means
    # first order in s(T); the O(s²) rest is ≲ s²(|x_T|² + E|x_0|²) ≈ 4e-5 · 10
    assert (mismatch - s_T * x_T @ m).abs().max() < 1e-3
    # the only other error is the solver's (< 2e-3, as above)
    assert (logp - truth + mismatch).abs().max() < 2e-3


def test_exact_trace_matches_true_density_10d():
    sde, target = sd.VPSDE(), mixture_10d()
    x = target.sample(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    logp = log_likelihood(sde, target.score_fn(sde), x, prior_log_prob=exact_prior(target, sde))
    # 10-D, |Δ| ~ 30 nats: RK45 at 1e-5 measured 1e-3; the 0.01 is the bound.
    assert (logp - target.log_prob_fn(sde)(x, EPS)).abs().max() < 0.01


def test_event_shape_and_float32():
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    x = points_2d(4)
    score = target.score_fn(sde)
    flat = log_likelihood(sde, score, x, method="rk4", steps=20)
    image = log_likelihood(sde, score, x.reshape(-1, 1, 2), method="rk4", steps=20)
    assert image.shape == (x.shape[0],)
    torch.testing.assert_close(image, flat, rtol=0, atol=1e-12)
    single = log_likelihood(sde, score, x.float(), method="rk4", steps=20)
    assert single.dtype == torch.float32
    # float32 round-off over 80 evaluations of a stiff score: measured 1e-5
    torch.testing.assert_close(single.double(), flat, rtol=0, atol=1e-3)


# -- fixed-step torch path ---------------------------------------------------------------


@pytest.fixture(scope="module")
def flow_reference():
    """sub-VP, imbalanced_2d: DOP853 at rtol = atol = 1e-10 (error ≪ the fixed-step errors)."""
    sde, target = sd.SubVPSDE(), sd.imbalanced_2d()
    x, score = points_2d(2), target.score_fn(sde)
    return sde, score, x, log_likelihood(sde, score, x, method="DOP853", rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "method, steps, min_ratio",
    [
        # error ratio per doubling → 2^order. The uniform grid reaches the asymptotic regime
        # only once h·Lip ≲ 1 near eps, where the tight mode makes the flow stiff: measured
        # ratios from 16 steps on are rk4 16.1, 18.9, 17.9; heun 3.1, 4.6, 4.4; euler (from 32)
        # 1.6, 1.8, 1.9, 1.9. (VP, from 16 steps: rk4 7.3, 55, 8.4, 16, 17 — slower to settle.)
        ("rk4", (16, 32, 64), 8.0),
        ("heun", (32, 64, 128), 3.0),
        ("euler", (64, 128, 256), 1.6),
    ],
)
def test_fixed_step_converges_to_scipy(flow_reference, method, steps, min_ratio):
    sde, score, x, ref = flow_reference
    errs = [(log_likelihood(sde, score, x, method=method, steps=n) - ref).abs().max()
            for n in steps]
    for coarse, fine in zip(errs, errs[1:], strict=False):
        assert coarse / fine > min_ratio


# -- Hutchinson ---------------------------------------------------------------------------

N_PROBES = 2000


@pytest.fixture(scope="module")
def hutchinson_runs():
    """One 10-D point repeated N_PROBES times: independent probes, same path (rk4, 8 steps).

    The path does not depend on the probe and every Δ increment is linear in vᵀJv, so on a
    fixed grid the estimator is exactly unbiased for the same-grid exact-trace value.
    """
    sde, target = sd.VPSDE(), mixture_10d()
    score = target.score_fn(sde)
    x = target.sample(1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = log_likelihood(sde, score, x, method="rk4", steps=8)
    xs = x.expand(N_PROBES, -1).clone()
    runs = {
        noise: log_likelihood(
            sde, score, xs, trace="hutchinson", noise=noise, method="rk4", steps=8,
            generator=torch.Generator().manual_seed(3),
        )
        for noise in ("rademacher", "gaussian")
    }
    return float(exact), runs


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(hutchinson_runs, noise):
    exact, runs = hutchinson_runs
    h = runs[noise]
    se = float(h.std()) / math.sqrt(N_PROBES)
    assert abs(float(h.mean()) - exact) < 4 * se
    assert 0 < se < 0.1  # the estimator is random, and not absurdly so


def test_rademacher_has_lower_variance(hutchinson_runs):
    # Var = 2(‖M‖_F² - Σ M_ii²) vs 2‖M‖_F² for M the path-integrated symmetric Jacobian;
    # measured ratio 0.37. With 2000 probes each sample variance has a relative standard
    # error ≲ 8% (kurtosis of a Gaussian quadratic form ≤ 15), so 0.6 is > 4 SE away.
    _, runs = hutchinson_runs
    assert float(runs["rademacher"].var()) < 0.6 * float(runs["gaussian"].var())


def test_hutchinson_reproducible_with_generator():
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    x, score = points_2d(4), target.score_fn(sde)

    def run(seed):
        return log_likelihood(sde, score, x, trace="hutchinson", method="euler", steps=4,
                              generator=torch.Generator().manual_seed(seed))

    torch.testing.assert_close(run(0), run(0), rtol=0, atol=0)
    assert not torch.equal(run(0), run(1))
    torch.manual_seed(0)  # generator=None draws from the global generator
    assert log_likelihood(sde, score, x, trace="hutchinson", noise="gaussian", method="euler",
                          steps=2).shape == (x.shape[0],)


# -- NFE --------------------------------------------------------------------------------


class Counter:
    def __init__(self, score):
        self.score, self.calls = score, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.score(x, t)


@pytest.mark.parametrize(
    "method, steps, per_step",
    [("euler", 5, 1), ("heun", 5, 2), ("rk4", 5, 4), ("RK45", None, None), ("Radau", None, None),
     ("dopri5", None, None), ("bs3", None, None)],
)
@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_nfe_counts_score_calls(method, steps, per_step, trace):
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    counter = Counter(target.score_fn(sde))
    rtol = 1e-3 if method == "Radau" else 1e-5  # Radau's FD Jacobians: keep the test short
    res = flow_likelihood(sde, counter, points_2d(2), trace=trace, method=method, steps=steps,
                          rtol=rtol, atol=rtol, generator=torch.Generator().manual_seed(0))
    logp, nfe = res.logp, res.nfe
    assert nfe == counter.calls > 0
    if per_step is not None:
        assert nfe == per_step * steps
    assert torch.isfinite(logp).all()


# -- the score's autograd -----------------------------------------------------------------


def _with_backward(score, backward_hook):
    class Identity(torch.autograd.Function):
        @staticmethod
        def forward(ctx, y):
            return y.clone()

        @staticmethod
        def backward(ctx, grad):
            backward_hook(grad)
            return grad

    return lambda x, t: Identity.apply(score(x, t))


def test_exact_trace_falls_back_when_backward_cannot_be_vectorised():
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    x, score = points_2d(3), target.score_fn(sde)
    plain = log_likelihood(sde, score, x, method="heun", steps=4)
    # .item() has no batching rule: the vectorised pass raises, one pass per row works
    odd = _with_backward(score, lambda grad: grad.sum().item())
    torch.testing.assert_close(log_likelihood(sde, odd, x, method="heun", steps=4), plain)


def test_error_in_backward_propagates():
    sde, target = sd.VPSDE(), sd.imbalanced_2d()

    def fail(grad):
        raise RuntimeError("backward exploded")

    broken = _with_backward(target.score_fn(sde), fail)
    with pytest.raises(RuntimeError, match="backward exploded"):
        log_likelihood(sde, broken, points_2d(2), method="euler", steps=1)


def test_score_without_grad_is_rejected():
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="score_fn must return a tensor differentiable in x"):
        log_likelihood(sde, lambda x, t: torch.zeros_like(x), points_2d(2), method="euler", steps=1)


@pytest.mark.parametrize("method, steps", [("rk4", 2), ("RK45", None), ("dopri5", None)])
def test_non_finite_divergence_stops(method, steps):
    sde = sd.VPSDE()

    def score(x, t):  # finite value 0, gradient 0 · inf = NaN
        return torch.sqrt((x - x.detach()).abs())

    with pytest.raises(NonFiniteError, match="non-finite drift or divergence"):
        log_likelihood(sde, score, points_2d(2), method=method, steps=steps)


def test_solver_failure_is_reported(monkeypatch):
    import scipy.integrate

    class Failed:
        success, message = False, "step size underflow"

    monkeypatch.setattr(scipy.integrate, "solve_ivp", lambda *a, **k: Failed())
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    with pytest.raises(RuntimeError, match="solve_ivp .*RK23.* failed: step size underflow"):
        log_likelihood(sde, target.score_fn(sde), points_2d(2), method="RK23")


def test_prior_log_prob_must_return_batch_vector():
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    args = (sde, target.score_fn(sde), points_2d(2))
    with pytest.raises(ValueError, match=r"prior_log_prob must return a \(4,\) tensor, got \(\)"):
        log_likelihood(*args, method="euler", steps=1, prior_log_prob=lambda x_T: x_T.sum())
    with pytest.raises(ValueError, match="got float"):
        log_likelihood(*args, method="euler", steps=1, prior_log_prob=lambda x_T: 0.0)
    with pytest.raises(TypeError, match="prior_log_prob must be callable"):
        log_likelihood(*args, method="euler", steps=1, prior_log_prob=3.0)


# -- bits per dimension -------------------------------------------------------------------


def gaussian_2d():
    return sd.Gaussian(torch.tensor([0.1, -0.2]), torch.tensor([[0.2, 0.05], [0.05, 0.1]]))


@pytest.mark.parametrize(
    "n_bins, data_range, offset", [(256, (-1.0, 1.0), 7.0), (16, (0.0, 1.0), 4.0)]
)
def test_bits_per_dim_offset_rule(n_bins, data_range, offset):
    sde, target = sd.VPSDE(), gaussian_2d()
    lo, hi = data_range
    k = torch.tensor([[n_bins // 2, n_bins // 3], [0, n_bins - 1]], dtype=torch.float64)
    x = lo + k * (hi - lo) / (n_bins - 1)
    opts = dict(method="rk4", steps=64, prior_log_prob=exact_prior(target, sde))
    bpd = bits_per_dim(sde, target.score_fn(sde), x, n_bins=n_bins, data_range=data_range,
                       dequantize=False, **opts)
    logp = log_likelihood(sde, target.score_fn(sde), x, **opts)
    assert offset == math.log2(n_bins / (hi - lo))
    torch.testing.assert_close(bpd, -logp / (2 * math.log(2)) + offset, rtol=0, atol=1e-12)
    truth = -target.log_prob_fn(sde)(x, EPS) / (2 * math.log(2)) + offset
    assert (bpd - truth).abs().max() < 1e-3  # rk4 at 64 steps on a smooth target: ~1e-6 nats


def test_bits_per_dim_dequantisation():
    sde, target = sd.VPSDE(), gaussian_2d()
    n_bins, lo, hi = 256, -1.0, 1.0
    k = torch.tensor([[0, 255], [127, 128], [3, 200]], dtype=torch.float64)
    x = (k / 127.5 - 1.0).float()  # torchvision ToTensor, then 2x - 1 (float32 rounding)
    seen = []

    def score(x_in, t):
        seen.append(x_in.detach().clone())
        return target.score_fn(sde)(x_in, t)

    def run(seed, **kw):
        return bits_per_dim(sde, score, x, method="euler", steps=1,
                            generator=torch.Generator().manual_seed(seed), **kw)

    first = run(0)
    assert first.shape == (3,) and first.dtype == torch.float32
    # the first score call sees the dequantised y at t = eps: y = lo + (k + u) Δ, u in [0, 1)
    y = seen[0].double()
    width = (hi - lo) / n_bins
    assert torch.equal(torch.floor((y - lo) / width), k)
    assert not torch.equal(y, x.double())
    torch.testing.assert_close(run(0), first, rtol=0, atol=0)  # reproducible
    assert not torch.equal(run(1), first)
    with pytest.warns(DeprecationWarning, match=r"return_nfe=True\) is deprecated"):
        bpd, nfe = run(0, return_nfe=True)
    assert nfe == 1
    torch.testing.assert_close(bpd, first, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_bins=1), ValueError, "n_bins"),
        (dict(n_bins=2.5), TypeError, "n_bins"),
        (dict(data_range=(1.0, -1.0)), ValueError, "data_range"),
        (dict(data_range=(0.0, float("inf"))), ValueError, "data_range"),
        (dict(data_range=5), TypeError, "data_range"),
        (dict(data_range=("a", "b")), TypeError, "data_range"),
        (dict(generator=0), TypeError, "generator"),
        (dict(n_bins=4), ValueError, "x must hold the 4 levels"),  # 0.25 is off a 4-level grid
        (dict(data_range=(0.0, 0.1)), ValueError, "x must hold the 256 levels"),  # outside
    ],
)
def test_bits_per_dim_validation(kwargs, error, match):
    sde, target = sd.VPSDE(), gaussian_2d()
    x = torch.tensor([[0.25, 0.5]], dtype=torch.float64)
    x = torch.round((x + 1) * 127.5) / 127.5 - 1  # on the 8-bit grid of [-1, 1]
    with pytest.raises(error, match=match):
        bits_per_dim(sde, target.score_fn(sde), x, method="euler", steps=1, **kwargs)


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x, kwargs, error, match",
    [
        (torch.zeros(3, dtype=torch.float64), {}, ValueError, "x must have at least 2"),
        (torch.zeros(0, 2, dtype=torch.float64), {}, ValueError, "x must be non-empty"),
        (torch.zeros(2, 0, dtype=torch.float64), {}, ValueError, "x must be non-empty"),
        (torch.tensor([[0.0, float("nan")]]), {}, ValueError, "x contains non-finite"),
        (torch.tensor([[0.0, float("inf")]]), {}, ValueError, "x contains non-finite"),
        (torch.zeros(2, 2, dtype=torch.long), {}, TypeError, "x must be a floating-point"),
        ([[0.0, 0.0]], {}, TypeError, "x must be a torch.Tensor"),
        (None, dict(eps=0.0), ValueError, "eps must be finite and > 0"),
        (None, dict(eps=-1e-3), ValueError, "eps must be finite and > 0"),
        (None, dict(eps=1.0), ValueError, r"eps must lie in \(0, T\)"),
        (None, dict(eps=2.0), ValueError, r"eps must lie in \(0, T\)"),
        (None, dict(trace="diag"), ValueError, "trace must be one of 'exact', 'hutchinson'"),
        (None, dict(noise="uniform"), ValueError, "noise must be one of 'rademacher', 'gaussian'"),
        (None, dict(method="rk5"), ValueError, "method must be one of 'RK23', .*'rk4'"),
        (None, dict(method=None), ValueError, "method must be one of"),
        (None, dict(rtol=0.0), ValueError, "rtol"),
        (None, dict(atol=-1.0), ValueError, "atol"),
        (None, dict(method="rk4"), ValueError, "steps is required"),
        (None, dict(method="rk4", steps=0), ValueError, "steps must be an int >= 1"),
        (None, dict(method="euler", steps=2.5), TypeError, "steps must be an int"),
        (None, dict(steps=10), ValueError, "steps is only used by the fixed-step methods"),
        (None, dict(generator=1), TypeError, "generator must be a torch.Generator"),
        (None, dict(method="dopri5", steps=4), ValueError, "steps is only used by the fixed"),
        (None, dict(trace_backend="jax"), ValueError,
         "trace_backend must be one of 'auto', 'func', 'autograd'"),
        (None, dict(trace_backend="func", trace="hutchinson"), ValueError,
         "trace_backend is only used by trace='exact'"),
    ],
)
def test_bad_input(x, kwargs, error, match):
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    x = points_2d(2) if x is None else x
    with pytest.raises(error, match=match):
        log_likelihood(sde, target.score_fn(sde), x, **kwargs)


def test_bad_sde_and_score():
    target = sd.imbalanced_2d()
    with pytest.raises(TypeError, match="sde must be an SDE"):
        log_likelihood("vp", target.score_fn(sd.VPSDE()), points_2d(2))
    with pytest.raises(TypeError, match="score_fn must be callable"):
        log_likelihood(sd.VPSDE(), None, points_2d(2))


def test_method_table():
    assert METHODS == ("RK23", "RK45", "DOP853", "Radau", "BDF", "LSODA", "euler", "heun", "rk4")
    assert ADAPTIVE_METHODS == ("dopri5", "bs3")


# -- the result-returning twin, deprecations, memory ----------------------------------------


def test_flow_likelihood_parts_are_the_closed_form_flow_map():
    """N(μ, diag v) data: the flow map is affine and its log-determinant is closed form.

    With c_t = s_t² v + σ_t², x_T - s_T μ = sqrt(c_T / c_eps) (x - s_eps μ) per coordinate and
    Δ_T = Σ_i ½ log(c_T,i / c_eps,i) (the flow's volume change), the same for every point.
    """
    sde = sd.VPSDE()
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    var = torch.tensor([0.05, 1.0, 3.0], dtype=torch.float64)
    target = sd.Gaussian(mu, torch.diag(var))
    x = target.sample(5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    res = flow_likelihood(sde, target.score_fn(sde), x, rtol=1e-9, atol=1e-9)
    assert isinstance(res, LikelihoodResult)

    def coeffs(t):
        tt = torch.tensor(t, dtype=torch.float64)
        s = sde.mean_coeff(tt)
        return s, s**2 * var + sde.std(tt) ** 2

    (s_e, c_e), (s_T, c_T) = coeffs(EPS), coeffs(sde.T)
    x_T = s_T * mu + (c_T / c_e).sqrt() * (x - s_e * mu)
    torch.testing.assert_close(res.x_T, x_T, rtol=0, atol=1e-6)
    log_det = 0.5 * torch.log(c_T / c_e).sum()
    torch.testing.assert_close(res.delta_logp, log_det.expand(5), rtol=0, atol=1e-6)
    torch.testing.assert_close(res.prior_logp, sde.prior_log_prob(res.x_T), rtol=0, atol=0)
    torch.testing.assert_close(res.logp, res.prior_logp + res.delta_logp, rtol=0, atol=0)
    assert res.nfe > 10
    plain = log_likelihood(sde, target.score_fn(sde), x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(plain, res.logp, rtol=0, atol=0)


def test_return_nfe_is_deprecated_but_works():
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    x, score = points_2d(2), target.score_fn(sde)
    res = flow_likelihood(sde, score, x, method="heun", steps=3)
    with pytest.warns(DeprecationWarning, match=r"return_nfe=True\) is deprecated.*flow_likelihood"):
        logp, nfe = log_likelihood(sde, score, x, method="heun", steps=3, return_nfe=True)
    assert nfe == res.nfe == 6
    torch.testing.assert_close(logp, res.logp, rtol=0, atol=0)


def test_positional_options_are_deprecated_but_work():
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    x, score = points_2d(2), target.score_fn(sde)
    gen = torch.Generator
    by_name = log_likelihood(sde, score, x, trace="hutchinson", noise="gaussian", method="rk4",
                             generator=gen().manual_seed(0), steps=2)
    with pytest.warns(DeprecationWarning, match="by position is deprecated.*trace=..., noise="):
        by_position = log_likelihood(sde, score, x, "hutchinson", "gaussian", "rk4", 1e-5, 1e-5,
                                     1e-5, gen().manual_seed(0), 2)
    torch.testing.assert_close(by_position, by_name, rtol=0, atol=0)
    with pytest.warns(DeprecationWarning) as record:
        logp, nfe = log_likelihood(sde, score, x, "exact", "rademacher", "euler", 1e-5, 1e-5,
                                   1e-5, None, 3, True)
    assert nfe == 3 and logp.shape == (4,)
    assert len(record) == 2  # the positional options, then return_nfe
    with pytest.raises(TypeError, match="at most 12 positional arguments"):
        log_likelihood(sde, score, x, *range(10))


def _failing_first_backward(score, error):
    """A score whose first backward pass raises ``error`` (as a too large vectorised pass would)."""
    failures = []

    def hook(grad):
        if not failures:
            failures.append(1)
            raise error

    return _with_backward(score, hook), failures


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:114] DefaultCPUAllocator: can't allocate memory"),
])
def test_out_of_memory_is_not_silently_turned_into_the_slow_path(error):
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    x, score = points_2d(3), target.score_fn(sde)
    odd, failures = _failing_first_backward(score, error)
    with pytest.raises(torch.OutOfMemoryError, match="out of memory.*pass trace_chunk=1") as info:
        log_likelihood(sde, odd, x, method="heun", steps=4)
    assert failures == [1] and info.value.__cause__ is error


def test_trace_chunk_chooses_the_backward_passes():
    sde, target = sd.VPSDE(), mixture_10d()
    x = target.sample(3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    score = target.score_fn(sde)
    default = log_likelihood(sde, score, x, method="rk4", steps=4)
    for chunk in (1, 3, 10, 64):
        got = log_likelihood(sde, score, x, method="rk4", steps=4, trace_chunk=chunk)
        torch.testing.assert_close(got, default, rtol=0, atol=1e-12)
    # explicit one-pass-per-coordinate: a backward that cannot be vectorised is fine, and an
    # error in it is not retried
    odd = _with_backward(score, lambda grad: grad.sum().item())
    torch.testing.assert_close(
        log_likelihood(sde, odd, x, method="rk4", steps=4, trace_chunk=1), default)
    broken, failures = _failing_first_backward(score, torch.OutOfMemoryError("out of memory"))
    with pytest.raises(torch.OutOfMemoryError, match="trace_chunk"):
        log_likelihood(sde, broken, x, method="rk4", steps=4, trace_chunk=1)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(trace_chunk=0), ValueError, "trace_chunk must be an int >= 1"),
    (dict(trace_chunk=2.5), TypeError, "trace_chunk must be an int"),
    (dict(trace_chunk=2, trace="hutchinson"), ValueError, "trace_chunk is only used by trace='exact'"),
])
def test_bad_trace_chunk(kwargs, error, match):
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    with pytest.raises(error, match=match):
        flow_likelihood(sde, target.score_fn(sde), points_2d(2), method="euler", steps=1, **kwargs)


# -- per-sample error control -----------------------------------------------------------------


@pytest.mark.parametrize(
    "target, n, method, tol",
    [
        # 256 points of imbalanced_2d (seed 0): some in the tight mode, and one that scipy's
        # RK45 at 1e-5 gets 1.3e-2 nats wrong (median 3e-6), see the last case
        ("imbalanced_2d", 256, "dopri5", 1e-5),
        ("mixture_10d", 64, "dopri5", 1e-4),
        ("mixture_10d", 64, "bs3", 1e-4),
    ],
)
def test_every_sample_meets_the_tolerance(target, n, method, tol):
    """|log p̂ - log p_eps| <= 2 (atol + rtol |Δ_T|) for every point of the batch.

    The tolerance bounds each step's local error of x and of Δ; the end error of Δ (the
    log-density's only error with the exact p_T) is a sum over steps of local errors, each
    propagated by the flow. Measured worst ratio error / (atol + rtol |Δ_T|) over the batch:
    dopri5 1.06 (2-D, 1e-5), 1.09 (10-D, 1e-4), 1.6 (10-D, 1e-3); bs3 0.2. scipy's RK45 on
    the same batches: 258, 148.
    """
    sde = sd.VPSDE()
    target = sd.imbalanced_2d() if target == "imbalanced_2d" else mixture_10d()
    x = target.sample(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = flow_likelihood(sde, target.score_fn(sde), x, method=method, rtol=tol, atol=tol,
                          prior_log_prob=exact_prior(target, sde))
    err = (res.logp - target.log_prob_fn(sde)(x, EPS)).abs()
    assert (err <= 2 * (tol + tol * res.delta_logp.abs())).all()


def test_batch_rms_error_of_scipy_misses_one_sample():
    """The scipy path's error is the RMS over the flattened batch: one point is far off.

    Same batch as the first case above; this is the behaviour the per-sample control fixes.
    """
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    x = target.sample(256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    opts = dict(rtol=1e-5, atol=1e-5, prior_log_prob=exact_prior(target, sde))
    truth = target.log_prob_fn(sde)(x, EPS)
    scipy_err = (flow_likelihood(sde, target.score_fn(sde), x, method="RK45", **opts).logp
                 - truth).abs()
    assert scipy_err.max() > 1e-3 > 100 * scipy_err.median()  # measured 1.3e-2 and 3e-6


def test_default_is_per_sample_dopri5():
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    x, score = points_2d(4), target.score_fn(sde)
    default = flow_likelihood(sde, score, x)
    explicit = flow_likelihood(sde, score, x, method="dopri5", rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(default.logp, explicit.logp, rtol=0, atol=0)
    assert default.nfe == explicit.nfe
    assert default.trace_backend == "autograd"


def test_adaptive_float32_runs_in_float32():
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    x = points_2d(4)
    score = target.score_fn(sde)
    single = log_likelihood(sde, score, x.float(), rtol=1e-4, atol=1e-4)
    assert single.dtype == torch.float32
    double = log_likelihood(sde, score, x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(single.double(), double, rtol=0, atol=1e-3)


# -- the torch.func exact trace ---------------------------------------------------------------


def _mlp_model():
    net = sd.nets.ScoreMLP(3, generator=torch.Generator().manual_seed(0))
    return sd.nets.ScoreModel(net, sd.VPSDE()).double()


@pytest.mark.parametrize("case", ["mixture_10d", "mlp"])
@pytest.mark.parametrize("chunk", [None, 1, 4])
def test_func_trace_equals_autograd_trace(case, chunk):
    sde = sd.VPSDE()
    if case == "mlp":
        score = _mlp_model()
        x = torch.randn(5, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    else:
        target = mixture_10d()
        score = target.score_fn(sde)
        x = target.sample(3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    opts = dict(method="rk4", steps=3, trace_chunk=chunk)
    ref = flow_likelihood(sde, score, x, trace_backend="autograd", **opts)
    for backend in ("func", "auto"):
        got = flow_likelihood(sde, score, x, trace_backend=backend, **opts)
        assert got.trace_backend == "func" and ref.trace_backend == "autograd"
        torch.testing.assert_close(got.logp, ref.logp, rtol=0, atol=1e-10)
        torch.testing.assert_close(got.x_T, ref.x_T, rtol=0, atol=1e-10)
        assert got.nfe == ref.nfe == 12


def test_func_trace_falls_back_to_autograd_when_the_score_cannot_be_transformed():
    """An autograd.Function without setup_context: torch.func refuses it, autograd works."""
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    x, score = points_2d(3), target.score_fn(sde)
    plain = flow_likelihood(sde, score, x, method="heun", steps=4)
    odd = Counter(_with_backward(score, lambda grad: None))
    auto = flow_likelihood(sde, odd, x, method="heun", steps=4, trace_backend="auto")
    assert auto.trace_backend == "autograd"
    torch.testing.assert_close(auto.logp, plain.logp, rtol=0, atol=1e-12)
    # the failed attempt evaluated the score once more, and that call is counted
    assert auto.nfe == odd.calls == plain.nfe + 1
    with pytest.raises(RuntimeError, match="setup_context"):
        flow_likelihood(sde, odd, x, method="heun", steps=4, trace_backend="func")


def _func_ready_backward(score, backward_hook):
    """A score through an autograd.Function that torch.func can transform (and vmap)."""

    class Identity(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(y):
            return y.clone()

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, grad):
            backward_hook(grad)
            return grad

    return lambda x, t: Identity.apply(score(x, t))


@pytest.mark.parametrize("chunk", [None, 1])
def test_func_trace_out_of_memory_is_raised_not_switched(chunk):
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    calls = []

    def hook(grad):
        calls.append(1)
        raise torch.OutOfMemoryError("out of memory")

    score = _func_ready_backward(target.score_fn(sde), hook)
    with pytest.raises(torch.OutOfMemoryError, match="pass trace_chunk=1"):
        flow_likelihood(sde, score, points_2d(3), method="heun", steps=2, trace_backend="auto",
                        trace_chunk=chunk)
    assert len(calls) == 1  # no retry through autograd
    # other errors of a transformable score propagate from the vmapped backward
    broken = _func_ready_backward(target.score_fn(sde), lambda grad: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        flow_likelihood(sde, broken, points_2d(3), method="heun", steps=2, trace_backend="func")


def test_hutchinson_has_no_trace_backend():
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    res = flow_likelihood(sde, target.score_fn(sde), points_2d(2), trace="hutchinson",
                          method="euler", steps=2, generator=torch.Generator().manual_seed(0))
    assert res.trace_backend is None
