"""Variational bounds: cost and standard error of ``elbo`` vs ``log_likelihood``, and tightness.

Run by hand (not a test)::

    python benchmarks/bench_elbo.py                     # both tables + JSON, 1 thread
    python benchmarks/bench_elbo.py --part cost --batch 32 --json out.json
    python benchmarks/bench_elbo.py --part tightness

``cost``: for three models with exact log-densities — ``imbalanced_2d`` (2-D), ``anisotropic_64d``
(64-D) and a 10-component Gaussian mixture fitted to the 8x8 digits (one full-covariance
component per class, ridge 0.01; the digits' 17 levels dequantised, reported in bits/dim) —
``log_likelihood`` (RK45, rtol = atol = 1e-5; exact trace in 2-D, Hutchinson in 64-D and on
digits) is timed per sample, then ``elbo`` (denoising form, importance-sampled stratified time)
is given the same wall time per sample (``n_samples`` scaled to match). Columns: score
evaluations per sample, milliseconds per sample, the Monte-Carlo standard error per sample
(for Hutchinson: the spread over 4 probe draws; for the exact trace: 0, the error is the
solver's) and the mean |estimate - exact log p| over the batch.

``tightness``: on ``imbalanced_2d`` with the exact score, exact log p against the continuous ELBO
(exact p_T prior, so it should be tight) and the DDPM bound at N = 25, 100, 1000 (``beta`` and
``beta_tilde`` reverse variances), batch means with their standard errors.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

import scoresde as sd


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def digits_mixture() -> tuple[sd.GaussianMixture, torch.Tensor]:
    """A Gaussian mixture fitted to the digits training split (per class), and the test images."""
    from scoresde.data import digits

    x, y = digits("train")
    x = x.reshape(len(x), -1).double()
    means, covs, weights = [], [], []
    for k in range(10):
        xk = x[y == k]
        means.append(xk.mean(0))
        covs.append(torch.cov(xk.T) + 0.01 * torch.eye(64, dtype=torch.float64))
        weights.append(len(xk))
    w = torch.tensor(weights, dtype=torch.float64)
    mix = sd.GaussianMixture(torch.stack(means), torch.stack(covs), w / w.sum())
    test, _ = digits("test")
    return mix, test.reshape(len(test), -1).double()


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def cost_rows(batch: int, seed: int) -> list[dict]:
    sde = sd.VPSDE()
    rows = []
    problems = [("imbalanced_2d", sd.imbalanced_2d(), None, "exact"),
                ("anisotropic_64d", sd.anisotropic_64d(), None, "hutchinson")]
    mix, test = digits_mixture()
    problems.append(("digits_8x8", mix, test[:batch], "hutchinson"))
    for name, target, data, trace in problems:
        x = data if data is not None else target.sample(batch, generator=_gen(seed), dtype=torch.float64)
        score = target.score_fn(sde)
        discrete = name.startswith("digits")
        d = x.shape[1]
        conv = (1 / (d * math.log(2))) if discrete else 1.0
        unit = "bits/dim" if discrete else "nats"
        if discrete:
            # exact answer for the dequantised levels: E_u -log2 p(y)/d + log2(17/2), by Monte Carlo over u
            k = ((x + 1) * 8).round()
            u = torch.rand(256, *x.shape, generator=_gen(seed + 9), dtype=torch.float64)
            y = -1 + (k + u) * (2 / 17)
            logp = target.log_prob(y.reshape(-1, d)).reshape(256, -1).mean(0)
            exact = -logp / (d * math.log(2)) + math.log2(17 / 2)
        else:
            exact = target.log_prob(x)

        def ll(s, trace=trace, x=x, score=score, discrete=discrete):
            kw = dict(trace=trace, generator=_gen(s), return_nfe=True, rtol=1e-5, atol=1e-5)
            if discrete:
                return sd.bits_per_dim(sde, score, x, n_bins=17, **kw)
            return sd.log_likelihood(sde, score, x, **kw)

        ll(seed)  # warm-up
        reps = 4 if trace == "hutchinson" else 1
        outs, secs = zip(*(_timed(lambda s=s: ll(seed + s)) for s in range(reps)), strict=True)
        vals = torch.stack([o[0] for o in outs])
        ms_ll = 1e3 * sum(secs) / reps / batch
        se_ll = float(vals.std(0).mean()) if reps > 1 else 0.0
        rows.append({"problem": name, "d": d, "method": f"log_likelihood ({trace})", "unit": unit,
                     "nfe": outs[0][1], "ms_per_sample": ms_ll, "stderr": se_ll,
                     "abs_err": float((vals.mean(0) - exact).abs().mean())})

        def bound(n, s, x=x, score=score, discrete=discrete):
            kw = dict(n_bins=17) if discrete else {}
            return sd.elbo(sde, score, x, n_samples=n, generator=_gen(s), **kw)

        bound(8, seed)  # warm-up
        _, sec = _timed(lambda: bound(64, seed))
        n_eq = max(2, 2 * round(64 * (ms_ll * batch / 1e3) / sec / 2))
        res, sec = _timed(lambda n=n_eq: bound(n, seed + 1))
        est = res.bits_per_dim if discrete else res.elbo
        rows.append({"problem": name, "d": d, "method": f"elbo (n_samples={n_eq})", "unit": unit,
                     "nfe": res.nfe, "ms_per_sample": 1e3 * sec / batch,
                     "stderr": float(res.stderr.mean()) * conv, "abs_err": float((est - exact).abs().mean())})
    return rows


def tightness_rows(batch: int, seed: int) -> list[dict]:
    sde = sd.VPSDE()
    target = sd.imbalanced_2d()
    x = target.sample(batch, generator=_gen(seed), dtype=torch.float64)
    score = target.score_fn(sde)
    log_pT = target.log_prob_fn(sde)
    rows = [{"bound": "exact log p", "value": float(target.log_prob(x).mean()), "stderr": 0.0, "nfe": 0}]
    res = sd.elbo(sde, score, x, n_samples=512, prior_log_prob=lambda xT: log_pT(xT, sde.T),
                  generator=_gen(seed + 1))
    rows.append({"bound": "elbo (exact p_T)", "value": res.mean()[0], "stderr": res.mean()[1], "nfe": res.nfe})
    res = sd.elbo(sde, score, x, n_samples=512, generator=_gen(seed + 2))
    rows.append({"bound": "elbo (N(0, I) prior)", "value": res.mean()[0], "stderr": res.mean()[1], "nfe": res.nfe})
    for variance in ("beta", "beta_tilde"):
        for N in (25, 100, 1000):
            res = sd.ddpm_elbo(sde, score, x, steps=N, variance=variance, n_samples=16, generator=_gen(seed + N))
            rows.append({"bound": f"ddpm_elbo N={N} ({variance})", "value": res.mean()[0],
                         "stderr": res.mean()[1], "nfe": res.nfe})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("cost", "tightness", "all"), default="all")
    parser.add_argument("--batch", type=int, default=32, help="points per problem (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {"meta": {"sde": "VPSDE()", "batch": args.batch, "threads": args.threads, "torch": torch.__version__}}
    if args.part in ("cost", "all"):
        rows = cost_rows(args.batch, args.seed)
        out["cost"] = rows
        head = f"{'problem':<17}{'method':<28}{'unit':<10}{'nfe':>8}{'ms/sample':>11}{'stderr':>10}{'|err|':>10}"
        print(head)
        print("-" * len(head))
        for r in rows:
            print(f"{r['problem']:<17}{r['method']:<28}{r['unit']:<10}{r['nfe']:>8d}{r['ms_per_sample']:>11.2f}"
                  f"{r['stderr']:>10.4f}{r['abs_err']:>10.4f}")
        print()
    if args.part in ("tightness", "all"):
        rows = tightness_rows(args.batch, args.seed)
        out["tightness"] = rows
        head = f"{'imbalanced_2d, exact score':<30}{'mean (nats)':>12}{'stderr':>9}{'gap':>9}{'nfe':>8}"
        print(head)
        print("-" * len(head))
        truth = rows[0]["value"]
        for r in rows:
            print(f"{r['bound']:<30}{r['value']:>12.4f}{r['stderr']:>9.4f}{truth - r['value']:>9.4f}{r['nfe']:>8d}")
        print()
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
