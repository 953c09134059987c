"""Likelihood weighting closes the gap: ELBO and ODE likelihood after training with two DSM weightings.

Run by hand (not a test; about a minute per 1000 steps and weighting on one CPU core)::

    python benchmarks/bench_elbo_training.py                      # table + JSON
    python benchmarks/bench_elbo_training.py --steps 4000 --json out.json

Two copies of the same network (``ScoreModel(ScoreMLP(2, hidden=128, n_blocks=2), VPSDE())``,
ε-parameterised, the same initial weights and data stream) are trained for the same number of
steps on ``imbalanced_2d`` with :func:`scoresde.dsm_loss`: ``weighting="sigma2"`` (the ε-loss of
Ho et al., uniform ``t``) and ``weighting="g2"`` with ``importance_sampling=True`` (the
likelihood weighting of Song, Durkan et al. 2021 with their importance-sampled ``t``). Both are
then scored on held-out points by the continuous ELBO (:func:`scoresde.elbo`, its standard error)
and by the flow-ODE log-likelihood (:func:`scoresde.log_likelihood`), against the exact
:math:`\\log p` of the target.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

import scoresde as sd
from scoresde.nets import ScoreMLP, ScoreModel


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def train(model, sde, target, steps: int, batch: int, weighting: str, seed: int):
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g_data, g_loss = _gen(seed), _gen(seed + 1)
    for _ in range(steps):
        x0 = target.sample(batch, generator=g_data)
        loss = sd.dsm_loss(model, sde, x0, weighting=weighting, importance_sampling=weighting == "g2",
                           generator=g_loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--eval", type=int, default=256, help="held-out points for the ELBO")
    parser.add_argument("--eval-ode", type=int, default=64, help="held-out points for the ODE likelihood")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    sde = sd.VPSDE()
    target = sd.imbalanced_2d()
    base = ScoreModel(ScoreMLP(2, hidden=128, n_blocks=2, generator=_gen(args.seed)), sde)
    x = target.sample(args.eval, generator=_gen(args.seed + 100), dtype=torch.float64)
    exact = float(target.log_prob(x).mean())
    rows = []
    for weighting in ("sigma2", "g2"):
        t0 = time.perf_counter()
        model = train(copy.deepcopy(base), sde, target, args.steps, args.batch, weighting, args.seed + 1)
        train_s = time.perf_counter() - t0
        model = model.double().eval()
        with torch.no_grad():
            res = sd.elbo(sde, model, x, n_samples=256, generator=_gen(args.seed + 200))
        ll = sd.log_likelihood(sde, model, x[: args.eval_ode])
        m, se = res.mean()
        rows.append({"weighting": weighting if weighting == "sigma2" else "g2 + importance sampling",
                     "steps": args.steps, "elbo": m, "elbo_stderr": se,
                     "ode_loglik": float(ll.mean()), "exact_subset": float(target.log_prob(x[: args.eval_ode]).mean()),
                     "train_s": train_s})
    head = f"{'training loss':<28}{'ELBO':>10}{'± se':>8}{'gap':>8}{'ODE log p':>11}{'gap':>8}{'train s':>9}"
    print(f"imbalanced_2d, {args.steps} steps of batch {args.batch}; exact mean log p = {exact:.4f} "
          f"({args.eval} points; ODE on the first {args.eval_ode}: {rows[0]['exact_subset']:.4f})")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['weighting']:<28}{r['elbo']:>10.4f}{r['elbo_stderr']:>8.4f}{exact - r['elbo']:>8.4f}"
              f"{r['ode_loglik']:>11.4f}{r['exact_subset'] - r['ode_loglik']:>8.4f}{r['train_s']:>9.1f}")
    out = json.dumps({"meta": {"exact_logp": exact, "sde": repr(sde), "batch": args.batch,
                               "threads": args.threads, "torch": torch.__version__}, "rows": rows}, indent=1)
    print(out)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
