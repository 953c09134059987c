"""Flow-ODE likelihood: accuracy, NFE and wall time of exact vs Hutchinson traces.

Run by hand (not a test)::

    python benchmarks/bench_likelihood.py                    # 1 thread, table + JSON
    python benchmarks/bench_likelihood.py --batch 128 --json out.json

For two reference targets with exact scores under the default VP SDE — ``imbalanced_2d``
(3 modes, one tight) and a 10-D 3-mode mixture with random SPD covariances — points drawn
from the target are scored by :func:`scoresde.flow_likelihood` with the exact trace
and with Hutchinson's estimator (Rademacher and Gaussian probes), solved by scipy's RK45 at
``rtol = atol`` of 1e-3 and 1e-5 and by the torch ``rk4`` path at a few step counts.

Columns: ``|err|`` mean and max over the batch of ``|log p̂ - log p_eps(x)|`` (nats) against the
exact log-density, computed from the same solve with two end terms: ``prior`` — the package
default :math:`\\log\\pi(x_T)`, ``exact pT`` — the target's exact :math:`\\log p_T(x_T)` (removes
the prior mismatch, leaving solver and trace-estimator error only). ``nfe`` is the number of
score calls, ``ms`` the wall time of the whole call. ``RK45`` is scipy's (error: RMS over the
flattened batch), ``dopri5``/``bs3`` the torch pairs with per-sample error control (the default).

``--part trace`` instead times one exact-trace drift evaluation (the score call and its ``d``
vector-Jacobian products) per backend: ``autograd`` (the default: batched backward passes in
chunks), ``loop`` (``trace_chunk=1``: one backward pass per coordinate), ``func``
(:func:`torch.func.vjp` vmapped over the basis vectors, same chunks) — on 2-D
(``imbalanced_2d``), 64-D (``anisotropic_64d``, exact scores, float64) and 8×8 digits (an
untrained :class:`~scoresde.nets.UNet` ``ScoreModel``, float32; its cost does not depend on
the weights). ``ms`` is the best of ``--reps`` repeats; ``speed-up`` is autograd / func::

    python benchmarks/bench_likelihood.py --part trace --json trace.json

``--part per-sample`` compares scipy's ``RK45`` (batch-RMS error) with ``dopri5`` (per-sample
error) at ``rtol = atol`` 1e-3 and 1e-5 on 256 points of ``imbalanced_2d``, 64 of the 10-D
mixture and 16 of ``anisotropic_64d`` (seed 0), with the exact ``p_T``: the largest and the
median error over the batch, the worst ratio error / (atol + rtol |Δ_T|), NFE and wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

import scoresde as sd
from scoresde.likelihood import flow_likelihood, log_likelihood


def mixture_10d() -> sd.GaussianMixture:
    """Three 10-D modes with random SPD covariances (the test suite's target, same seed)."""
    g = torch.Generator().manual_seed(10)
    K, d = 3, 10
    means = 1.5 * torch.randn(K, d, generator=g, dtype=torch.float64)
    a = torch.randn(K, d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    covs = 0.5 * a @ a.transpose(-1, -2) + 0.05 * torch.eye(d, dtype=torch.float64)
    return sd.GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))


SOLVERS = [
    ("RK45 1e-3", dict(method="RK45", rtol=1e-3, atol=1e-3)),
    ("RK45 1e-5", dict(method="RK45", rtol=1e-5, atol=1e-5)),
    ("dopri5 1e-3", dict(method="dopri5", rtol=1e-3, atol=1e-3)),
    ("dopri5 1e-5", dict(method="dopri5", rtol=1e-5, atol=1e-5)),
    ("bs3 1e-4", dict(method="bs3", rtol=1e-4, atol=1e-4)),
    ("rk4 16", dict(method="rk4", steps=16)),
    ("rk4 64", dict(method="rk4", steps=64)),
    ("rk4 256", dict(method="rk4", steps=256)),
]
TRACES = [("exact", {}), ("hutch-rad", dict(noise="rademacher")), ("hutch-gauss", dict(noise="gaussian"))]


