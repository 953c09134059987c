"""Error against NFE of the fast samplers (DPM-Solver, DPM-Solver++, UniPC, adaptive SDE/ODE).

Run by hand (it is not part of the test suite)::

    python benchmarks/bench_fast_samplers.py                      # scoresde samplers only
    /tmp/dvenv/bin/python benchmarks/bench_fast_samplers.py       # + diffusers, if importable
    python benchmarks/bench_fast_samplers.py --grids              # + DPM-Solver++ grid variants

Every sampler is run through :func:`scoresde.compare.run_comparison` on the VP SDE (eps =
1e-3) with the exact scores of the stiff reference targets ``imbalanced_2d`` and
``anisotropic_64d``, at NFE budgets 5, 10, 20, 50 and ``n = 2000`` samples; the combined
``error = cov_error + log_density_gap + weight_error`` is compared with the noise floor (the
same error between two exact samples of size ``n``). diffusers' schedulers, fed the same exact
scores through ``benchmarks/diffusers_baselines.py``, are added when diffusers imports.

Prints a table (error per budget; actual NFE in brackets when it differs from the budget),
the noise floor, wall times of the adaptive solvers against scipy's RK45, whether the issue's
bar is met (at 10 NFE, error <= half of the best diffusers solver; at 20 NFE, error <= 2x the
noise floor), and all records as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scoresde import compare  # noqa: E402
from scoresde.samplers import (  # noqa: E402
    DDIM,
    AdaptiveODE,
    AdaptiveSDE,
    DPMSolver,
    DPMSolverPlusPlus,
    Heun,
    ProbabilityFlowODE,
    UniPC,
)

TARGETS = ("imbalanced_2d", "anisotropic_64d")
NFE = (5, 10, 20, 50)
# labels of the new samplers (the ones the bar is about)
NEW = ("unipc", "dpm_solver_pp:3M", "dpm_solver_pp:2M", "dpm_solver:2", "dpm_solver:3",
       "adaptive_ode", "adaptive_sde")


def samplers(grids: bool) -> dict:
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
    }
    if grids:
        for g in ("edm", "quadratic", "uniform"):
            out[f"dpm_solver_pp:3M/{g}"] = DPMSolverPlusPlus(order=3, time_grid=g)
            out[f"dpm_solver_pp:2M/{g}"] = DPMSolverPlusPlus(order=2, time_grid=g)
        out["dpm_solver_pp:3M/no_lof"] = DPMSolverPlusPlus(order=3, lower_order_final=False)
        out["dpm_solver_pp:3M/warm2S"] = DPMSolverPlusPlus(order=3, warmup="singlestep")
        out["adaptive_ode/dopri5"] = AdaptiveODE(method="dopri5")
        out["unipc/quadratic"] = UniPC(order=2, time_grid="quadratic")
        out["unipc:1"] = UniPC(order=1)
    return out


def table(records, targets, budgets) -> str:
    ok = [r for r in records if r["status"] == "ok"]
    labels = list(dict.fromkeys(r["sampler"] for r in records))
    lines = []
    for tname in targets:
        floor = next((r["noise_floor"]["error"] for r in records if r["target"] == tname), math.nan)
        lines.append(f"\n### {tname}  (noise floor error = {floor:.3f}, 2x floor = {2 * floor:.3f})")
        lines.append("| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |")
        lines.append("|---|" + "---|" * len(budgets))
        for label in labels:
            cells = []
            for b in budgets:
                r = next((r for r in ok if r["target"] == tname and r["sampler"] == label
                          and r["budget"] == b), None)
                if r is None:
                    cells.append("-")
                else:
                    nfe = f" ({r['nfe']})" if r["nfe"] != b else ""
                    cells.append(f"{r['error']:.3f}{nfe}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best(records, tname, budget, pred):
    vals = [r["error"] for r in records if r["status"] == "ok" and r["target"] == tname
            and r["budget"] == budget and pred(r)]
    return min(vals) if vals else math.nan


def bar_report(records, targets) -> tuple[str, dict]:
    lines, out = [], {}
    for tname in targets:
        floor = next(r["noise_floor"]["error"] for r in records if r["target"] == tname)
        ours10 = best(records, tname, 10, lambda r: r["sampler"] in NEW)
        ours20 = best(records, tname, 20, lambda r: r["sampler"] in NEW)
        diff10 = best(records, tname, 10, lambda r: r["source"] == "diffusers")
        met10 = ours10 <= 0.5 * diff10 if math.isfinite(diff10) else None
        met20 = ours20 <= 2 * floor
        out[tname] = {"ours_10": ours10, "best_diffusers_10": diff10, "bar_10_met": met10,
                      "ours_20": ours20, "noise_floor": floor, "bar_20_met": met20}
        lines.append(
            f"{tname}: NFE 10 best new {ours10:.3f} vs best diffusers {diff10:.3f} "
            f"(need <= {0.5 * diff10:.3f}) -> {'MET' if met10 else 'not met' if met10 is not None else 'n/a'}; "
            f"NFE 20 best new {ours20:.3f} vs 2x floor {2 * floor:.3f} -> "
            f"{'MET' if met20 else 'not met'}")
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--nfe", default=",".join(map(str, NFE)))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grids", action="store_true", help="add DPM-Solver++ grid variants")
    parser.add_argument("--no-diffusers", action="store_true")
    parser.add_argument("--json", default=None, help="also write the records to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    budgets = [int(v) for v in args.nfe.split(",")]

    t0 = time.perf_counter()
    records = compare.run_comparison(targets=args.targets, samplers=samplers(args.grids),
                                     nfe=budgets, n=args.n, sde="vp", seed=args.seed,
                                     memory="none")
    print(f"scoresde samplers: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if not args.no_diffusers:
        import diffusers_baselines as db

        if db.available():
            t0 = time.perf_counter()
            records += db.run_diffusers(args.targets, None, budgets, args.n, args.seed,
                                        memory="none")
            print(f"diffusers: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        else:
            print("diffusers is not importable: no diffusers baselines", file=sys.stderr)

    print(table(records, args.targets, budgets))
    print(adaptive_timing(args.n, args.seed))
    text, summary = bar_report(records, args.targets)
    print("\n### the issue's bar\n" + text)
    payload = {"summary": summary, "records": json.loads(compare.to_json(records))["records"]}
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=1))
    print(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
