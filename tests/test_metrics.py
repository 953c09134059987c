"""Tests of scoresde.metrics against closed forms and exact samples.

Every statistical tolerance below is derived from the sample size (and the number of random
projections); the derivations are in the comments next to the helpers that compute them.
Unless said otherwise a tolerance is 4 standard errors: with fixed seeds the tests are
deterministic, and a correct implementation would fail one of them for fewer than 1 in 10^4
seeds.
"""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.metrics import (
    METRICS,
    _median_bandwidth,
    evaluate,
    mean_log_density,
    mmd,
    mode_statistics,
    noise_floor,
    sliced_wasserstein,
)

F64 = torch.float64
DTYPES = [torch.float32, torch.float64]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def shift_vector(d: int, norm: float) -> torch.Tensor:
    """A shift of Euclidean norm ``norm`` along the diagonal (not along an axis)."""
    return torch.full((d,), norm / math.sqrt(d), dtype=F64)


def three_mode_mixture(weights=(0.5, 0.3, 0.2)) -> sd.GaussianMixture:
    means = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    covs = torch.tensor(
        [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.5], [0.5, 1.0]], [[0.5, 0.0], [0.0, 2.0]]]
    )
    return sd.GaussianMixture(means, covs, torch.tensor(weights))


# ----------------------------------------------------------------------------------------
# exact zeros and exact values
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_identical_samples_give_exactly_zero(dtype):
    x = torch.randn(500, 3, generator=gen(0), dtype=dtype)
    assert float(sliced_wasserstein(x, x, generator=gen(1))) == 0.0
    assert float(sliced_wasserstein(x, x.clone(), generator=gen(1))) == 0.0
    assert float(mmd(x, x)) == 0.0
    assert float(mmd(x, x.clone(), squared=True)) == 0.0
    assert float(mmd(x, x.clone(), bandwidth=0.3)) == 0.0
    assert sliced_wasserstein(x, x).dtype == dtype
    assert mmd(x, x).dtype == dtype
    assert sliced_wasserstein(x, x).shape == () and mmd(x, x).shape == ()


def test_sw2_unequal_sizes_exact_quantile_interpolation():
    # d = 1: the directions are +-1, so SW2 is W2 between the empirical quantile functions.
    # m = max(4, 2) = 4 levels q = 1/8, 3/8, 5/8, 7/8; y's order statistics sit at levels
    # 1/4 and 3/4, so its quantiles are 0 (clamped), 2.5, 7.5, 10 (clamped).
    x = torch.tensor([[3.0], [0.0], [2.0], [1.0]], dtype=F64)
    y = torch.tensor([[10.0], [0.0]], dtype=F64)
    expected = math.sqrt((0.0**2 + 1.5**2 + 5.5**2 + 7.0**2) / 4)
    for n_proj in (1, 7):
        assert float(sliced_wasserstein(x, y, n_proj, gen(0))) == pytest.approx(expected, rel=1e-12)
        assert float(sliced_wasserstein(y, x, n_proj, gen(0))) == pytest.approx(expected, rel=1e-12)


def test_sw2_is_symmetric_deterministic_and_accepts_event_shapes():
    x = torch.randn(300, 2, 3, generator=gen(0), dtype=F64)
    y = torch.randn(200, 2, 3, generator=gen(1), dtype=F64) + 0.5
    a = sliced_wasserstein(x, y, 64, gen(7))
    assert float(a) == float(sliced_wasserstein(x, y, 64, gen(7)))
    assert float(a) == pytest.approx(float(sliced_wasserstein(y, x, 64, gen(7))), rel=1e-12)
    flat = sliced_wasserstein(x.reshape(300, 6), y.reshape(200, 6), 64, gen(7))
    assert float(a) == pytest.approx(float(flat), rel=1e-12)
    # the global RNG is not used: same result whatever was drawn before
    torch.randn(10)
    assert float(sliced_wasserstein(x, y, 64, gen(7))) == float(a)


