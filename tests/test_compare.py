"""Tests of the sampler comparison harness, its figures and the ``scoresde`` command line.

The configurations are tiny (a few hundred samples, budgets up to 200) so that the whole file
runs in seconds; the statistical assertions compare a 5-step Heun run, which is far from the
target, with a 100-step one, which is close to the noise floor, so they hold with a wide margin.
"""

from __future__ import annotations

import json
import math
import runpy
import subprocess
import sys

import pytest
import torch

import scoresde as sd
from scoresde import compare, plotting
from scoresde._runtime import CountingScore
from scoresde.cli import main
from scoresde.compare.sweep import _resolve_samplers, _resolve_targets
from scoresde.samplers import NonFiniteError, Sampler

N = 300


@pytest.fixture(scope="module")
def records():
    """heun / euler_maruyama / ddpm / ode on imbalanced_2d, budgets 10, 20, 200."""
    return compare.run_comparison(
        targets=["imbalanced_2d"],
        samplers=["heun", "euler_maruyama", "ddpm", "ode"],
        nfe=(200, 10, 20, 20),  # unsorted with a duplicate: sorted and deduplicated
        n=N,
        seed=0,
        keep_samples=True,
    )


def by(records, sampler):
    return {r["budget"]: r for r in records if r["sampler"] == sampler}


def test_records_are_sane(records):
    assert len(records) == 4 * 3
    for r in records:
        assert set(compare.RECORD_KEYS) <= set(r)
        assert r["target"] == "imbalanced_2d" and r["sde"] == "vp" and r["n"] == N
        assert r["budget"] in (10, 20, 200)
        floor = r["noise_floor"]
        assert set(floor) == set(compare.METRICS)
        assert 0 < floor["error"] < 1 and 0 < floor["sw2"] < 0.5
        if r["status"] == "ok":
            assert r["nfe"] <= r["budget"]  # fixed-step and adaptive alike
            assert r["wall_time_s"] > 0 and r["peak_mem_bytes"] >= 0 and r["mem_method"] == "rss"
            assert all(isinstance(r[m], float) for m in compare.METRICS)
    heun = by(records, "heun")
    assert [heun[b]["steps"] for b in (10, 20, 200)] == [5, 10, 100]
    assert [heun[b]["nfe"] for b in (10, 20, 200)] == [10, 20, 200]
    assert heun[10]["nfe_per_step"] == 2
    assert by(records, "euler_maruyama")[20]["nfe"] == 20


def test_error_decreases_with_nfe(records):
    heun = by(records, "heun")
    assert heun[10]["error"] > 2 * heun[200]["error"]
    assert heun[10]["sw2"] > heun[200]["sw2"]
    # 100 Heun steps are close to exact: within a few noise floors
    assert heun[200]["error"] < 5 * heun[200]["noise_floor"]["error"]


def test_ddpm_skips_budgets_it_cannot_honour(records):
    ddpm = by(records, "ddpm")
    assert ddpm[10]["status"] == "skipped"
    assert "too small" in ddpm[10]["reason"] and ddpm[10]["steps"] == 10
    assert ddpm[10]["nfe"] is None and ddpm[10]["error"] is None
    assert ddpm[200]["status"] == "ok" and ddpm[200]["nfe"] == 200


def test_adaptive_ode_sweeps_tolerances(records):
    ode = by(records, "ode")
    assert ode[10]["status"] == "skipped" and "adaptive" in ode[10]["reason"]
    assert ode[200]["status"] == "ok"
    assert ode[200]["steps"] is None and ode[200]["nfe_per_step"] is None
    assert set(ode[200]["options"]) == {"rtol", "atol"}
    assert 100 < ode[200]["nfe"] <= 200  # the tightest tolerance that fits, close to the budget
    assert ode[200]["error"] < ode[20]["error"]


def test_keep_samples_only_largest_budget(records):
    kept = [r for r in records if "samples" in r]
    assert {r["sampler"] for r in kept} == {"heun", "euler_maruyama", "ddpm", "ode"}
    assert all(r["budget"] == 200 and r["samples"].shape == (N, 2) for r in kept)


def test_not_applicable_combinations_are_skipped():
    recs = compare.run_comparison(targets="imbalanced_2d", samplers="ddpm", nfe=(50, 100),
                                  n=50, sde="ve", memory="none")
    assert [r["status"] for r in recs] == ["skipped", "skipped"]
    assert all("not applicable" in r["reason"] and "discretize" in r["reason"] for r in recs)
    assert recs[0]["sde"] == "ve" and recs[0]["noise_floor"] is not None


def test_budget_below_one_step_and_pc_cost():
    recs = compare.run_comparison(targets=["correlated_gaussian"],
                                  samplers={"pc2": sd.samplers.PredictorCorrector(n_steps=2)},
                                  nfe=(2, 9), n=50, sde=sd.SubVPSDE(), memory="tracemalloc")
    low, high = recs
    assert low["status"] == "skipped" and "below the cost of one step (3 NFE)" in low["reason"]
    assert high["status"] == "ok" and high["steps"] == 3 and high["nfe"] == 9
    assert high["nfe_per_step"] == 3 and high["sde"].startswith("SubVPSDE(")
    assert high["tracemalloc_peak_bytes"] >= 0


class _Flaky(Sampler):
    """Runs on the batch of 2 that checks its declared cost, raises on real batches."""

    name = "flaky"

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        for i in range(len(times) - 1):
            score_fn(x, times[i])
        if x.shape[0] > 2:
            raise NonFiniteError("boom at step 3")
        return x


class _FakeAdaptive(Sampler):
    """NFE set by the tolerance, not by the steps; raises on real batches if ``fail``."""

    name = "fake_adaptive"
    adaptive = True

    def __init__(self, fail=False):
        self.rtol = self.atol = 1e-3
        self.fail = fail

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        if self.fail and x.shape[0] > 2:
            raise RuntimeError("solver failed")
        for _ in range(max(1, round(-10 * math.log10(self.rtol)))):
            score_fn(x, times[0])
        return x


