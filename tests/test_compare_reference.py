"""The reference-solution mode of the comparison harness (issue 13 item 6)."""

import math

import diffusers  # the test extra installs it: these tests run (never skip) in CI
import pytest
import torch

import scoresde as sd
from scoresde import compare
from scoresde.compare.reference import (
    REFERENCE_METRICS,
    ReferenceSolution,
    reference_metrics,
    reference_solution,
    run_reference_comparison,
)
from scoresde.interop.training import DiffusersUNet

SDE = sd.VPSDE()
MEAN = torch.tensor([1.0, -0.5], dtype=torch.float64)
VAR = torch.tensor([0.25, 2.0], dtype=torch.float64)
TARGET = sd.Gaussian(MEAN, torch.diag(VAR))


def exact_flow(x_T, t_end):
    """The probability-flow ODE map of N(MEAN, diag(VAR)) under the VP SDE, in closed form.

    The marginal at t is N(s m, s^2 V + sigma^2) per coordinate, and the flow is the affine map
    between standardised coordinates: x_t = s_t m + (x_T - s_T m) sqrt(v_t / v_T).
    """
    s_T, sig_T = (float(v) for v in SDE.scale_std(torch.tensor([SDE.T], dtype=torch.float64)))
    s_e, sig_e = (float(v) for v in SDE.scale_std(torch.tensor([t_end], dtype=torch.float64)))
    v_T, v_e = s_T**2 * VAR + sig_T**2, s_e**2 * VAR + sig_e**2
    return s_e * MEAN + (x_T - s_T * MEAN) * (v_e / v_T).sqrt()


def test_reference_ode_solution_matches_the_exact_flow_map():
    ref = reference_solution(SDE, TARGET.score_fn(SDE), (64, 2), seed=3, sde_steps=50, dtype=torch.float64)
    assert isinstance(ref, ReferenceSolution) and ref.eps == 1e-3
    exact = exact_flow(ref.x_init, ref.eps)
    err = float((ref.ode - exact).square().mean().sqrt())
    # the reference is solved at rtol = atol = 1e-6 (the check's tighter solve): error far below 1e-4
    assert err < 1e-4
    # the self-check estimates the looser solve's error, which bounds the reference's from above
    assert ref.floor["error"] is not None and err <= 10 * ref.floor["error"] + 1e-9
    assert ref.info["ode_tol"] == pytest.approx(1e-6) and ref.info["ode_nfe"] > 20
    assert ref.info["sde_steps"] == 50 and ref.sde_sample.shape == (64, 2)
    again = reference_solution(SDE, TARGET.score_fn(SDE), (64, 2), seed=3, sde_steps=50, dtype=torch.float64)
    assert torch.equal(again.ode, ref.ode) and torch.equal(again.sde_sample, ref.sde_sample)
    loose = reference_solution(SDE, TARGET.score_fn(SDE), (64, 2), seed=3, sde_steps=5, check=False,
                               dtype=torch.float64, ode="ode", ode_tol=1e-7)
    assert loose.floor["error"] is None and torch.equal(loose.x_init, ref.x_init)
    assert float((loose.ode - exact).square().mean().sqrt()) < 1e-4
    # a fixed-step reference: Heun (second order) on 400 and 800 steps, the check halves the step
    fixed = reference_solution(SDE, TARGET.score_fn(SDE), (64, 2), seed=3, sde_steps=5, ode="heun",
                               ode_steps=400, dtype=torch.float64)
    err = float((fixed.ode - exact).square().mean().sqrt())
    assert fixed.info["ode_tol"] is None and fixed.info["ode_nfe"] == 1600
    assert err < fixed.floor["error"] < 8 * err  # halving the step cuts a 2nd-order error by 4


