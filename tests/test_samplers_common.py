"""Contracts every sampler honours, and the convergence orders of the basic solvers."""

import math

import pytest
import torch

import scoresde as sd
from scoresde.samplers import NonFiniteError

# small but valid settings per sampler (DDPM on VP needs β_max/N < 1)
STEPS = {"ddpm": 40}


class Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


def _run(name, shape=(64, 2), dtype=torch.float64, seed=0, target=None, sde=None, **kw):
    sde = sde or sd.VPSDE()
    target = target or sd.imbalanced_2d()
    score = Counter(target.score_fn(sde))
    out = sd.sample(
        sde, score, shape, sampler=name, steps=STEPS.get(name, 12),
        generator=torch.Generator().manual_seed(seed), dtype=dtype, **kw,
    )
    return out, score


@pytest.mark.parametrize("name", sd.samplers.names())
def test_nfe_is_the_number_of_score_calls(name):
    out, score = _run(name)
    assert out.nfe == score.calls > 0


@pytest.mark.parametrize("name", sd.samplers.names())
def test_same_seed_same_samples_whatever_ran_before(name):
    a, _ = _run(name, seed=3)
    torch.manual_seed(123)  # global RNG state must not matter
    torch.randn(10)
    _run(name, seed=4)
    b, _ = _run(name, seed=3)
    assert torch.equal(a.samples, b.samples)
    c, _ = _run(name, seed=5)
    assert not torch.equal(a.samples, c.samples)


@pytest.mark.parametrize("name", sd.samplers.names())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_image_shaped_batches_and_dtypes(name, dtype):
    target = sd.correlated_gaussian(d=4)
    out, _ = _run(name, shape=(8, 1, 2, 2), dtype=dtype, target=target)
    assert out.samples.shape == (8, 1, 2, 2)
    assert out.samples.dtype == dtype
    assert bool(torch.isfinite(out.samples).all())


@pytest.mark.parametrize("name", sd.samplers.names())
def test_non_finite_state_stops_with_step_and_time(name):
    sde = sd.VPSDE()

    def bad_score(x, t):
        return torch.full_like(x, float("nan"))

    with pytest.raises(NonFiniteError, match=r"step \d+ \(t="):
        sd.sample(sde, bad_score, (4, 2), sampler=name, steps=STEPS.get(name, 5),
                  generator=torch.Generator().manual_seed(0))


def test_trajectory_callback_and_progress():
    seen = []
    out, score = _run("euler_maruyama", trajectory=True, progress=True,
                      callback=lambda i, t, x: seen.append((i, t)))
    assert out.trajectory.shape == (13, 64, 2)
    assert out.times.shape == (13,)
    assert float(out.times[0]) == 1.0 and float(out.times[-1]) == pytest.approx(1e-3)
    assert bool((out.times[1:] < out.times[:-1]).all())
    assert [i for i, _ in seen] == list(range(12))
    torch.testing.assert_close(out.trajectory[-1], out.samples)


def test_denoise_applies_tweedie_to_the_final_state():
    # For Gaussian data N(μ, v) the posterior mean at time eps is linear in x:
    # E[x0 | x] = μ + v s (x − s μ)/(s² v + σ²).
    sde = sd.VPSDE()
    target = sd.Gaussian(torch.tensor([0.7]), torch.tensor([[0.5]]))
    g = torch.Generator().manual_seed(0)
    plain = sd.sample(sde, target.score_fn(sde), (100, 1), "heun", steps=10, generator=g,
                      dtype=torch.float64, eps=0.05)
    g = torch.Generator().manual_seed(0)
    den = sd.sample(sde, target.score_fn(sde), (100, 1), "heun", steps=10, generator=g,
                    dtype=torch.float64, eps=0.05, denoise=True)
    assert den.nfe == plain.nfe + 1
    s, sig = float(sde.mean_coeff(0.05)), float(sde.std(0.05))
    expected = 0.7 + 0.5 * s * (plain.samples - s * 0.7) / (s**2 * 0.5 + sig**2)
    torch.testing.assert_close(den.samples, expected)


