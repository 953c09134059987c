"""Fast low-NFE samplers: DPM-Solver, DPM-Solver++, adaptive reverse SDE and flow ODE.

Checked against exact answers: the closed-form probability-flow map of Gaussian data (order of
convergence), exact mixture statistics (adaptive solvers), scipy's RK45 (adaptive ODE).
"""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.samplers import AdaptiveODE, AdaptiveSDE, DPMSolver, DPMSolverPlusPlus, UniPC

NEW = ("dpm_solver", "dpm_solver_pp", "unipc", "adaptive_sde", "adaptive_ode")
MU, V = 0.8, 0.3
EPS = 1e-3


def _flow_map(sde, xT, eps):
    """Exact flow map for 1-D data N(MU, V): (x_t − s μ)/sqrt(s² V + σ²) is conserved."""
    s, sigma = sde.scale_std(torch.tensor([sde.T, eps], dtype=torch.float64))
    (sT, se), (gT, ge) = s.tolist(), sigma.tolist()
    CT, Ce = sT**2 * V + gT**2, se**2 * V + ge**2
    return se * MU + math.sqrt(Ce / CT) * (xT - sT * MU)


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


def test_registered():
    names = sd.samplers.names()
    for name in NEW:
        assert name in names
    assert sd.samplers.SAMPLERS["dpm_solver_pp"] is DPMSolverPlusPlus


# (label, sampler, steps N; rates from N, 2N, 4N on the log_snr grid, upper slack)
# DPM-Solver++(3M) converges faster than h^3 before the asymptotic range on this problem:
# data-prediction errors made at high noise are damped by sigma_t/sigma_s, so the observed
# rates at N = 16..64 are 3.8-4.6 (they fall towards 3 at N >= 128 where float64 round-off
# starts to dominate), hence its larger upper bound.
CASES = [
    ("dpm1", lambda: DPMSolver(order=1), 1, 32, 0.5),
    ("dpm2", lambda: DPMSolver(order=2), 2, 16, 0.5),
    ("dpm3", lambda: DPMSolver(order=3), 3, 16, 0.5),
    ("pp2m", lambda: DPMSolverPlusPlus(order=2), 2, 16, 0.5),
    ("pp3m", lambda: DPMSolverPlusPlus(order=3), 3, 16, 1.7),
    ("unipc1", lambda: UniPC(order=1), 2, 16, 0.5),
    ("unipc2", lambda: UniPC(order=2), 3, 16, 0.5),
]


@pytest.mark.parametrize("label,make,order,base,upper", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(sigma_max=20.0)], ids=["vp", "ve"])
def test_measured_order_matches_theory(label, make, order, base, upper, sde):
    target = sd.Gaussian(torch.tensor([MU]), torch.tensor([[V]]))
    xT = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None] * sde.prior_std
    exact = _flow_map(sde, xT, EPS)
    errs = []
    for steps in (base, 2 * base, 4 * base):
        out = sd.sample(sde, target.score_fn(sde), (9, 1), make(), steps=steps, x_init=xT,
                        eps=EPS, grid="log_snr")
        errs.append(float((out.samples - exact).abs().max()))
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(order - 0.5 < r < order + upper for r in rates), (errs, rates)


def test_dpm_solver_1_is_ddim():
    sde = sd.VPSDE()
    target = sd.imbalanced_2d()
    xT = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(steps=7, x_init=xT, grid="log_snr")
    a = sd.sample(sde, target.score_fn(sde), (16, 2), DPMSolver(order=1), **kw).samples
    b = sd.sample(sde, target.score_fn(sde), (16, 2), "ddim", **kw).samples
    c = sd.sample(sde, target.score_fn(sde), (16, 2), DPMSolverPlusPlus(order=1), **kw).samples
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(c, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sampler,steps,expected", [
    (DPMSolver(order=1), 7, 7),
    (DPMSolver(order=2), 7, 14),
    (DPMSolver(order=3), 7, 21),
    (DPMSolverPlusPlus(order=2), 7, 7),
    (DPMSolverPlusPlus(order=3), 20, 20),
    (DPMSolverPlusPlus(order=3, warmup="singlestep"), 7, 8),
    (UniPC(order=2), 7, 7),
    (AdaptiveODE(rtol=1e-3, atol=1e-3), 5, None),
    (AdaptiveODE(rtol=1e-3, atol=1e-3, method="dopri5"), 5, None),
    (AdaptiveSDE(), 5, None),
], ids=lambda v: repr(v) if not isinstance(v, (int, type(None))) else str(v))
def test_nfe_is_honest(sampler, steps, expected):
    sde = sd.VPSDE()
    counter = Counting(sd.imbalanced_2d().score_fn(sde))
    out = sd.sample(sde, counter, (64, 2), sampler, steps=steps,
                    generator=torch.Generator().manual_seed(1))
    assert out.nfe == counter.calls
    if expected is not None:
        assert out.nfe == expected
    else:  # adaptive: steps is ignored
        again = sd.sample(sde, sd.imbalanced_2d().score_fn(sde), (64, 2), sampler,
                          steps=steps + 3, generator=torch.Generator().manual_seed(1))
        assert again.nfe == out.nfe
        torch.testing.assert_close(again.samples, out.samples)