# ----------------------------------------------------------------------------------------
# SW2 of shifted Gaussians: closed form ||m|| / sqrt(d)
# ----------------------------------------------------------------------------------------
def sw2_tolerance(norm: float, d: int, nx: int, ny: int, n_proj: int) -> float:
    """4 standard errors (+ bias) of the SW2 estimate for N(0, I_d) vs N(m, I_d).

    Projection theta gives 1-D laws N(0, 1) and N(theta.m, 1), so W2^2 = (theta.m)^2 =
    |m|^2 u with u = theta_1^2 ~ Beta(1/2, (d-1)/2): E u = 1/d, Var u = 2(d-1)/(d^2 (d+2)).
    (i) Monte-Carlo over P projections: Var = |m|^4 Var(u) / P.
    (ii) Sampling: per projection W2^2 = (a + e)^2 integrated over levels, with e the difference
    of the two quantile processes; the cross term 2 a E[e] = 2 (theta.m)(theta.delta), delta =
    xbar - ybar ~ N(0, (1/nx + 1/ny) I); averaged over theta it is 2 m.delta / d, variance
    (2|m|/d)^2 (1/nx + 1/ny).
    (iii) Bias: the mean of e^2 is W2^2 between two centred 1-D Gaussian samples, which is
    c (1/nx + 1/ny) with c growing like log log n (Bobkov & Ledoux 2019); c ~ 3-3.6 for
    n <= 1e4, bounded here by log(max(nx, ny)).
    SW2 = sqrt(SW2^2), so by the delta method each error is divided by 2 SW2.
    """
    sw = norm / math.sqrt(d)
    var_u = 2 * (d - 1) / (d * d * (d + 2))
    var_sq = norm**4 * var_u / n_proj + (2 * norm / d) ** 2 * (1 / nx + 1 / ny)
    bias_sq = math.log(max(nx, ny)) * (1 / nx + 1 / ny)
    return (4 * math.sqrt(var_sq) + bias_sq) / (2 * sw)


@pytest.mark.parametrize("d", [2, 5])
def test_sw2_shifted_gaussians_closed_form(d):
    n, n_proj, norm = 8000, 800, 2.0
    g = gen(10 + d)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randn(n, d, generator=g, dtype=F64) + shift_vector(d, norm)
    value = float(sliced_wasserstein(x, y, n_proj, g))
    expected = norm / math.sqrt(d)
    assert abs(value - expected) <= sw2_tolerance(norm, d, n, n, n_proj)


def test_sw2_unequal_sizes_agree_with_equal_sizes():
    d, n, n_sub, n_proj, norm = 2, 6000, 2000, 600, 2.0
    g = gen(3)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randn(n, d, generator=g, dtype=F64) + shift_vector(d, norm)
    equal = float(sliced_wasserstein(x, y, n_proj, gen(4)))
    unequal = float(sliced_wasserstein(x, y[:n_sub], n_proj, gen(4)))
    assert abs(unequal - norm / math.sqrt(d)) <= sw2_tolerance(norm, d, n, n_sub, n_proj)
    # Same directions (same seed), so the projection Monte-Carlo error is shared and only the
    # sampling term differs: ybar_sub - ybar has variance (1/n_sub - 1/n) per coordinate, giving
    # sd (2|m|/d) sqrt(1/n_sub - 1/n) / (2 SW2); plus the bias bound of the smaller sample.
    sw = norm / math.sqrt(d)
    sd_diff = (2 * norm / d) * math.sqrt(1 / n_sub - 1 / n) / (2 * sw)
    bias = math.log(n) * (1 / n + 1 / n_sub) / (2 * sw)
    assert abs(unequal - equal) <= 4 * sd_diff + bias