class _Unscorable(Sampler):
    """Returns, on real batches, samples the evaluation refuses (one coordinate short).

    (Non-finite samples no longer get this far: the driver checks the final state.)
    """

    name = "unscorable"

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        for i in range(len(times) - 1):
            score_fn(x, times[i])
        return x[:, :1] if x.shape[0] > 2 else x


class _NoTolerance(Sampler):
    """Adaptive, but without the rtol/atol that the harness sweeps."""

    name = "no_tol"
    adaptive = True

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        score_fn(x, times[0])
        return x


class _Broken(Sampler):
    name = "broken"

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        raise RuntimeError("never runs")


def test_errors_and_adaptive_edge_cases():
    recs = compare.run_comparison(
        targets={"g": sd.Gaussian(torch.zeros(2), torch.eye(2))},
        samplers={"flaky": _Flaky(), "fake": _FakeAdaptive(), "fail": _FakeAdaptive(fail=True),
                  "notol": _NoTolerance(), "broken": _Broken(), "unscorable": _Unscorable()},
        nfe=(5, 15, 40), n=20, tolerances=(1e-1, 1e-2), memory="none")
    got = {(r["sampler"], r["budget"]): r for r in recs}
    assert got["flaky", 5]["status"] == "error"
    assert got["flaky", 5]["reason"] == "NonFiniteError: boom at step 3"
    # fake adaptive: nfe 10 at rtol 1e-1, 20 at 1e-2
    assert got["fake", 5]["status"] == "skipped" and "needs 10 NFE" in got["fake", 5]["reason"]
    assert got["fake", 15]["nfe"] == 10 and got["fake", 15]["options"]["rtol"] == 0.1
    assert got["fake", 40]["nfe"] == 20 and got["fake", 40]["note"] is None
    assert got["fail", 15]["status"] == "error" and "solver failed" in got["fail", 15]["reason"]
    assert got["notol", 5]["status"] == "skipped" and "rtol" in got["notol", 5]["reason"]
    assert got["unscorable", 5]["status"] == "error"
    assert got["unscorable", 5]["reason"].startswith("evaluation failed: ValueError")
    assert got["broken", 5]["status"] == "skipped"
    assert "never runs" in got["broken", 5]["reason"]
    # a ladder that is exhausted reports the same run twice, and says so
    recs = compare.run_comparison(targets={"g": sd.Gaussian(torch.zeros(2), torch.eye(2))},
                                  samplers={"fake": _FakeAdaptive()}, nfe=(30, 40), n=20,
                                  tolerances=(1e-1,), memory="none")
    assert [r["nfe"] for r in recs] == [10, 10]
    assert recs[1]["note"] == "same run as budget 30 (no tighter tolerance fits)"
    # the cap stops a solve that exceeds every budget
    recs = compare.run_comparison(targets={"g": sd.Gaussian(torch.zeros(2), torch.eye(2))},
                                  samplers={"fake": _FakeAdaptive()}, nfe=(5,), n=20,
                                  tolerances=(1e-3,), memory="none")
    assert "more than 5" in recs[0]["reason"]
    recs = compare.run_comparison(targets={"g": sd.Gaussian(torch.zeros(2), torch.eye(2))},
                                  samplers={"fake": _FakeAdaptive()}, nfe=(5,), n=20,
                                  tolerances=(), memory="none")
    assert recs[0]["status"] == "error" and recs[0]["reason"] == "no tolerance given"


class _Misdeclared(Sampler):
    """Declares one evaluation per step, makes three."""

    name = "misdeclared"

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        for i in range(len(times) - 1):
            for _ in range(3):
                score_fn(x, times[i])
        return x


class _Inconsistent(Sampler):
    """``nfe(steps)`` grows by 2 per step while ``nfe_per_step`` says 1."""

    name = "inconsistent"

    def nfe(self, steps):
        return 2 * steps

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        return x


class _NoGrid(Sampler):
    name = "no_grid"

    def grid(self, sde, steps, eps, kind):
        raise ValueError("never enough steps")

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):  # pragma: no cover
        return x


@pytest.mark.parametrize(("sampler", "per_step", "overhead", "min_steps"), [
    ("heun", 2, 0, 1),
    (sd.samplers.Heun(euler_last=True), 2, -1, 1),
    (sd.samplers.PredictorCorrector(n_steps=2), 3, 0, 1),
    ("ddpm", 1, 0, 21),  # beta_max / N < 1 on the VP SDE
    (sd.samplers.DPMSolver(order=3), 3, 0, 1),
])
def test_measure_cost_reads_declarations(sampler, per_step, overhead, min_steps):
    sde = sd.VPSDE()
    score = CountingScore(sd.imbalanced_2d().score_fn(sde), "exact")
    cost = compare.measure_cost(sde, score, sampler, 2, verify=False)
    assert cost == compare.SamplerCost(per_step, overhead, False, min_steps)
    assert score.calls == 0  # declarations only: no score evaluation
    assert compare.measure_cost(sde, score, sampler, 2) == cost
    # the check is one run at min_steps, not a probe over several step counts
    assert score.calls == min_steps * per_step + overhead
    assert cost.steps_for(cost.overhead + cost.per_step * 7) == 7


