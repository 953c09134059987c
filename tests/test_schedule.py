"""Optimised log-SNR schedules: the LogSNRSchedule container and optimize_schedule.

The optimiser is checked on what it is for: on the stiff 2-D mixture, a 10-step UniPC on the
optimised grid must reproduce the mixture (exact mode statistics) several times better than on
the uniform log-SNR grid, on prior draws it never saw.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import scoresde as sd
from scoresde.samplers import DPMSolverPlusPlus, LogSNRSchedule, UniPC, optimize_schedule

EPS = 1e-4


def test_fractions_are_stored_and_interpolated():
    sched = LogSNRSchedule({2: [0.0, 0.75, 1.0]}, report={"why": "test"})
    assert sched.steps == (2,)
    assert sched.fractions(2).tolist() == [0.0, 0.75, 1.0]
    assert sched.fractions(4).tolist() == [0.0, 0.375, 0.75, 0.875, 1.0]
    assert sched.fractions(1).tolist() == [0.0, 1.0]
    assert sched.report == {"why": "test"}
    assert "LogSNRSchedule(steps=[2])" == repr(sched)


def test_nearest_optimised_count_is_interpolated():
    sched = LogSNRSchedule({2: [0.0, 0.5, 1.0], 8: torch.linspace(0, 1, 9) ** 2})
    assert sched.steps == (2, 8)
    f7 = sched.fractions(7)  # from the 8-step grid: knot position 8/7 lies between 1 and 2
    assert f7.numel() == 8 and float(f7[0]) == 0.0 and float(f7[-1]) == 1.0
    assert math.isclose(float(f7[1]), (1 + (8 / 7 - 1) * 3) / 64, rel_tol=1e-12)
    assert bool((f7[1:] > f7[:-1]).all())
    assert sched.fractions(3).tolist() == [0.0, 1 / 3, 2 / 3, 1.0]  # from the 2-step grid


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(), sd.SubVPSDE()], ids=["vp", "ve", "subvp"])
def test_times_follow_the_fractions_in_log_snr(sde):
    sched = LogSNRSchedule({3: [0.0, 0.2, 0.9, 1.0]})
    times = sched.times(sde, 3, eps=1e-3)
    assert times.dtype == torch.float64
    assert float(times[0]) == sde.T and float(times[-1]) == 1e-3
    lam = sde.log_snr(times)
    frac = (lam - lam[0]) / (lam[-1] - lam[0])
    assert torch.allclose(frac, torch.tensor([0.0, 0.2, 0.9, 1.0], dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize(
    "fractions, match, exc",
    [
        ({}, "non-empty mapping", TypeError),
        ([0.0, 1.0], "non-empty mapping", TypeError),
        ({2: [0.0, 1.0]}, "must have 3 entries", ValueError),
        ({2: [0.0, 0.7, 0.5]}, "increase strictly", ValueError),
        ({2: [0.1, 0.5, 1.0]}, "increase strictly", ValueError),
        ({2: [0.0, 0.5, 0.9]}, "increase strictly", ValueError),
        ({2: [0.0, math.nan, 1.0]}, "finite", ValueError),
        ({0: [0.0]}, "steps", ValueError),
        ({"two": [0.0, 0.5, 1.0]}, "steps", TypeError),
    ],
)
def test_bad_fractions_are_refused(fractions, match, exc):
    with pytest.raises(exc, match=match):
        LogSNRSchedule(fractions)


def test_times_refuse_bad_sde_and_eps():
    sched = LogSNRSchedule({1: [0.0, 1.0]})
    with pytest.raises(TypeError, match="LinearSDE"):
        sched.times(object(), 1)
    with pytest.raises(ValueError, match="eps"):
        sched.times(sd.VPSDE(), 1, eps=2.0)
    with pytest.raises(ValueError, match="eps"):
        sched.times(sd.VPSDE(), 1, eps=-1.0)
    with pytest.raises(ValueError, match="steps"):
        sched.fractions(0)


def test_json_round_trip_and_bad_dicts():
    sched = LogSNRSchedule({2: [0.0, 0.25, 1.0], 4: [0.0, 0.1, 0.2, 0.6, 1.0]}, report={"a": 1})
    back = LogSNRSchedule.from_dict(json.loads(json.dumps(sched.to_dict())))
    assert back.steps == (2, 4) and back.report == {"a": 1}
    for k in (2, 4):
        assert torch.equal(back.fractions(k), sched.fractions(k))
    with pytest.raises(ValueError, match="fractions"):
        LogSNRSchedule.from_dict({"nope": 1})
    with pytest.raises(ValueError, match="fractions"):
        LogSNRSchedule.from_dict({"fractions": [0.0, 1.0]})
    with pytest.raises(ValueError, match="step counts"):
        LogSNRSchedule.from_dict({"fractions": {"x": [0.0, 1.0]}})


def test_samplers_take_a_schedule_as_their_grid():
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    sched = LogSNRSchedule({4: [0.0, 0.4, 0.6, 0.8, 1.0]})
    smp = UniPC()
    times = smp.grid(sde, 4, EPS, sched)
    assert torch.equal(times, sched.times(sde, 4, EPS))
    seen = []
    out = sd.sample(sde, target.score_fn(sde), (32, 2), smp, steps=4, eps=EPS, grid=sched,
                    generator=torch.Generator().manual_seed(0), callback=lambda i, t, x: seen.append(t))
    assert out.nfe == 4
    assert seen == times[1:].tolist()
    # an explicit grid is never overridden: the schedule of the deprecated option is only a default
    with pytest.warns(DeprecationWarning, match="time_grid"):
        old = UniPC(time_grid=sched)
    assert old.default_grid is sched
    assert torch.equal(old.grid(sde, 4, EPS), times)
    assert torch.equal(old.grid(sde, 4, EPS, "edm"), sd.samplers.time_grid(sde, 4, EPS, "edm"))
    with pytest.raises(ValueError, match="LogSNRSchedule"), pytest.warns(DeprecationWarning):
        DPMSolverPlusPlus(time_grid="cosine")


def test_optimize_schedule_refuses_bad_input():
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    score = target.score_fn(sde)
    with pytest.raises(ValueError, match="deterministic"):
        optimize_schedule(sde, score, (8, 2), "euler_maruyama", steps=2)
    with pytest.raises(ValueError, match="unknown sampler"):
        optimize_schedule(sde, score, (8, 2), "nope", steps=2)
    with pytest.raises(TypeError, match="sampler"):
        optimize_schedule(sde, score, (8, 2), 3, steps=2)
    with pytest.raises(TypeError, match="LinearSDE"):
        optimize_schedule(object(), score, (8, 2), "unipc", steps=2)
    with pytest.raises(ValueError, match="steps"):
        optimize_schedule(sde, score, (8, 2), "unipc", steps=[])
    with pytest.raises(ValueError, match="steps"):
        optimize_schedule(sde, score, (8, 2), "unipc", steps=0)
    with pytest.raises(ValueError, match="max_evals"):
        optimize_schedule(sde, score, (8, 2), "unipc", steps=2, max_evals=0)


def test_one_step_has_nothing_to_optimise():
    sde, target = sd.VPSDE(), sd.Gaussian(torch.zeros(2), torch.eye(2))
    sched = optimize_schedule(sde, target.score_fn(sde), (16, 2), "dpm_solver_pp", steps=1,
                              reference_steps=20, generator=torch.Generator().manual_seed(0))
    assert sched.fractions(1).tolist() == [0.0, 1.0]
    rep = sched.report
    assert rep["per_steps"][1]["solves"] == 1
    # reference solve (20 calls) + the score at its end points + one objective evaluation (1 + 1)
    assert rep["reference_calls"] == 20 and rep["score_calls"] == 23


def _mixture_error(x, target, ref_logp):
    st = sd.metrics.mode_statistics(x.double(), target)
    gap = abs(float(target.log_prob(x.double()).mean()) - ref_logp)
    return float(st["cov_error"].max()) + gap + float(st["weight_error"])


def test_optimised_grid_beats_uniform_log_snr_on_unseen_draws():
    sde, target = sd.VPSDE(), sd.imbalanced_2d()
    score = target.score_fn(sde)
    solver = UniPC(lower_order_final=False)
    sched = optimize_schedule(sde, score, (400, 2), solver, steps=[10, 12], eps=EPS,
                              max_evals=1500, generator=torch.Generator().manual_seed(7))
    rep = sched.report["per_steps"]
    assert sched.steps == (10, 12)
    for k in (10, 12):
        assert rep[k]["optimized"] < 0.05 * rep[k]["uniform_log_snr"]
        assert rep[k]["solves"] <= 1500 + 10  # the budget is respected (NM may overrun by a few)
    assert sched.report["score_calls"] > 10 * rep[10]["solves"]

    # unseen prior draws: statistics of the mixture against its exact ones
    n = 8000
    big = target.sample(200000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref_logp = float(target.log_prob(big).mean())
    errs = {}
    for label, grid in (("opt", sched), ("log_snr", "log_snr")):
        smp = UniPC(lower_order_final=False)
        out = sd.sample(sde, score, (n, 2), smp, steps=10, eps=EPS, grid=grid, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(123))
        assert out.nfe == 10
        errs[label] = _mixture_error(out.samples, target, ref_logp)
    floor = _mixture_error(target.sample(n, generator=torch.Generator().manual_seed(2),
                                         dtype=torch.float64), target, ref_logp)
    # measured: optimised ~0.08, uniform log-SNR ~0.6, exact samples ~0.05 at n = 8000
    assert errs["opt"] < 0.3 * errs["log_snr"], errs
    assert errs["opt"] < 4 * floor + 0.05, (errs, floor)


def test_grids_whose_solve_blows_up_lose():
    # the score is NaN except at the reference grid's times, so every grid but the uniform
    # log-SNR one (whose 2 steps land on reference times) "blows up"
    sde = sd.VPSDE()
    target = sd.Gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    exact = target.score_fn(sde)
    ok_times = sd.samplers.time_grid(sde, 20, eps=1e-3, kind="log_snr")

    def picky(x, t):
        on_grid = torch.isclose(t.double()[:1, None], ok_times[None, :], rtol=1e-12, atol=0).any()
        return exact(x, t) if bool(on_grid) else torch.full_like(x, math.nan)

    sched = optimize_schedule(sde, picky, (8, 2), "dpm_solver_pp", steps=[2], reference_steps=20,
                              max_evals=40, generator=torch.Generator().manual_seed(0),
                              dtype=torch.float64)
    lam = sde.log_snr(sched.times(sde, 2, 1e-3))
    assert math.isclose(float((lam[1] - lam[0]) / (lam[2] - lam[0])), 0.5, rel_tol=1e-9)
    rep = sched.report["per_steps"][2]
    assert rep["optimized"] == rep["uniform_log_snr"] and math.isfinite(rep["optimized"])

    def always_nan(x, t):
        return torch.full_like(x, math.nan) if float(t[0]) < 0.999 and float(t[0]) not in set(
            ok_times.tolist()) else exact(x, t)

    sched = optimize_schedule(sde, always_nan, (8, 2), "dpm_solver_pp", steps=[3],
                              reference_steps=20, max_evals=20,
                              generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert sched.report["per_steps"][3]["optimized"] == math.inf
