r"""The sweep: every target, every sampler, every NFE budget, scored against exact samples.

:func:`run_comparison` draws ``n`` samples with :func:`scoresde.sample` for every (target,
sampler, budget) and scores them with :func:`scoresde.metrics.evaluate` against a fresh exact
sample of the target; see :mod:`scoresde.compare` for how budgets become steps or tolerances
and how the random streams are derived.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .. import metrics as _metrics
from .._checks import check_int, check_positive, derive_seed
from ..metrics import METRICS
from ..samplers import Sampler, sample
from ..samplers import names as sampler_names
from ..sde import SDE_NAMES, LinearSDE, make_sde
from ..targets import GaussianMixture, make_target, target_names
from .cost import SamplerCost, measure_cost, resolve  # resolve: the samplers' (C3)
from .noise import RANKED, mean_and_spread, rank, replicate_seed
from .records import new_record

__all__ = ["DEFAULT_NFE", "TOLERANCES", "quick_preset", "run_comparison"]

#: Default sweep of NFE budgets.
DEFAULT_NFE: tuple[int, ...] = (5, 10, 20, 50, 100, 200, 500, 1000)

#: Tolerance ladder ``rtol = atol`` for adaptive samplers: ``10^-1`` to ``10^-8``, 3 per decade.
TOLERANCES: tuple[float, ...] = tuple(float(f"{10.0 ** (-1 - k / 3):.3g}") for k in range(22))


def quick_preset() -> dict:
    """Keyword arguments of :func:`run_comparison` for a run of a few seconds on 2 CPU cores.

    One target (``imbalanced_2d``), six samplers (DDPM included to show a skipped budget),
    budgets 10, 20 and 50, ``n = 1000``. A fresh dict on every call.
    """
    return {
        "targets": ["imbalanced_2d"],
        "samplers": ["euler_maruyama", "heun", "ddim", "pc", "ode", "ddpm"],
        "nfe": (10, 20, 50),
        "n": 1000,
    }


# --------------------------------------------------------------------------------------
# the sweep
# --------------------------------------------------------------------------------------
class _OverBudget(Exception):
    """Raised by :class:`_CappedScore` once the score has been called more than ``cap`` times."""


class _CappedScore:
    """Stops an adaptive solve as soon as it exceeds the largest budget of the sweep."""

    def __init__(self, score_fn, cap: int):
        self.score_fn = score_fn
        self.cap = cap
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        if self.calls > self.cap:
            raise _OverBudget
        return self.score_fn(x, t)


@dataclass
class _Run:
    """Outcome of one sampling call (before evaluation)."""

    nfe: float  # math.inf when the run exceeded the cap
    samples: torch.Tensor | None = None
    info: dict | None = None
    error: str | None = None
    metrics: dict | None = None


@dataclass
class _Context:
    target_name: str
    target: GaussianMixture
    sde: LinearSDE
    sde_label: str
    score_fn: Callable
    n: int
    seed: int
    eps: float
    device: torch.device
    dtype: torch.dtype
    n_projections: int
    memory: str
    floor: dict
    mmd_n: int | None = None

    def base(self, label: str, solver: Sampler) -> dict:
        return {
            "dim": self.target.dim,
            "sde": self.sde_label,
            "solver": repr(solver),
            "n": self.n,
            "seed": self.seed,
            "device": str(self.device),
            "noise_floor": self.floor,
        }


def _run_once(ctx: _Context, solver: Sampler, steps: int, cap: int | None = None) -> _Run:
    from .profiling import timed_call  # /proc and malloc_trim load only when a run is timed

    score = ctx.score_fn if cap is None else _CappedScore(ctx.score_fn, cap)
    gen = torch.Generator(device=ctx.device).manual_seed(derive_seed(ctx.seed, ctx.target_name))

    def call():
        return sample(ctx.sde, score, (ctx.n, ctx.target.dim), sampler=solver, steps=steps,
                      generator=gen, eps=ctx.eps, device=ctx.device, dtype=ctx.dtype)

    try:
        out, info = timed_call(call, ctx.device, ctx.memory)
    except _OverBudget:
        return _Run(nfe=math.inf)
    except Exception as exc:  # noqa: BLE001 - any failure of a sampler is a result
        return _Run(nfe=math.nan, error=f"{type(exc).__name__}: {exc}")
    return _Run(nfe=out.nfe, samples=out.samples.detach(), info=info)


def _evaluate(ctx: _Context, run: _Run, *keys) -> None:
    """Fill ``run.metrics`` (or ``run.error``) against a fresh exact sample."""
    if run.metrics is not None or run.error is not None:
        return
    gen = torch.Generator(device=ctx.device).manual_seed(
        derive_seed(ctx.seed, ctx.target_name, "eval", *keys))
    try:
        reference = ctx.target.sample(ctx.n, generator=gen, device=ctx.device,
                                      dtype=run.samples.dtype)
        res = _metrics.evaluate(run.samples, ctx.target, reference=reference,
                                n_projections=ctx.n_projections, generator=gen, mmd_n=ctx.mmd_n)
    except Exception as exc:  # noqa: BLE001
        run.error = f"evaluation failed: {type(exc).__name__}: {exc}"
        return
    run.metrics = {k: res[k] for k in METRICS}


def _finish(ctx, base, label, budget, run: _Run, **fields) -> dict:
    if run.error is not None:
        return new_record(ctx.target_name, label, budget, **base, status="error",
                          reason=run.error, **fields)
    rec = new_record(ctx.target_name, label, budget, **base, nfe=int(run.nfe), **fields)
    rec.update(run.info)
    rec.update(run.metrics)
    return rec


def _skip(ctx, base, label, budget, reason, **fields) -> dict:
    return new_record(ctx.target_name, label, budget, **base, status="skipped", reason=reason,
                      **fields)


def _sweep_fixed(ctx, label, solver, cost: SamplerCost, budgets, base, tick) -> list[tuple]:
    out = []
    for budget in budgets:
        steps = cost.steps_for(budget)
        fields = {"nfe_per_step": cost.per_step}
        if steps < 1:
            out.append((_skip(ctx, base, label, budget,
                              f"budget {budget} is below the cost of one step "
                              f"({cost.overhead + cost.per_step} NFE)", **fields), None))
            tick()
            continue
        try:
            solver.grid(ctx.sde, steps, ctx.eps, "uniform")
        except (TypeError, ValueError) as exc:
            out.append((_skip(ctx, base, label, budget,
                              f"cannot honour budget {budget} (steps={steps}): {exc}",
                              steps=steps, **fields), None))
            tick()
            continue
        run = _run_once(ctx, solver, steps)
        _evaluate(ctx, run, label, budget)
        out.append((_finish(ctx, base, label, budget, run, steps=steps, **fields), run))
        tick()
    return out


def _with_tolerance(solver: Sampler, tol: float) -> Sampler:
    variant = copy.copy(solver)
    variant.rtol = tol
    variant.atol = tol
    return variant


def _sweep_adaptive(ctx, label, solver, budgets, base, tolerances, tick) -> list[tuple]:
    if not (hasattr(solver, "rtol") and hasattr(solver, "atol")):
        reason = (f"adaptive sampler {type(solver).__name__} has no rtol/atol to sweep "
                  "towards a budget")
        out = []
        for budget in budgets:
            out.append((_skip(ctx, base, label, budget, reason), None))
            tick()
        return out
    cap = max(budgets)
    runs: list[tuple[float, _Run]] = []
    used: dict[int, int] = {}  # id(run) -> first budget it was reported for
    idx = 0
    out = []
    for budget in budgets:
        while idx < len(tolerances) and (not runs or not runs[-1][1].nfe > budget):
            tol = tolerances[idx]
            idx += 1
            runs.append((tol, _run_once(ctx, _with_tolerance(solver, tol), 1, cap)))
        fits = [(tol, r) for tol, r in runs if r.error is None and r.nfe <= budget]
        if not fits:
            ran = [(tol, r) for tol, r in runs if r.error is None]
            if ran:
                tol0, r0 = min(ran, key=lambda p: p[1].nfe)
                need = f"{int(r0.nfe)}" if math.isfinite(r0.nfe) else f"more than {cap}"
                reason = (f"budget {budget} too small for the adaptive solver: it needs {need} NFE "
                          f"at its loosest tolerance rtol=atol={tol0:g}")
                out.append((_skip(ctx, base, label, budget, reason), None))
            else:
                out.append((new_record(ctx.target_name, label, budget, **base, status="error",
                                       reason=runs[0][1].error if runs else "no tolerance given"),
                            None))
            tick()
            continue
        tol, run = max(fits, key=lambda p: (p[1].nfe, -p[0]))
        _evaluate(ctx, run, label, "tol", tol)
        note = None
        if id(run) in used:
            note = f"same run as budget {used[id(run)]} (no tighter tolerance fits)"
        else:
            used[id(run)] = budget
        out.append((_finish(ctx, base, label, budget, run, options={"rtol": tol, "atol": tol},
                            note=note), run))
        tick()
    return out


def _combine(reps: list[dict], seed: int, floor: dict, floor_spread: dict | None) -> dict:
    """One record from the records of the repetitions: mean and spread of the metrics."""
    seeds = len(reps)
    bad = next(((i, r) for i, r in enumerate(reps) if r["status"] != "ok"), None)
    if bad is not None:  # every seed must run for the record to be ok
        i, out = bad[0], dict(bad[1])
        if i > 0:
            out["reason"] = f"seed {i + 1} of {seeds}: {out['reason']}"
    else:
        out = dict(reps[0])
        mean, spread = mean_and_spread([{k: r[k] for k in METRICS} for r in reps])
        out.update(mean, spread=spread)
        times = [r["wall_time_s"] for r in reps]
        if None not in times:
            out["wall_time_s"] = math.fsum(times) / seeds
        for key in ("peak_mem_bytes", "tracemalloc_peak_bytes"):
            values = [r[key] for r in reps]
            if None not in values:
                out[key] = max(values)
        notes = [out["note"]] if out.get("note") else []
        nfes = [r["nfe"] for r in reps]
        if len(set(nfes)) > 1:  # an adaptive solver, or a tolerance per seed
            out["nfe"] = max(nfes)
            notes.append(f"NFE {min(nfes)}-{max(nfes)} over the seeds")
        tols = [(r.get("options") or {}).get("rtol") for r in reps]
        if len(set(tols)) > 1:
            notes.append("rtol per seed: " + ", ".join(f"{t:g}" for t in tols))
        out["note"] = "; ".join(notes) or None
    out.update(seed=seed, seeds=seeds, noise_floor=floor, noise_floor_spread=floor_spread)
    return out


def _resolve_targets(targets) -> dict[str, GaussianMixture]:
    if targets is None:
        return {name: make_target(name) for name in target_names()}
    if isinstance(targets, str):
        targets = [targets]
    if isinstance(targets, Mapping):
        out = {}
        for name, tg in targets.items():
            if not isinstance(tg, GaussianMixture):
                raise TypeError(
                    f"targets[{name!r}] must be a GaussianMixture, got {type(tg).__name__}")
            out[str(name)] = tg
    elif isinstance(targets, Sequence):
        out = {}
        for name in targets:
            if not isinstance(name, str):
                raise TypeError(f"targets must contain target names, got {type(name).__name__}")
            out[name] = make_target(name)  # raises, listing the valid names
    else:
        raise TypeError(
            "targets must be None, a target name, a list of names or a mapping name -> "
            f"GaussianMixture, got {type(targets).__name__}")
    if not out:
        raise ValueError("targets must not be empty")
    return out


def _resolve_samplers(samplers) -> dict[str, Sampler]:
    if samplers is None:
        samplers = sampler_names()
    if isinstance(samplers, str):
        samplers = [samplers]
    if isinstance(samplers, Mapping):
        out = {str(label): resolve(spec, {}) for label, spec in samplers.items()}
    elif isinstance(samplers, Sequence):
        out = {}
        for spec in samplers:
            if not isinstance(spec, str):
                raise TypeError(
                    "samplers must contain sampler names (use a mapping label -> Sampler for "
                    f"instances), got {type(spec).__name__}")
            out[spec] = resolve(spec, {})
    else:
        raise TypeError(
            "samplers must be None, a sampler name, a list of names or a mapping label -> "
            f"sampler, got {type(samplers).__name__}")
    if not out:
        raise ValueError("samplers must not be empty")
    return out


def _resolve_budgets(nfe) -> list[int]:
    if isinstance(nfe, (str, bytes)) or not isinstance(nfe, Sequence):
        raise TypeError(f"nfe must be a sequence of positive ints, got {type(nfe).__name__}")
    if len(nfe) == 0:
        raise ValueError("nfe must contain at least one budget")
    return sorted({check_int("nfe", b, minimum=1) for b in nfe})


def _resolve_sde(sde) -> tuple[LinearSDE, str]:
    if isinstance(sde, str):
        return make_sde(sde), sde
    if isinstance(sde, LinearSDE):
        return sde, repr(sde)
    raise TypeError(
        f"sde must be one of {', '.join(SDE_NAMES)} or a LinearSDE (the targets need closed-form "
        f"marginals), got {type(sde).__name__}")


def run_comparison(
    targets=None,
    samplers=None,
    nfe: Sequence[int] = DEFAULT_NFE,
    n: int = 2000,
    sde="vp",
    seed: int = 0,
    progress: bool = False,
    *,
    keep_samples: bool = False,
    eps: float = 1e-3,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    n_projections: int = 256,
    tolerances: Sequence[float] = TOLERANCES,
    memory: str = "rss",
    seeds: int = 1,
    mmd_n: int | None = None,
) -> list[dict]:
    r"""Sample every target with every sampler at every NFE budget and score the samples.

    Parameters
    ----------
    targets : None, str, list of str or mapping str -> GaussianMixture
        Named reference targets (default: all of :func:`~scoresde.target_names`) or your own.
    samplers : None, str, list of str or mapping str -> (str or Sampler)
        Sampler names (default: all of :func:`scoresde.samplers.names`), or labels mapped to
        names or configured instances (e.g. ``{"pc_snr0.05": PredictorCorrector(snr=0.05)}``).
    nfe : sequence of int
        Budgets of score evaluations (each >= 1).
    n : int
        Samples per run (>= 2).
    sde : str or LinearSDE
        One of :data:`SDE_NAMES` or an SDE object with closed-form marginals.
    seed : int
        Master seed (>= 0); see :mod:`scoresde.compare`.
    progress : bool
        Show a tqdm progress bar over the runs.
    keep_samples : bool
        Keep, under the key ``"samples"`` (a CPU tensor), the samples of the largest budget that
        ran for each (target, sampler) — for :func:`scoresde.plotting.plot_samples`.
    eps : float
        End time of the samplers (DDPM ignores it and ends at 0).
    device : torch.device or str, optional
        Where to sample (default CPU).
    dtype : torch.dtype, optional
        Of the samples (default: torch's default dtype).
    n_projections : int
        Directions of the sliced Wasserstein distance.
    tolerances : sequence of float
        The ``rtol = atol`` ladder of adaptive samplers (default :data:`TOLERANCES`).
    memory : {"rss", "tracemalloc", "none"}
        How to measure the peak memory of each sampling call (see
        :func:`~scoresde.compare.timed_call`).
    seeds : int
        Repetitions of every run (>= 1), each with its own master seed
        (:func:`~scoresde.compare.noise.replicate_seed`: its own prior draw, sampling noise,
        exact reference sample and noise floor). Every metric is then the mean over the seeds,
        with their spread, and :func:`~scoresde.compare.noise.rank` marks which differences
        are within noise. The default 1 is the fastest (no spread, nothing marked, exactly the
        run of ``seed``); use 3 or more to rank samplers (``scoresde compare`` uses 3).
    mmd_n : int, optional
        Compute the MMD (of every run and of the noise floor) on at most this many points of
        each sample (:func:`~scoresde.metrics.evaluate`); every other metric uses all ``n``.
        The MMD is quadratic in ``n``: at ``n = 20000`` it dominates the evaluation.

    Returns
    -------
    list of dict
        One record per (target, sampler, budget), with the keys of :data:`RECORD_KEYS`:
        ``status`` is ``"ok"``, ``"skipped"`` or ``"error"`` (``reason`` says why); ``steps``,
        ``nfe`` (actual), ``nfe_per_step``, ``options`` (the tolerances of an adaptive run),
        ``wall_time_s``, ``peak_mem_bytes`` and ``mem_method``, ``tracemalloc_peak_bytes``, the
        metrics of :data:`METRICS` (``None`` unless ``ok``; ``inf`` where a metric is infinite)
        and ``noise_floor`` (the :func:`~scoresde.metrics.noise_floor` dict of the target at
        ``n``), all means over the ``seeds`` repetitions; ``seeds``; ``spread`` and
        ``noise_floor_spread`` (sample standard deviations over the seeds, ``None`` for one
        seed); ``noise_marks`` (:func:`~scoresde.compare.noise.rank` of every metric but
        ``mean_log_density``). A record is ``ok`` only if every seed ran; the NFE of an adaptive
        solver, which can differ between seeds, is the largest (``note`` gives the range).
    """
    target_map = _resolve_targets(targets)
    sampler_map = _resolve_samplers(samplers)
    budgets = _resolve_budgets(nfe)
    n = check_int("n", n, minimum=2)
    seed = check_int("seed", seed, minimum=0)
    seeds = check_int("seeds", seeds)
    sde_obj, sde_label = _resolve_sde(sde)
    eps = check_positive("eps", eps)
    n_projections = check_int("n_projections", n_projections)
    if mmd_n is not None:
        mmd_n = check_int("mmd_n", mmd_n, minimum=2)
    if isinstance(tolerances, (str, bytes)) or not isinstance(tolerances, Sequence):
        raise TypeError(f"tolerances must be a sequence of floats, got {type(tolerances).__name__}")
    tols = sorted({check_positive("tolerances", t) for t in tolerances}, reverse=True)
    from .profiling import check_memory_mode

    check_memory_mode(memory)
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype if dtype is not None else torch.get_default_dtype()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(target_map) * len(sampler_map) * len(budgets) * seeds,
                   desc="compare", leave=False)

    records: list[dict] = []
    try:
        for tname, target in target_map.items():
            score_fn = target.score_fn(sde_obj)
            ctxs = []
            for i in range(seeds):
                rep = replicate_seed(seed, i)
                floor = _metrics.noise_floor(
                    target, n, n_projections=n_projections, mmd_n=mmd_n,
                    generator=torch.Generator().manual_seed(derive_seed(rep, tname, "floor")))
                ctxs.append(_Context(tname, target, sde_obj, sde_label, score_fn, n, rep, eps,
                                     device, dtype, n_projections, memory,
                                     {k: floor[k] for k in METRICS}, mmd_n))
            floor_mean, floor_spread = mean_and_spread([c.floor for c in ctxs])
            for label, solver in sampler_map.items():

                def tick(label=label, tname=tname, count=1):
                    if bar is not None:
                        bar.update(count)
                        bar.set_postfix(target=tname, sampler=label)

                try:
                    cost = measure_cost(sde_obj, score_fn, solver, target.dim, eps=eps,
                                        device=device, dtype=dtype)
                except (TypeError, ValueError) as exc:
                    reason = f"not applicable: {exc}"
                    reps = [[(_skip(c, c.base(label, solver), label, budget, reason), None)
                             for budget in budgets] for c in ctxs]
                    tick(count=len(budgets) * seeds)
                else:
                    reps = [_sweep_adaptive(c, label, solver, budgets, c.base(label, solver), tols,
                                            tick) if cost.adaptive else
                            _sweep_fixed(c, label, solver, cost, budgets, c.base(label, solver),
                                         tick) for c in ctxs]
                combined = [_combine([rep[j][0] for rep in reps], seed, floor_mean, floor_spread)
                            for j in range(len(budgets))]
                if keep_samples:
                    ok = [(rec, run) for rec, (_, run) in zip(combined, reps[0], strict=True)
                          if rec["status"] == "ok" and run is not None]
                    if ok:
                        ok[-1][0]["samples"] = ok[-1][1].samples.cpu()
                records.extend(combined)
    finally:
        if bar is not None:
            bar.close()
    return rank(records, RANKED)