def test_measure_cost_adaptive_and_bad_declarations():
    sde = sd.VPSDE()
    score = CountingScore(sd.imbalanced_2d().score_fn(sde), "exact")
    for sampler in ("ode", "adaptive_sde", sd.samplers.TorchSDE(adaptive=True)):
        cost = compare.measure_cost(sde, score, sampler, 2)
        assert cost.adaptive and cost.per_step == 0 and cost.min_steps == 1
    assert score.calls == 0  # nothing to check for an adaptive solver
    with pytest.raises(ValueError, match=r"declares nfe\(1\) = 1 but made 3 score evaluations"):
        compare.measure_cost(sde, score, _Misdeclared(), 2)
    with pytest.raises(ValueError, match=r"nfe_per_step = 1 but nfe\(2\) - nfe\(1\) = 2"):
        compare.measure_cost(sde, score, _Inconsistent(), 2, verify=False)
    with pytest.raises(ValueError, match="accepts no grid of 1 to 65536 steps: never enough"):
        compare.measure_cost(sde, score, _NoGrid(), 2)
    with pytest.raises(TypeError, match="needs a LinearSDE"):
        compare.measure_cost(sd.ReverseSDE(sde, score), score, "dpm_solver", 2)
    with pytest.raises(TypeError, match="discretize"):
        compare.measure_cost(sd.VESDE(), score, "ddpm", 2)
    with pytest.raises(ValueError, match="unknown sampler"):
        compare.measure_cost(sde, score, "nope", 2)
    recs = compare.run_comparison(targets={"g": sd.Gaussian(torch.zeros(2), torch.eye(2))},
                                  samplers={"bad": _Misdeclared()}, nfe=(5,), n=20, memory="none")
    assert recs[0]["status"] == "skipped" and "but made 3" in recs[0]["reason"]


