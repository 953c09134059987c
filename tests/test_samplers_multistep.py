"""σ̃ multistep solvers (iPNDM, tAB-DEIS, LMS): measured orders, honest NFE, AFS, convergence.

Checked against exact answers: the closed-form probability-flow map of Gaussian data (orders of
convergence, float64) and the exact statistics of the imbalanced mixture (generous steps).
"""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.samplers import DEIS, IPNDM, LMS

MU, V = 0.8, 0.3
EPS = 1e-3


def _flow_map(sde, xT, eps):
    """Exact flow map for 1-D data N(MU, V): (x_t − s μ)/sqrt(s² V + σ²) is conserved."""
    s, sigma = sde.scale_std(torch.tensor([sde.T, eps], dtype=torch.float64))
    (sT, se), (gT, ge) = s.tolist(), sigma.tolist()
    CT, Ce = sT**2 * V + gT**2, se**2 * V + ge**2
    return se * MU + math.sqrt(Ce / CT) * (xT - sT * MU)


def _gaussian(sde):
    target = sd.Gaussian(torch.tensor([MU], dtype=torch.float64), torch.tensor([[V]], dtype=torch.float64))
    xT = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None] * sde.prior_std
    return target.score_fn(sde), xT


def _sigma_uniform_grid(sde, steps, eps):
    """Times whose noise-to-signal ratios σ/s are equally spaced from t = T to eps."""
    s, g = sde.scale_std(torch.tensor([sde.T, eps], dtype=torch.float64))
    st = (g / s).tolist()
    t = sde.t_from_log_snr(-torch.log(torch.linspace(st[0], st[1], steps + 1, dtype=torch.float64)))
    t[0], t[-1] = sde.T, eps
    return t


def test_registered_with_their_classes():
    for name, cls in (("ipndm", IPNDM), ("deis", DEIS), ("lms", LMS)):
        assert sd.samplers.SAMPLERS[name] is cls
        assert cls.needs_linear_sde and not cls.stochastic and not cls.evaluates_at_end


# (label, sampler, order, steps N; rates from N, 2N, 4N on the log_snr grid of the VP SDE).
# The lower-order warm-up makes the first steps' local errors O(h^2), O(h^3): negligible at
# high noise (the prediction hardly moves there), so the rates approach the order from below
# (measured: LMS4 3.36/3.67, DEIS3 2.77/2.90 at N = 32..128).
ORDER_CASES = [
    ("lms2", lambda: LMS(order=2), 2),
    ("lms3", lambda: LMS(order=3), 3),
    ("lms4", lambda: LMS(order=4), 4),
    ("deis1", lambda: DEIS(order=1), 1),
    ("deis2", lambda: DEIS(order=2), 2),
    ("deis3", lambda: DEIS(order=3), 3),
    ("ipndm2", lambda: IPNDM(order=2), 2),
]


