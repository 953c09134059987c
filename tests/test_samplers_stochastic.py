"""EDM and the stochastic samplers of issue 16, and batch-independent noise.

Exact answers: for 1-D Gaussian data every sampler here is affine in the prior draw and in its
noise draws, so a scripted noise source that feeds unit vectors gives the exact mean and
variance of its output law (weak error in closed form, no Monte-Carlo); strong errors use
noise coupled across step counts; the deterministic special cases must equal the solvers they
reduce to; and every sampler converges to the exact imbalanced 2-D mixture.
"""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde import samplers as S
from scoresde.noise import PerSampleGenerator

MU, V, EPS = 0.8, 0.3, 1e-3
NEW = ("edm", "euler_ancestral", "dpm_solver_pp_2s_ancestral", "dpm_solver_pp_sde", "sa_solver")


class Scripted:
    """A noise source that returns given tensors (or ``fn(call, shape, dtype)``) in order."""

    device = torch.device("cpu")

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def randn(self, shape, *, dtype=None, device=None):
        out = self.fn(self.calls, shape, dtype)
        self.calls += 1
        return out.to(dtype)


def _gaussian_1d():
    return sd.Gaussian(torch.tensor([MU]), torch.tensor([[V]]))


def _scale_std(sde, t):
    s, sig = sde.scale_std(torch.tensor([float(t)], dtype=torch.float64))
    return float(s), float(sig)


def weak_error(sampler, sde, grid):
    """|mean − exact| + |var − exact| of the sampler's output law, in closed form (see module doc)."""
    score = _gaussian_1d().score_fn(sde)
    sT, gT = _scale_std(sde, sde.T)
    se, ge = _scale_std(sde, grid[-1])
    mT, vT = sT * MU, sT**2 * V + gT**2
    probe = Scripted(lambda k, shape, dtype: torch.zeros(shape))
    sd.sample(sde, score, (1, 1), sampler=sampler, grid=grid, generator=probe,
              x_init=torch.full((1, 1), mT, dtype=torch.float64), denoise=False)

    def basis(k, shape, dtype):
        z = torch.zeros(shape)
        z[2 + k] = 1.0
        return z

    x0 = torch.full((probe.calls + 2, 1), mT, dtype=torch.float64)
    x0[1] += 1.0
    y = sd.sample(sde, score, tuple(x0.shape), sampler=sampler, grid=grid, x_init=x0,
                  generator=Scripted(basis), denoise=False).samples[:, 0]
    mean = float(y[0])
    var = float(y[1] - y[0]) ** 2 * vT + float(((y[2:] - y[0]) ** 2).sum())
    return abs(mean - se * MU) + abs(var - (se**2 * V + ge**2))


def _rates(errs):
    return [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]


# (label, sampler, expected weak order); rates measured on 16 -> 32 -> 64 steps, log-SNR grid
WEAK = [
    ("euler_ancestral", lambda: S.EulerAncestral(), 1),
    ("2s_ancestral", lambda: S.DPMSolverPlusPlus2SAncestral(), 2),
    ("edm_churn", lambda: S.EDM(s_churn=5.0), 2),
    ("2m_sde", lambda: S.DPMSolverPlusPlusSDE(lower_order_final=False), 2),
    ("2m_sde_heun", lambda: S.DPMSolverPlusPlusSDE(solver_type="heun", lower_order_final=False), 2),
    ("3m_sde", lambda: S.DPMSolverPlusPlusSDE(order=3, lower_order_final=False), 2),
    ("sa_p2c2", lambda: S.SASolver(2, 2, lower_order_final=False), 2),
    ("sa_p3c3", lambda: S.SASolver(3, 3, lower_order_final=False), 2),
]


