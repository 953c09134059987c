"""The time grid as a value: grid=None / a name / a LogSNRSchedule / a tensor, for every sampler.

Also the driver's handling of the grid's end (t = 0), the denoising step's index and time, the
``check_finite`` switch and the ``callback=None`` path.
"""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.samplers import SAMPLERS, LogSNRSchedule, NonFiniteError, Sampler, names, time_grid
from scoresde.samplers.grids import check_times, resolve_grid

EPS = 1e-3
SDE = sd.VPSDE()
SCORE = sd.imbalanced_2d().score_fn(SDE)
SCHED = LogSNRSchedule({4: [0.0, 0.3, 0.6, 0.85, 1.0]})
TENSOR = torch.tensor([1.0, 0.7, 0.4, 0.15, 0.02], dtype=torch.float64)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _expected(solver, grid):
    if grid is None:
        default = solver.default_grid
        return SCHED.times(SDE, 4, EPS) if isinstance(default, LogSNRSchedule) else time_grid(SDE, 4, EPS, default)
    if isinstance(grid, str):
        return time_grid(SDE, 4, EPS, grid)
    if isinstance(grid, LogSNRSchedule):
        return grid.times(SDE, 4, EPS)
    return grid


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("grid", [None, "quadratic", "uniform", SCHED, TENSOR],
                         ids=["none", "quadratic", "uniform", "schedule", "tensor"])
def test_every_sampler_takes_every_kind_of_grid(name, grid):
    solver = SAMPLERS[name]()
    kw = {} if isinstance(grid, torch.Tensor) else {"steps": 4, "eps": EPS}
    if solver.owns_grid:
        if grid is not None:
            with pytest.raises(ValueError, match="owns its time grid.*grid must be None"):
                sd.sample(SDE, SCORE, (8, 2), solver, grid=grid, generator=_gen(), **kw)
        return
    seen = []
    out = sd.sample(SDE, SCORE, (8, 2), solver, grid=grid, generator=_gen(),
                    callback=lambda i, t, x: seen.append((i, t)), **kw)
    expected = _expected(solver, grid).tolist()
    assert bool(torch.isfinite(out.samples).all())
    if solver.adaptive:  # only the end points are used
        assert seen[-1][1] == pytest.approx(expected[-1], rel=1e-12)
        assert all(expected[-1] <= t < expected[0] for _, t in seen)
    else:
        final = [(4, 0.0)] if solver.default_denoise else []  # the default final step to t = 0
        assert seen == list(enumerate(expected[1:])) + final
        assert out.nfe == solver.nfe(4) + len(final)


@pytest.mark.parametrize("name", ["dpm_solver", "dpm_solver_pp", "unipc"])
def test_log_snr_solvers_default_to_log_snr_but_honour_an_explicit_uniform_grid(name):
    for grid, kind in ((None, "log_snr"), ("uniform", "uniform"), ("edm", "edm")):
        seen = []
        sd.sample(SDE, SCORE, (8, 2), name, steps=6, grid=grid, generator=_gen(),
                  callback=lambda i, t, x, seen=seen: seen.append(t))
        assert seen == time_grid(SDE, 6, EPS, kind)[1:].tolist(), (grid, kind)


def test_a_tensor_grid_sets_steps_and_eps():
    seen = []
    out = sd.sample(SDE, SCORE, (8, 2), "euler_maruyama", grid=TENSOR.float(), trajectory=True,
                    generator=_gen(), callback=lambda i, t, x: seen.append(t))
    assert out.nfe == 4 and len(seen) == 4
    torch.testing.assert_close(out.times, TENSOR.float().double())
    same = sd.sample(SDE, SCORE, (8, 2), "euler_maruyama", grid=TENSOR, steps=4, eps=0.02,
                     generator=_gen())
    assert same.nfe == 4
    with pytest.raises(ValueError, match="steps=5 disagrees with the explicit grid of 5 times"):
        sd.sample(SDE, SCORE, (8, 2), "euler_maruyama", grid=TENSOR, steps=5)
    with pytest.raises(ValueError, match="eps=0.001 disagrees with the explicit grid"):
        sd.sample(SDE, SCORE, (8, 2), "euler_maruyama", grid=TENSOR, eps=1e-3)


@pytest.mark.parametrize("bad, exc, match", [
    ([1.0, 0.5], TypeError, "grid must be a torch.Tensor"),
    (torch.tensor([1.0, 0.5]) > 0, TypeError, "real tensor"),
    (torch.ones(2, 2), ValueError, "1-D tensor of at least 2 times"),
    (torch.tensor([1.0]), ValueError, "1-D tensor of at least 2 times"),
    (torch.tensor([1.0, math.nan, 0.1]), ValueError, "finite"),
    (torch.tensor([1.0, 0.5, 0.5]), ValueError, "strictly decreasing"),
    (torch.tensor([0.1, 0.5]), ValueError, "strictly decreasing"),
    (torch.tensor([1.5, 0.5]), ValueError, r"\[0, T\] = \[0, 1\]"),
    (torch.tensor([1.0, -0.1]), ValueError, r"\[0, T\] = \[0, 1\]"),
    (3, TypeError, "grid must be None, a name"),
])
def test_bad_grids_are_refused(bad, exc, match):
    with pytest.raises(exc, match=match):
        if isinstance(bad, (int, list)):
            resolve_grid(bad, SDE) if isinstance(bad, int) else check_times(bad, SDE)
        else:
            sd.sample(SDE, SCORE, (4, 2), "euler_maruyama", grid=bad)


