r"""Error against NFE of the fast samplers beside diffusers' solvers, averaged over seeds.

Run by hand (it is not part of the test suite)::

    python benchmarks/bench_fast_samplers.py                      # scoresde samplers only
    /tmp/dvenv/bin/python benchmarks/bench_fast_samplers.py       # + diffusers, if importable
    python benchmarks/bench_fast_samplers.py --targets imbalanced_2d --seeds 3 --json out.json

Every sampler is run through :func:`scoresde.compare.run_comparison` on the VP SDE with the
exact scores of the stiff reference targets ``imbalanced_2d`` and ``anisotropic_64d``, at NFE
budgets 5, 10, 20, 50; the combined ``error = cov_error + log_density_gap + weight_error`` is
compared with the noise floor (the same error between two exact samples of size ``n``).
diffusers' schedulers (DDPM, DDIM, DPM-Solver++ 2M/3M and 2M SDE, UniPC, DEIS, Euler, Heun,
SA-Solver, Euler ancestral, IPNDM, EDM Euler), fed the same exact scores through
``benchmarks/diffusers_baselines.py``, are added when diffusers imports, and k-diffusion's
samplers (Euler, Heun, LMS, DPM-2, DPM++ 2M, 2M SDE, 3M SDE, 2S ancestral, Euler ancestral,
each on Karras and exponential sigma grids from sigma~(T) to sigma~(eps), then 0) through
``benchmarks/kdiffusion_baselines.py`` when k-diffusion imports. Rows of issue 16 part A
(``edm``, ``dpm_solver_pp_sde``, ``sa_solver``) are added when those names are registered.

Issue 16's run (defaults of ``sd.sample``: ``eps`` = 1e-3)::

    python benchmarks/bench_fast_samplers.py --targets imbalanced_2d --eps 1e-3 --json imb.json
    python benchmarks/bench_fast_samplers.py --targets anisotropic_64d --eps 1e-3 --no-timing --json ani.json
    python benchmarks/bench_fast_samplers.py --merge imb.json ani.json --csv docs/fast_samplers.csv

Choices, and why:

- ``n`` = 20000 on the 2-D target and 5000 on the 64-D one (the 64-D MMD is O(n^2 d)): at
  n = 2000 the 2-D noise floor (0.16) is half of diffusers' best 10-NFE error, so "half of
  diffusers" could not be told from noise.
- Every number is a mean over ``--seeds`` seeds (default 3; prior draws, reference samples and
  noise floors all change with the seed).
- ``eps`` = 1e-4 for the scoresde samplers: :math:`\sigma(\epsilon)^2 \approx 10^{-5}` is
  below 1% of the smallest data variance of either target (1.6e-3), so stopping there costs
  less than the noise floor; at 1e-3 the exact p_eps alone is 0.3 above the floor on the 64-D
  target. diffusers' schedulers keep their own end point (timestep 0, then sigma = 0).
- ``/gits`` samplers use a grid from :func:`scoresde.samplers.gits_schedule` (one teacher solve
  of the pilot, 120 score calls, then dynamic programming), for 5, 10 and 20 steps.
- ``/opt`` samplers use a grid from :func:`scoresde.samplers.optimize_schedule`, optimised
  once per target for 5, 10 and 20 steps (50 interpolated) on a pilot batch drawn with a
  seed that no evaluation uses; its cost (score calls on the pilot) is printed and is *not*
  part of the NFE of a sample.

Prints a table (mean error per budget; actual NFE in brackets when it differs from the budget),
the noise floor, wall times of the adaptive solvers against scipy's RK45, whether issue 16's
bars are met (defaults: <= 0.3 / 0.1 at 10 / 20 NFE on the 2-D target and ahead of every
diffusers and k-diffusion sampler at 5, 10, 20; learned grid: <= 0.5 / 0.08 at 5 / 10), and
all records as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scoresde import compare  # noqa: E402
from scoresde.samplers import (  # noqa: E402
    DDIM,
    DEIS,
    IPNDM,
    LMS,
    AdaptiveODE,
    AdaptiveSDE,
    DPMSolver,
    DPMSolverPlusPlus,
    Heun,
    ProbabilityFlowODE,
    UniPC,
    gits_schedule,
    optimize_schedule,
)

TARGETS = ("imbalanced_2d", "anisotropic_64d")
N_DEFAULT = {"imbalanced_2d": 20000, "anisotropic_64d": 5000}
PILOT_DEFAULT = {"imbalanced_2d": 1000, "anisotropic_64d": 500}
NFE = (5, 10, 20, 50)
OPT_STEPS = (5, 10, 20)
# labels of the new samplers (the ones the bar is about)
NEW = ("unipc", "unipc/opt", "dpm_solver_pp:3M", "dpm_solver_pp:3M/opt", "dpm_solver_pp:2M",
       "dpm_solver:2", "dpm_solver:3", "adaptive_ode", "adaptive_sde", "ipndm", "deis", "lms",
       "ipndm/afs", "lms/afs", "lms/gits", "deis/gits", "unipc/gits")
#: samplers of issue 16 part A, benchmarked when registered (with their defaults)
PART_A = ("edm", "dpm_solver_pp_sde", "sa_solver", "euler_ancestral", "dpm_solver_pp_2s_ancestral")
GITS_FINE = 120


def gits(target, eps: float, seed: int, pilot: int) -> dict:
    """GITS grids (one teacher solve of a pilot batch, dynamic programming) for LMS, DEIS and UniPC."""
    import scoresde as sd

    sde = sd.VPSDE()
    t0 = time.perf_counter()
    sched = gits_schedule(sde, target.score_fn(sde), (pilot, target.dim), steps=OPT_STEPS, eps=eps,
                          fine_steps=GITS_FINE,
                          generator=torch.Generator().manual_seed(compare.derive_seed(seed, "pilot", "gits")))
    sched.report["wall_s"] = time.perf_counter() - t0
    out = {}
    for label, solver in (("lms/gits", LMS()), ("deis/gits", DEIS()),
                          ("unipc/gits", UniPC(lower_order_final=False))):
        solver.default_grid = sched
        out[label] = solver
    return out


def optimized(target, eps: float, seed: int, pilot: int, max_evals: int) -> dict:
    """Per-target optimised schedules of UniPC and DPM-Solver++(3M) (no lower-order final steps)."""
    import scoresde as sd

    sde = sd.VPSDE()
    out = {}
    for label, solver in (("unipc/opt", UniPC(lower_order_final=False)),
                          ("dpm_solver_pp:3M/opt", DPMSolverPlusPlus(order=3, lower_order_final=False))):
        t0 = time.perf_counter()
        sched = optimize_schedule(
            sde, target.score_fn(sde), (pilot, target.dim), solver, steps=OPT_STEPS, eps=eps,
            max_evals=max_evals,
            generator=torch.Generator().manual_seed(compare.derive_seed(seed, "pilot", label)))
        sched.report["wall_s"] = time.perf_counter() - t0
        solver.default_grid = sched
        out[label] = solver
    return out


def _on_grid(solver, grid):
    """The solver with ``grid`` as its default grid (the harness samples with ``grid=None``)."""
    solver.default_grid = grid
    return solver


def samplers(grids: bool, extra: dict) -> dict:
    out = {
        "unipc": UniPC(order=2),
        "dpm_solver_pp:3M": DPMSolverPlusPlus(order=3),
        "dpm_solver_pp:2M": DPMSolverPlusPlus(order=2),
        "dpm_solver:2": DPMSolver(order=2),
        "dpm_solver:3": DPMSolver(order=3),
        "adaptive_ode": AdaptiveODE(),
        "adaptive_sde": AdaptiveSDE(),
        "heun": Heun(),
        "ddim": DDIM(),
        "ode": ProbabilityFlowODE(),
        "ipndm": IPNDM(),
        "deis": DEIS(),
        "lms": LMS(),
        "ipndm/afs": IPNDM(afs=True),
        "lms/afs": LMS(afs=True),
        **extra,
    }
    import scoresde as sd

    for name in PART_A:
        if name in sd.samplers.names():
            out[name] = sd.samplers.resolve(name)
    if grids:
        for g in ("edm", "quadratic", "uniform"):
            out[f"dpm_solver_pp:3M/{g}"] = _on_grid(DPMSolverPlusPlus(order=3), g)
            out[f"unipc/{g}"] = _on_grid(UniPC(order=2), g)
        out["unipc/no_lof"] = UniPC(lower_order_final=False)
        out["dpm_solver_pp:3M/warm2S"] = DPMSolverPlusPlus(order=3, warmup="singlestep")
        out["adaptive_ode/dopri5"] = AdaptiveODE(method="dopri5")
    return out


def mean_records(records) -> list[dict]:
    """One record per (target, sampler, budget): metrics and floors averaged over the seeds."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["target"], r["sampler"], r["budget"]), []).append(r)
    out = []
    for (tname, label, budget), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        rec = {"target": tname, "sampler": label, "budget": budget, "source": rs[0].get("source"),
               "seeds": len(rs), "ok": len(ok),
               "floor": statistics.fmean(r["noise_floor"]["error"] for r in rs)}
        if len(ok) == len(rs):
            errs = [r["error"] for r in ok]
            rec.update(error=statistics.fmean(errs),
                       error_sd=statistics.pstdev(errs) if all(map(math.isfinite, errs)) else math.nan,
                       nfe=max(r["nfe"] for r in ok),
                       **{k: statistics.fmean(r[k] for r in ok)
                          for k in ("cov_error", "log_density_gap", "weight_error")})
        out.append(rec)
    return out


