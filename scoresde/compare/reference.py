r"""Reference-solution mode: samplers compared on a model without exact scores.

A pretrained network has no closed-form score to measure a sampler against. The standard
yardstick of fast solvers on such models (Lu et al. 2022, §6; Zhang & Chen 2023, §5; Karras et
al. 2022, §3) is a *reference solution* of the same equations:

- **the same probability-flow ODE from the same prior draws**, solved to high accuracy (an
  adaptive Dormand–Prince 5(4) solve at a tight tolerance). A deterministic sampler's output
  :math:`\hat x` from the prior draws :math:`x_T` is compared with the reference solution
  :math:`x^\star = \Phi_{T \to \epsilon}(x_T)` by the root-mean-square error in data space,

  .. math:: \mathrm{RMSE} = \Big(\frac{1}{n d}\sum_{i=1}^{n}\sum_{j=1}^{d}
            (\hat x_{ij} - x^\star_{ij})^2\Big)^{1/2},

  which isolates the discretisation error (both see the same network, the same :math:`x_T` and
  the same end time :math:`\epsilon`), and goes to 0 as the NFE grows at the solver's order;
- **a many-step SDE sample** (Euler–Maruyama on the reverse SDE, 1000 steps by default, from
  its own prior draws) as a reference *in distribution*: every sampler, stochastic ones
  included, gets the sliced Wasserstein distance (SW2) and the MMD of its samples to it
  (:func:`scoresde.metrics.sliced_wasserstein`, :func:`scoresde.metrics.mmd`).

The noise floor of each record says what "0" means at this ``n``: for the RMSE, the accuracy of
the reference itself (the RMSE between solves at ``ode_tol`` and ``ode_tol / 10``; the tighter
one is the reference), for SW2 and MMD one SDE reference sample against a second, independent
one. Samples are mapped to data space with ``to_data`` before any metric (e.g. the
de-standardisation :func:`scoresde.training.from_model_space` of a scoresde checkpoint).

:func:`run_reference_comparison` sweeps samplers over NFE budgets as
:func:`~scoresde.compare.run_comparison` does (budgets become steps through the declared costs,
:func:`~scoresde.compare.measure_cost`; adaptive samplers run along a tolerance ladder) and
returns records of :mod:`~scoresde.compare.records` (``mode="reference"``, ``error`` = RMSE,
``sw2``, ``mmd``), so :func:`~scoresde.compare.to_markdown`, :func:`~scoresde.compare.save` and
the figures take them as they are. Other producers (diffusers' own schedulers in
``benchmarks/bench_interop.py``) score their samples against the same
:class:`ReferenceSolution` with :func:`reference_metrics`.

Examples
--------
>>> import scoresde as sd
>>> from scoresde.compare.reference import run_reference_comparison
>>> sde = sd.VPSDE()
>>> score_fn = sd.imbalanced_2d().score_fn(sde)       # any model: exact scores here
>>> recs = run_reference_comparison(sde, score_fn, (200, 2), samplers=["ddim"], nfe=(10, 40),
...                                 sde_steps=200)
>>> [(r["sampler"], r["nfe"], r["status"]) for r in recs]
[('ddim', 10, 'ok'), ('ddim', 40, 'ok')]
>>> recs[1]["error"] < recs[0]["error"]                # RMSE to the ODE reference falls
True

References
----------
Lu et al. (2022), *DPM-Solver: a fast ODE solver for diffusion probabilistic model sampling in
around 10 steps*, NeurIPS. Zhang & Chen (2023), *Fast sampling of diffusion models with
exponential integrator*, ICLR. Karras et al. (2022), *Elucidating the design space of
diffusion-based generative models*, NeurIPS. Dormand & Prince (1980), *A family of embedded
Runge–Kutta formulae*, J. Comput. Appl. Math. 6(1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .. import metrics as _metrics
from .._checks import check_int, check_positive, check_shape, derive_seed
from ..metrics import REFERENCE_DESCRIPTIONS
from ..samplers import Sampler, resolve, sample
from ..sde import SDE
from .cost import measure_cost
from .noise import mean_and_spread, rank, replicate_seed
from .records import new_record
from .sweep import TOLERANCES, _CappedScore, _OverBudget, _resolve_budgets, _resolve_samplers, _with_tolerance

__all__ = [
    "DEFAULT_REFERENCE_NFE",
    "DEFAULT_REFERENCE_SAMPLERS",
    "REFERENCE_METRICS",
    "REFERENCE_DESCRIPTIONS",
    "ReferenceSolution",
    "reference_solution",
    "reference_metrics",
    "run_reference_comparison",
]

#: Default NFE budgets of the reference mode (each run costs a network call per NFE and sample).
DEFAULT_REFERENCE_NFE: tuple[int, ...] = (5, 10, 20, 50, 100)

#: Default samplers: the deterministic fast solvers, Heun and Euler on the flow ODE, and two
#: stochastic ones (compared in distribution only).
DEFAULT_REFERENCE_SAMPLERS: tuple[str, ...] = (
    "ddim", "dpm_solver", "dpm_solver_pp", "unipc", "heun", "euler_ode", "euler_maruyama", "ddpm")

#: The metrics a reference-mode record carries (keys of :data:`scoresde.metrics.METRICS`).
REFERENCE_METRICS: tuple[str, ...] = ("error", "sw2", "mmd")

@dataclass
class ReferenceSolution:
    """The reference of one seed: prior draws, their flow-ODE solution and an SDE sample.

    Attributes
    ----------
    x_init : Tensor
        The prior draws :math:`x_T`, ``(n, *event)``, in model space: every sampler starts here.
    ode : Tensor
        The high-accuracy probability-flow ODE solution from ``x_init`` at ``eps``, data space.
    sde_sample : Tensor
        A many-step reverse-SDE sample (own prior draws), data space.
    eps : float
        The end time of the reference solves and of every sampler compared with them.
    floor : dict
        Noise floor: ``error`` (RMSE between the ODE solves at ``ode_tol`` and ``ode_tol/10``,
        ``None`` without the check), ``sw2`` and ``mmd`` (SDE sample against a second one).
    info : dict
        How the reference was made: ``ode_solver``, ``ode_tol`` (``None`` for a fixed-step
        solver), ``ode_nfe``, ``sde_solver``,
        ``sde_steps``, ``sde_nfe``, ``seed``.
    """

    x_init: torch.Tensor
    ode: torch.Tensor
    sde_sample: torch.Tensor
    eps: float
    floor: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def _ode_solver(ode, tol: float) -> Sampler:
    if ode == "adaptive_ode":  # the default: Dormand-Prince 5(4), the pair of scipy's RK45
        return resolve("adaptive_ode", {"rtol": tol, "atol": tol, "method": "dopri5"})
    solver = resolve(ode, {})
    if solver.stochastic:
        raise ValueError(f"ode must be a deterministic sampler, got {solver.name or type(solver).__name__}")
    return _with_tolerance(solver, tol) if hasattr(solver, "rtol") and hasattr(solver, "atol") else solver


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).square().mean().sqrt())


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def reference_solution(
    sde: SDE,
    score_fn: Callable,
    shape,
    *,
    seed: int = 0,
    eps: float = 1e-3,
    ode="adaptive_ode",
    ode_tol: float = 1e-5,
    ode_steps: int = 1000,
    check: bool = True,
    sde_sampler="euler_maruyama",
    sde_steps: int = 1000,
    to_data: Callable[[torch.Tensor], torch.Tensor] | None = None,
    n_projections: int = 256,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> ReferenceSolution:
    r"""Prior draws, their high-accuracy flow-ODE solution, and a many-step SDE sample.

    The prior draws come from the generator of ``derive_seed(seed, "prior")``, the SDE sample
    (its prior draw and noise) from ``derive_seed(seed, "sde_reference")``, the second SDE
    sample of the noise floor from ``derive_seed(seed, "sde_floor")``: the same ``seed`` gives
    the same reference.

    Parameters
    ----------
    sde : SDE
        The forward process of the model.
    score_fn : callable
        ``score_fn(x, t)``: the model (any :func:`scoresde.sample` score function).
    shape : tuple of int
        ``(n, *event_shape)``.
    seed : int
        Seed of the prior draws and of the SDE samples (>= 0).
    eps : float
        End time of every solve (> 0).
    ode : str or Sampler
        The reference ODE solver: ``"adaptive_ode"`` (default; Dormand–Prince 5(4) at
        ``rtol = atol = ode_tol``) or any deterministic sampler (its ``rtol``/``atol``, if any,
        set to ``ode_tol``).
    ode_tol : float
        Tolerance of the reference solve (> 0).
    ode_steps : int
        Steps of a fixed-step ``ode`` solver (an adaptive one picks its own).
    check : bool
        Solve again at ``ode_tol / 10`` (a fixed-step solver: at ``2 * ode_steps``), keep that
        solve as the reference, and report the RMSE between the two as the reference's accuracy
        (``floor["error"]``).
    sde_sampler : str or Sampler
        The SDE reference sampler (default Euler–Maruyama on the reverse SDE).
    sde_steps : int
        Its steps (>= 1).
    to_data : callable, optional
        Maps model-space samples to data space before any comparison.
    n_projections : int
        Directions of the sliced Wasserstein distance of the floor.
    device, dtype : optional
        Of the prior draws.

    Returns
    -------
    ReferenceSolution
    """
    shape = check_shape("shape", shape)
    if shape[0] < 2:
        raise ValueError(f"shape must have a batch of at least 2 samples, got {shape}")
    seed = check_int("seed", seed, minimum=0)
    eps = check_positive("eps", eps)
    ode_tol = check_positive("ode_tol", ode_tol)
    ode_steps = check_int("ode_steps", ode_steps)
    sde_steps = check_int("sde_steps", sde_steps)
    n_projections = check_int("n_projections", n_projections)
    to_data = _identity if to_data is None else to_data
    if not callable(to_data):
        raise TypeError(f"to_data must be callable as to_data(x), got {type(to_data).__name__}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype if dtype is not None else torch.get_default_dtype()

    def gen(*keys):
        return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))

    x_init = sde.prior_sample(shape, generator=gen("prior"), device=device, dtype=dtype)
    solver = _ode_solver(ode, ode_tol)
    steps = 1 if solver.adaptive else ode_steps  # an adaptive solver picks its own steps
    run = sample(sde, score_fn, shape, sampler=solver, steps=steps, eps=eps, x_init=x_init,
                 generator=gen("ode"))
    ode_x, ode_nfe, floor_error, tol_used = run.samples, run.nfe, None, ode_tol
    if check:
        tight = _ode_solver(ode, ode_tol / 10)
        run2 = sample(sde, score_fn, shape, sampler=tight, steps=steps if solver.adaptive else 2 * steps,
                      eps=eps, x_init=x_init, generator=gen("ode"))
        floor_error = _rmse(to_data(run2.samples), to_data(ode_x))
        ode_x, ode_nfe, tol_used, solver = run2.samples, run2.nfe, ode_tol / 10, tight
    sde_solver = resolve(sde_sampler, {})
    draws = []
    for key in ("sde_reference", "sde_floor"):
        g = gen(key)
        x0 = sde.prior_sample(shape, generator=g, device=device, dtype=dtype)
        out = sample(sde, score_fn, shape, sampler=sde_solver, steps=sde_steps, eps=eps, x_init=x0,
                     generator=g)
        draws.append(to_data(out.samples.detach()))
    proj = gen("floor_projections")
    floor = {
        "error": floor_error,
        "sw2": float(_metrics.sliced_wasserstein(draws[1], draws[0], n_projections, proj)),
        "mmd": float(_metrics.mmd(draws[1], draws[0])),
    }
    info = {"ode_solver": repr(solver), "ode_tol": tol_used if solver.adaptive else None, "ode_nfe": int(ode_nfe),
            "sde_solver": repr(sde_solver), "sde_steps": sde_steps, "sde_nfe": int(out.nfe),
            "seed": seed}
    return ReferenceSolution(x_init=x_init, ode=to_data(ode_x.detach()), sde_sample=draws[0], eps=eps,
                             floor=floor, info=info)


def reference_metrics(
    samples: torch.Tensor,
    reference: ReferenceSolution,
    *,
    deterministic: bool = True,
    n_projections: int = 256,
    generator: torch.Generator | None = None,
) -> dict:
    """The reference-mode metrics of data-space samples from ``reference.x_init``.

    ``error``: RMSE to ``reference.ode`` (``None`` unless ``deterministic``: a stochastic
    sampler does not converge to the ODE solution of its own prior draw); ``sw2`` and ``mmd``:
    to ``reference.sde_sample``. See :mod:`scoresde.compare.reference` for the definitions.
    """
    if not isinstance(reference, ReferenceSolution):
        raise TypeError(f"reference must be a ReferenceSolution, got {type(reference).__name__}")
    if not isinstance(samples, torch.Tensor) or samples.shape != reference.ode.shape:
        got = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise ValueError(f"samples must have the reference's shape {tuple(reference.ode.shape)}, got {got}")
    samples = samples.detach().to(reference.ode.device)
    return {
        "error": _rmse(samples, reference.ode) if deterministic else None,
        "sw2": float(_metrics.sliced_wasserstein(samples, reference.sde_sample, n_projections, generator)),
        "mmd": float(_metrics.mmd(samples, reference.sde_sample)),
    }


# -- the sweep --------------------------------------------------------------------------------


@dataclass
class _Setup:
    sde: SDE
    score_fn: Callable
    shape: tuple
    label: str
    sde_label: str
    eps: float
    to_data: Callable
    n_projections: int
    device: torch.device
    memory: str


def _one_run(setup: _Setup, ref: ReferenceSolution, solver: Sampler, steps: int, key: tuple,
             cap: int | None = None) -> dict:
    """Run one sampler from the reference's prior draws; its fields for a record."""
    from .profiling import timed_call

    score = setup.score_fn if cap is None else _CappedScore(setup.score_fn, cap)
    gen = torch.Generator(device=setup.device).manual_seed(derive_seed(ref.info["seed"], "sampler", *key))

    def call():
        return sample(setup.sde, score, setup.shape, sampler=solver, steps=steps, eps=setup.eps,
                      x_init=ref.x_init, generator=gen)

    try:
        out, info = timed_call(call, setup.device, setup.memory)
    except _OverBudget:
        return {"status": "over", "nfe": math.inf}
    except Exception as exc:  # noqa: BLE001 - any failure of a sampler is a result
        return {"status": "error", "reason": f"{type(exc).__name__}: {exc}", "nfe": math.nan}
    eval_gen = torch.Generator(device=ref.ode.device).manual_seed(
        derive_seed(ref.info["seed"], "eval", *key))
    try:
        x = setup.to_data(out.samples.detach())
        values = reference_metrics(x, ref, deterministic=not solver.stochastic,
                                   n_projections=setup.n_projections, generator=eval_gen)
    except Exception as exc:  # noqa: BLE001
        return {"status": "error", "reason": f"evaluation failed: {type(exc).__name__}: {exc}",
                "nfe": out.nfe}
    return {"status": "ok", "nfe": int(out.nfe), **info, **values, "_samples": x}