def test_lower_order_final_schedule():
    assert DPMSolverPlusPlus(order=3).step_orders(6) == [1, 2, 3, 3, 2, 1]
    assert DPMSolverPlusPlus(order=2).step_orders(4) == [1, 2, 2, 1]
    assert DPMSolverPlusPlus(order=3).step_orders(15) == [1, 2] + [3] * 13
    assert DPMSolverPlusPlus(order=3, lower_order_final=False).step_orders(5) == [1, 2, 3, 3, 3]


@pytest.mark.parametrize("name", NEW)
def test_same_seed_same_samples(name):
    sde = sd.VPSDE()
    score = sd.imbalanced_2d().score_fn(sde)

    def draw(seed):
        return sd.sample(sde, score, (32, 2), name, steps=6,
                         generator=torch.Generator().manual_seed(seed)).samples

    a, b = draw(3), draw(3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, draw(4))


def test_adaptive_sde_noise_depends_on_the_generator_only():
    sde = sd.VPSDE()
    score = sd.imbalanced_2d().score_fn(sde)
    xT = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(0))
    a = sd.sample(sde, score, (32, 2), "adaptive_sde", x_init=xT,
                  generator=torch.Generator().manual_seed(1)).samples
    b = sd.sample(sde, score, (32, 2), "adaptive_sde", x_init=xT,
                  generator=torch.Generator().manual_seed(2)).samples
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name,options", [
    ("adaptive_ode", {}),
    ("adaptive_sde", {}),
    ("dpm_solver_pp", {"order": 3}),
    ("unipc", {}),
])
def test_fast_samplers_reproduce_the_imbalanced_mixture(name, options):
    # n = 3000 draws; tolerances as in test_samplers_common: weights 4·sqrt(w(1−w)/n) plus
    # 0.01 for discretisation; per-mode relative covariance error ~ sqrt(2/(w n)) (≤ 0.067 for
    # the 0.15-weight mode) -> 0.25; means 0.05; mean log-density SE ≈ 0.024 -> 0.12.
    sde = sd.VPSDE()
    target = sd.imbalanced_2d()
    n = 3000
    steps = 50 if name in ("dpm_solver_pp", "unipc") else 1
    out = sd.sample(sde, target.score_fn(sde), (n, 2), name, steps=steps,
                    generator=torch.Generator().manual_seed(21), **options)
    stats = sd.metrics.mode_statistics(out.samples, target)
    assert float(stats["weight_error"]) < 4 * math.sqrt(0.25 / n) + 0.01
    assert float(stats["mean_error"].max()) < 0.05
    assert float(stats["cov_error"].max()) < 0.25
    ref = target.sample(n, generator=torch.Generator().manual_seed(5))
    gap = abs(float(sd.metrics.mean_log_density(out.samples, target))
              - float(sd.metrics.mean_log_density(ref, target)))
    assert gap < 0.12