# ----------------------------------------------------------------------------------------
# MMD of shifted Gaussians: closed form
# ----------------------------------------------------------------------------------------
def gauss_rbf_moments(norm: float, h: float, d: int) -> tuple[float, float, float]:
    """Closed-form MMD^2, V-statistic bias factor and first-order variance, X~N(0,I), Y~N(m,I).

    For Z ~ N(mu, I): E exp(-|a - Z|^2 / (2 s0)) = (s0/(s0+1))^{d/2} exp(-|a - mu|^2/(2(s0+1))).
    With s0 = h^2 and a = X' ~ N(0, I) (so a - Z ~ N(-mu, 2I)):
        E k(X, X') = E k(Y, Y') = c := (h^2/(h^2+2))^{d/2},
        E k(X, Y) = c exp(-|m|^2 / (2 (h^2 + 2))),
    hence MMD^2 = 2c (1 - exp(-|m|^2 / (2(h^2+2)))). The V-statistic keeps the diagonal
    (k = 1), so E[V] = MMD^2 + (1/nx + 1/ny)(1 - c).
    Its fluctuation is dominated by the linear (Hoeffding) term: V - E V ~ (2/nx) sum_i g(x_i)
    + (2/ny) sum_j g'(y_j), g(a) = phi_0(a) - phi_m(a), phi_mu(a) = E_{Z~N(mu,I)} k(a, Z)
    = alpha exp(-|a-mu|^2/(2s)), s = h^2+1, alpha = (h^2/s)^{d/2}; by the reflection
    a -> m - a, Var g'(Y) = Var g(X). Products of Gaussians give, for X ~ N(0, I),
        E phi_u phi_v = alpha^2 (s/(s+2))^{d/2} exp(-|u-v|^2/(4s)) exp(-|u+v|^2/(4(s+2))),
        E phi_u = alpha (s/(s+1))^{d/2} exp(-|u|^2/(2(s+1))).
    The degenerate (second-order) part has variance O(1/n^2), negligible here.
    Returns (MMD^2, 1 - c, Var g(X)).
    """
    m2 = norm * norm
    c = (h * h / (h * h + 2)) ** (d / 2)
    mmd2 = 2 * c * (1 - math.exp(-m2 / (2 * (h * h + 2))))
    s = h * h + 1
    alpha = (h * h / s) ** (d / 2)

    def e1(u2):
        return alpha * (s / (s + 1)) ** (d / 2) * math.exp(-u2 / (2 * (s + 1)))

    def e2(diff2, sum2):
        return (
            alpha**2 * (s / (s + 2)) ** (d / 2) * math.exp(-diff2 / (4 * s) - sum2 / (4 * (s + 2)))
        )

    e_g2 = e2(0.0, 0.0) + e2(0.0, 4 * m2) - 2 * e2(m2, m2)
    e_g = e1(0.0) - e1(m2)
    return mmd2, 1 - c, e_g2 - e_g**2


@pytest.mark.parametrize(("d", "norm", "h"), [(2, 1.0, 1.0), (5, 1.5, 2.0)])
def test_mmd_shifted_gaussians_closed_form(d, norm, h):
    n = 2000
    g = gen(20 + d)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randn(n, d, generator=g, dtype=F64) + shift_vector(d, norm)
    mmd2, bias_factor, var_g = gauss_rbf_moments(norm, h, d)
    bias = (1 / n + 1 / n) * bias_factor
    sd_v = math.sqrt(4 * var_g / n + 4 * var_g / n)
    value = float(mmd(x, y, bandwidth=h, squared=True))
    assert abs(value - bias - mmd2) <= 4 * sd_v
    assert float(mmd(x, y, bandwidth=h)) == pytest.approx(math.sqrt(value), rel=1e-12)


def test_mmd_chunked_sum_matches_dense_and_median_heuristic():
    x = torch.randn(700, 3, generator=gen(0), dtype=F64)  # 700 rows > one chunk of 2**18 entries
    y = torch.randn(500, 3, generator=gen(1), dtype=F64) * 1.3 + 0.2
    h = float(torch.quantile(torch.nn.functional.pdist(torch.cat([x, y])), 0.5))

    def k(a, b):
        return torch.exp(-torch.cdist(a, b).square() / (2 * h * h)).mean()

    dense = k(x, x) + k(y, y) - 2 * k(x, y)
    assert float(mmd(x, y, bandwidth=h, squared=True)) == pytest.approx(float(dense), rel=1e-9)
    # pooled size 1200 <= 2000: the median heuristic uses every point
    assert float(mmd(x, y, squared=True)) == pytest.approx(float(dense), rel=1e-9)