def _sweep(setup: _Setup, ref: ReferenceSolution, label: str, solver: Sampler, budgets, tolerances):
    """One record-field dict per budget for one sampler and one reference."""
    try:
        cost = measure_cost(setup.sde, setup.score_fn, solver, 1, eps=setup.eps, verify=False)
    except (TypeError, ValueError) as exc:
        return [{"status": "skipped", "reason": f"not applicable: {exc}"} for _ in budgets]
    out = []
    if not cost.adaptive:
        for budget in budgets:
            steps = cost.steps_for(budget)
            fields = {"nfe_per_step": cost.per_step, "steps": steps}
            if steps < max(cost.min_steps, 1):
                out.append({**fields, "status": "skipped",
                            "reason": f"budget {budget} is below the cost of its smallest grid "
                                      f"({cost.overhead + cost.per_step * max(cost.min_steps, 1)} NFE)"})
                continue
            out.append({**fields, **_one_run(setup, ref, solver, steps, (label, budget))})
        return out
    if not (hasattr(solver, "rtol") and hasattr(solver, "atol")):
        reason = f"adaptive sampler {type(solver).__name__} has no rtol/atol to sweep towards a budget"
        return [{"status": "skipped", "reason": reason} for _ in budgets]
    cap, runs = max(budgets), []
    for tol in tolerances:  # loose to tight, until a run needs more than the largest budget
        run = _one_run(setup, ref, _with_tolerance(solver, tol), 1, (label, "tol", tol), cap)
        runs.append((tol, run))
        if run["status"] != "ok":
            break
    for budget in budgets:
        fits = [(tol, r) for tol, r in runs if r["status"] == "ok" and r["nfe"] <= budget]
        if fits:
            tol, run = max(fits, key=lambda p: (p[1]["nfe"], -p[0]))
            out.append({**run, "options": {"rtol": tol, "atol": tol}})
        elif runs and runs[0][1]["status"] == "error":
            out.append(dict(runs[0][1]))
        else:
            out.append({"status": "skipped", "reason": f"budget {budget} too small for the adaptive "
                                                       f"solver at its loosest tolerance {tolerances[0]:g}"})
    return out