@pytest.mark.parametrize("method", ["bs3", "dopri5"])
def test_adaptive_ode_matches_scipy(method):
    sde = sd.VPSDE()
    target = sd.imbalanced_2d()
    xT = sde.prior_sample((100, 2), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    kw = dict(steps=1, x_init=xT)
    ours = sd.sample(sde, target.score_fn(sde), (100, 2),
                     AdaptiveODE(rtol=1e-6, atol=1e-6, method=method), **kw)
    ref = sd.sample(sde, target.score_fn(sde), (100, 2), "ode", rtol=1e-6, atol=1e-6, **kw)
    assert float((ours.samples - ref.samples).abs().max()) < 2e-3


def test_time_grid_option():
    sde = sd.VPSDE()
    default = DPMSolverPlusPlus().grid(sde, 8, EPS)
    torch.testing.assert_close(default, sd.samplers.time_grid(sde, 8, EPS, "log_snr"))
    with pytest.warns(DeprecationWarning, match="time_grid"):
        driver = DPMSolverPlusPlus(time_grid=None).grid(sde, 8, EPS, "quadratic")
    torch.testing.assert_close(driver, sd.samplers.time_grid(sde, 8, EPS, "quadratic"))
    with pytest.warns(DeprecationWarning, match="time_grid"):
        edm = DPMSolver(time_grid="edm").grid(sde, 8, EPS, "edm")
    torch.testing.assert_close(edm, sd.samplers.time_grid(sde, 8, EPS, "edm"))
    # an explicit grid is used as given (no longer a conflict with the log-SNR default) ...
    seen = []
    sd.sample(sde, sd.imbalanced_2d().score_fn(sde), (4, 2), "dpm_solver_pp", steps=4, eps=EPS,
              grid="edm", callback=lambda i, t, x: seen.append(t))
    assert seen == sd.samplers.time_grid(sde, 4, EPS, "edm")[1:].tolist()
    # ... and one the solver cannot step on (log-SNR infinite at t = 0: DPM-Solver's stages)
    # is refused; DPM-Solver++ takes that last step at order 1 (issue 13)
    with pytest.raises(ValueError, match="grid"):
        sd.sample(sde, sd.imbalanced_2d().score_fn(sde), (4, 2), "dpm_solver",
                  grid=torch.tensor([1.0, 0.5, 0.0]))
    out = sd.sample(sde, sd.imbalanced_2d().score_fn(sde), (4, 2), "dpm_solver_pp",
                    grid=torch.tensor([1.0, 0.5, 0.0]))
    assert bool(torch.isfinite(out.samples).all())


@pytest.mark.parametrize("factory,match,exc", [
    (lambda: DPMSolver(order=4), "order", ValueError),
    (lambda: DPMSolver(order=2.0), "order", TypeError),
    (lambda: DPMSolver(time_grid="cosine"), "time_grid", ValueError),
    (lambda: DPMSolverPlusPlus(order=0), "order", ValueError),
    (lambda: DPMSolverPlusPlus(lower_order_final="yes"), "lower_order_final", TypeError),
    (lambda: DPMSolverPlusPlus(warmup="heun"), "warmup", ValueError),
    (lambda: UniPC(order=3), "order", ValueError),
    (lambda: UniPC(time_grid="cosine"), "time_grid", ValueError),
    (lambda: AdaptiveODE(rtol=0.0), "rtol", ValueError),
    (lambda: AdaptiveODE(atol=-1.0), "atol", ValueError),
    (lambda: AdaptiveODE(method="rk4"), "method", ValueError),
    (lambda: AdaptiveODE(norm="l1"), "norm", ValueError),
    (lambda: AdaptiveODE(max_steps=0), "max_steps", ValueError),
    (lambda: AdaptiveSDE(rtol=float("nan")), "rtol", ValueError),
    (lambda: AdaptiveSDE(h_init=0.0), "h_init", ValueError),
    (lambda: AdaptiveSDE(atol="a"), "atol", TypeError),
])
def test_bad_options_name_the_argument(factory, match, exc):
    with pytest.raises(exc, match=match):
        factory()


@pytest.mark.parametrize("sampler", [AdaptiveODE(rtol=1e-8, atol=1e-8, max_steps=3),
                                     AdaptiveSDE(rtol=1e-6, atol=1e-6, max_steps=3)])
def test_max_steps_is_enforced(sampler):
    sde = sd.VPSDE()
    with pytest.raises(RuntimeError, match="max_steps"):
        sd.sample(sde, sd.imbalanced_2d().score_fn(sde), (8, 2), sampler, steps=1,
                  generator=torch.Generator().manual_seed(0))


def test_dpm_solvers_need_a_linear_sde():
    class NotLinear(sd.SDE):
        def _drift(self, x, t):
            return -x

        def _diffusion(self, t):
            return torch.ones_like(t)

        def _marginal(self, x0, t):
            return x0, torch.ones_like(t)

        @property
        def prior_std(self):
            return 1.0

    with pytest.raises(TypeError, match="LinearSDE"):
        DPMSolverPlusPlus().grid(NotLinear(1.0), 4, EPS, "uniform")


# -- step control: non-finite trial steps are rejected and retried smaller ----------------------

TIGHT_V = 0.01


def _tight_flow(n: int = 64):
    """N(0, 0.01 I) data under VP: the flow path x_t = sqrt(c_t/c_T) x_T, c_t = 1 - 0.99 s(t)²."""
    sde = sd.VPSDE()
    target = sd.Gaussian(torch.zeros(2, dtype=torch.float64),
                         TIGHT_V * torch.eye(2, dtype=torch.float64))
    xT = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def path(t):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)[:1]
        c = 1 - (1 - TIGHT_V) * sde.mean_coeff(t) ** 2
        c_T = 1 - (1 - TIGHT_V) * sde.mean_coeff(torch.tensor([sde.T], dtype=torch.float64)) ** 2
        return xT * (c / c_T).sqrt()

    return sde, target.score_fn(sde), xT, path