def test_rmse_falls_at_the_solvers_order_and_stochastic_samplers_have_none():
    score_fn = TARGET.score_fn(SDE)
    recs = run_reference_comparison(SDE, score_fn, (128, 2), samplers=["ddim", "dpm_solver_pp", "euler_maruyama"],
                                    nfe=(10, 40), sde_steps=100, memory="none", dtype=torch.float64)
    by = {(r["sampler"], r["budget"]): r for r in recs}
    assert all(r["status"] == "ok" and r["mode"] == "reference" and r["target"] == "model" for r in recs)
    assert set(recs[0]) >= set(compare.RECORD_KEYS)
    # DDIM is first order: 4x the steps cut the error by about 4; DPM-Solver++(2M) by about 16
    ddim = by[("ddim", 10)]["error"] / by[("ddim", 40)]["error"]
    dpm = by[("dpm_solver_pp", 10)]["error"] / by[("dpm_solver_pp", 40)]["error"]
    assert 2.5 < ddim < 6 and dpm > 8
    assert by[("euler_maruyama", 40)]["error"] is None and "distribution only" in by[("euler_maruyama", 40)]["note"]
    for r in recs:
        assert r["sw2"] > 0 and math.isfinite(r["mmd"]) and r["noise_floor"]["sw2"] > 0
        assert r["reference"]["sde_steps"] == 100


def test_records_render_save_and_load(tmp_path):
    score_fn = TARGET.score_fn(SDE)
    recs = run_reference_comparison(SDE, score_fn, (64, 2), samplers={"ddim": "ddim", "ode": "adaptive_ode",
                                                                      "ddpm": "ddpm"},
                                    nfe=(4, 30), seeds=2, sde_steps=30, label="gauss", keep_samples=True)
    by = {(r["sampler"], r["budget"]): r for r in recs}
    assert by[("ddpm", 4)]["status"] == "skipped" and "smallest grid" in by[("ddpm", 4)]["reason"]
    assert by[("ode", 4)]["status"] == "skipped"
    assert by[("ode", 30)]["status"] == "ok" and by[("ode", 30)]["nfe"] <= 30
    assert by[("ode", 30)]["options"]["rtol"] in compare.TOLERANCES
    ok = by[("ddim", 30)]
    assert ok["seeds"] == 2 and set(ok["spread"]) == set(REFERENCE_METRICS)
    assert ok["noise_marks"]["error"]["vs_best"] in ("best", "≈", ">")
    assert ok["samples"].shape == (64, 2) and "samples" not in by[("ddim", 4)]
    text = compare.to_markdown(recs)
    assert "RMSE vs ODE ref" in text and "weight err" not in text and "Reference mode" in text
    paths = compare.save(recs, tmp_path)
    back = compare.load(paths["json"])
    assert [r["error"] for r in back] == [r["error"] for r in recs]
    assert {p.name for p in paths["figures"]} >= {"error_vs_nfe_gauss.png", "sw2_vs_nfe_gauss.png"}
    # mixed with target records, both captions are given
    mixed = compare.to_markdown([*recs, compare.new_record("ring8", "heun", 10, error=0.1)])
    assert "Reference mode" in mixed and "cov_error + log_density_gap" in mixed


def test_image_model_and_reproducibility():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, add_attention=False,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    model = sd.ScoreModel(DiffusersUNet(unet), SDE).eval()
    kw = dict(samplers=["ddim", "dpm_solver_pp"], nfe=(3,), sde_steps=4, check_reference=False,
              ode="euler_ode", ode_steps=6, memory="none")
    with torch.no_grad():
        a = run_reference_comparison(SDE, model, (4, 1, 8, 8), to_data=lambda x: x.clamp(-1, 1), **kw)
        b = run_reference_comparison(SDE, model, (4, 1, 8, 8), to_data=lambda x: x.clamp(-1, 1), **kw)
    assert [r["status"] for r in a] == ["ok", "ok"] and a[0]["dim"] == 64
    assert a[0]["reference"]["ode_nfe"] == 6 and a[0]["reference"]["ode_tol"] is None
    assert [r["error"] for r in a] == [r["error"] for r in b] and a[0]["noise_floor"]["error"] is None
    def clamp(x):
        return x.clamp(-1, 1)

    ref = reference_solution(SDE, model, (4, 1, 8, 8), sde_steps=4, check=False, ode="euler_ode", ode_steps=6,
                             to_data=clamp)
    with torch.no_grad():
        c = run_reference_comparison(SDE, model, (4, 1, 8, 8), references=[ref], to_data=clamp, **kw)
    assert [r["error"] for r in c] == [r["error"] for r in b]  # the same reference, passed in
    with pytest.raises(ValueError, match="one ReferenceSolution per seed"):
        run_reference_comparison(SDE, model, (4, 1, 8, 8), references=[ref], seeds=2, **kw)
    with pytest.raises(ValueError, match="made for shape"):
        run_reference_comparison(SDE, model, (2, 1, 8, 8), references=[ref], **kw)