@pytest.mark.parametrize("label,make,order", WEAK, ids=[w[0] for w in WEAK])
def test_measured_weak_order(label, make, order):
    # measured (VP): euler_ancestral 0.75/0.87, 2s 1.73/1.89, edm churn 2.16/2.06, 2M SDE
    # 1.57/1.93, heun 2.06/2.08, 3M SDE 2.73/2.37, SA 2/2 2.80/2.93, SA 3/3 2.70/2.09
    sde = sd.VPSDE()
    errs = [weak_error(make(), sde, S.time_grid(sde, n, eps=EPS, kind="log_snr")) for n in (16, 32, 64)]
    rates = _rates(errs)
    assert order - 0.35 < rates[-1] < order + 1.2, (errs, rates)
    assert errs[-1] < 0.05


def test_weak_error_is_exact_for_the_scripted_basis():
    # cross-check of weak_error on a sampler whose output law is known: Euler-Maruyama moments
    # follow m <- (1 + a h) m ... — instead, compare with a large Monte-Carlo run
    sde = sd.VPSDE()
    grid = S.time_grid(sde, 8, eps=EPS, kind="log_snr")
    err = weak_error(S.EulerAncestral(), sde, grid)
    score = _gaussian_1d().score_fn(sde)
    sT, gT = _scale_std(sde, sde.T)
    n = 200_000
    g = torch.Generator().manual_seed(0)
    x_T = sT * MU + math.sqrt(sT**2 * V + gT**2) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    y = sd.sample(sde, score, (n, 1), sampler="euler_ancestral", grid=grid, x_init=x_T, generator=g).samples
    se, ge = _scale_std(sde, EPS)
    v_exact = se**2 * V + ge**2
    mc = abs(float(y.mean()) - se * MU) + abs(float(y.var()) - v_exact)
    # Monte-Carlo error of mean + variance: about sqrt(v/n) + v sqrt(2/n) (5 standard errors)
    assert abs(mc - err) < 5 * (math.sqrt(v_exact / n) + v_exact * math.sqrt(2 / n))