def table(means, targets, budgets) -> str:
    labels = list(dict.fromkeys(r["sampler"] for r in means))
    lines = []
    for tname in targets:
        rows = [r for r in means if r["target"] == tname]
        if not rows:
            continue
        floor = rows[0]["floor"]
        lines.append(f"\n### {tname}  (noise floor error = {floor:.3f}, 2x floor = {2 * floor:.3f}; "
                     f"mean over {rows[0]['seeds']} seeds)")
        lines.append("| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |")
        lines.append("|---|" + "---|" * len(budgets))
        for label in labels:
            cells = []
            for b in budgets:
                r = next((r for r in rows if r["sampler"] == label and r["budget"] == b), None)
                if r is None or "error" not in r:
                    cells.append("-")
                else:
                    nfe = f" ({r['nfe']})" if r["nfe"] != b else ""
                    cells.append(f"{r['error']:.3f}{nfe}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_table(means, targets, budgets) -> str:
    """The table of :func:`table` as CSV (``docs/fast_samplers.csv``)."""
    labels = list(dict.fromkeys(r["sampler"] for r in means))
    lines = ["target,sampler," + ",".join(f"NFE {b}" for b in budgets)]
    for tname in targets:
        for label in labels:
            cells = []
            for b in budgets:
                r = next((r for r in means if r["target"] == tname and r["sampler"] == label
                          and r["budget"] == b), None)
                if r is None or "error" not in r:
                    cells.append("—")
                else:
                    cells.append(f"{r['error']:.3f}" + (f" ({r['nfe']})" if r["nfe"] != b else ""))
            if any(c != "—" for c in cells) and any(r["target"] == tname and r["sampler"] == label
                                                   for r in means):
                lines.append(f"{tname},{label}," + ",".join(f'"{c}"' if "," in c else c for c in cells))
    return "\n".join(lines) + "\n"


def best(means, tname, budget, pred):
    vals = [(r["error"], r["sampler"]) for r in means if "error" in r and r["target"] == tname
            and r["budget"] == budget and pred(r)]
    return min(vals) if vals else (math.nan, None)


def bar_report(means, targets) -> tuple[str, dict]:
    """The issue's bars: defaults (no learned grid) <= 0.3 / 0.1 at 10 / 20 NFE on the 2-D target and
    ahead of every diffusers and k-diffusion sampler at 5/10/20; learned grid <= 0.5 / 0.08 at 5 / 10."""
    lines, out = [], {}

    def ours_default(r):
        return r["source"] == "scoresde" and not any(k in r["sampler"] for k in ("/opt", "/gits"))

    def learned(r):
        return r["source"] == "scoresde" and any(k in r["sampler"] for k in ("/opt", "/gits"))

    for tname in targets:
        if not any(r["target"] == tname for r in means):
            continue
        res = {}
        for b in (5, 10, 20):
            mine, who = best(means, tname, b, ours_default)
            peer, pwho = best(means, tname, b, lambda r: r["source"] in ("diffusers", "k-diffusion"))
            lrn, lwho = best(means, tname, b, learned)
            res[b] = {"default": mine, "default_sampler": who, "peer": peer, "peer_sampler": pwho,
                      "ahead": (mine < peer) if math.isfinite(peer) else None,
                      "learned": lrn, "learned_sampler": lwho}
            lines.append(f"{tname} NFE {b}: best default {mine:.3f} ({who}) vs best peer {peer:.3f} ({pwho}) -> "
                         f"{'ahead' if res[b]['ahead'] else 'NOT ahead' if res[b]['ahead'] is not None else 'n/a'}; "
                         f"best learned grid {lrn:.3f} ({lwho})")
        if tname == "imbalanced_2d":
            res["bar_default_10"] = res[10]["default"] <= 0.3
            res["bar_default_20"] = res[20]["default"] <= 0.1
            res["bar_learned_5"] = res[5]["learned"] <= 0.5
            res["bar_learned_10"] = res[10]["learned"] <= 0.08
            lines.append(f"{tname}: default <= 0.3 at 10: {res['bar_default_10']}; <= 0.1 at 20: "
                         f"{res['bar_default_20']}; learned <= 0.5 at 5: {res['bar_learned_5']}; "
                         f"<= 0.08 at 10: {res['bar_learned_10']}")
        out[tname] = res
    return "\n".join(lines), out


def adaptive_timing(n: int, seed: int) -> str:
    """NFE and wall time of adaptive_ode / adaptive_sde / scipy RK45 at equal tolerances."""
    import scoresde as sd

    sde = sd.VPSDE()
    lines = [f"\n### adaptive solvers vs scipy RK45 (imbalanced_2d, n={n}, float32)",
             "| solver | rtol=atol | NFE | wall s | error |", "|---|---|---|---|---|"]
    target = sd.imbalanced_2d()
    score = target.score_fn(sde)
    for tol in (1e-2, 1e-3, 1e-5):
        for label, smp in (("ode (scipy RK45)", ProbabilityFlowODE(rtol=tol, atol=tol)),
                           ("adaptive_ode bs3", AdaptiveODE(rtol=tol, atol=tol)),
                           ("adaptive_ode dopri5", AdaptiveODE(rtol=tol, atol=tol, method="dopri5")),
                           ("adaptive_sde", AdaptiveSDE(rtol=max(tol, 1e-3), atol=max(tol, 1e-3)))):
            gen = torch.Generator().manual_seed(seed)
            t0 = time.perf_counter()
            out = sd.sample(sde, score, (n, 2), smp, steps=1, generator=gen)
            wall = time.perf_counter() - t0
            err = sd.metrics.evaluate(out.samples, target,
                                      generator=torch.Generator().manual_seed(seed + 1))["error"]
            lines.append(f"| {label} | {smp.rtol:g} | {out.nfe} | {wall:.3f} | {err:.3f} |")
    return "\n".join(lines)


def eps_table(targets, n: int, seed: int) -> str:
    """Error of exact samples of p_eps, raw and after a Tweedie or a flow final step, vs the floor."""
    import scoresde as sd

    sde = sd.VPSDE()
    lines = [f"\n### end time and final step: exact samples of p_eps (n={n}, no solver error)",
             "| target | eps | noise floor | raw | tweedie | flow |", "|---|---|---|---|---|---|"]
    for tname in targets:
        target = sd.make_target(tname)
        score = target.score_fn(sde)
        floor = sd.metrics.noise_floor(target, n, generator=torch.Generator().manual_seed(seed))["error"]
        for eps in (1e-3, 1e-4, 1e-5):
            x = target.marginal(sde, eps).sample(
                n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
            cells = []
            for weight in (None, 1.0, 0.5):
                y = x if weight is None else sd.samplers.tweedie_denoise(sde, score, x, eps, weight=weight)
                cells.append(sd.metrics.evaluate(y, target,
                                                 generator=torch.Generator().manual_seed(seed + 2))["error"])
            lines.append(f"| {tname} | {eps:g} | {floor:.3f} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def grid_table(targets, n_of: dict, seed: int, budgets=(5, 10, 20)) -> str:
    """Error of the one-evaluation-per-step solvers on each fixed grid and end time (defaults' choice)."""
    import scoresde as sd

    sde = sd.VPSDE()
    solvers = {"lms": LMS(), "deis": DEIS(), "ipndm": IPNDM(), "dpm_solver_pp:2M": DPMSolverPlusPlus(order=2),
               "dpm_solver_pp:3M": DPMSolverPlusPlus(order=3), "unipc": UniPC()}
    kinds = ("log_snr", "quadratic", "uniform", "edm")
    lines = ["\n### fixed grids: error at " + "/".join(map(str, budgets)) + " NFE (seed "
             f"{seed}; exact scores)", "| target | solver | eps | " + " | ".join(kinds) + " |",
             "|---|---|---|" + "---|" * len(kinds)]
    for tname in targets:
        target = sd.make_target(tname)
        score = target.score_fn(sde)
        n = n_of.get(tname, 2000)
        for (label, solver), eps in ((a, e) for a in solvers.items() for e in (1e-3, 1e-4)):
            cells = []
            for kind in kinds:
                errs = []
                for b in budgets:
                    out = sd.sample(sde, score, (n, target.dim), solver, steps=b, eps=eps, grid=kind,
                                    generator=torch.Generator().manual_seed(seed))
                    errs.append(sd.metrics.evaluate(out.samples, target, mmd_n=2000,
                                                    generator=torch.Generator().manual_seed(seed + 1))["error"])
                cells.append("/".join(f"{e:.2f}" for e in errs))
            lines.append(f"| {tname} | {label} | {eps:g} | " + " | ".join(cells) + " |")
            print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--nfe", default=",".join(map(str, NFE)))
    parser.add_argument("--n", type=int, default=None,
                        help="samples per run (default: 20000 for imbalanced_2d, 5000 for anisotropic_64d)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..S-1; numbers are means")
    parser.add_argument("--eps", type=float, default=1e-4, help="end time of the scoresde samplers")
    parser.add_argument("--pilot", type=int, default=None,
                        help="pilot batch of optimize_schedule (default: 1000 in 2-D, 500 in 64-D)")
    parser.add_argument("--max-evals", type=int, default=3000, help="optimize_schedule budget per step count")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mmd-n", type=int, default=2000,
                        help="MMD on the first N points of each sample (quadratic cost; the bar's "
                             "error does not use it); 0: all")
    parser.add_argument("--grids", action="store_true", help="add fixed-grid variants")
    parser.add_argument("--no-diffusers", action="store_true")
    parser.add_argument("--no-kdiffusion", action="store_true")
    parser.add_argument("--no-opt", action="store_true", help="skip optimize_schedule (slow)")
    parser.add_argument("--no-timing", action="store_true", help="skip the adaptive-vs-RK45 timing table")
    parser.add_argument("--json", default=None, help="also write the records to this file")
    parser.add_argument("--eps-table", action="store_true",
                        help="only print the end-time / final-step table (exact samples of p_eps)")
    parser.add_argument("--grid-table", action="store_true",
                        help="only print the fixed-grid table of the one-evaluation solvers (how the "
                             "default grids were chosen)")
    parser.add_argument("--csv", default=None, help="also write the table as CSV (docs/fast_samplers.csv)")
    parser.add_argument("--merge", nargs="+", default=None,
                        help="only rebuild the table, bars and --csv from these --json files")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    budgets = [int(v) for v in args.nfe.split(",")]
    if args.merge:
        means = [m for f in args.merge for m in json.loads(Path(f).read_text())["means"]]
        targets = list(dict.fromkeys(m["target"] for m in means))
        print(table(means, targets, budgets))
        print("\n### the issue's bar\n" + bar_report(means, targets)[0])
        if args.csv:
            Path(args.csv).write_text(csv_table(means, targets, budgets))
        return 0
    if args.eps_table:
        print(eps_table(args.targets, args.n or 20000, 1))
        return 0
    if args.grid_table:
        print(grid_table(args.targets, {t: args.n or N_DEFAULT.get(t, 2000) for t in args.targets}, 0))
        return 0

    import diffusers_baselines as db
    import kdiffusion_baselines as kb

    import scoresde as sd

    use_diffusers = not args.no_diffusers and db.available()
    if not args.no_diffusers and not use_diffusers:
        print("diffusers is not importable: no diffusers baselines", file=sys.stderr)
    use_kdiff = not args.no_kdiffusion and kb.available()
    if not args.no_kdiffusion and not use_kdiff:
        print("k-diffusion is not importable: no k-diffusion baselines", file=sys.stderr)
    records, schedules = [], {}
    mmd_n = args.mmd_n or None
    for tname in args.targets:
        target = sd.make_target(tname)
        n = args.n if args.n is not None else N_DEFAULT.get(tname, 2000)
        pilot = args.pilot if args.pilot is not None else PILOT_DEFAULT.get(tname, 500)
        extra = {} if args.no_opt else optimized(target, args.eps, 0, pilot, args.max_evals)
        extra.update(gits(target, args.eps, 0, pilot))
        schedules[tname] = {k: v.default_grid.to_dict() for k, v in extra.items()}
        for label, smp in extra.items():
            rep = smp.default_grid.report
            print(f"{tname} {label}: schedule optimised in {rep['wall_s']:.1f} s, "
                  f"{rep['score_calls']} score calls on a pilot of {rep['pilot_shape'][0]}",
                  file=sys.stderr)
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            records += compare.run_comparison(targets=[tname], samplers=samplers(args.grids, extra),
                                              nfe=budgets, n=n, sde="vp", seed=seed, eps=args.eps,
                                              memory="none", mmd_n=mmd_n)
            print(f"{tname} seed {seed}: scoresde samplers {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)
            if use_diffusers:
                t0 = time.perf_counter()
                records += db.run_diffusers([tname], None, budgets, n, seed, memory="none", mmd_n=mmd_n)
                print(f"{tname} seed {seed}: diffusers {time.perf_counter() - t0:.1f} s",
                      file=sys.stderr)
            if use_kdiff:
                t0 = time.perf_counter()
                records += kb.run_kdiffusion([tname], None, budgets, n, seed, eps=args.eps, mmd_n=mmd_n)
                print(f"{tname} seed {seed}: k-diffusion {time.perf_counter() - t0:.1f} s",
                      file=sys.stderr)

    means = mean_records(records)
    print(table(means, args.targets, budgets))
    if not args.no_timing:
        print(adaptive_timing(2000, 0))
    text, summary = bar_report(means, args.targets)
    print("\n### the issue's bar\n" + text)
    payload = {"summary": summary, "means": means, "schedules": schedules,
               "settings": {"eps": args.eps, "seeds": args.seeds, "pilot": args.pilot,
                            "max_evals": args.max_evals,
                            "n": {t: args.n or N_DEFAULT.get(t, 2000) for t in args.targets}},
               "records": json.loads(compare.to_json(records))["records"]}
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=1))
    if args.csv:
        Path(args.csv).write_text(csv_table(means, args.targets, budgets))
    print(json.dumps({"summary": summary, "schedules": schedules}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
