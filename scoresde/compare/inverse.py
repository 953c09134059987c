r"""The inverse-problem mode of the harness: posterior samplers against exact posteriors.

For every named inverse problem (:func:`scoresde.inverse.problem_names`: a Gaussian-mixture prior,
a linear measurement and the exact posterior of :meth:`~scoresde.GaussianMixture.posterior`),
every method of :func:`scoresde.posterior_sample` and every budget :math:`B` of score evaluations
*per returned sample* (``nfe_per_sample``: SMC with ``particles = n`` and :math:`N` steps costs
:math:`N`; RePaint's jumps cost their reverse steps), :func:`run_inverse_comparison` draws ``n``
posterior samples with the exact prior score and scores them with
:func:`scoresde.metrics.evaluate` against an exact posterior sample: sliced Wasserstein, MMD,
mode weights, mode means and covariances, beside the wall time. The noise floor is the same
evaluation of a second exact posterior sample.

The mode statistics are taken over the posterior components that carry at least ``10 / n`` of the
mass (renormalised): a component expected to hold fewer than ten of the ``n`` samples has no
measurable mean or covariance. The samples and the reference still come from the full posterior.

Records have the keys of :data:`~scoresde.compare.RECORD_KEYS` (``target`` is the problem,
``sampler`` the method, ``nfe`` the per-sample NFE) plus ``nfe_calls`` (batched score calls) and
``vjp`` (backward passes), so :func:`~scoresde.compare.to_markdown` and
:func:`~scoresde.compare.save` print and draw them; :func:`save_inverse` adds the figure of the
samples of each 2-D problem against its exact posterior.

Examples
--------
>>> from scoresde.compare.inverse import run_inverse_comparison
>>> recs = run_inverse_comparison(problems=["bimodal_2d"], methods=["smc", "dps"], nfe=(20,), n=300)
>>> [(r["sampler"], r["steps"], r["nfe"]) for r in recs]
[('smc', 20, 20), ('dps', 20, 20)]
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

from .. import metrics as _metrics
from .._checks import check_int, derive_seed
from ..inverse import METHODS, make_problem, method_cost, posterior_sample, problem_names
from ..metrics import METRICS
from ..targets import GaussianMixture
from .noise import RANKED, mean_and_spread, rank, replicate_seed
from .records import new_record
from .sweep import _resolve_budgets, _resolve_sde

__all__ = ["INVERSE_NFE", "run_inverse_comparison", "steps_for_budget", "save_inverse"]

#: Default budgets (score evaluations per returned sample).
INVERSE_NFE: tuple[int, ...] = (20, 50, 100, 200)


def steps_for_budget(method: str, budget: int, **options) -> int:
    """The most steps whose cost per sample (:func:`~scoresde.inverse.method_cost`) fits ``budget``; 0 if none.

    Examples
    --------
    >>> from scoresde.compare.inverse import steps_for_budget
    >>> steps_for_budget("smc", 100), steps_for_budget("repaint", 100)
    (100, 10)
    """
    budget = check_int("budget", budget)
    if method != "repaint":
        return budget
    steps = 0
    while method_cost(method, steps + 1, **options)["nfe"] <= budget:
        steps += 1
    return steps


def _significant(post: GaussianMixture, n: int) -> GaussianMixture:
    keep = post.weights >= 10.0 / n
    if not bool(keep.any()):
        keep = post.weights == post.weights.max()
    w = post.weights[keep]
    return GaussianMixture(post.means[keep], post.covariances[keep], w / w.sum())


def _evaluate(x, post, scored, seed, n_projections) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ref = post.sample(x.shape[0], generator=gen, dtype=torch.float64)
    res = _metrics.evaluate(x.reshape(x.shape[0], -1).to(torch.float64), scored, reference=ref,
                            n_projections=n_projections, generator=gen)
    return {k: res[k] for k in METRICS}


def run_inverse_comparison(
    problems: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    nfe: Sequence[int] = INVERSE_NFE,
    n: int = 1000,
    sde="vp",
    seed: int = 0,
    seeds: int = 1,
    progress: bool = False,
    *,
    keep_samples: bool = False,
    n_projections: int = 128,
    options: dict | None = None,
) -> list[dict]:
    r"""Every method on every named inverse problem at every per-sample NFE budget.

    Parameters
    ----------
    problems : list of str, optional
        Names from :func:`~scoresde.inverse.problem_names` (default all).
    methods : list of str, optional
        Names from :func:`~scoresde.inverse.methods` (default all).
    nfe : sequence of int
        Budgets of score evaluations per returned sample.
    n : int
        Samples per run (>= 10).
    sde : str or LinearSDE
    seed, seeds : int
        Master seed and repetitions (each with its own sampling noise, exact reference and
        noise floor); metrics are means with their spread over the repetitions.
    progress : bool
        A tqdm bar over the runs.
    keep_samples : bool
        Keep the samples of the largest budget of each (problem, method) under ``"samples"``.
    n_projections : int
        Directions of the sliced Wasserstein distance.
    options : dict, optional
        ``method -> dict`` of extra options of :func:`~scoresde.posterior_sample`.

    Returns
    -------
    list of dict
        One record per (problem, method, budget), ranked by :func:`~scoresde.compare.rank`.
    """
    problems = problem_names() if problems is None else list(problems)
    for p in problems:
        make_problem(p)  # raises, naming the valid ones
    methods = list(METHODS) if methods is None else list(methods)
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"methods must contain names from {', '.join(METHODS)}, got {m!r}")
    budgets = _resolve_budgets(nfe)
    n = check_int("n", n, minimum=10)
    seed = check_int("seed", seed, minimum=0)
    seeds = check_int("seeds", seeds)
    n_projections = check_int("n_projections", n_projections)
    sde_obj, sde_label = _resolve_sde(sde)
    options = dict(options or {})
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(problems) * len(methods) * len(budgets) * seeds, desc="inverse",
                   leave=False)
    records: list[dict] = []
    try:
        for pname in problems:
            pb = make_problem(pname)
            post = pb.posterior
            scored = _significant(post, n)
            score_fn = pb.prior.score_fn(sde_obj)
            reps = [replicate_seed(seed, i) for i in range(seeds)]
            floors = []
            for rep in reps:
                exact = post.sample(n, generator=torch.Generator().manual_seed(
                    derive_seed(rep, pname, "floor")), dtype=torch.float64)
                floors.append(_evaluate(exact, post, scored, derive_seed(rep, pname, "floor-ref"),
                                        n_projections))
            floor, floor_spread = mean_and_spread(floors)
            for method in methods:
                opts = dict(options.get(method, {}))
                cost_opts = {k: v for k, v in opts.items() if k in ("jump_length", "jump_n_sample")}
                last = None
                for budget in budgets:
                    steps = steps_for_budget(method, budget, **cost_opts)
                    base = dict(dim=pb.dim, sde=sde_label, n=n, seed=seed, seeds=seeds,
                                noise_floor=floor, noise_floor_spread=floor_spread,
                                mode="inverse", options=opts or None)
                    if steps < 1:
                        records.append(new_record(pname, method, budget, status="skipped",
                                                  reason=f"budget {budget} is below the cost of "
                                                  "one step", **base))
                        if bar is not None:
                            bar.update(seeds)
                        continue
                    runs, wall, out = [], [], None
                    try:
                        for rep in reps:
                            gen = torch.Generator().manual_seed(derive_seed(rep, pname, method))
                            start = time.perf_counter()
                            out = posterior_sample(sde_obj, score_fn, pb.A, pb.y, pb.noise_std,
                                                   (n, pb.dim), method=method, steps=steps,
                                                   generator=gen, dtype=torch.float64, **opts)
                            wall.append(time.perf_counter() - start)
                            runs.append(_evaluate(out.samples, post, scored,
                                                  derive_seed(rep, pname, method, budget, "ref"),
                                                  n_projections))
                            if bar is not None:
                                bar.update(1)
                    except Exception as exc:  # noqa: BLE001 - a failing method is a result
                        records.append(new_record(pname, method, budget, status="error",
                                                  reason=f"{type(exc).__name__}: {exc}",
                                                  steps=steps, **base))
                        continue
                    mean, spread = mean_and_spread(runs)
                    rec = new_record(pname, method, budget, steps=steps,
                                     nfe=int(round(out.nfe_per_sample)), nfe_calls=out.nfe,
                                     vjp=out.vjp, wall_time_s=math.fsum(wall) / len(wall),
                                     spread=spread, **base)
                    rec.update(mean)
                    records.append(rec)
                    last = (rec, out.samples)
                if keep_samples and last is not None:
                    last[0]["samples"] = last[1].detach().cpu()
    finally:
        if bar is not None:
            bar.close()
    return rank(records, RANKED)


def save_inverse(records: Sequence[dict], out_dir, *, figures: bool = True, seed: int = 0) -> dict:
    """:func:`~scoresde.compare.save` plus, per 2-D problem with kept samples, ``posterior_<problem>.png``.

    The extra figure shows an exact posterior sample in the first panel and each method's
    samples (largest budget) against it (:func:`scoresde.plotting.plot_samples`).
    """
    from .records import save

    paths = save(records, out_dir, figures=figures)
    if not figures:
        return paths
    from pathlib import Path

    from ..plotting import plot_samples

    for pname in dict.fromkeys(r["target"] for r in records):
        kept = {r["sampler"]: r["samples"] for r in records
                if r["target"] == pname and isinstance(r.get("samples"), torch.Tensor)}
        if not kept:
            continue
        pb = make_problem(pname)
        n_ref = max(int(s.shape[0]) for s in kept.values())
        ref = pb.posterior.sample(n_ref, generator=torch.Generator().manual_seed(
            derive_seed(seed, pname, "plot")))
        fig = plot_samples(kept, reference=ref, title=f"{pname}: exact posterior vs each method")
        path = Path(out_dir) / f"posterior_{pname}.png"
        fig.savefig(path, dpi=110)
        paths["figures"].append(path)
    return paths
