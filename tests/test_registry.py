"""The one sampler name table and resolver, and the Corrector role of predictor-corrector sampling."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import scoresde as sd
from scoresde import samplers as S
from scoresde.samplers import registry

PKG = Path(S.__file__).parent


def test_the_package_re_exports_the_registry():
    assert S.SAMPLERS is registry.SAMPLERS and S.names is registry.names and S.resolve is registry.resolve
    assert S.names() == sorted(S.SAMPLERS) and len(S.names()) == 24
    for name, cls in S.SAMPLERS.items():
        assert issubclass(cls, S.Sampler) and cls.name == name


def test_resolve():
    heun = S.resolve("heun", {"euler_last": True})
    assert isinstance(heun, S.Heun) and heun.euler_last
    assert S.resolve(heun) is heun and S.resolve(heun, {}) is heun
    with pytest.raises(TypeError, match=r"options \['eta'\] are only accepted with a sampler name"):
        S.resolve(heun, {"eta": 1.0})
    with pytest.raises(ValueError, match="unknown sampler 'rk4'; valid names: adaptive_ode, "):
        S.resolve("rk4", {})
    with pytest.raises(TypeError, match="predictor must be a name or a Sampler instance, got int"):
        S.resolve(3, {}, role="predictor")


def _imports(path: Path) -> set[str]:
    """Sibling sampler modules imported by ``path`` (anywhere in it, module level or not)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out.add(node.module or "__init__")
    return out


def test_no_import_cycles_among_the_sampler_modules():
    graph = {p.stem: _imports(p) for p in PKG.glob("*.py")}
    assert "__init__" not in set().union(*graph.values()), "a module imports up into the package"
    assert graph["base"] <= {"grids"} and graph["grids"] == set()
    assert "optimize" not in graph["dpm_solver"] and graph["dpm_solver"] <= {"base", "grids"}
    # pc reads the table when a PredictorCorrector is built (the table lists PredictorCorrector)
    allowed = {("pc", "registry")}

    def cycle_from(start):
        stack = [(start, (start,))]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if (node, nxt) in allowed:
                    continue
                if nxt == start:
                    return path + (nxt,)
                if nxt not in path:
                    stack.append((nxt, path + (nxt,)))
        return None

    assert [c for c in map(cycle_from, graph) if c] == []


def test_correctors_are_their_own_role():
    assert issubclass(S.LangevinCorrector, S.Corrector) and issubclass(S.AnnealedLangevin, S.Corrector)
    assert not issubclass(S.ReverseDiffusion, S.Corrector)
    assert S.LangevinCorrector(n_steps=3).nfe_per_correct == 3
    with pytest.raises(TypeError):
        S.Corrector()  # abstract


@pytest.mark.parametrize("predictor", [
    "pc", "langevin", "annealed_langevin", "adaptive_ode", "adaptive_sde", "ode", "ddpm",
    S.TorchSDE(adaptive=True), S.PredictorCorrector(), S.LangevinCorrector(),
])
def test_nonsense_predictors_are_refused(predictor):
    with pytest.raises(ValueError, match=r"predictor .* cannot take single steps .*; valid predictors: "
                                         r"ddim, deis, dpm_solver, .*reverse_diffusion, .*torchsde, unipc$"):
        S.PredictorCorrector(predictor=predictor)


@pytest.mark.parametrize("corrector, exc, match", [
    ("heun", ValueError, "unknown corrector 'heun'; valid correctors: annealed_langevin, langevin \\(or None\\)"),
    (S.Heun(), TypeError, "corrector must be a corrector name .*a Corrector instance or None, got Heun"),
    (3, TypeError, "got int"),
])
def test_non_correctors_are_refused(corrector, exc, match):
    with pytest.raises(exc, match=match):
        S.PredictorCorrector(corrector=corrector)


def test_a_user_corrector_plugs_into_pc():
    class Shrink(S.Corrector):
        nfe_per_correct = 2

        def correct(self, sde, score_fn, x, t, t_next, generator=None):
            tv = torch.full((x.shape[0],), float(t), dtype=x.dtype)
            return x + 0.0 * score_fn(x, tv) + 0.0 * score_fn(x, tv)

    pc = S.PredictorCorrector(predictor="ddim", corrector=Shrink())
    sde = sd.VPSDE()
    out = sd.sample(sde, sd.imbalanced_2d().score_fn(sde), (4, 2), pc, steps=5,
                    generator=torch.Generator().manual_seed(0))
    assert out.nfe == pc.nfe(5) == 15
    assert pc.default_grid == "uniform" and not pc.evaluates_at_end
    assert S.PredictorCorrector(predictor="unipc").default_grid == "log_snr"