@pytest.mark.parametrize("label,make,order", ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
def test_measured_order_on_the_log_snr_grid(label, make, order):
    sde = sd.VPSDE()
    score, xT = _gaussian(sde)
    exact = _flow_map(sde, xT, EPS)
    errs = []
    for steps in (32, 64, 128):
        out = sd.sample(sde, score, xT.shape, make(), steps=steps, x_init=xT, eps=EPS, grid="log_snr")
        errs.append(float((out.samples - exact).abs().max()))
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(order - 0.75 < r < order + 0.5 for r in rates), (errs, rates)
    assert rates[1] > order - 0.4, (errs, rates)


@pytest.mark.parametrize("order", [3, 4])
def test_ipndm_reaches_its_order_on_a_sigma_uniform_grid(order):
    # fixed Adams–Bashforth weights have full order where the steps in σ̃ are equal; a VE SDE
    # over σ ∈ [3, 0.17] keeps such a grid fine everywhere
    sde = sd.VESDE(sigma_max=3.0)
    score, xT = _gaussian(sde)
    exact = _flow_map(sde, xT, 0.5)
    errs = []
    for steps in (8, 16, 32):
        out = sd.sample(sde, score, xT.shape, IPNDM(order=order), grid=_sigma_uniform_grid(sde, steps, 0.5),
                        x_init=xT)
        errs.append(float((out.samples - exact).abs().max()))
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert rates[1] > 2.5, (errs, rates)  # measured 2.9 (order 3), > 7 (order 4, pre-asymptotic)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ipndm_is_lms_on_a_sigma_uniform_grid(order):
    sde = sd.VPSDE()
    score, xT = _gaussian(sde)
    grid = _sigma_uniform_grid(sde, 12, 0.3)
    a = sd.sample(sde, score, xT.shape, IPNDM(order=order), grid=grid, x_init=xT).samples
    b = sd.sample(sde, score, xT.shape, LMS(order=order), grid=grid, x_init=xT).samples
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["ipndm", "deis", "lms"])
def test_order_one_is_ddim(name):
    sde = sd.VPSDE()
    target = sd.imbalanced_2d()
    xT = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(steps=7, x_init=xT, grid="log_snr")
    a = sd.sample(sde, target.score_fn(sde), (16, 2), name, order=1, **kw).samples
    b = sd.sample(sde, target.score_fn(sde), (16, 2), "ddim", **kw).samples
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_deis_quadrature_is_exact_where_t_is_linear_in_sigma():
    # VE with sigma(t) ∝ t would make t(σ̃) linear; on any SDE the tAB weights of a step reproduce
    # ∫ t^m dσ̃ for m < k, i.e. the integral of the interpolated polynomial of the nodes
    sde = sd.VPSDE()
    times = sd.samplers.time_grid(sde, 6, EPS, "log_snr").tolist()
    s, g = sde.scale_std(torch.tensor(times, dtype=torch.float64))
    st = (g / s).tolist()
    i, k = 4, 3
    w = DEIS(order=3).weights(sde, st, times, i, k)
    u = torch.linspace(st[i], st[i + 1], 20001, dtype=torch.float64)
    t_u = sde.t_from_log_snr(-torch.log(u))
    for m in range(k):
        exact = float(torch.trapezoid(t_u**m, u))
        approx = sum(float(w[j]) * times[i - j] ** m for j in range(k))
        assert approx == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("make,steps,expected", [
    (lambda: IPNDM(), 7, 7),
    (lambda: IPNDM(afs=True), 7, 6),
    (lambda: DEIS(), 7, 7),
    (lambda: DEIS(order=2, afs=True), 5, 4),
    (lambda: LMS(), 9, 9),
    (lambda: LMS(afs=True), 9, 8),
])
def test_nfe_is_honest(make, steps, expected):
    sde = sd.VPSDE()
    calls = []
    score = sd.imbalanced_2d().score_fn(sde)

    def counted(x, t):
        calls.append(float(t[0]))
        return score(x, t)

    solver = make()
    out = sd.sample(sde, counted, (32, 2), solver, steps=steps, generator=torch.Generator().manual_seed(1))
    assert out.nfe == len(calls) == expected == solver.nfe(steps)
    assert min(calls) > float(solver.grid(sde, steps, None)[-1])  # never at the last grid time


def test_afs_replaces_only_the_first_evaluation():
    # on Gaussian data N(0, sigma_d^2) the analytical first step is exact
    sde = sd.VPSDE()
    target = sd.Gaussian(torch.zeros(2, dtype=torch.float64), 0.25 * torch.eye(2, dtype=torch.float64))
    xT = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = sd.sample(sde, target.score_fn(sde), (16, 2), LMS(afs=True, sigma_data=0.5), steps=9, x_init=xT)
    b = sd.sample(sde, target.score_fn(sde), (16, 2), LMS(), steps=9, x_init=xT)
    torch.testing.assert_close(a.samples, b.samples, rtol=1e-10, atol=1e-10)
    assert a.nfe == b.nfe - 1
    # on the mixture it is not exact but harmless (s(T) ≈ 0.0066 for VP)
    mix = sd.imbalanced_2d().score_fn(sde)
    c = sd.sample(sde, mix, (16, 2), IPNDM(afs=True), steps=20, x_init=xT).samples
    d = sd.sample(sde, mix, (16, 2), IPNDM(), steps=20, x_init=xT).samples
    assert 0 < float((c - d).abs().max()) < 1e-2