def run_case(sde, target, x, solver_opts, trace, trace_opts, seed):
    log_p = target.log_prob_fn(sde)
    t0 = time.perf_counter()
    res = flow_likelihood(
        sde, target.score_fn(sde), x, trace="exact" if trace == "exact" else "hutchinson",
        generator=torch.Generator().manual_seed(seed), **trace_opts, **solver_opts,
    )
    ms = 1e3 * (time.perf_counter() - t0)
    truth = log_p(x, 1e-5)
    err_prior = (res.logp - truth).abs()
    err_exact = (res.delta_logp + log_p(res.x_T, sde.T) - truth).abs()  # exact log p_T instead
    return {
        "err_prior_mean": float(err_prior.mean()), "err_prior_max": float(err_prior.max()),
        "err_exact_mean": float(err_exact.mean()), "err_exact_max": float(err_exact.max()),
        "nfe": res.nfe, "ms": ms,
    }


def _best_ms(fn, reps: int) -> float:
    fn()  # warm-up (first-call set-up of vmap / torch.func)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


def trace_cases(batch: int, seed: int):
    from scoresde.nets import ScoreModel, UNet

    sde = sd.VPSDE()
    gen = torch.Generator().manual_seed(seed)
    t2, t64 = sd.imbalanced_2d(), sd.anisotropic_64d()
    net = ScoreModel(UNet(1, generator=torch.Generator().manual_seed(seed)), sde)
    return sde, [
        ("2-D", t2.score_fn(sde), t2.sample(batch, generator=gen, dtype=torch.float64)),
        ("64-D", t64.score_fn(sde), t64.sample(batch, generator=gen, dtype=torch.float64)),
        ("digits 8x8", net, torch.randn(batch, 1, 8, 8, generator=gen)),
    ]


def run_trace(args) -> tuple[list[dict], str]:
    from scoresde.likelihood import _AugmentedFlow

    sde, cases = trace_cases(args.batch, args.seed)
    backends = [("autograd", None, "autograd"), ("loop", 1, "autograd"), ("func", None, "func")]
    rows = []
    for name, score, x in cases:
        reference, row = None, {"case": name, "d": x[0].numel(), "batch": x.shape[0],
                                "dtype": str(x.dtype).replace("torch.", "")}
        for label, chunk, backend in backends:
            aug = _AugmentedFlow(sde, score, None, "bench", chunk, backend)
            _, div = aug(x, 0.3)
            reference = div if reference is None else reference
            row[f"{label}_ms"] = _best_ms(lambda aug=aug, x=x: aug(x, 0.3), args.reps)
            row[f"{label}_maxdiff"] = float((div - reference).abs().max())
        row["speedup_func"] = row["autograd_ms"] / row["func_ms"]
        rows.append(row)
    head = (f"{'case':<12}{'d':>4}{'batch':>6}{'dtype':>9}{'autograd ms':>13}{'loop ms':>10}"
            f"{'func ms':>10}{'speed-up':>10}{'max|func-autograd|':>20}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['case']:<12}{r['d']:>4}{r['batch']:>6}{r['dtype']:>9}"
                     f"{r['autograd_ms']:>13.1f}{r['loop_ms']:>10.1f}{r['func_ms']:>10.1f}"
                     f"{r['speedup_func']:>10.2f}{r['func_maxdiff']:>20.1e}")
    return rows, "\n".join(lines)


PER_SAMPLE = [("imbalanced_2d", 256), ("mixture_10d", 64), ("anisotropic_64d", 16)]