def test_mmd_median_heuristic_subsamples_large_samples_deterministically():
    x = torch.randn(2200, 2, generator=gen(0), dtype=F64)
    y = torch.randn(200, 2, generator=gen(1), dtype=F64) + 0.5
    a = float(mmd(x, y))
    assert a > 0 and math.isfinite(a)
    # pooled 2400 > 2000 points: the first 1833 of x and the first 167 of y (in proportion to
    # the sample sizes) set the bandwidth
    h = float(torch.quantile(torch.nn.functional.pdist(torch.cat([x[:1833], y[:167]])), 0.5))
    assert a == pytest.approx(float(mmd(x, y, bandwidth=h)), rel=1e-12)
    # a tiny second sample still contributes a point: round(2000 * 8000 / 8002) = 2000 is capped
    # at 1999 so that y keeps one (checked on the private helper: no kernel sums needed)
    big = torch.randn(8000, 2, generator=gen(2), dtype=F64)
    h = float(torch.quantile(torch.nn.functional.pdist(torch.cat([big[:1999], y[:1]])), 0.5))
    assert _median_bandwidth(big, y[:2]) == pytest.approx(h, rel=1e-12)


def test_mmd_median_heuristic_degenerate_pooled_samples():
    # more than half of the pairwise distances are 0: fall back to the mean positive distance
    x = torch.zeros(4, 2, dtype=F64)
    y = torch.cat([torch.zeros(3, 2, dtype=F64), torch.ones(1, 2, dtype=F64)])
    assert float(mmd(x, y)) == pytest.approx(float(mmd(x, y, bandwidth=math.sqrt(2))), rel=1e-12)
    assert float(mmd(x, y)) > 0
    # all points equal: any bandwidth gives 0
    assert float(mmd(x, torch.zeros(3, 2, dtype=F64))) == 0.0


# ----------------------------------------------------------------------------------------
# mode statistics and log-density
# ----------------------------------------------------------------------------------------
def test_mode_statistics_exact_sample_is_accurate():
    # Standard errors with soft assignment (r_k in [0, 1], E[r_k f] = w_k E_k f):
    #   w_k:  Var r_k(X) <= E r_k = w_k  ->  se <= sqrt(w_k (1 - w_k) / n);
    #   m_k:  E|m_hat - mu|^2 ~ E[r_k^2 |X - mu_k|^2] / (n w_k^2) <= tr(Sigma_k) / (n w_k);
    #   C_k:  E||C_hat - Sigma||_F^2 ~ E[r_k^2 ||zz^T - Sigma||_F^2] / (n w_k^2)
    #         <= ((tr Sigma)^2 + tr(Sigma^2)) / (n w_k)   (Gaussian fourth moments),
    #         divided by ||Sigma_k||_F for the relative error.
    target = three_mode_mixture()
    n = 20000
    x = target.sample(n, generator=gen(0), dtype=F64)
    stats = mode_statistics(x, target)
    w, covs = target.weights, target.covariances
    assert set(stats) >= {"weights", "weight_error", "mean_error", "cov_error"}
    assert stats["weights"].shape == (3,) and stats["weight_error"].shape == ()
    assert stats["mean_error"].shape == (3,) and stats["cov_error"].shape == (3,)
    assert stats["means"].shape == (3, 2) and stats["covariances"].shape == (3, 2, 2)
    se_w = torch.sqrt(w * (1 - w) / n)
    assert float(stats["weight_error"]) <= 4 * float(se_w.max())
    assert torch.all((stats["weights"] - w).abs() <= 4 * se_w)
    tr = torch.diagonal(covs, dim1=-2, dim2=-1).sum(-1)
    tr2 = torch.diagonal(covs @ covs, dim1=-2, dim2=-1).sum(-1)
    se_m = torch.sqrt(tr / (n * w))
    se_c = torch.sqrt((tr**2 + tr2) / (n * w)) / torch.linalg.matrix_norm(covs)
    assert torch.all(stats["mean_error"] <= 4 * se_m)
    assert torch.all(stats["cov_error"] <= 4 * se_c)