def test_bad_input_is_refused_with_the_argument_named():
    score_fn = TARGET.score_fn(SDE)
    with pytest.raises(ValueError, match="at least 2"):
        run_reference_comparison(SDE, score_fn, (1, 2))
    with pytest.raises(TypeError, match="sde must be an SDE"):
        run_reference_comparison("vp", score_fn, (4, 2))
    with pytest.raises(TypeError, match="score_fn"):
        run_reference_comparison(SDE, None, (4, 2))
    with pytest.raises(TypeError, match="label"):
        run_reference_comparison(SDE, score_fn, (4, 2), label="")
    with pytest.raises(TypeError, match="tolerances"):
        run_reference_comparison(SDE, score_fn, (4, 2), tolerances=())
    with pytest.raises(ValueError, match="deterministic"):
        reference_solution(SDE, score_fn, (4, 2), ode="euler_maruyama")
    with pytest.raises(TypeError, match="to_data"):
        reference_solution(SDE, score_fn, (4, 2), to_data=3)
    with pytest.raises(ValueError, match="at least 2"):
        reference_solution(SDE, score_fn, (1, 2))
    ref = reference_solution(SDE, score_fn, (4, 2), sde_steps=3, check=False)
    with pytest.raises(ValueError, match="shape"):
        reference_metrics(torch.zeros(3, 2), ref)
    with pytest.raises(TypeError, match="ReferenceSolution"):
        reference_metrics(torch.zeros(4, 2), "ref")
    # a sampler that cannot run on the SDE, or fails, is a record, not an exception
    recs = run_reference_comparison(sd.OU(), sd.Gaussian(torch.zeros(2), torch.eye(2)).score_fn(sd.OU()),
                                    (4, 2), samplers=["ddpm"], nfe=(30,), sde_steps=3, check_reference=False)
    assert recs[0]["status"] == "skipped" and "not applicable" in recs[0]["reason"]


class Broken(sd.samplers.DDIM):
    """A DDIM that fails from its ``fail_from``-th run on (the first runs are the reference's own)."""

    def __init__(self, fail_from=0):
        super().__init__()
        self.fail_from, self.runs = fail_from, 0

    def run(self, sde, score_fn, x, times, **kw):
        self.runs += 1
        if self.runs > self.fail_from:
            raise RuntimeError("boom")
        return super().run(sde, score_fn, x, times, **kw)


class Shrinks(sd.samplers.DDIM):
    def run(self, sde, score_fn, x, times, **kw):
        return super().run(sde, score_fn, x, times, **kw)[:, :1]


class NoTolerance(sd.samplers.AdaptiveODE):
    def __getattribute__(self, name):
        if name in ("rtol", "atol"):
            raise AttributeError(name)
        return super().__getattribute__(name)


class BrokenAdaptive(sd.samplers.AdaptiveODE):
    def run(self, *a, **kw):
        raise RuntimeError("adaptive boom")


def test_failures_are_records_with_the_reason():
    score_fn = TARGET.score_fn(SDE)
    samplers = {"broken": Broken(), "late": Broken(fail_from=1), "shrinks": Shrinks(), "notol": NoTolerance(),
                "badode": BrokenAdaptive()}
    recs = run_reference_comparison(SDE, score_fn, (8, 2), samplers=samplers, nfe=(5,), seeds=2, sde_steps=3,
                                    check_reference=False, progress=True, memory="none")
    by = {r["sampler"]: r for r in recs}
    assert by["broken"]["status"] == "error" and "RuntimeError: boom" in by["broken"]["reason"]
    assert by["late"]["status"] == "error" and by["late"]["reason"].startswith("seed 2 of 2: RuntimeError")
    assert by["shrinks"]["status"] == "error" and "evaluation failed" in by["shrinks"]["reason"]
    assert by["notol"]["status"] == "skipped" and "no rtol/atol" in by["notol"]["reason"]
    assert by["badode"]["status"] == "error" and "adaptive boom" in by["badode"]["reason"]
    assert by["badode"]["nfe"] is None