def _coupled(lam, Z, m, eta):
    """Standard normals of the coarse grid (every m-th time) from the fine ones Z: the noise
    of an exact exponential step over a block is the sum of the fine noises, each propagated
    to the block's end by exp(-eta (lambda_end - lambda_k+1))."""
    out = []
    for j in range(len(Z) // m):
        ks = range(j * m, (j + 1) * m)
        w = [math.exp(-eta * (lam[(j + 1) * m] - lam[k + 1]))
             * math.sqrt(-math.expm1(-2 * eta * (lam[k + 1] - lam[k]))) for k in ks]
        out.append(sum(wk * Z[k] for wk, k in zip(w, ks)) / math.sqrt(sum(wk * wk for wk in w)))
    return out


STRONG = [
    ("2m_sde", lambda: S.DPMSolverPlusPlusSDE(lower_order_final=False), 1.0),
    ("2m_sde_eta_half", lambda: S.DPMSolverPlusPlusSDE(eta=0.5, lower_order_final=False), 0.5),
    ("3m_sde", lambda: S.DPMSolverPlusPlusSDE(order=3, lower_order_final=False), 1.0),
    ("sa_p3c3", lambda: S.SASolver(3, 3, lower_order_final=False), 1.0),
    ("euler_ancestral", lambda: S.EulerAncestral(), 1.0),
]


@pytest.mark.parametrize("label,make,eta", STRONG, ids=[s[0] for s in STRONG])
def test_measured_strong_order_is_one(label, make, eta):
    # additive noise: strong order 1 for every one of them (measured 0.97-1.11 at 32 -> 64)
    sde = sd.VPSDE()
    B, n_ref = 128, 512
    score = _gaussian_1d().score_fn(sde)
    fine = S.time_grid(sde, n_ref, eps=EPS, kind="log_snr")
    lam = sde.log_snr(fine).tolist()
    g = torch.Generator().manual_seed(0)
    sT, gT = _scale_std(sde, sde.T)
    x_T = sT * MU + math.sqrt(sT**2 * V + gT**2) * torch.randn(B, 1, generator=g, dtype=torch.float64)
    Z = list(torch.randn(n_ref, B, 1, generator=g, dtype=torch.float64))
    seq = lambda zs: Scripted(lambda k, shape, dtype: zs[k])  # noqa: E731
    ref = sd.sample(sde, score, (B, 1), sampler=make(), grid=fine, x_init=x_T, generator=seq(Z),
                    denoise=False).samples
    errs = []
    for n in (16, 32, 64):
        m = n_ref // n
        out = sd.sample(sde, score, (B, 1), sampler=make(), grid=fine[::m], x_init=x_T,
                        generator=seq(_coupled(lam, Z, m, eta)), denoise=False).samples
        errs.append(float((out - ref).abs().mean()))
    rates = _rates(errs)
    assert all(0.7 < r < 1.5 for r in rates[1:]), (errs, rates)


def _flow_map(sde, xT, eps):
    s, sigma = sde.scale_std(torch.tensor([sde.T, eps], dtype=torch.float64))
    (sT, se), (gT, ge) = s.tolist(), sigma.tolist()
    return se * MU + math.sqrt((se**2 * V + ge**2) / (sT**2 * V + gT**2)) * (xT - sT * MU)


DETERMINISTIC = [
    ("edm", lambda: S.EDM(), 2, "edm"),
    ("2s_eta0", lambda: S.DPMSolverPlusPlus2SAncestral(eta=0.0), 2, "edm"),
    ("3m_eta0", lambda: S.DPMSolverPlusPlusSDE(order=3, eta=0.0), 3, "log_snr"),
    ("sa_p3c0_tau0", lambda: S.SASolver(3, 0, tau=0.0, lower_order_final=False), 3, "log_snr"),
    ("sa_p1c2_tau0", lambda: S.SASolver(1, 2, tau=0.0, lower_order_final=False), 2, "log_snr"),
    ("sa_p2c3_tau0", lambda: S.SASolver(2, 3, tau=0.0, lower_order_final=False), 3, "log_snr"),
]


@pytest.mark.parametrize("label,make,order,grid", DETERMINISTIC, ids=[d[0] for d in DETERMINISTIC])
@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.EDMSDE()], ids=["vp", "edm"])
def test_deterministic_settings_have_their_order(label, make, order, grid, sde):
    eps = 2e-3
    xT = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None] * sde.prior_std
    exact = _flow_map(sde, xT, eps)
    errs = []
    for steps in (16, 32, 64):
        out = sd.sample(sde, _gaussian_1d().score_fn(sde), (9, 1), make(), steps=steps, x_init=xT,
                        eps=eps, grid=grid, denoise=False)
        errs.append(float((out.samples - exact).abs().max()))
    rates = _rates(errs)
    assert all(order - 0.5 < r < order + 1.7 for r in rates), (errs, rates)
    assert make().order == order