@pytest.mark.parametrize("name", ["ipndm", "deis", "lms"])
def test_same_seed_same_samples(name):
    sde = sd.VPSDE()
    score = sd.imbalanced_2d().score_fn(sde)

    def draw(seed):
        return sd.sample(sde, score, (32, 2), name, steps=6, generator=torch.Generator().manual_seed(seed)).samples

    a = draw(3)
    torch.testing.assert_close(a, draw(3), rtol=0, atol=0)
    assert not torch.equal(a, draw(4))


@pytest.mark.parametrize("name", ["ipndm", "deis", "lms"])
def test_converges_to_the_imbalanced_mixture(name):
    # n = 3000 draws, tolerances as in test_samplers_fast (weights 4·sqrt(w(1−w)/n) + 0.01;
    # per-mode covariance ~ sqrt(2/(w n)) ≤ 0.067 -> 0.25; means 0.05; log-density gap 0.12)
    sde = sd.VPSDE()
    target = sd.imbalanced_2d()
    n = 3000
    out = sd.sample(sde, target.score_fn(sde), (n, 2), name, steps=100, eps=1e-4,
                    generator=torch.Generator().manual_seed(21))
    stats = sd.metrics.mode_statistics(out.samples, target)
    assert float(stats["weight_error"]) < 4 * math.sqrt(0.25 / n) + 0.01
    assert float(stats["mean_error"].max()) < 0.05
    assert float(stats["cov_error"].max()) < 0.25
    ref = target.sample(n, generator=torch.Generator().manual_seed(5))
    gap = abs(float(sd.metrics.mean_log_density(out.samples, target))
              - float(sd.metrics.mean_log_density(ref, target)))
    assert gap < 0.12


@pytest.mark.parametrize("factory,match,exc", [
    (lambda: IPNDM(order=5), "order", ValueError),
    (lambda: IPNDM(order=0), "order", ValueError),
    (lambda: DEIS(order=4), "order", ValueError),
    (lambda: LMS(order=2.0), "order", TypeError),
    (lambda: LMS(afs=1), "afs", TypeError),
    (lambda: IPNDM(sigma_data=0.0), "sigma_data", ValueError),
])
def test_bad_options_name_the_argument(factory, match, exc):
    with pytest.raises(exc, match=match):
        factory()


@pytest.mark.parametrize("name", ["ipndm", "deis", "lms"])
def test_need_a_linear_sde(name):
    not_linear = object()  # no log_snr / t_from_log_snr / scale_std
    with pytest.raises(TypeError, match="needs a LinearSDE"):
        sd.samplers.SAMPLERS[name]().run(not_linear, lambda x, t: -x, torch.zeros(2, 1),
                                         torch.tensor([1.0, 0.5]))


@pytest.mark.parametrize("name", ["ipndm", "deis", "lms"])
def test_callback_sees_every_grid_time(name):
    sde = sd.VPSDE()
    seen = []
    out = sd.sample(sde, sd.imbalanced_2d().score_fn(sde), (8, 2), name, steps=5, trajectory=True,
                    callback=lambda i, t, x: seen.append((i, t)), generator=torch.Generator().manual_seed(0))
    default = {"ipndm": "log_snr", "deis": "quadratic", "lms": "quadratic"}[name]  # documented defaults
    assert seen == list(enumerate(sd.samplers.time_grid(sde, 5, EPS, default)[1:].tolist()))
    torch.testing.assert_close(out.trajectory[-1], out.samples)