def test_tensor_grids_are_float64_on_the_cpu_and_copied():
    t = torch.tensor([1.0 + 1e-7, 0.5, 0.1], dtype=torch.float32)
    out = check_times(t, SDE)
    assert out.dtype == torch.float64 and out.device.type == "cpu"
    assert float(out[0]) == 1.0  # float32 rounding of T is absorbed
    out[1] = 0.3
    assert float(t[1]) == 0.5


class _Recorder(Sampler):
    """Records what the driver hands to run (the grid and the callback)."""

    name = "recorder"
    evaluates_at_end = False

    def __init__(self):
        self.seen = []

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        self.seen.append((times, callback))
        for i, t in enumerate(times.tolist()[:-1]):
            x = x + 0.0 * score_fn(x, torch.full((x.shape[0],), t, dtype=x.dtype))
            if callback is not None:
                callback(i, times.tolist()[i + 1], x)
        return x


def test_run_gets_a_cpu_float64_grid_and_no_callback_when_nothing_needs_states():
    rec = _Recorder()
    sd.sample(SDE, SCORE, (4, 2), rec, steps=3, dtype=torch.float32)
    times, callback = rec.seen[-1]
    assert times.dtype == torch.float64 and times.device.type == "cpu" and callback is None
    for kw in ({"trajectory": True}, {"callback": lambda i, t, x: None}, {"progress": True}):
        sd.sample(SDE, SCORE, (4, 2), rec, steps=3, **kw)
        assert rec.seen[-1][1] is not None, kw


def _refuses_t0(x, t):
    if bool((t == 0).any()):
        raise AssertionError("the score was evaluated at t = 0")
    return SCORE(x, t)


GRID_TO_0 = torch.tensor([1.0, 0.6, 0.3, 0.1, 0.0], dtype=torch.float64)


@pytest.mark.parametrize("name", names())
def test_a_grid_ending_at_zero_is_refused_exactly_by_samplers_that_evaluate_there(name):
    solver = SAMPLERS[name]()
    if solver.owns_grid:  # DDPM's own grid ends at 0 and never evaluates the score there
        out = sd.sample(SDE, _refuses_t0, (8, 2), solver, steps=40, generator=_gen())
        assert out.nfe == 40
        return
    if solver.evaluates_at_end or (solver.needs_linear_sde and not solver.zero_noise_end):
        with pytest.raises(ValueError, match="t > 0"):
            sd.sample(SDE, SCORE, (8, 2), solver, grid=GRID_TO_0, generator=_gen())
    else:
        out = sd.sample(SDE, _refuses_t0, (8, 2), solver, grid=GRID_TO_0, generator=_gen())
        assert bool(torch.isfinite(out.samples).all()) and out.nfe == solver.nfe(4)
    if solver.evaluates_at_end:  # the declaration is not vacuous: run itself does evaluate at 0
        times = []

        def recording(x, t):
            times.append(float(t[0]))
            return SCORE(x, t)

        solver.run(SDE, recording, SDE.prior_sample((8, 2), generator=_gen()), GRID_TO_0,
                   generator=_gen())
        assert 0.0 in times


def test_ddpm_owns_its_grid_and_refuses_denoise():
    with pytest.raises(ValueError, match="ddpm owns its time grid"):
        sd.sample(SDE, SCORE, (4, 2), "ddpm", steps=40, grid="uniform")
    with pytest.raises(ValueError, match="denoise must be False when the grid already ends at t = 0"):
        sd.sample(SDE, SCORE, (4, 2), "ddpm", steps=40, denoise=True)
    with pytest.raises(ValueError, match="denoise"):
        sd.sample(SDE, SCORE, (4, 2), "euler_maruyama", grid=GRID_TO_0, denoise="flow")


def test_denoise_step_index_time_and_progress(monkeypatch):
    bars = []

    class FakeBar:
        def __init__(self, total, **kw):
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, k):
            self.n += k

        def set_postfix(self, **kw):
            pass

        def close(self):
            pass

    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    seen = []
    out = sd.sample(SDE, SCORE, (8, 2), "euler_maruyama", steps=5, denoise=True, trajectory=True,
                    progress=True, generator=_gen(), callback=lambda i, t, x: seen.append((i, t)))
    grid = time_grid(SDE, 5, EPS).tolist()
    assert seen == list(enumerate(grid[1:])) + [(5, 0.0)]
    assert out.times.tolist() == grid + [0.0]
    assert out.trajectory.shape[0] == 7
    torch.testing.assert_close(out.trajectory[-1], out.samples)
    assert bars[-1].total == 6 and bars[-1].n == 6


def _nan_below(t0):
    def score(x, t):
        return torch.full_like(x, math.nan) if float(t[0]) < t0 else SCORE(x, t)
    return score