def test_special_cases_equal_the_solvers_they_reduce_to():
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    score = target.score_fn(sde)
    xT = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def run(sampler, seed=1, **kw):
        return sd.sample(sde, score, (32, 2), sampler=sampler, steps=12, x_init=xT, grid="log_snr",
                         generator=torch.Generator().manual_seed(seed), denoise=False, **kw).samples

    for order in (2, 3):  # eta = 0: the deterministic DPM-Solver++(2M)/(3M)
        torch.testing.assert_close(run(S.DPMSolverPlusPlusSDE(order=order, eta=0.0)),
                                   run(S.DPMSolverPlusPlus(order=order)), rtol=1e-10, atol=1e-10)
    # SA-Solver's predictor of orders 2 and 3 is the exact-integral 2M/3M SDE (same noise)
    torch.testing.assert_close(run(S.SASolver(2, 0)), run(S.DPMSolverPlusPlusSDE(solver_type="heun")),
                               rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(run(S.SASolver(3, 0)), run(S.DPMSolverPlusPlusSDE(order=3, solver_type="heun")),
                               rtol=1e-9, atol=1e-9)
    # ancestral Euler is DDIM with the same eta, and SA-Solver's order-1 predictor
    for eta in (0.0, 0.5, 1.0):
        torch.testing.assert_close(run(S.EulerAncestral(eta=eta)), run(S.DDIM(eta=eta)), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(run(S.SASolver(1, 0, tau=1.0)), run(S.EulerAncestral()), rtol=1e-9, atol=1e-9)
    # EDM without churn is Heun in sigma~: on the VE-type EDM SDE that is Heun in t
    edm = sd.EDMSDE()
    xe = edm.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = sd.sample(edm, target.score_fn(edm), (16, 2), sampler="edm", steps=8, x_init=xe, eps=0.01,
                  denoise=False)
    b = sd.sample(edm, target.score_fn(edm), (16, 2), sampler="heun", steps=8, x_init=xe, eps=0.01, grid="edm")
    torch.testing.assert_close(a.samples, b.samples, rtol=1e-9, atol=1e-9)
    assert a.nfe == b.nfe == 16


def test_seeds_reproduce_and_differ():
    sde, score = sd.VPSDE(), sd.imbalanced_2d().score_fn(sd.VPSDE())
    for name, opts in [("edm", {"s_churn": 10.0}), ("euler_ancestral", {}), ("dpm_solver_pp_2s_ancestral", {}),
                       ("dpm_solver_pp_sde", {"order": 3}), ("sa_solver", {})]:
        def draw(seed, name=name, opts=opts):
            return sd.sample(sde, score, (16, 2), sampler=name, steps=6,
                             generator=torch.Generator().manual_seed(seed), **opts).samples

        assert torch.equal(draw(3), draw(3)), name
        assert not torch.allclose(draw(3), draw(4)), name


def test_edm_churn_only_inside_its_range_and_capped_at_T():
    sde, score = sd.VPSDE(), sd.imbalanced_2d().score_fn(sd.VPSDE())
    xT = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    probe = Scripted(lambda k, shape, dtype: torch.zeros(shape))
    # noise drawn only at grid levels with s_tmin <= sigma~ <= s_tmax
    grid = S.time_grid(sde, 10, eps=EPS, kind="edm")
    st = (lambda s, g: (g / s))(*sde.scale_std(grid))
    inside = int(((st[:-1] >= 0.5) & (st[:-1] <= 5.0)).sum())
    sd.sample(sde, score, (8, 2), sampler=S.EDM(s_churn=20.0, s_tmin=0.5, s_tmax=5.0), grid=grid, x_init=xT,
              generator=probe)
    assert probe.calls == inside > 0
    # zero noise with churn: the noise level is raised but nothing added; the run stays finite,
    # and churn at T (sigma~ capped at sigma~(T)) evaluates the model no later than T
    out = sd.sample(sde, score, (8, 2), sampler=S.EDM(s_churn=50.0), grid=grid, x_init=xT,
                    generator=Scripted(lambda k, shape, dtype: torch.zeros(shape)))
    assert bool(torch.isfinite(out.samples).all()) and out.nfe == 20 + 1  # + the default final step


def test_grids_ending_at_zero():
    # through sample() a LinearSDE grid for these solvers ends at t > 0 (the driver refuses
    # t = 0 for samplers that step in log-SNR); run() itself handles a last step to sigma~ = 0
    from scoresde._runtime import CountingScore

    sde, score = sd.VPSDE(), sd.imbalanced_2d().score_fn(sd.VPSDE())
    grid = torch.tensor([1.0, 0.5, 0.1, 0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for name in ("edm", "euler_ancestral", "dpm_solver_pp_2s_ancestral"):
        with pytest.raises(ValueError, match="t > 0"):
            sd.sample(sde, score, (8, 2), sampler=name, grid=grid)
    for sampler, calls in [(S.EDM(), 5), (S.EulerAncestral(), 3), (S.DPMSolverPlusPlus2SAncestral(), 5)]:
        counted = CountingScore(score, "test")
        x = sampler.run(sde, counted, sde.prior_sample((8, 2), generator=g), grid, generator=g)
        assert counted.calls == calls and bool(torch.isfinite(x).all())  # Euler (to D) at the end


@pytest.fixture(scope="module")
def mixture_floor():
    target, n = sd.imbalanced_2d(), 2000
    floors = [sd.metrics.noise_floor(target, n, generator=torch.Generator().manual_seed(k))["error"]
              for k in range(3)]
    return sum(floors) / len(floors)


@pytest.mark.parametrize(
    "name,opts,steps",
    [
        ("edm", {}, 50),
        ("edm", {"s_churn": 10.0}, 50),
        ("euler_ancestral", {}, 200),
        ("dpm_solver_pp_2s_ancestral", {}, 50),
        ("dpm_solver_pp_sde", {}, 100),
        ("dpm_solver_pp_sde", {"order": 3}, 100),
        ("sa_solver", {}, 100),
    ],
)
def test_converges_to_the_exact_mixture(name, opts, steps, mixture_floor):
    # combined error of metrics.evaluate at n = 2000 against the noise floor at the same n
    # (mean of 3 floors); end time 1e-4 and the flow denoising step remove the eps bias
    target, sde, n = sd.imbalanced_2d(), sd.VPSDE(), 2000
    out = sd.sample(sde, target.score_fn(sde), (n, 2), sampler=name, steps=steps, eps=1e-4,
                    denoise="flow", generator=torch.Generator().manual_seed(0), dtype=torch.float64, **opts)
    err = sd.metrics.evaluate(out.samples, target, generator=torch.Generator().manual_seed(1))["error"]
    assert err < 2.5 * mixture_floor, (name, opts, err, mixture_floor)


# -- reproducible (batch-independent) noise --------------------------------------------------

REPRO = [
    ("euler_maruyama", {}, None),
    ("ddpm", {}, None),
    ("pc", {"corrector": "annealed_langevin"}, None),
    ("edm", {"s_churn": 10.0}, None),
    ("dpm_solver_pp_sde", {}, None),
    ("dpm_solver_pp_sde", {"order": 3}, None),
    ("sa_solver", {}, None),
    ("euler_ancestral", {}, None),
    ("dpm_solver_pp_2s_ancestral", {}, None),
]


@pytest.mark.parametrize("name,opts,_", REPRO, ids=[f"{r[0]}{'-' + str(r[1]) if r[1] else ''}" for r in REPRO])
def test_sample_i_is_the_same_alone_and_in_a_batch_of_1000(name, opts, _):
    sde = sd.VPSDE()
    score = sd.imbalanced_2d().score_fn(sde)
    steps = 10 if name != "ddpm" else 30
    batch = sd.sample(sde, score, (1000, 2), sampler=name, steps=steps, generator=PerSampleGenerator(7),
                      dtype=torch.float64, **opts).samples
    for i in (0, 417, 999):
        alone = sd.sample(sde, score, (1, 2), sampler=name, steps=steps, dtype=torch.float64,
                          generator=PerSampleGenerator(7, start=i), **opts).samples
        torch.testing.assert_close(alone[0], batch[i], rtol=0, atol=1e-12)
    # a plain generator does not have this property (the control): sample 0 gets the same
    # prior draw but different step noise
    g_batch = sd.sample(sde, score, (1000, 2), sampler=name, steps=steps, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(7), **opts).samples
    g_alone = sd.sample(sde, score, (1, 2), sampler=name, steps=steps, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(7), **opts).samples
    assert not torch.allclose(g_alone[0], g_batch[0])


def test_per_sample_generator_streams_and_interface():
    g = PerSampleGenerator(3)
    a = g.randn((4, 2), dtype=torch.float64)
    b = PerSampleGenerator(3, start=2).randn((2, 2), dtype=torch.float64)
    assert torch.equal(a[2:], b)
    again = g.randn((4, 2), dtype=torch.float64)  # streams continue
    assert not torch.equal(a, again)
    assert torch.equal(g.manual_seed(3).randn((4, 2), dtype=torch.float64), a)
    assert g.randn((0, 2)).shape == (0, 2)
    assert "seed=3" in repr(g) and g.device == torch.device("cpu")
    # the prior draw goes through it too, and a shape-(batch, ...) split reassembles exactly
    sde = sd.VESDE()
    whole = sde.prior_sample((6, 3), generator=PerSampleGenerator(0), dtype=torch.float64)
    parts = torch.cat([sde.prior_sample((3, 3), generator=PerSampleGenerator(0, start=k), dtype=torch.float64)
                       for k in (0, 3)])
    assert torch.equal(whole, parts)
    assert abs(float(whole.std()) / sde.prior_std - 1) < 0.6
    with pytest.raises(ValueError, match="seed"):
        PerSampleGenerator(-1)
    with pytest.raises(TypeError, match="start"):
        PerSampleGenerator(0, start=1.5)
    with pytest.raises(ValueError, match="shape"):
        g.randn(())
    with pytest.raises(TypeError, match="generator must be None, a torch.Generator or a noise source"):
        sde.prior_sample((2, 2), generator="seed")
    with pytest.raises(TypeError, match="TorchSDE draws one Brownian motion"):
        pytest.importorskip("torchsde")
        sd.sample(sd.VPSDE(), sd.imbalanced_2d().score_fn(sd.VPSDE()), (2, 2), sampler="torchsde", steps=2,
                  generator=PerSampleGenerator(0))


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: S.EDM(s_churn=-1.0), ValueError, "s_churn"),
        (lambda: S.EDM(s_tmin=2.0, s_tmax=1.0), ValueError, "s_tmax"),
        (lambda: S.EDM(s_tmax="big"), TypeError, "s_tmax"),
        (lambda: S.EDM(s_noise=0.0), ValueError, "s_noise"),
        (lambda: S.EulerAncestral(eta=1.5), ValueError, "eta"),
        (lambda: S.DPMSolverPlusPlus2SAncestral(eta=-0.1), ValueError, "eta"),
        (lambda: S.DPMSolverPlusPlusSDE(order=1), ValueError, "order"),
        (lambda: S.DPMSolverPlusPlusSDE(order=2.0), TypeError, "order"),
        (lambda: S.DPMSolverPlusPlusSDE(solver_type="rk4"), ValueError, "solver_type"),
        (lambda: S.DPMSolverPlusPlusSDE(lower_order_final=1), TypeError, "lower_order_final"),
        (lambda: S.DPMSolverPlusPlusSDE(eta=-1.0), ValueError, "eta"),
        (lambda: S.SASolver(predictor_order=0), ValueError, "predictor_order"),
        (lambda: S.SASolver(predictor_order=5), ValueError, "predictor_order"),
        (lambda: S.SASolver(corrector_order=5), ValueError, "corrector_order"),
        (lambda: S.SASolver(tau=-1.0), ValueError, "tau"),
        (lambda: S.SASolver(lower_order_final="yes"), TypeError, "lower_order_final"),
    ],
)
def test_bad_options(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_registered_with_usable_defaults_at_100_steps():
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    for name in NEW:
        assert name in S.names()
        out = sd.sample(sde, target.score_fn(sde), (64, 2), sampler=name, steps=100,
                        generator=torch.Generator().manual_seed(0))
        final = 1 if S.resolve(name).default_denoise else 0  # the default final step to t = 0
        assert out.nfe == S.resolve(name).nfe(100) + final and bool(torch.isfinite(out.samples).all())
    assert S.resolve("dpm_solver_pp_sde", {"order": 3}).order == 3
    assert S.SASolver(2, 0).order == 2 and S.SASolver(2, 3).order == 3 and S.SASolver(3, 2).order == 2
    for name in NEW:  # a non-linear SDE is refused
        with pytest.raises(TypeError, match="LinearSDE"):
            S.resolve(name).grid(_NotLinear(), 4, 1e-3)


class _NotLinear(sd.SDE):
    def __init__(self):
        super().__init__(1.0)

    def _drift(self, x, t):
        return -x

    def _diffusion(self, t):
        return torch.ones_like(t)

    def _marginal(self, x0, t):
        raise NotImplementedError

    @property
    def prior_std(self):
        return 1.0