def test_flow_denoise_is_second_order_for_gaussian_data():
    # Exact samples of p_eps for N(0, v): y = x/s ~ N(0, v + r) with r = σ²/s². Tweedie scales y by
    # v/(v + r) (variance error −r/(v + r), first order); "flow" by 1 − r/(2(v + r)), variance
    # error r²/(4 v (v + r)), second order.
    sde, v, eps = sd.VPSDE(), 0.01, 0.01
    target = sd.Gaussian(torch.zeros(1, dtype=torch.float64), torch.tensor([[v]], dtype=torch.float64))
    s, sig = float(sde.mean_coeff(eps)), float(sde.std(eps))
    r = sig**2 / s**2
    x = torch.linspace(-1.0, 1.0, 11, dtype=torch.float64)[:, None]
    score = target.score_fn(sde)
    tw = sd.samplers.tweedie_denoise(sde, score, x, eps)
    fl = sd.samplers.tweedie_denoise(sde, score, x, eps, weight=0.5)
    torch.testing.assert_close(tw, x / s * v / (v + r))
    torch.testing.assert_close(fl, x / s * (1 - 0.5 * r / (v + r)))
    var_err = {k: (f[-1, 0] / (x[-1, 0] / s)) ** 2 * (v + r) / v - 1 for k, f in (("tw", tw), ("fl", fl))}
    assert math.isclose(float(var_err["fl"]), r**2 / (4 * v * (v + r)), rel_tol=1e-5)
    assert abs(float(var_err["fl"])) < 0.1 * abs(float(var_err["tw"]))
    # through the driver: one more evaluation, same final step as the function
    g = torch.Generator().manual_seed(0)
    plain = sd.sample(sde, score, (50, 1), "ddim", steps=8, generator=g, dtype=torch.float64, eps=eps)
    g = torch.Generator().manual_seed(0)
    flow = sd.sample(sde, score, (50, 1), "ddim", steps=8, generator=g, dtype=torch.float64, eps=eps,
                     denoise="flow")
    assert flow.nfe == plain.nfe + 1
    torch.testing.assert_close(flow.samples, sd.samplers.tweedie_denoise(sde, score, plain.samples, eps, weight=0.5))
    with pytest.raises(ValueError, match="denoise"):
        sd.sample(sde, score, (4, 1), "ddim", steps=2, denoise="half")
    with pytest.raises(ValueError, match="weight"):
        sd.samplers.tweedie_denoise(sde, score, x, eps, weight=0.0)


def test_x_init_and_sampler_objects():
    sde = sd.VPSDE()
    target = sd.imbalanced_2d()
    x0 = torch.randn(16, 2, dtype=torch.float64)
    a = sd.sample(sde, target.score_fn(sde), (16, 2), sd.samplers.Heun(), steps=5, x_init=x0)
    b = sd.sample(sde, target.score_fn(sde), (16, 2), "heun", steps=5, x_init=x0)
    assert torch.equal(a.samples, b.samples)
    assert "Heun(euler_last=False)" == repr(sd.samplers.Heun())
    c = sd.sample(sde, target.score_fn(sde), (16, 2), "heun", steps=5, x_init=x0, euler_last=True)
    assert c.nfe == 9


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"sampler": "leapfrog"}, ValueError, r"unknown sampler 'leapfrog'; valid names: .*annealed_langevin, ddim"),
        ({"sampler": 3}, TypeError, "sampler must be"),
        ({"sampler": sd.samplers.Heun(), "euler_last": True}, TypeError, "options"),
        ({"steps": 0}, ValueError, "steps"),
        ({"steps": 2.5}, TypeError, "steps"),
        ({"shape": (4,)}, ValueError, "shape"),
        ({"eps": 1.0}, ValueError, "eps"),
        ({"eps": -0.1}, ValueError, "eps"),
        ({"grid": "cubic"}, ValueError, "kind must be one of"),
        ({"x_init": torch.zeros(3, 2)}, ValueError, "x_init must have shape"),
        ({"sde": "vp"}, TypeError, "sde must be an SDE"),
        ({"score_fn": None}, TypeError, "score_fn must be callable"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    sde = kwargs.pop("sde", sd.VPSDE())
    score = kwargs.pop("score_fn", sd.imbalanced_2d().score_fn(sd.VPSDE()))
    args = {"shape": (4, 2), "sampler": "euler_maruyama", "steps": 3}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        sd.sample(sde, score, **args)


def test_score_fn_returning_the_wrong_shape():
    with pytest.raises(ValueError, match="score_fn must return a tensor shaped like x"):
        sd.sample(sd.VPSDE(), lambda x, t: x[:, :1], (4, 2), steps=2)


@pytest.mark.parametrize("kind", sd.samplers.GRIDS)
@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(), sd.OU()])
def test_time_grids(kind, sde):
    ts = sd.samplers.time_grid(sde, 10, eps=1e-3, kind=kind)
    assert ts.shape == (11,) and ts.dtype == torch.float64
    assert float(ts[0]) == sde.T and float(ts[-1]) == 1e-3
    assert bool((ts[1:] < ts[:-1]).all())
    if kind == "log_snr":
        lam = sde.log_snr(ts)
        torch.testing.assert_close(lam[1:] - lam[:-1], torch.full((10,), float(lam[1] - lam[0]), dtype=torch.float64))


def test_time_grid_needs_log_snr_for_snr_grids():
    class Plain(sd.SDE):
        prior_std = 1.0

        def _drift(self, x, t):
            return -x

        def _diffusion(self, t):
            return torch.ones_like(t)

        def _marginal(self, x0, t):
            return x0, torch.ones_like(t)

    with pytest.raises(TypeError, match="LinearSDE"):
        sd.samplers.time_grid(Plain(T=1.0), 4, kind="log_snr")
    with pytest.raises(ValueError, match="rho"):
        sd.samplers.time_grid(sd.VPSDE(), 4, kind="edm", rho=0.0)