@pytest.mark.parametrize("through", ["sample", "run"])
@pytest.mark.parametrize("sampler", [AdaptiveODE(rtol=0.05, atol=0.05),
                                     AdaptiveODE(rtol=0.1, atol=0.1, method="dopri5")], ids=repr)
def test_adaptive_ode_rejects_non_finite_trials_and_finishes(sampler, through):
    """A score that is NaN wherever the state strays more than 0.01 from the true flow.

    Like a network evaluated outside the region it was trained on, it punishes large steps:
    their trial stages land off the path. Through :func:`sample` the driver's check raises
    NonFiniteError at such a stage; through ``run`` (no checks) the NaN reaches the error
    estimate. Either way the step is rejected and retried smaller, and the solve finishes.
    Since the FSAL stage is evaluated at every accepted state, the result lies within 0.01 of
    the exact flow map, far closer than the same tolerance reaches with the exact score.
    """
    sde, exact, xT, path = _tight_flow()
    nans = []

    def score(x, t):
        if float((x - path(t)).abs().max()) > 0.01:
            nans.append(float(t[0]))
            return torch.full_like(x, float("nan"))
        return exact(x, t)

    plain = sd.sample(sde, exact, xT.shape, sampler, steps=1, x_init=xT)
    if through == "sample":
        out = sd.sample(sde, score, xT.shape, sampler, steps=1, x_init=xT)
        x, nfe = out.samples, out.nfe
    else:
        counted = Counting(score)
        with torch.no_grad():
            x = sampler.run(sde, counted, xT, sd.samplers.time_grid(sde, 1, eps=EPS))
        nfe = counted.calls
    assert len(nans) > 0 and nfe > plain.nfe
    assert float((x - path(EPS)).abs().max()) <= 0.01
    assert float((plain.samples - path(EPS)).abs().max()) > 0.1  # loose tolerance, exact score