@pytest.mark.parametrize("kw", [{}, {"callback": lambda i, t, x: None}], ids=["no-callback", "callback"])
def test_non_finite_errors_name_the_grid_step_with_or_without_a_callback(kw):
    with pytest.raises(NonFiniteError, match=r"non-finite score at step 5 \(t=0\.5\)"):
        sd.sample(SDE, _nan_below(0.55), (4, 2), "euler_maruyama", steps=10,
                  grid=torch.linspace(1.0, 0.0, 11, dtype=torch.float64), **kw)


def test_check_finite_false_checks_only_the_final_state():
    # (DDIM: the SDE's drift, which Euler-Maruyama calls, validates its input itself)
    with pytest.raises(NonFiniteError, match=r"non-finite state at step 8 \(t=0\.1\)"):
        sd.sample(SDE, _nan_below(0.55), (4, 2), "ddim",
                  grid=torch.linspace(1.0, 0.1, 10, dtype=torch.float64), check_finite=False)
    with pytest.raises(TypeError, match="check_finite must be a bool"):
        sd.sample(SDE, SCORE, (4, 2), steps=2, check_finite=1)


def test_finiteness_checks_cost_one_host_sync_per_evaluation(monkeypatch):
    calls = {"n": 0}
    original = torch.Tensor.__float__

    def counting(self):
        calls["n"] += 1
        return original(self)

    monkeypatch.setattr(torch.Tensor, "__float__", counting)
    syncs = {}
    for check in (True, False):
        calls["n"] = 0
        out = sd.sample(SDE, SCORE, (16, 2), "heun", steps=6, check_finite=check, generator=_gen())
        syncs[check] = calls["n"]
    assert out.nfe == 12
    assert syncs[True] - syncs[False] == 12


def test_sampler_grid_method_and_old_locations_warn():
    from scoresde.samplers import base

    torch.testing.assert_close(sd.samplers.UniPC().grid(SDE, 4, EPS), time_grid(SDE, 4, EPS, "log_snr"))
    torch.testing.assert_close(sd.samplers.Heun().grid(SDE, kind=TENSOR), TENSOR)
    for name, obj in (("time_grid", time_grid), ("GRIDS", sd.samplers.GRIDS),
                      ("resolve", sd.samplers.resolve), ("sample", sd.sample)):
        with pytest.warns(DeprecationWarning, match=f"base.{name} moved"):
            assert getattr(base, name) is obj
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        base.nope  # noqa: B018
    smp = sd.samplers.DPMSolverPlusPlus()
    with pytest.warns(DeprecationWarning, match="time_grid"):
        smp.time_grid = "edm"
    assert smp.default_grid == "edm"
    with pytest.warns(DeprecationWarning, match="time_grid"):
        assert smp.time_grid == "edm"
    assert sd.samplers.DPMSolverPlusPlus().default_grid == "log_snr"


def test_log_snr_grids_share_one_path():
    # the edm and log_snr grids and a schedule with the same fractions give identical times
    lam = SDE.log_snr(time_grid(SDE, 6, EPS, "edm"))
    frac = ((lam - lam[0]) / (lam[-1] - lam[0])).tolist()
    frac[0], frac[-1] = 0.0, 1.0
    torch.testing.assert_close(LogSNRSchedule({6: frac}).times(SDE, 6, EPS), time_grid(SDE, 6, EPS, "edm"),
                               rtol=1e-12, atol=1e-12)
    u = torch.linspace(0, 1, 7, dtype=torch.float64).tolist()
    assert torch.equal(LogSNRSchedule({6: u}).times(SDE, 6, EPS), time_grid(SDE, 6, EPS, "log_snr"))


def test_a_non_finite_denoised_state_names_the_denoising_step():
    grid = torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64)

    def nan_at_end(x, t):
        return torch.full_like(x, math.nan) if float(t[0]) < 0.2 else SCORE(x, t)

    with pytest.raises(NonFiniteError, match=r"non-finite denoised state at step 2 \(t=0\)"):
        sd.sample(SDE, nan_at_end, (4, 2), "ddim", grid=grid, denoise=True, check_finite=False)
    with pytest.raises(NonFiniteError, match=r"non-finite score at step 2 \(t=0\.1\)"):
        sd.sample(SDE, nan_at_end, (4, 2), "ddim", grid=grid, denoise=True)


def test_the_single_reduction_does_not_mistake_an_overflow_for_a_non_finite_value():
    from scoresde._runtime import CountingScore

    big = torch.full((2, 1), 3e38, dtype=torch.float32)  # finite, but big + big overflows
    counted = CountingScore(lambda x, t: x.clone(), "test")
    assert torch.equal(counted(big, torch.zeros(2)), big) and counted.calls == 1
    with pytest.raises(NonFiniteError, match="non-finite state at step 0"):
        counted(torch.tensor([[math.inf], [0.0]]), torch.zeros(2))
    unchecked = CountingScore(lambda x, t: x * math.nan, "test", check_finite=False)
    assert bool(unchecked(big, torch.zeros(2)).isnan().all())