# -- convergence orders on a Gaussian target, without Monte-Carlo noise -----------------------
#
# For data N(μ, v) in 1-D the exact score is linear, score = −(x − sμ)/C with C = s²v + σ², so
# every solver here maps a Gaussian to a Gaussian: we propagate the mean and variance of the
# discrete chain exactly and compare them with the true marginal at eps.

MU, V = 0.8, 0.3


def _coeffs(sde, t):
    tt = torch.tensor([t], dtype=torch.float64)
    s, sig, a, g2 = (float(f(tt)) for f in (sde.mean_coeff, sde.std, sde.a, sde.g2))
    return s, s * s * V + sig * sig, a, g2


def em_chain_moments(sde, steps, eps=1e-3):
    ts = sd.samplers.time_grid(sde, steps, eps=eps).tolist()
    m, var = 0.0, sde.prior_std**2
    for t, tn in zip(ts[:-1], ts[1:]):
        h = tn - t  # negative
        s, C, a, g2 = _coeffs(sde, t)
        # x' = x + h (a x + g² (x − sμ)/C) + g sqrt(|h|) z  =  A x + B + noise
        A = 1 + h * (a + g2 / C)
        B = -h * g2 * s * MU / C
        m, var = A * m + B, A * A * var + g2 * abs(h)
    return m, var


def test_euler_maruyama_has_weak_order_one():
    sde = sd.VPSDE()
    s, C, _, _ = _coeffs(sde, 1e-3)
    errs = []
    for steps in (50, 100, 200, 400):
        m, var = em_chain_moments(sde, steps)
        errs.append(abs(m - s * MU) + abs(var - C))
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(3)]
    assert all(0.8 < r < 1.3 for r in rates), rates


def test_euler_maruyama_sampler_matches_its_exact_chain_moments():
    # n = 40000 samples: SE of the mean sqrt(var/n), of the variance var·sqrt(2/n); 5 SE.
    sde = sd.VPSDE()
    target = sd.Gaussian(torch.tensor([MU]), torch.tensor([[V]]))
    n, steps = 40_000, 50
    out = sd.sample(sde, target.score_fn(sde), (n, 1), "euler_maruyama", steps=steps,
                    generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    m, var = em_chain_moments(sde, steps)
    x = out.samples[:, 0]
    assert abs(float(x.mean()) - m) < 5 * math.sqrt(var / n)
    assert abs(float(x.var()) - var) < 5 * var * math.sqrt(2 / n)


def _flow_map(sde, xT, eps):
    """Exact probability-flow map for 1-D Gaussian data: (x_eps − s μ)/sqrt(C) is conserved."""
    sT, CT, _, _ = _coeffs(sde, sde.T)
    se, Ce, _, _ = _coeffs(sde, eps)
    return se * MU + math.sqrt(Ce / CT) * (xT - sT * MU)


@pytest.mark.parametrize("name,order", [("euler_ode", 1), ("heun", 2), ("ddim", 1)])
@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(sigma_max=20.0)], ids=["vp", "ve"])
def test_flow_ode_solvers_converge_at_their_order(name, order, sde):
    target = sd.Gaussian(torch.tensor([MU]), torch.tensor([[V]]))
    xT = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None] * sde.prior_std
    exact = _flow_map(sde, xT, 1e-3)
    base = 64 if order == 1 else 32
    errs = []
    for steps in (base, 2 * base, 4 * base):
        out = sd.sample(sde, target.score_fn(sde), (9, 1), name, steps=steps, x_init=xT,
                        grid="log_snr" if name == "ddim" else "uniform")
        errs.append(float((out.samples - exact).abs().max()))
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(order - 0.3 < r < order + 0.5 for r in rates), (errs, rates)


@pytest.mark.parametrize("name,steps", [("euler_maruyama", 1000), ("heun", 100), ("euler_ode", 1000)])
def test_basic_solvers_reproduce_the_imbalanced_mixture(name, steps):
    # n = 3000 draws; tolerances: weights 4·sqrt(w(1−w)/n) (≤ 0.026) plus 0.01 for
    # discretisation; per-mode relative covariance error ~ sqrt(2/(w n)) (≤ 0.067 for the
    # 0.15-weight mode) → 0.25; mean log-density: SD of log p ≈ 1.3, so SE ≈ 0.024 → 0.12 with
    # the σ(eps) blur of the tight mode included.
    sde = sd.VPSDE()
    target = sd.imbalanced_2d()
    n = 3000
    out = sd.sample(sde, target.score_fn(sde), (n, 2), name, steps=steps,
                    generator=torch.Generator().manual_seed(21))
    stats = sd.metrics.mode_statistics(out.samples, target)
    assert float(stats["weight_error"]) < 4 * math.sqrt(0.25 / n) + 0.01
    assert float(stats["mean_error"].max()) < 0.05
    assert float(stats["cov_error"].max()) < 0.25
    exact = target.sample(n, generator=torch.Generator().manual_seed(22))
    gap = sd.metrics.mean_log_density(out.samples, target) - sd.metrics.mean_log_density(exact, target)
    assert abs(float(gap)) < 0.12
