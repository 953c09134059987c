"""Every sampler's declared capabilities agree with what a run counts."""

import pytest
import torch

import scoresde as sd
from scoresde import samplers as S

CAPABILITIES = ("order", "nfe_per_step", "stochastic", "adaptive", "needs_linear_sde", "owns_grid")

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
]


@pytest.mark.parametrize("solver", INSTANCES, ids=repr)
def test_declared_nfe_matches_counted(solver):
    sde = sd.VPSDE()
    score_fn = sd.imbalanced_2d().score_fn(sde)
    for name in CAPABILITIES:
        assert hasattr(type(solver), name), f"{type(solver).__name__} does not declare {name}"
    steps = (40, 41) if solver.owns_grid else (3, 4)
    for k in steps:
        out = sd.sample(sde, score_fn, (4, 2), sampler=solver, steps=k,
                        generator=torch.Generator().manual_seed(0))
        declared = solver.nfe(k)
        if solver.adaptive:
            assert declared is None
        else:
            assert declared == out.nfe, f"{solver!r} at {k} steps: declared {declared}, counted {out.nfe}"
