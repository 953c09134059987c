"""Sampler overhead: wall time per score evaluation (NFE) relative to one bare score call.

Run by hand (not a test)::

    python benchmarks/bench_sampler_overhead.py                 # 2 threads, table + JSON
    python benchmarks/bench_sampler_overhead.py --threads 1 --json out.json

The score is a small random MLP on ``[x, t]`` (3 × Linear(·, 128) + SiLU, then Linear(128, 2)),
the batch 4096 × 2, the SDE the default VP. For each sampler the time of a whole
:func:`scoresde.sample` call is divided by its NFE and by the time of one bare
``score_fn(x, t)`` call. Targets (issue): Euler–Maruyama ≤ 1.2×, the scipy flow ODE ≤ 1.5×,
also at the default ``steps=500`` without a trajectory: an adaptive solver's cost must not
depend on ``steps`` unless the states on the grid are wanted. The row ``ode run(callback=None)``
calls the sampler directly the way the driver does when nothing needs the per-step states
(no trajectory, callback or progress bar): it must match the ``steps=1`` row.

Two estimates, medians over ``--repeats`` runs after one warm-up run:

- ``ratio``: each repeat times the bare call (``--bare-calls`` calls) just before and just after
  the sampler run and divides the run's time per NFE by their mean, so that slow drifts in
  machine load cancel;
- ``in-run``: the run's wall time divided by the time spent inside the score calls of that same
  run (timed around each call) — the same quantity measured at the granularity of single calls,
  hence the steadier number on a machine shared with other jobs. ``over ms`` is the time per
  NFE spent outside the score, from the same run.

CPU only (the in-run timer does not synchronise a GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import scoresde as sd

TARGETS = {"euler_maruyama": 1.2, "ode": 1.5, "ode (default steps)": 1.5,
           "ode run(callback=None), 500 steps": 1.5}


def make_score(seed: int = 0, width: int = 128):
    """A random-init MLP score ``(x, t) -> R^2`` on ``[x, t]``."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, width), torch.nn.SiLU(),
        torch.nn.Linear(width, width), torch.nn.SiLU(),
        torch.nn.Linear(width, width), torch.nn.SiLU(),
        torch.nn.Linear(width, 2),
    )
    net.requires_grad_(False)

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return net(torch.cat([x, t[:, None]], dim=1))

    return score_fn


class TimedScore:
    """Wraps a score function and accumulates the wall time spent inside it."""

    def __init__(self, score_fn):
        self.score_fn = score_fn
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        start = time.perf_counter()
        out = self.score_fn(x, t)
        self.seconds += time.perf_counter() - start
        return out


def time_bare(score_fn, x, t, calls: int) -> float:
    """Mean seconds per bare ``score_fn(x, t)`` call over ``calls`` calls."""
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(calls):
            score_fn(x, t)
        return (time.perf_counter() - start) / calls


def time_sampler(sde, score_fn, x0, sampler, steps, repeats, bare_calls, direct=False, **options):
    """Times ``sd.sample`` (or, with ``direct``, the bare ``run(..., callback=None)``)."""
    t = torch.full((x0.shape[0],), 0.5)

    def once():
        timed = TimedScore(score_fn)
        start = time.perf_counter()
        if direct:
            solver = sd.samplers.SAMPLERS[sampler](**options)
            grid = sd.samplers.time_grid(sde, steps)
            with torch.no_grad():
                solver.run(sde, timed, x0, grid, generator=torch.Generator().manual_seed(0))
            nfe = timed.calls
        else:
            out = sd.sample(sde, timed, tuple(x0.shape), sampler=sampler, steps=steps,
                            x_init=x0, generator=torch.Generator().manual_seed(0), **options)
            nfe = out.nfe
        total = time.perf_counter() - start
        return total / nfe, total / timed.seconds, (total - timed.seconds) / nfe, nfe

    once()  # warm-up
    ratios, in_run, per_nfe, bares, outside = [], [], [], [], []
    for _ in range(repeats):
        before = time_bare(score_fn, x0, t, bare_calls)
        sec, inside_ratio, over, nfe = once()
        after = time_bare(score_fn, x0, t, bare_calls)
        bare = 0.5 * (before + after)
        ratios.append(sec / bare)
        in_run.append(inside_ratio)
        per_nfe.append(sec)
        bares.append(bare)
        outside.append(over)
    return {
        "nfe": nfe,
        "ratio": statistics.median(ratios),
        "ratio_spread": [min(ratios), max(ratios)],
        "in_run_ratio": statistics.median(in_run),
        "in_run_spread": [min(in_run), max(in_run)],
        "ms_per_nfe": 1e3 * statistics.median(per_nfe),
        "bare_ms": 1e3 * statistics.median(bares),
        "overhead_ms_per_nfe": 1e3 * statistics.median(outside),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=100, help="grid steps of the fixed-step samplers")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bare-calls", type=int, default=20, help="bare calls timed around each run")
    p.add_argument("--json", metavar="PATH", help="also write the JSON result here")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    sde = sd.VPSDE()
    score_fn = make_score()
    x0 = sde.prior_sample((args.batch, 2), generator=torch.Generator().manual_seed(1))

    cases = [
        ("euler_maruyama", "euler_maruyama", args.steps, {}),
        ("ode", "ode", 1, {}),
        ("ode (100 output times)", "ode", 100, {"trajectory": True}),
        ("ode (default steps)", "ode", 500, {}),
        ("ode run(callback=None), 500 steps", "ode", 500, {"direct": True}),
        ("torchsde (euler)", "torchsde", args.steps, {}),
    ]
    rows = []
    for label, sampler, steps, options in cases:
        r = time_sampler(sde, score_fn, x0, sampler, steps, args.repeats, args.bare_calls,
                         **options)
        target = TARGETS.get(label)
        r.update(sampler=label, target=target,
                 ok=None if target is None else r["in_run_ratio"] <= target)
        rows.append(r)

    result = {"batch": [args.batch, 2], "threads": args.threads, "torch": torch.__version__,
              "rows": rows}
    print(f"batch {args.batch}x2, {args.threads} threads, median of {args.repeats} paired runs")
    head = f"{'sampler':<36}{'NFE':>5}{'bare ms':>9}{'ms/NFE':>9}{'over ms':>9}{'ratio':>7}"
    print(head + f"{'in-run':>8}{'[min, max]':>14}{'target':>8}  ok")
    for r in rows:
        tgt = "" if r["target"] is None else f"{r['target']:.1f}"
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        lo, hi = r["in_run_spread"]
        print(f"{r['sampler']:<36}{r['nfe']:>5}{r['bare_ms']:>9.3f}{r['ms_per_nfe']:>9.3f}"
              f"{r['overhead_ms_per_nfe']:>9.3f}{r['ratio']:>7.2f}{r['in_run_ratio']:>8.2f}"
              f"  [{lo:4.2f}, {hi:4.2f}]{tgt:>8}  {ok}")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
