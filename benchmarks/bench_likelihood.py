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
score calls, ``ms`` the wall time of the whole call.
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="points per target (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

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
    out = json.dumps({"meta": meta, "rows": rows}, indent=1)
    print(out)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