def test_seeds_are_reproducible():
    kw = dict(targets=["correlated_gaussian"], samplers=["euler_maruyama"], nfe=(10,), n=64,
              memory="none")
    a, b = compare.run_comparison(**kw), compare.run_comparison(**kw)
    c = compare.run_comparison(**kw, seed=1)
    assert a[0]["sw2"] == b[0]["sw2"] and a[0]["sw2"] != c[0]["sw2"]
    assert compare.derive_seed(0, "a", 1) == compare.derive_seed(0, "a", 1)
    assert compare.derive_seed(0, "a") != compare.derive_seed(1, "a")


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"targets": ["nope"]}, ValueError, "valid names: anisotropic_64d"),
        ({"targets": [3]}, TypeError, "target names"),
        ({"targets": {"x": 3}}, TypeError, "GaussianMixture"),
        ({"targets": 3}, TypeError, "targets must be"),
        ({"targets": []}, ValueError, "must not be empty"),
        ({"samplers": ["nope"]}, ValueError, r"valid names: .*annealed_langevin"),
        ({"samplers": [3]}, TypeError, "mapping label"),
        ({"samplers": {"x": 3}}, TypeError, "Sampler instance"),
        ({"samplers": 3}, TypeError, "samplers must be"),
        ({"samplers": {}}, ValueError, "must not be empty"),
        ({"nfe": "10"}, TypeError, "nfe"),
        ({"nfe": ()}, ValueError, "at least one"),
        ({"nfe": (0,)}, ValueError, "nfe must be an int >= 1"),
        ({"n": 1}, ValueError, "n must be an int >= 2"),
        ({"sde": "vpp"}, ValueError, "vp, subvp, ve, ou, cosine"),
        ({"sde": 3}, TypeError, "LinearSDE"),
        ({"seed": -1}, ValueError, "seed"),
        ({"tolerances": 0.1}, TypeError, "tolerances"),
        ({"tolerances": (0.0,)}, ValueError, "tolerances"),
        ({"memory": "psutil"}, ValueError, "memory must be one of"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    base = dict(targets=["imbalanced_2d"], samplers=["heun"], nfe=(10,), n=10)
    with pytest.raises(exc, match=match):
        compare.run_comparison(**{**base, **kwargs})


def test_helpers():
    assert isinstance(compare.make_sde("cosine"), sd.CosineVPSDE)
    with pytest.raises(ValueError, match="sde must be one of"):
        compare.make_sde("x")
    with pytest.raises(ValueError, match="adaptive"):
        compare.SamplerCost(0, 0, True, 1).steps_for(10)
    with pytest.raises(ValueError, match="memory"):
        compare.timed_call(lambda: 1, memory="x")
    assert compare.timed_call(lambda: 7, memory="none")[0] == 7
    cost = compare.measure_cost(sd.VPSDE(), sd.imbalanced_2d().score_fn(sd.VPSDE()), "ddpm", 2)
    assert cost.per_step == 1 and cost.overhead == 0 and cost.min_steps > 16
    assert compare.quick_preset() is not compare.quick_preset()
    assert list(_resolve_targets(None)) == sd.target_names()
    assert list(_resolve_samplers(None)) == sd.samplers.names()
    rec = compare.new_record("t", "s", 3, extra=1)
    assert rec["status"] == "ok" and rec["extra"] == 1 and rec["nfe"] is None
    assert compare.METRICS is sd.metrics.METRICS and "timed_call" in dir(compare)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        compare.nope  # noqa: B018


def test_package_layout_has_no_cycle_and_loads_profiling_lazily():
    import ast
    import inspect

    # plotting reads records as dicts and never imports the harness
    tree = ast.parse(inspect.getsource(plotting))
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for a in node.names}
    assert not any("compare" in name for name in imported), imported
    code = ("import sys, scoresde, scoresde.compare as c; "
            "print('scoresde.compare.profiling' in sys.modules, 'matplotlib' in sys.modules); "
            "c.timed_call; print('scoresde.compare.profiling' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    profiling_at_import, _, profiling_on_use = proc.stdout.split()
    assert (profiling_at_import, profiling_on_use) == ("False", "True")


def test_json_is_strict_and_round_trips(records, tmp_path):
    weird = compare.new_record("t", "s", 1, error=math.inf, sw2=math.nan,
                               options={"x": torch.tensor(0.5)}, samples=torch.zeros(3, 2),
                               other=object, listed=[torch.zeros(2), 1.5])
    text = compare.to_json([*records, weird])

    def reject(constant):
        raise AssertionError(f"non-strict JSON constant {constant}")

    doc = json.loads(text, parse_constant=reject)
    assert doc["format"] == "scoresde.compare/1" and len(doc["records"]) == len(records) + 1
    last = doc["records"][-1]
    assert last["error"] is None and last["sw2"] is None and last["options"] == {"x": 0.5}
    assert "samples" not in last and isinstance(last["other"], str)
    assert isinstance(last["listed"][0], str) and last["listed"][1] == 1.5
    path = tmp_path / "r.json"
    path.write_text(text)
    loaded = compare.load(path)
    assert [r["sampler"] for r in loaded[:-1]] == [r["sampler"] for r in records]
    assert loaded[0]["sw2"] == records[0]["sw2"]
    path.write_text(json.dumps(loaded))
    assert compare.load(path) == loaded
    path.write_text("{}")
    with pytest.raises(ValueError, match="does not contain"):
        compare.load(path)


def test_markdown_has_a_row_per_record(records):
    text = compare.to_markdown(records)
    main_table = text.split("\n\n")[0].splitlines()
    assert main_table[0].startswith("| target | sde | sampler |")
    assert len(main_table) == 2 + len(records)
    assert "skipped: cannot honour budget 10" in text
    assert "rtol=" in text  # adaptive runs show their tolerance
    assert "Noise floor" in text and "| imbalanced_2d | 300 |" in text
    odd = compare.new_record("a|b", "s", 1, status="error", reason="x\ny", note="n",
                             error=math.inf, sw2=math.nan, mmd=-math.inf, peak_mem_bytes=2**20)
    row = compare.to_markdown([odd]).splitlines()[2]
    assert "a\\|b" in row and "error: x y (n)" in row and "| inf |" in row
    assert "| nan |" in row and "-inf" in row and "| 1 |" in row
    with pytest.raises(TypeError):
        compare.to_markdown({"a": 1})
    with pytest.raises(TypeError):
        compare.to_markdown([1])


def test_save_writes_files(records, tmp_path):
    paths = compare.save(records, tmp_path / "out")
    assert paths["json"].name == "results.json" and paths["markdown"].name == "results.md"
    names = sorted(p.name for p in paths["figures"])
    assert names == ["error_vs_nfe_imbalanced_2d.png", "samples_imbalanced_2d.png",
                     "sw2_vs_nfe_imbalanced_2d.png"]
    for p in [paths["json"], paths["markdown"], *paths["figures"]]:
        assert p.exists() and p.stat().st_size > 0
    assert paths["figures"][0].read_bytes()[:4] == b"\x89PNG"
    custom = [dict(r, target="my target") for r in records]
    paths = compare.save(custom, tmp_path / "custom", figure_metrics=("mmd",))
    assert sorted(p.name for p in paths["figures"]) == ["mmd_vs_nfe_my_target.png",
                                                        "samples_my_target.png"]
    assert compare.save(records, tmp_path / "nofig", figures=False)["figures"] == []
    bare = [{k: v for k, v in r.items() if k != "samples"} for r in records]
    paths = compare.save(bare, tmp_path / "bare", figure_metrics=("error",))
    assert [p.name for p in paths["figures"]] == ["error_vs_nfe_imbalanced_2d.png"]
    with pytest.raises(ValueError, match="figure_metrics"):
        compare.save(records, tmp_path / "bad", figure_metrics=("nope",))


def test_plot_error_vs_nfe(records):
    fig = plotting.plot_error_vs_nfe(records, metric="sw2", title="t")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    labels = ax.get_legend_handles_labels()[1]
    assert {"heun", "euler_maruyama", "ddpm", "ode", "noise floor (exact)"} <= set(labels)
    two = [*records, *[dict(r, target="other", sde="ve") for r in records]]
    fig = plotting.plot_error_vs_nfe(two)
    assert len([a for a in fig.axes if a.get_visible()]) == 2
    three = [*two, dict(records[0], target="third", status="skipped")]
    fig = plotting.plot_error_vs_nfe(three, target="third")
    assert fig.axes[0].texts[0].get_text() == "no successful runs"
    fig = plotting.plot_error_vs_nfe(three)
    assert len([a for a in fig.axes if a.get_visible()]) == 3
    sdes = [*records, *[dict(r, sde="ve", noise_floor=None) for r in records]]
    labels = plotting.plot_error_vs_nfe(sdes).axes[0].get_legend_handles_labels()[1]
    assert "heun (vp)" in labels and "heun (ve)" in labels
    empty = [dict(records[0], status="skipped", noise_floor=None)]
    assert plotting.plot_error_vs_nfe(empty).axes[0].get_legend() is None
    with pytest.raises(ValueError, match="metric must be one of"):
        plotting.plot_error_vs_nfe(records, metric="nope")
    with pytest.raises(ValueError, match="present: imbalanced_2d"):
        plotting.plot_error_vs_nfe(records, target="ring8")
    with pytest.raises(ValueError, match="empty"):
        plotting.plot_error_vs_nfe([])
    with pytest.raises(TypeError):
        plotting.plot_error_vs_nfe({"a": 1})
    with pytest.raises(TypeError):
        plotting.plot_error_vs_nfe([1])


def test_line_style_follows_the_record_source(records):
    """Not the sampler's name: a scoresde sampler called "diffusers_x" stays solid."""
    heun = [r for r in records if r["sampler"] == "heun"]
    mixed = [*[dict(r, sampler="diffusers_x") for r in heun],
             *[dict(r, sampler="ddim", source="diffusers") for r in heun],
             *[dict(r, sampler="dpm", source="k-diffusion") for r in heun],
             *[dict(r, sampler="old", source=None) for r in heun]]
    ax = plotting.plot_error_vs_nfe(mixed).axes[0]
    style = {line.get_label(): line.get_linestyle() for line in ax.lines}
    assert style["diffusers_x"] == "-" and style["old"] == "-"
    assert style["ddim"] == "--" and style["dpm"] == ":"


def test_save_comparison_figures_checks_its_arguments(records, tmp_path):
    paths = plotting.save_comparison_figures(records, tmp_path / "f", metrics=("mmd",), dpi=40)
    assert [p.name for p in paths] == ["mmd_vs_nfe_imbalanced_2d.png", "samples_imbalanced_2d.png"]
    with pytest.raises(ValueError, match="metrics must contain names from"):
        plotting.save_comparison_figures(records, tmp_path, metrics=("nope",))
    with pytest.raises(TypeError, match="list of dicts"):
        plotting.save_comparison_figures({"a": 1}, tmp_path)
    with pytest.raises(ValueError, match="dpi"):
        plotting.save_comparison_figures(records, tmp_path, dpi=0)


def test_plot_samples():
    g = torch.Generator().manual_seed(0)
    ref = sd.imbalanced_2d().sample(500, generator=g)
    far = ref * 10
    fig = plotting.plot_samples({"a": ref, "b": far}, reference=ref, ncols=2, title="x")
    titles = [a.get_title() for a in fig.axes if a.get_visible()]
    assert titles[0] == "reference (exact)" and titles[1] == "a" and "outside" in titles[2]
    fig = plotting.plot_samples({"a": ref.numpy(), "b": torch.randn(10, 5, generator=g)})
    assert len([a for a in fig.axes if a.get_visible()]) == 2
    fig = plotting.plot_samples({"nan": torch.full((4, 2), math.nan)})
    assert fig.axes[0].get_xlim() == (-1.3, 1.3)
    with pytest.raises(ValueError, match="non-empty mapping"):
        plotting.plot_samples({})
    with pytest.raises(ValueError, match="at least 2 coordinates"):
        plotting.plot_samples({"a": torch.zeros(5, 1)})
    with pytest.raises(ValueError, match="shape"):
        plotting.plot_samples({"a": torch.zeros(5)})
    with pytest.raises(TypeError, match="tensor or an array"):
        plotting.plot_samples({"a": object()})
    with pytest.raises(ValueError, match="ncols"):
        plotting.plot_samples({"a": ref}, ncols=0)


def test_plot_trajectories():
    sde = sd.VPSDE()
    target = sd.imbalanced_2d()
    out = sd.sample(sde, target.score_fn(sde), (40, 2), sampler="heun", steps=10,
                    generator=torch.Generator().manual_seed(0), trajectory=True)
    fig = plotting.plot_trajectories(out.trajectory, out.times, n_paths=10,
                                     reference=target.sample(100), title="paths")
    plane, timeax = fig.axes
    assert len(plane.lines) == 10 and len(timeax.lines) == 10
    assert timeax.xaxis_inverted()
    fig = plotting.plot_trajectories(out.trajectory.flip(0), out.times.flip(0).tolist())
    assert not fig.axes[1].xaxis_inverted()
    with pytest.raises(ValueError, match="n_states, batch"):
        plotting.plot_trajectories(out.samples, out.times)
    with pytest.raises(ValueError, match="at least 2 coordinates"):
        plotting.plot_trajectories(out.trajectory[..., :1], out.times)
    with pytest.raises(ValueError, match="one per state"):
        plotting.plot_trajectories(out.trajectory, out.times[:-1])


def test_plot_image_grid():
    images = torch.linspace(-2, 2, 5 * 3 * 4 * 4).reshape(5, 3, 4, 4)
    fig = plotting.plot_image_grid(images, ncols=2, title="digits")
    shown = [a for a in fig.axes if a.images]
    assert len(fig.axes) == 6 and len(shown) == 5  # 3 rows of 2, one panel left empty
    rgb = shown[0].images[0].get_array()
    assert rgb.shape == (4, 4, 3) and rgb.min() == 0.0 and rgb.max() <= 1.0  # clipped to [-1, 1]
    grey = plotting.plot_image_grid(images[:, :1], value_range=(-2.0, 2.0)).axes[0]
    assert grey.images[0].get_array().shape == (4, 4)
    with pytest.raises(ValueError, match="C in"):
        plotting.plot_image_grid(torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="value_range"):
        plotting.plot_image_grid(images, value_range=(1.0, 1.0))


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------
def test_cli_compare_quick(tmp_path, capsys):
    out = tmp_path / "quick"
    assert main(["compare", "--quick", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "| imbalanced_2d | vp | heun | 10 | 5 | 10 |" in stdout
    assert "wrote results.json, results.md" in stdout
    for name in ("results.json", "results.md", "error_vs_nfe_imbalanced_2d.png",
                 "sw2_vs_nfe_imbalanced_2d.png", "samples_imbalanced_2d.png"):
        assert (out / name).stat().st_size > 0
    records = compare.load(out / "results.json")
    preset = compare.quick_preset()
    assert len(records) == len(preset["samplers"]) * len(preset["nfe"])
    assert {r["sampler"] for r in records} == set(preset["samplers"])
    assert {r["budget"] for r in records} == {10, 20, 50} and records[0]["n"] == 1000
    assert (out / "results.md").read_text() in stdout


def test_cli_compare_overrides(tmp_path, capsys):
    out = tmp_path / "small"
    assert main(["compare", "--quick", "--n", "100", "--nfe", "10", "--samplers", "heun,ddim",
                 "ddpm", "--out", str(out)]) == 0
    records = compare.load(out / "results.json")
    assert [r["sampler"] for r in records] == ["heun", "ddim", "ddpm"]
    assert {r["budget"] for r in records} == {10} and records[0]["n"] == 100


def test_cli_compare_quick_preset_defaults(tmp_path, capsys):
    assert main(["compare", "--quick", "--threads", "0", "--no-figures", "--progress",
                 "--memory", "none", "--target", "correlated_gaussian", "--sde", "ou",
                 "--samplers", "euler_maruyama", "--out", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("| correlated_gaussian | ou | euler_maruyama |") == 3
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize(
    "argv, code, match",
    [
        (["compare", "--target", "nope", "--out", "x"], 2,
         "unknown target 'nope'; valid names: anisotropic_64d, correlated_gaussian"),
        (["compare", "--samplers", "heun,foo", "bar", "--out", "x"], 2,
         "unknown samplers 'foo', 'bar'; valid names: adaptive_ode, adaptive_sde, annealed_langevin"),
        (["compare", "--nfe", "5,x", "--out", "x"], 2, "argument --nfe: must be a comma"),
        (["compare", "--nfe", "0", "--out", "x"], 2, "positive integers"),
        (["compare", "--n", "1", "--out", "x"], 2, "must be an integer >= 2"),
        (["compare", "--n", "many", "--out", "x"], 2, "must be an integer >= 2"),
        (["compare", "--sde", "vpp", "--out", "x"], 2, "invalid choice"),
        (["compare"], 2, "the following arguments are required: --out"),
        ([], 2, "the following arguments are required: COMMAND"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_cli_bad_input(argv, code, match, capsys):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert match in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_runtime_errors(tmp_path, capsys, monkeypatch):
    file = tmp_path / "file"
    file.write_text("")
    assert main(["compare", "--quick", "--out", str(file)]) == 2
    assert "is a file" in capsys.readouterr().err

    def boom(**kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(compare, "run_comparison", boom)
    assert main(["compare", "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.strip() == "scoresde compare: error: RuntimeError: disk on fire"

    def interrupt(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare, "run_comparison", interrupt)
    assert main(["compare", "--out", str(tmp_path / "o")]) == 130


def test_cli_help_and_version(capsys):
    assert main(["--help"]) == 0
    assert "compare" in capsys.readouterr().out
    assert main(["compare", "--help"]) == 0
    assert "--nfe" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("scoresde ")


def test_main_module(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["scoresde", "--version"])
    sys.modules.pop("scoresde.__main__", None)
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("scoresde", run_name="__main__")
    assert exc.value.code == 0 and "scoresde" in capsys.readouterr().out


def test_python_dash_m_help():
    proc = subprocess.run([sys.executable, "-m", "scoresde", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: scoresde") and "compare" in proc.stdout


# --------------------------------------------------------------------------------------
# rankings inside the noise (issue 12, item 3)
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seeded():
    """heun and ddim at budgets 10, 50 over 3 seeds, and the three one-seed runs they average."""
    kw = dict(targets=["imbalanced_2d"], samplers=["heun", "ddim"], nfe=(10, 50), n=200,
              memory="none")
    reps = [compare.run_comparison(**kw, seed=compare.noise.replicate_seed(4, i))
            for i in range(3)]
    return compare.run_comparison(**kw, seed=4, seeds=3), reps


def test_seeds_average_runs_and_floors(seeded):
    recs, reps = seeded
    assert len(recs) == 4 and all(r["seeds"] == 3 and r["seed"] == 4 for r in recs)
    for j, r in enumerate(recs):
        parts = [rep[j] for rep in reps]
        for m in compare.METRICS:
            values = [p[m] for p in parts]
            assert r[m] == pytest.approx(sum(values) / 3, rel=1e-12)
            assert r["spread"][m] == pytest.approx(torch.tensor(values, dtype=torch.float64).std().item(), rel=1e-9)
            floors = [p["noise_floor"][m] for p in parts]
            assert r["noise_floor"][m] == pytest.approx(sum(floors) / 3, rel=1e-12)
            assert r["noise_floor_spread"][m] == pytest.approx(
                torch.tensor(floors, dtype=torch.float64).std().item(), rel=1e-9)
        assert r["nfe"] == parts[0]["nfe"] and r["steps"] == parts[0]["steps"]
    # the seeds draw different data: the floor moves between them, as the issue saw
    assert len({rep[0]["noise_floor"]["error"] for rep in reps}) == 3
    # one seed: exactly the run of ``seed`` and no spread
    assert all(r["seeds"] == 1 and r["spread"] is None and r["noise_floor_spread"] is None
               for r in reps[0])
    assert compare.noise.replicate_seed(4, 0) == 4


def test_rank_marks_within_noise(seeded):
    recs, _ = seeded
    marks = {(r["sampler"], r["budget"]): r["noise_marks"]["error"] for r in recs}
    assert set(recs[0]["noise_marks"]) == set(compare.noise.RANKED)
    for budget in (10, 50):
        pair = [marks["heun", budget]["vs_best"], marks["ddim", budget]["vs_best"]]
        assert "best" in pair and set(pair) <= {"best", "≈", ">"}

    def rec(sampler, budget, nfe, error, spread, seeds=4, floor=0.1, floor_spread=0.02):
        return compare.new_record("t", sampler, budget, sde="vp", nfe=nfe, error=error,
                                  seeds=seeds, spread={"error": spread},
                                  noise_floor={"error": floor},
                                  noise_floor_spread={"error": floor_spread})

    # se = spread / 2 with 4 seeds; the floor's se is 0.01
    got = compare.rank([
        rec("a", 20, 20, 0.30, 0.04),   # best at 20
        rec("b", 20, 20, 0.33, 0.04),   # |0.03| <= 2 * hypot(0.02, 0.02) = 0.057: ≈ best
        rec("c", 20, 20, 0.50, 0.04),   # beyond: >
        rec("a", 50, 50, 0.11, 0.02),   # ≈ floor: |0.01| <= 2 * hypot(0.01, 0.01)
        rec("c", 50, 50, 0.90, 0.04),   # rises from 0.50 at NFE 20, beyond noise
        rec("b", 50, 50, 0.05, 0.004),  # below the floor beyond noise
        rec("d", 20, 20, 0.20, 0.1, seeds=1),  # one seed: unknown spread, never ranked
        rec("d", 50, 50, 0.25, 0.1, seeds=1),  # a rise with unknown spread is still reported
        dict(rec("e", 20, 20, 0.01, 0.01), status="skipped"),
    ])
    m = [r["noise_marks"]["error"] for r in got]
    assert [x["vs_best"] for x in m] == ["best", "≈", ">", ">", ">", "best", None, None, None]
    assert [x["vs_floor"] for x in m] == [">", ">", ">", "≈", ">", "<", None, None, None]
    assert m[4]["rises_from"] == {"nfe": 20, "value": 0.5, "beyond_noise": True}
    assert m[7]["rises_from"] == {"nfe": 20, "value": 0.2, "beyond_noise": None}
    assert m[3]["rises_from"] is None and m[5]["rises_from"] is None  # a and b fall
    # a rise within noise is not reported
    quiet = compare.rank([rec("a", 20, 20, 0.30, 0.1), rec("a", 50, 50, 0.35, 0.1)])
    assert quiet[1]["noise_marks"]["error"]["rises_from"] is None
    plain = [rec("a", 20, 20, 0.30, 0.04)]
    assert compare.rank(plain)[0]["noise_marks"]["error"]["vs_best"] == "best"
    assert plain[0]["noise_marks"] is None  # rank returns copies; the input is unchanged
    with pytest.raises(TypeError, match="list of dicts"):
        compare.rank({"a": 1})
    with pytest.raises(ValueError, match="z must be"):
        compare.rank([], z=0)


def test_markdown_defines_error_and_marks_noise(seeded, records):
    recs, _ = seeded
    text = compare.to_markdown(recs)
    assert text.startswith("| target | sde | sampler |")
    assert "| error | vs best | vs floor | status |" in text.splitlines()[0]
    assert "error = cov_error + log_density_gap + weight_error: the largest relative" in text
    assert "mean over 3 seed(s)" in text and "within two standard errors of the best" in text
    heun10 = next(line for line in text.splitlines() if "| heun | 10 |" in line)
    err = recs[0]["error"]
    assert f"| {err:.3g} ± " in heun10
    assert "Noise floor" in text and " ± " in text.split("Noise floor")[1]
    assert "One seed: the spread is unknown" in compare.to_markdown(records)
    # the footnote on a rise with NFE (DDIM from 20 to 50 in the issue)
    ddim = [compare.new_record("t", "ddim", b, sde="vp", nfe=b, error=e, seeds=3,
                               spread={"error": 0.001}) for b, e in ((20, 0.05), (50, 0.08))]
    text = compare.to_markdown(ddim)
    assert "Error rising with NFE" in text
    assert "- ddim on t (vp): error rises from 0.05 at NFE 20 to 0.08 at NFE 50 (beyond noise)." \
        in text
    assert "errors of opposite sign cancel" in text
    assert "Error rising" not in compare.to_markdown(recs[:1])


def test_figure_shows_noise_and_defines_the_metric(seeded, records):
    recs, _ = seeded
    fig = plotting.plot_error_vs_nfe(recs)
    ax = fig.axes[0]
    caption = " ".join(fig.get_supxlabel().split())  # unwrapped
    assert "cov_error + log_density_gap + weight_error" in caption
    assert "Mean over 3 seeds" in caption and "±2 standard errors" in caption
    # error bars for both samplers and the floor's band
    assert len(ax.containers) == 2
    assert any(type(p).__name__ == "Rectangle" for p in ax.patches)
    fig.canvas.draw()
    # plain numbers at the NFE values, no 10^k labels
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "50"]
    labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True)]
    assert any(labels) and not any("$" in t or "10^" in t for t in labels)
    # one seed: no bars, and the caption says so; sw2 has its own definition
    one = plotting.plot_error_vs_nfe(records, metric="sw2")
    assert not one.axes[0].containers and "One seed" in one.get_supxlabel()
    assert one.get_supxlabel().startswith("sw2: sliced Wasserstein-2 distance")
    assert plotting.plot_error_vs_nfe(records, caption=False).get_supxlabel() == ""
    # hollow markers within noise of the floor, an arrow where the error rises
    marked = compare.rank([
        compare.new_record("t", "ddim", b, sde="vp", nfe=b, error=e, seeds=3,
                           spread={"error": 0.001}, noise_floor={"error": 0.05},
                           noise_floor_spread={"error": 0.01})
        for b, e in ((10, 0.2), (20, 0.05), (50, 0.08))])
    fig = plotting.plot_error_vs_nfe(marked)
    ax = fig.axes[0]
    hollow = [line for line in ax.lines if line.get_markerfacecolor() == "white"]
    assert len(hollow) == 1 and list(hollow[0].get_xdata()) == [20.0]
    assert [t.get_text() for t in ax.texts] == ["↑"]
    assert "↑ rises with NFE: ddim 20→50" in " ".join(fig.get_supxlabel().split())
    # many NFE values: log ticks, still plain numbers; a non-finite value is not drawn
    many = [compare.new_record("t", "x", b, nfe=b, error=1.0 / b) for b in range(1, 40, 3)]
    ax = plotting.plot_error_vs_nfe([*many, compare.new_record("t", "x", 99, nfe=99,
                                                               error=math.inf)]).axes[0]
    ax.figure.canvas.draw()
    assert len(ax.lines[0].get_xdata()) == 13
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert {"1", "10"} <= set(labels) and not any("$" in t for t in labels)


def test_one_colour_per_sampler_across_figures(records):
    heun_ddpm = [r for r in records if r["sampler"] in ("heun", "ddpm")]
    ode_heun = [r for r in records if r["sampler"] in ("ode", "heun")]

    def colours(recs):
        ax = plotting.plot_error_vs_nfe(recs).axes[0]
        return {line.get_label(): line.get_color() for line in ax.lines
                if not line.get_label().startswith("_") and "floor" not in line.get_label()}

    a, b = colours(heun_ddpm), colours(ode_heun)
    assert a["heun"] == b["heun"] == plotting.sampler_color("heun")
    assert len({*a.values(), *b.values()}) == 3
    names = sd.samplers.names()
    assert len({plotting.sampler_color(n) for n in names}) == len(names)
    assert plotting.sampler_color("mine") == plotting.sampler_color("mine (vp)")
    fig = plotting.plot_samples({"ddim": torch.zeros(4, 2), "heun (100 NFE)": torch.ones(4, 2)})
    for ax, name in zip(fig.axes, ("ddim", "heun"), strict=True):  # alpha 0.7 aside
        assert tuple(ax.collections[0].get_facecolor()[0][:3]) == pytest.approx(
            plotting.sampler_color(name)[:3])


def test_over_seeds_and_mean_and_spread():
    calls = []

    def fn(s):
        calls.append(s)
        return {"x": float(len(calls)), "inf": math.inf}

    summary = compare.over_seeds(fn, seeds=3, seed=7)
    assert calls[0] == 7 and len(set(calls)) == 3
    assert calls == [compare.noise.replicate_seed(7, i) for i in range(3)]
    assert summary["mean"]["x"] == 2.0 and summary["spread"]["x"] == 1.0
    assert summary["mean"]["inf"] == math.inf and math.isnan(summary["spread"]["inf"])
    assert compare.over_seeds(lambda s: {"x": 1.0}, seeds=1)["spread"] is None
    with pytest.raises(TypeError, match="callable"):
        compare.over_seeds(3, seeds=2)
    with pytest.raises(ValueError, match="seeds"):
        compare.over_seeds(fn, seeds=0)
    with pytest.raises(ValueError, match="non-empty"):
        compare.noise.mean_and_spread([])
    rec = {"seeds": 4, "spread": {"error": 0.2}, "noise_floor_spread": {"error": math.nan}}
    assert compare.noise.standard_error(rec, "error") == pytest.approx(0.1)
    assert compare.noise.standard_error(rec, "error", floor=True) is None
    assert compare.noise.standard_error({"seeds": 1, "spread": {"error": 0.2}}, "error") is None


def test_within_noise():
    assert sd.metrics.within_noise(1.0, 0.1, 1.28, 0.1)  # 0.28 <= 2 * 0.1414
    assert not sd.metrics.within_noise(1.0, 0.1, 1.29, 0.1)
    assert sd.metrics.within_noise(1.0, 0.0, 1.0, 0.0) and sd.metrics.within_noise(1, 0.1, 1.5, 0.1,
                                                                                   z=4)
    with pytest.raises(ValueError, match="standard errors >= 0"):
        sd.metrics.within_noise(1.0, -0.1, 1.0, 0.1)
    with pytest.raises(ValueError, match="finite"):
        sd.metrics.within_noise(math.inf, 0.1, 1.0, 0.1)
    assert set(sd.metrics.METRIC_DESCRIPTIONS) == set(sd.metrics.METRICS)


def test_run_comparison_seeds_edge_cases():
    g = {"g": sd.Gaussian(torch.zeros(2), torch.eye(2))}
    with pytest.raises(ValueError, match="seeds must be an int >= 1"):
        compare.run_comparison(targets=g, samplers=["heun"], nfe=(4,), n=10, seeds=0)
    # a sampler that fails on one seed only is an error, naming the seed
    class _SecondSeedFails(Sampler):
        name = "second"
        real_runs = 0

        def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
            for i in range(len(times) - 1):
                score_fn(x, times[i])
            if x.shape[0] > 2:  # not the batch of 2 that checks the declared cost
                self.real_runs += 1
                if self.real_runs == 2:
                    raise RuntimeError("unlucky draw")
            return x

    recs = compare.run_comparison(targets=g, samplers={"s": _SecondSeedFails(), "heun": "heun"},
                                  nfe=(4,), n=10, seeds=4, memory="none", progress=True,
                                  keep_samples=True)
    bad, heun = recs
    assert bad["status"] == "error" and bad["reason"] == "seed 2 of 4: RuntimeError: unlucky draw"
    assert heun["status"] == "ok" and heun["samples"].shape == (10, 2)
    # adaptive: the NFE can differ between seeds; the record gives the largest and the range
    class _DrawDependent(_FakeAdaptive):
        """10 NFE at rtol 0.1, 20 at 0.01, one more when the prior draw's first entry is > 0."""

        def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
            if float(x[0, 0]) > 0:
                score_fn(x, times[0])
            return super().run(sde, score_fn, x, times)

    recs = compare.run_comparison(targets=g, samplers={"dd": _DrawDependent()}, nfe=(15, 20),
                                  n=10, seeds=6, memory="none", tolerances=(1e-1, 1e-2))
    low, high = recs
    assert low["status"] == high["status"] == "ok" and low["nfe"] == 11 and high["nfe"] == 20
    assert low["note"] == "NFE 10-11 over the seeds"
    assert high["note"].startswith("NFE 11-20 over the seeds; rtol per seed: ")  # 10 + 1
    assert "0.1" in high["note"] and "0.01" in high["note"]


def test_cli_compare_seeds(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["compare", "--quick", "--n", "50", "--nfe", "10", "--samplers", "heun",
                 "--seeds", "2", "--no-figures", "--memory", "none", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "over 2 seed(s)" in stdout and " ± " in stdout
    assert compare.load(out / "results.json")[0]["seeds"] == 2
    assert main(["compare", "--seeds", "0", "--out", str(out)]) == 2
    assert "must be an integer >= 1" in capsys.readouterr().err
    assert main(["compare", "--help"]) == 0
    assert "--seeds" in capsys.readouterr().out


def test_mmd_n_caps_only_the_mmd_of_runs_and_floor():
    kw = dict(targets="imbalanced_2d", samplers="ddim", nfe=(10,), n=400, memory="none")
    full, capped = compare.run_comparison(**kw)[0], compare.run_comparison(**kw, mmd_n=100)[0]
    assert capped["mmd"] != full["mmd"] and capped["noise_floor"]["mmd"] != full["noise_floor"]["mmd"]
    for key in ("sw2", "error", "cov_error", "weight_error"):
        assert capped[key] == full[key] and capped["noise_floor"][key] == full["noise_floor"][key]
    with pytest.raises(ValueError, match="mmd_n"):
        compare.run_comparison(**kw, mmd_n=1)