def test_adaptive_sde_rejects_non_finite_trials_and_finishes():
    """A score that is NaN for |x| > 5: GGF from h_init = 0.9 overshoots there, and recovers.

    The result has the law of the reference: the variance of N(0, 0.01 I) data at eps within
    4 standard errors of a sample variance (sqrt(2/n) relative) plus 0.05 for the solver.
    """
    sde, exact, _, _ = _tight_flow()
    nans = []

    def score(x, t):
        off = (x.abs() > 5.0).any(dim=1, keepdim=True)
        if bool(off.any()):
            nans.append(float(t[0]))
        return torch.where(off, torch.full_like(x, float("nan")), exact(x, t))

    n = 2000
    out = sd.sample(sde, score, (n, 2), AdaptiveSDE(h_init=0.9), steps=1, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    assert len(nans) > 0 and bool(torch.isfinite(out.samples).all())
    var_eps = TIGHT_V * float(sde.mean_coeff(EPS)) ** 2 + float(sde.std(EPS)) ** 2
    rel = out.samples.var(dim=0) / var_eps - 1
    assert float(rel.abs().max()) < 4 * math.sqrt(2 / n) + 0.05


@pytest.mark.parametrize("sampler, match", [
    (AdaptiveODE(), "the step size underflowed"),
    (AdaptiveSDE(), "the step size underflowed"),
], ids=repr)
@pytest.mark.parametrize("through", ["sample", "run"])
def test_adaptive_solvers_stop_when_no_step_is_finite(sampler, match, through):
    """NaN for every t < 0.5: no step can cross, and the error names the step and the time.

    (The same error at ``max_steps`` is tested on the loop itself, in test_stepping.py.)
    """
    sde, exact, xT, _ = _tight_flow(8)

    def score(x, t):
        return exact(x, t) if float(t[0]) >= 0.5 else torch.full_like(x, float("nan"))

    pattern = rf"{sampler.name}: non-finite trial state at step \d+ \(t=0\.5\d*\): .*{match}"
    with pytest.raises(sd.samplers.NonFiniteError, match=pattern):
        if through == "sample":
            sd.sample(sde, score, xT.shape, sampler, steps=1, x_init=xT,
                      generator=torch.Generator().manual_seed(0))
        else:
            with torch.no_grad():
                sampler.run(sde, score, xT, sd.samplers.time_grid(sde, 1, eps=EPS),
                            generator=torch.Generator().manual_seed(0))


def test_adaptive_ode_takes_any_embedded_tableau():
    from scoresde.stepping import RK4, ButcherTableau

    heun_euler = ButcherTableau("heun_euler", c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5),
                                order=2, b_hat=(1.0, 0.0), error_order=1)
    sampler = AdaptiveODE(rtol=1e-5, atol=1e-5, method=heun_euler)
    assert sampler.order == 2 and AdaptiveODE(method="dopri5").order == 5
    sde, exact, xT, path = _tight_flow(16)
    out = sd.sample(sde, exact, xT.shape, sampler, steps=1, x_init=xT)
    # local error 1e-5 per step over a few hundred steps: global error ~1e-3 (measured 2e-4)
    assert float((out.samples - path(EPS)).abs().max()) < 2e-3
    with pytest.raises(ValueError, match="method must be an embedded pair.*'rk4'"):
        AdaptiveODE(method=RK4)
    with pytest.raises(ValueError, match="method must be one of"):
        AdaptiveODE(method=5)


@pytest.mark.parametrize("sampler", [AdaptiveODE(), AdaptiveSDE()], ids=repr)
def test_adaptive_run_without_callback_is_the_same_solve(sampler):
    sde, exact, xT, _ = _tight_flow(16)
    seen = []
    out = sd.sample(sde, exact, xT.shape, sampler, steps=7, x_init=xT, trajectory=True,
                    callback=lambda i, t, x: seen.append(t), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        bare = sampler.run(sde, exact, xT, sd.samplers.time_grid(sde, 7, eps=EPS),
                           generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(bare, out.samples, rtol=0, atol=0)
    # the callback sees every accepted step, in order, ending exactly at eps
    assert seen == sorted(seen, reverse=True) and seen[-1] == EPS and len(seen) > 2


@pytest.mark.parametrize("name", ["adaptive_ode", "adaptive_sde"])
def test_adaptive_solvers_do_not_retry_bad_input(name):
    """A ValueError about a finite state (here: a score of the wrong shape) is not a rejection."""
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="shaped like x"):
        sd.sample(sde, lambda x, t: x[:, :1], (4, 2), name, steps=1,
                  generator=torch.Generator().manual_seed(0))


def test_adaptive_ode_without_checks_stops_at_once_on_a_nan_start():
    """Called directly (no driver checks), a NaN drift at the start is not retried."""
    sde = sd.VPSDE()
    counted = Counting(lambda x, t: torch.full_like(x, float("nan")))
    with torch.no_grad(), pytest.raises(sd.samplers.NonFiniteError, match=r"step 0 \(t=1\)"):
        AdaptiveODE().run(sde, counted, torch.zeros(4, 2), sd.samplers.time_grid(sde, 1))
    assert counted.calls == 1