def run_per_sample(args) -> tuple[list[dict], str]:
    sde, rows = sd.VPSDE(), []
    head = (f"{'target':<17}{'batch':>5}  {'method':<8}{'tol':>6}{'max |err|':>11}"
            f"{'median':>10}{'worst ratio':>13}{'nfe':>6}{'ms':>8}")
    lines = [head, "-" * len(head)]
    for name, n in PER_SAMPLE:
        target = mixture_10d() if name == "mixture_10d" else sd.make_target(name)
        x = target.sample(n, generator=torch.Generator().manual_seed(args.seed),
                          dtype=torch.float64)
        log_p = target.log_prob_fn(sde)
        truth = log_p(x, 1e-5)
        for method in ("RK45", "dopri5"):
            for tol in (1e-3, 1e-5):
                t0 = time.perf_counter()
                res = flow_likelihood(sde, target.score_fn(sde), x, method=method, rtol=tol,
                                      atol=tol, prior_log_prob=lambda x_T, lp=log_p: lp(x_T, sde.T))
                ms = 1e3 * (time.perf_counter() - t0)
                err = (res.logp - truth).abs()
                ratio = float((err / (tol + tol * res.delta_logp.abs())).max())
                row = {"target": name, "batch": n, "method": method, "tol": tol,
                       "err_max": float(err.max()), "err_median": float(err.median()),
                       "worst_ratio": ratio, "nfe": res.nfe, "ms": ms}
                rows.append(row)
                lines.append(f"{name:<17}{n:>5}  {method:<8}{tol:>6.0e}{row['err_max']:>11.2e}"
                             f"{row['err_median']:>10.2e}{ratio:>13.2f}{res.nfe:>6}{ms:>8.0f}")
    return rows, "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("errors", "per-sample", "trace"), default="errors",
                        help="errors: accuracy/NFE table (default); per-sample: RK45 vs dopri5 "
                             "worst-sample errors; trace: exact-trace timings")
    parser.add_argument("--batch", type=int, default=64, help="points per target (default 64)")
    parser.add_argument("--reps", type=int, default=3, help="timing repeats (--part trace)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.part != "errors":
        rows, table = (run_trace if args.part == "trace" else run_per_sample)(args)
        print(table)
        meta = {"batch": args.batch, "threads": args.threads, "reps": args.reps,
                "torch": torch.__version__}
        return _write_json(meta, rows, args.json)

    sde = sd.VPSDE()
    targets = [("imbalanced_2d", sd.imbalanced_2d()), ("mixture_10d", mixture_10d())]
    rows = []
    # warm-up: first calls pay for vmap set-up and the scipy import
    warm = targets[0][1].sample(2, dtype=torch.float64)
    log_likelihood(sde, targets[0][1].score_fn(sde), warm, rtol=1e-3, atol=1e-3)
    for tname, target in targets:
        x = target.sample(args.batch, generator=torch.Generator().manual_seed(args.seed),
                          dtype=torch.float64)
        for sname, sopts in SOLVERS:
            for trname, tropts in TRACES:
                res = run_case(sde, target, x, sopts, trname, tropts, args.seed + 1)
                rows.append({"target": tname, "d": target.dim, "solver": sname, "trace": trname,
                             **res})

    head = (f"{'target':<14}{'solver':<11}{'trace':<12}{'|err| prior':>22}"
            f"{'|err| exact pT':>22}{'nfe':>7}{'ms':>9}")
    print(head)
    print(f"{'':<37}{'mean':>11}{'max':>11}{'mean':>11}{'max':>11}")
    print("-" * len(head))
    for r in rows:
        print(f"{r['target']:<14}{r['solver']:<11}{r['trace']:<12}"
              f"{r['err_prior_mean']:>11.2e}{r['err_prior_max']:>11.2e}"
              f"{r['err_exact_mean']:>11.2e}{r['err_exact_max']:>11.2e}"
              f"{r['nfe']:>7d}{r['ms']:>9.0f}")
    meta = {"sde": repr(sde), "batch": args.batch, "threads": args.threads, "eps": 1e-5,
            "torch": torch.__version__}
    return _write_json(meta, rows, args.json)


def _write_json(meta: dict, rows: list[dict], path: str | None) -> int:
    """Print the JSON of a run and, with ``path``, also write it there."""
    out = json.dumps({"meta": meta, "rows": rows}, indent=1)
    print(out)
    if path:
        with open(path, "w") as fh:
            fh.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