def _combine(reps: list[dict], floors: list[dict]) -> dict:
    """One record's fields from the repetitions over seeds: mean and spread of the metrics."""
    bad = next(((i, r) for i, r in enumerate(reps) if r["status"] != "ok"), None)
    seeds = len(reps)
    keys = [k for k in REFERENCE_METRICS if all(f.get(k) is not None for f in floors)]
    floor_mean, floor_spread = mean_and_spread([{k: f[k] for k in keys} for f in floors])
    floor = {k: floor_mean.get(k) for k in REFERENCE_METRICS}
    common = {"seeds": seeds, "noise_floor": floor,
              "noise_floor_spread": None if floor_spread is None else
              {k: floor_spread.get(k) for k in REFERENCE_METRICS}}
    if bad is not None:
        i, out = bad
        out = {k: v for k, v in out.items() if k != "_samples"}
        if i > 0 and out.get("reason"):
            out["reason"] = f"seed {i + 1} of {seeds}: {out['reason']}"
        if isinstance(out.get("nfe"), float) and not math.isfinite(out["nfe"]):
            out["nfe"] = None
        return {**out, **common}
    out = {k: v for k, v in reps[0].items() if k != "_samples"}
    present = [k for k in REFERENCE_METRICS if reps[0].get(k) is not None]
    mean, spread = mean_and_spread([{k: r[k] for k in present} for r in reps])
    out.update(mean)
    out["spread"] = None if spread is None else {k: spread.get(k) for k in REFERENCE_METRICS}
    times = [r.get("wall_time_s") for r in reps]
    if None not in times:
        out["wall_time_s"] = math.fsum(times) / seeds
    nfes = [r["nfe"] for r in reps]
    if len(set(nfes)) > 1:
        out["nfe"] = max(nfes)
        out["note"] = f"NFE {min(nfes)}-{max(nfes)} over the seeds"
    out["_samples"] = reps[0].get("_samples")
    return {**out, **common}


