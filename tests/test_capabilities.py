"""Every sampler's declared capabilities agree with what a run counts."""

import pytest
import torch

import scoresde as sd
from scoresde import samplers as S

CAPABILITIES = ("order", "nfe_per_step", "stochastic", "adaptive", "needs_linear_sde", "owns_grid",
                "default_grid", "evaluates_at_end", "zero_noise_end")

INSTANCES = [S.SAMPLERS[name]() for name in S.names()] + [
    S.Heun(euler_last=True),
    S.DPMSolver(order=1),
    S.DPMSolver(order=3),
    S.DPMSolverPlusPlus(order=3),
    S.UniPC(order=1),
    S.PredictorCorrector(n_steps=2),
    S.PredictorCorrector(predictor="heun"),
    S.LangevinCorrector(n_steps=3),
    S.AnnealedLangevin(n_steps=2),
    S.DDIM(eta=1.0),
    S.TorchSDE(method="srk"),
    S.TorchSDE(method="milstein"),
    S.PredictorCorrector(predictor="ddim", corrector="annealed_langevin", n_steps=2),
    S.PredictorCorrector(predictor="dpm_solver", corrector=None),
    S.EDM(s_churn=5.0),
    S.EulerAncestral(eta=0.0),
    S.DPMSolverPlusPlus2SAncestral(eta=0.0),
    S.DPMSolverPlusPlusSDE(order=3),
    S.DPMSolverPlusPlusSDE(eta=0.0, solver_type="heun"),
    S.SASolver(predictor_order=2, corrector_order=0),
    S.SASolver(tau=0.0),
]


def test_every_registered_sampler_is_checked():
    assert {type(s) for s in INSTANCES} == set(S.SAMPLERS.values())


def test_declarations_that_depend_on_options():
    assert S.TorchSDE(method="srk").order == 1.5 and S.TorchSDE(method="srk").nfe_per_step == 4
    assert S.TorchSDE().order == 1 and not S.TorchSDE().evaluates_at_end
    assert S.TorchSDE(method="srk").evaluates_at_end and S.TorchSDE(adaptive=True).evaluates_at_end
    assert S.DDIM().stochastic is False and S.DDIM(eta=0.5).stochastic is True
    assert S.Heun().evaluates_at_end and not S.Heun(euler_last=True).evaluates_at_end
    assert S.PredictorCorrector(predictor="heun").evaluates_at_end
    assert S.PredictorCorrector(predictor="ddim", corrector=None).stochastic is False
    for cls in (S.DPMSolver, S.DPMSolverPlusPlus, S.UniPC):
        assert cls.default_grid == "log_snr" and cls.needs_linear_sde and not cls.stochastic
    assert S.DDPM.owns_grid and [c for c in S.SAMPLERS.values() if c.owns_grid] == [S.DDPM]
    assert not S.DPMSolver.zero_noise_end and not S.PredictorCorrector(predictor="dpm_solver").zero_noise_end
    assert all(cls.zero_noise_end for cls in (S.DDIM, S.DPMSolverPlusPlus, S.UniPC, S.ReverseDiffusion))


@pytest.mark.parametrize("solver", INSTANCES, ids=repr)
def test_declared_nfe_matches_counted(solver):
    sde = sd.VPSDE()
    score_fn = sd.imbalanced_2d().score_fn(sde)
    for name in CAPABILITIES:
        assert hasattr(type(solver), name), f"{type(solver).__name__} does not declare {name}"
    steps = (40, 41) if solver.owns_grid else (3, 4)
    assert solver.default_grid in S.GRIDS and isinstance(solver.evaluates_at_end, bool)
    for k in steps:
        out = sd.sample(sde, score_fn, (4, 2), sampler=solver, steps=k,
                        generator=torch.Generator().manual_seed(0))
        declared = solver.nfe(k)
        if solver.adaptive:
            assert declared is None and not solver.default_denoise
        else:
            final = 1 if solver.default_denoise else 0  # sample()'s default final step
            assert declared + final == out.nfe, (
                f"{solver!r} at {k} steps: declared {declared} + {final}, counted {out.nfe}")
            if final:
                plain = sd.sample(sde, score_fn, (4, 2), sampler=solver, steps=k, denoise=False,
                                  generator=torch.Generator().manual_seed(0))
                assert plain.nfe == declared


def test_the_docs_table_matches_the_declarations():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "samplers.rst").read_text()
    section = text.split("Declared capabilities", 1)[1]
    lines = section[section.index("   * - name"):].splitlines()
    rows = []
    for line in lines:
        if line.startswith("   * - "):
            rows.append([line[7:].strip("`")])
        elif line.startswith("     - "):
            rows[-1].append(line[7:].strip("`"))
        else:
            break
    header, body = rows[0], rows[1:]
    assert header == ["name", "order", "nfe_per_step", "stochastic", "needs_linear_sde", "default_grid",
                      "evaluates_at_end", "default_denoise"]
    yn = {True: "yes", False: "no"}
    documented = {}
    for r in body:
        s = S.SAMPLERS[r[0]]()
        documented[r[0]] = r[1:]
        assert r[1:] == ["—" if s.order is None else f"{s.order:g}",
                         "adaptive" if s.adaptive else str(s.nfe_per_step), yn[s.stochastic],
                         yn[s.needs_linear_sde], "its own" if s.owns_grid else s.default_grid,
                         yn[s.evaluates_at_end], s.default_denoise or "no"], r[0]
    assert sorted(documented) == S.names()