def test_mode_statistics_detects_wrong_weights():
    target = three_mode_mixture((0.5, 0.3, 0.2))
    wrong = three_mode_mixture((0.2, 0.3, 0.5))
    n = 20000
    x = wrong.sample(n, generator=gen(1), dtype=F64)
    stats = mode_statistics(x, target)
    # The responsibilities use the *target's* weights, so E_wrong[r_k] is not exactly the wrong
    # weight (overlapping modes are pulled back towards the target's weights), but it differs
    # from w_k by O(0.1-0.3). Exact samples give weight_error <= 4 max_k sqrt(w_k (1-w_k) / n)
    # = 0.014 (see the test above); the wrong sample must land far beyond that.
    exact_tol = 4 * float(torch.sqrt(target.weights * (1 - target.weights) / n).max())
    assert float(stats["weight_error"]) > 10 * exact_tol
    assert float(stats["weights"][0]) < 0.5 - 10 * exact_tol  # too little mass in mode 0
    assert float(stats["weights"][2]) > 0.2 + 10 * exact_tol  # too much in mode 2


def test_mode_statistics_mode_without_mass_gives_inf_not_nan():
    target = sd.GaussianMixture(
        torch.tensor([[0.0, 0.0], [1000.0, 0.0]]),
        torch.eye(2).repeat(2, 1, 1),
        torch.tensor([0.5, 0.5]),
    )
    x = torch.randn(500, 2, generator=gen(0), dtype=F64)  # all from mode 0
    stats = mode_statistics(x, target)
    assert float(stats["weights"][1]) == 0.0
    assert float(stats["weight_error"]) == pytest.approx(0.5)
    assert math.isinf(float(stats["mean_error"][1])) and math.isinf(float(stats["cov_error"][1]))
    assert math.isfinite(float(stats["mean_error"][0])) and math.isfinite(
        float(stats["cov_error"][0])
    )
    out = evaluate(x, target, generator=gen(1))
    assert (
        math.isinf(out["mean_error"]) and math.isinf(out["cov_error"]) and math.isinf(out["error"])
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_mean_log_density_of_gaussian_is_minus_entropy(dtype):
    # N(0, I_d): log p = -(d/2) log(2 pi) - |z|^2 / 2, mean -(d/2)(1 + log 2 pi),
    # Var(|z|^2 / 2) = d / 2  ->  se = sqrt(d / (2 n)).
    d, n = 3, 20000
    target = sd.Gaussian(torch.zeros(d), torch.eye(d))
    x = target.sample(n, generator=gen(0), dtype=dtype)
    value = mean_log_density(x, target)
    assert value.dtype == dtype and value.shape == ()
    assert abs(float(value) + 0.5 * d * (1 + math.log(2 * math.pi))) <= 4 * math.sqrt(d / (2 * n))
    direct = target.log_prob(x.to(F64)).mean()
    assert float(value) == pytest.approx(
        float(direct), rel=1e-5 if dtype == torch.float32 else 1e-12
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_float32_and_float64_agree(dtype):
    target = three_mode_mixture()
    x64 = target.sample(1500, generator=gen(2), dtype=F64)
    y64 = target.sample(1000, generator=gen(3), dtype=F64) + 0.3
    x, y = x64.to(dtype), y64.to(dtype)
    rel = 1e-5 if dtype == torch.float32 else 1e-12
    sw = sliced_wasserstein(x, y, 32, gen(4))
    assert sw.dtype == dtype
    assert float(sw) == pytest.approx(float(sliced_wasserstein(x64, y64, 32, gen(4))), rel=rel)
    m = mmd(x, y, bandwidth=1.0, squared=True)
    assert m.dtype == dtype
    assert float(m) == pytest.approx(float(mmd(x64, y64, bandwidth=1.0, squared=True)), rel=1e-4)
    stats = mode_statistics(x, target)
    assert all(v.dtype == dtype for v in stats.values())
    stats64 = mode_statistics(x64, target)
    assert torch.allclose(stats["weights"].double(), stats64["weights"], atol=1e-5)
    # mixed precision promotes
    assert sliced_wasserstein(x64.float(), y64, 8, gen(0)).dtype == F64
    assert mmd(x64, y64.float()).dtype == F64


# ----------------------------------------------------------------------------------------
# evaluate and noise_floor
# ----------------------------------------------------------------------------------------
def test_noise_floor_shrinks_with_n_and_wrong_sample_is_far_above():
    target = three_mode_mixture()
    small = noise_floor(target, 250, n_projections=128, generator=gen(0))
    large = noise_floor(target, 4000, n_projections=128, generator=gen(1))
    keys = {
        "sw2",
        "mmd",
        "weight_error",
        "mean_error",
        "cov_error",
        "mean_log_density",
        "log_density_gap",
        "error",
        "n",
    }
    assert set(small) == keys and set(large) == keys
    assert small["n"] == 250 and large["n"] == 4000
    assert all(isinstance(v, (float, int)) for v in large.values())
    # exact-vs-exact errors scale like n^{-1/2}: a factor 4 between n = 250 and 4000
    for key in ("sw2", "mmd", "weight_error", "mean_error", "cov_error", "error"):
        assert large[key] < small[key], key
    assert large["error"] == pytest.approx(
        large["cov_error"] + large["log_density_gap"] + large["weight_error"]
    )
    # a sample shifted by 1.5 along the diagonal: SW2 ~ 1.5 / sqrt(2) ~ 1.06, far above the floor
    bad = target.sample(4000, generator=gen(2), dtype=F64) + shift_vector(2, 1.5)
    out = evaluate(bad, target, n_projections=128, generator=gen(3))
    assert out["sw2"] > 10 * large["sw2"]
    assert out["mmd"] > 10 * large["mmd"]
    assert out["mean_error"] > 10 * large["mean_error"]
    assert out["error"] > 10 * large["error"]


def test_evaluate_reference_handling():
    target = three_mode_mixture()
    x = target.sample(600, generator=gen(0))  # default dtype (float32)
    ref = target.sample(900, generator=gen(1), dtype=F64).float()
    a = evaluate(x, target, reference=ref, n_projections=64, generator=gen(2))
    assert a == evaluate(x, target, reference=ref, n_projections=64, generator=gen(2))
    assert a["sw2"] == pytest.approx(float(sliced_wasserstein(x, ref, 64, gen(2))))
    assert a["mmd"] == pytest.approx(float(mmd(x, ref)))
    gap = abs(float(mean_log_density(x, target)) - float(mean_log_density(ref, target)))
    assert a["log_density_gap"] == pytest.approx(gap)
    # without a reference: a fresh exact sample of the same size, shape, dtype from the generator
    b = evaluate(x.reshape(600, 1, 2), target, n_projections=64, generator=gen(5))
    assert b == evaluate(x.reshape(600, 1, 2), target, n_projections=64, generator=gen(5))
    assert b["n"] == 600 and all(math.isfinite(v) for v in b.values())
    # METRICS names every metric of the result, in the order of the dict
    assert METRICS == tuple(k for k in b if k != "n")
    assert b["error"] == b["cov_error"] + b["log_density_gap"] + b["weight_error"]


# ----------------------------------------------------------------------------------------
# input validation: the error names the argument
# ----------------------------------------------------------------------------------------
GOOD = torch.randn(10, 2)


def _bad_sample_cases(fn, *, first: str, second: str):
    nan = GOOD.clone()
    nan[3, 1] = float("nan")
    return [
        (lambda: fn(GOOD.tolist(), GOOD), TypeError, first),
        (lambda: fn(torch.ones(10, 2, dtype=torch.int64), GOOD), TypeError, first),
        (lambda: fn(GOOD, torch.ones(10, 2, dtype=torch.int64)), TypeError, second),
        (lambda: fn(torch.randn(10), GOOD), ValueError, first),
        (lambda: fn(GOOD, torch.randn(10)), ValueError, second),
        (lambda: fn(torch.randn(1, 2), GOOD), ValueError, first),
        (lambda: fn(GOOD, torch.randn(1, 2)), ValueError, second),
        (lambda: fn(torch.randn(10, 0), torch.randn(10, 0)), ValueError, first),
        (lambda: fn(nan, GOOD), ValueError, first),
        (lambda: fn(GOOD, nan), ValueError, second),
        (lambda: fn(GOOD, torch.randn(10, 3)), ValueError, "event shape"),
        (lambda: fn(GOOD, torch.randn(10, 1, 2)), ValueError, "event shape"),
    ]


TARGET2 = sd.Gaussian(torch.zeros(2), torch.eye(2))

BAD_INPUTS = (
    _bad_sample_cases(lambda x, y: sliced_wasserstein(x, y), first="x", second="y")
    + _bad_sample_cases(lambda x, y: mmd(x, y), first="x", second="y")
    + _bad_sample_cases(
        lambda x, y: evaluate(x, TARGET2, reference=y), first="samples", second="reference"
    )
    + [
        (lambda: sliced_wasserstein(GOOD, GOOD, 0), ValueError, "n_projections"),
        (lambda: sliced_wasserstein(GOOD, GOOD, 2.5), TypeError, "n_projections"),
        (lambda: mmd(GOOD, GOOD, bandwidth=0.0), ValueError, "bandwidth"),
        (lambda: mmd(GOOD, GOOD, bandwidth=-1.0), ValueError, "bandwidth"),
        (lambda: mmd(GOOD, GOOD, bandwidth=float("nan")), ValueError, "bandwidth"),
        (lambda: mmd(GOOD, GOOD, bandwidth="wide"), TypeError, "bandwidth"),
        (lambda: mmd(GOOD, GOOD, squared="yes"), TypeError, "squared"),
        (lambda: mode_statistics(torch.randn(10, 3), TARGET2), ValueError, "x"),
        (lambda: mode_statistics(torch.randn(10, 2), object()), TypeError, "target"),
        (lambda: mode_statistics(torch.randn(1, 2), TARGET2), ValueError, "x"),
        (lambda: mode_statistics(torch.ones(10, 2, dtype=torch.int32), TARGET2), TypeError, "x"),
        (lambda: mean_log_density(torch.randn(10, 3), TARGET2), ValueError, "x"),
        (lambda: mean_log_density(GOOD, "gaussian"), TypeError, "target"),
        (lambda: evaluate(torch.randn(10, 3), TARGET2), ValueError, "samples"),
        (lambda: evaluate(GOOD, TARGET2, reference=torch.randn(10, 3)), ValueError, "event shape"),
        (lambda: evaluate(GOOD, TARGET2, n_projections=0), ValueError, "n_projections"),
        (lambda: evaluate(GOOD, None), TypeError, "target"),
        (lambda: noise_floor(TARGET2, 1), ValueError, "n"),
        (lambda: noise_floor(TARGET2, 100.0), TypeError, "n"),
        (lambda: noise_floor(TARGET2, 100, n_projections=-3), ValueError, "n_projections"),
        (lambda: noise_floor(object(), 100), TypeError, "target"),
    ]
)


@pytest.mark.parametrize(("call", "error", "name"), BAD_INPUTS)
def test_bad_input_raises_naming_the_argument(call, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        call()


def test_mmd_n_caps_only_the_mmd():
    target = sd.imbalanced_2d()
    g = torch.Generator().manual_seed(3)
    x = target.sample(600, generator=g, dtype=torch.float64)
    ref = target.sample(600, generator=g, dtype=torch.float64)
    full = evaluate(x, target, reference=ref, generator=torch.Generator().manual_seed(0))
    capped = evaluate(x, target, reference=ref, generator=torch.Generator().manual_seed(0), mmd_n=200)
    assert capped["mmd"] == pytest.approx(float(mmd(x[:200], ref[:200])), rel=1e-12)
    assert capped["mmd"] != full["mmd"]
    for key in ("sw2", "weight_error", "cov_error", "log_density_gap", "error"):
        assert capped[key] == full[key]
    floor = noise_floor(target, 300, generator=torch.Generator().manual_seed(1), mmd_n=100)
    assert floor["n"] == 300
    with pytest.raises(ValueError, match="mmd_n"):
        evaluate(x, target, reference=ref, mmd_n=1)