def _sde_label(sde: SDE) -> str:
    text = repr(sde)
    return text if len(text) <= 60 else type(sde).__name__


def run_reference_comparison(
    sde: SDE,
    score_fn: Callable,
    shape,
    samplers=None,
    nfe: Sequence[int] = DEFAULT_REFERENCE_NFE,
    *,
    seed: int = 0,
    seeds: int = 1,
    eps: float = 1e-3,
    label: str = "model",
    ode="adaptive_ode",
    ode_tol: float = 1e-5,
    ode_steps: int = 1000,
    check_reference: bool = True,
    sde_sampler="euler_maruyama",
    sde_steps: int = 1000,
    to_data: Callable[[torch.Tensor], torch.Tensor] | None = None,
    n_projections: int = 256,
    tolerances: Sequence[float] = TOLERANCES,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    memory: str = "rss",
    keep_samples: bool = False,
    progress: bool = False,
    references: Sequence[ReferenceSolution] | None = None,
) -> list[dict]:
    r"""Every sampler at every NFE budget against a reference solution of the same model.

    For each of ``seeds`` master seeds (:func:`~scoresde.compare.noise.replicate_seed`) a
    :class:`ReferenceSolution` is made (:func:`reference_solution`) and every sampler is run
    from its prior draws to ``eps``; the samples are scored with :func:`reference_metrics`.
    Budgets become steps through the samplers' declared costs
    (:func:`~scoresde.compare.measure_cost`, as in :func:`~scoresde.compare.run_comparison`);
    an adaptive sampler runs along ``tolerances`` (loose to tight) and a budget gets its run
    with the most evaluations that fits.

    Parameters
    ----------
    sde : SDE
        The model's forward process (e.g. from :func:`scoresde.interop.from_diffusers` or a
        :class:`~scoresde.nets.ScoreModel`'s ``sde``).
    score_fn : callable
        The model as ``score_fn(x, t)``.
    shape : tuple of int
        ``(n, *event_shape)``: ``n`` samples per run (>= 2).
    samplers : None, str, list of str or mapping str -> (str or Sampler)
        Default :data:`DEFAULT_REFERENCE_SAMPLERS`.
    nfe : sequence of int
        Budgets of score evaluations (default :data:`DEFAULT_REFERENCE_NFE`).
    seed, seeds : int
        Master seed (>= 0) and repetitions (>= 1): mean ± spread over the seeds, ranked by
        :func:`~scoresde.compare.noise.rank` as in :func:`~scoresde.compare.run_comparison`.
    eps : float
        End time of every sampler and of the reference (DDPM, which owns its grid, ends at 0).
    label : str
        The records' ``target`` (the model's name in tables and figure files).
    ode, ode_tol, ode_steps, check_reference, sde_sampler, sde_steps, to_data
        Of :func:`reference_solution` (``check_reference`` is its ``check``).
    n_projections : int
        Directions of the sliced Wasserstein distance.
    tolerances : sequence of float
        The ``rtol = atol`` ladder of adaptive samplers.
    device, dtype : optional
        Of the prior draws (where sampling runs).
    memory : {"rss", "tracemalloc", "none"}
        Peak-memory measurement of each run (:func:`~scoresde.compare.timed_call`).
    keep_samples : bool
        Keep the data-space samples of the largest budget that ran per sampler (``"samples"``).
    progress : bool
        A tqdm bar over the runs.
    references : sequence of ReferenceSolution, optional
        One per seed, made earlier with :func:`reference_solution` (e.g. to score other
        producers' samples against the very same reference); the reference options above are
        then not used.

    Returns
    -------
    list of dict
        One :func:`~scoresde.compare.new_record` per (sampler, budget) with ``mode="reference"``,
        ``target=label``, ``error`` (RMSE to the ODE reference; ``None`` for stochastic
        samplers), ``sw2``, ``mmd``, ``noise_floor`` (see :class:`ReferenceSolution`),
        ``reference`` (how the reference was made, first seed) and the usual ``steps``, ``nfe``,
        ``wall_time_s``, ``status``, ``reason``, ``spread``, ``noise_marks``.
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an SDE, got {type(sde).__name__}")
    if not callable(score_fn):
        raise TypeError("score_fn must be callable as score_fn(x, t)")
    shape = check_shape("shape", shape)
    if shape[0] < 2:
        raise ValueError(f"shape must have a batch of at least 2 samples, got {shape}")
    sampler_map = _resolve_samplers(list(DEFAULT_REFERENCE_SAMPLERS) if samplers is None else samplers)
    budgets = _resolve_budgets(nfe)
    seed = check_int("seed", seed, minimum=0)
    seeds = check_int("seeds", seeds)
    if references is not None:
        references = list(references)
        if len(references) != seeds or not all(isinstance(r, ReferenceSolution) for r in references):
            raise ValueError(f"references must hold one ReferenceSolution per seed ({seeds}), got "
                             f"{len(references)} item(s)")
        if tuple(references[0].x_init.shape) != shape:
            raise ValueError(f"references must be made for shape {shape}, got {tuple(references[0].x_init.shape)}")
    if not isinstance(label, str) or not label:
        raise TypeError(f"label must be a non-empty str, got {label!r}")
    if isinstance(tolerances, (str, bytes)) or not isinstance(tolerances, Sequence) or not tolerances:
        raise TypeError(f"tolerances must be a non-empty sequence of floats, got {tolerances!r}")
    tols = sorted({check_positive("tolerances", t) for t in tolerances}, reverse=True)
    from .profiling import check_memory_mode

    check_memory_mode(memory)
    device = torch.device(device) if device is not None else torch.device("cpu")
    setup = _Setup(sde, score_fn, shape, label, _sde_label(sde), check_positive("eps", eps),
                   _identity if to_data is None else to_data, check_int("n_projections", n_projections),
                   device, memory)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=seeds * (len(sampler_map) + 1), desc="reference compare", leave=False)
    try:
        refs, per_seed = [], []
        for i in range(seeds):
            ref = references[i] if references is not None else reference_solution(
                sde, score_fn, shape, seed=replicate_seed(seed, i), eps=setup.eps, ode=ode, ode_tol=ode_tol,
                ode_steps=ode_steps, check=check_reference, sde_sampler=sde_sampler, sde_steps=sde_steps,
                to_data=to_data, n_projections=n_projections, device=device, dtype=dtype)
            refs.append(ref)
            if bar is not None:
                bar.update(1)
            runs = {}
            for name, solver in sampler_map.items():
                runs[name] = _sweep(setup, ref, name, solver, budgets, tols)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(sampler=name)
            per_seed.append(runs)
    finally:
        if bar is not None:
            bar.close()
    records = []
    for name, solver in sampler_map.items():
        combined = [_combine([runs[name][j] for runs in per_seed], [r.floor for r in refs])
                    for j in range(len(budgets))]
        kept = None
        for budget, fields in zip(budgets, combined, strict=True):
            samples = fields.pop("_samples", None)
            if fields.get("status") == "ok" and solver.stochastic:
                fields.setdefault("note", "stochastic: compared in distribution only (no RMSE)")
            rec = new_record(label, name, budget, **fields, mode="reference", dim=math.prod(shape[1:]),
                             sde=setup.sde_label, solver=repr(solver), source="scoresde", n=shape[0],
                             seed=seed, device=str(device), reference=refs[0].info)
            if samples is not None:
                kept = (rec, samples)
            records.append(rec)
        if keep_samples and kept is not None:
            kept[0]["samples"] = kept[1].cpu()
    return rank(records, REFERENCE_METRICS)
