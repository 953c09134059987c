r"""Sampler comparison harness: sample quality against the number of score evaluations.

For every reference target with an exact score (:func:`~scoresde.target_names`) and every
sampler (:func:`scoresde.samplers.names`), :func:`run_comparison` draws ``n`` samples with
:func:`scoresde.sample` at a sweep of NFE budgets and scores them with
:func:`scoresde.metrics.evaluate` against a fresh exact sample of the target. The value a
*perfect* sampler gets at the same ``n``, :func:`scoresde.metrics.noise_floor`, is stored with
every record: no sampler can be expected to do better than that.

A budget of :math:`B` score evaluations is turned into a number of steps with the sampler's
measured cost (:func:`measure_cost`): a fixed-step sampler whose run costs
:math:`c_0 + c\cdot\text{steps}` evaluations gets :math:`\lfloor (B - c_0)/c \rfloor` steps
(Heun 2 per step, predictor–corrector :math:`1 + n_{\rm corr}`); an adaptive sampler (the
scipy probability-flow ODE) is run along a ladder of tolerances ``rtol = atol`` from loose to
tight, and the budget gets the run with the most evaluations that does not exceed it. Every
record reports the *actual* NFE. Combinations that cannot run (DDPM needs an SDE with a
``discretize`` method, and on the default VP SDE at least 20 steps, since
:math:`\beta_{\max}/N` must stay below 1; a budget below the cost of one step; an adaptive
solver whose loosest tolerance already costs more than the budget) are recorded as
``"skipped"`` with the reason; a run that raises is recorded as ``"error"`` with the message.

Randomness: the prior draw of every run of one target comes from the same seed (common random
numbers: samplers and budgets are compared on the same :math:`x_T`), the reference sample and
projections of each evaluation and the noise floor from their own seeds, all derived from
``seed`` and the names involved with :func:`derive_seed`, so any single run is reproducible
whatever ran before it.

Examples
--------
>>> import scoresde as sd
>>> from scoresde.compare import run_comparison, to_markdown
>>> records = run_comparison(targets=["imbalanced_2d"], samplers=["heun"], nfe=(20,), n=200)
>>> r = records[0]
>>> r["status"], r["steps"], r["nfe"]
('ok', 10, 20)
>>> r["error"] > r["noise_floor"]["error"]
True
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import re
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from . import metrics as _metrics
from ._checks import check_int, check_positive, derive_seed
from .samplers import SAMPLERS, Sampler, sample
from .samplers import names as sampler_names
from .sde import SDE_NAMES, LinearSDE, make_sde
from .targets import GaussianMixture, make_target, target_names

__all__ = [
    "DEFAULT_NFE",
    "METRICS",
    "RECORD_KEYS",
    "SDE_NAMES",
    "TOLERANCES",
    "MEMORY_MODES",
    "SamplerCost",
    "derive_seed",
    "load",
    "make_sde",
    "measure_cost",
    "new_record",
    "quick_preset",
    "run_comparison",
    "save",
    "timed_call",
    "to_json",
    "to_markdown",
]

#: Default sweep of NFE budgets.
DEFAULT_NFE: tuple[int, ...] = (5, 10, 20, 50, 100, 200, 500, 1000)

#: The metrics of :func:`scoresde.metrics.evaluate` stored in every record.
METRICS: tuple[str, ...] = (
    "sw2",
    "mmd",
    "weight_error",
    "mean_error",
    "cov_error",
    "mean_log_density",
    "log_density_gap",
    "error",
)

#: Every key of a record, in the order they are written (see :func:`new_record`).
RECORD_KEYS: tuple[str, ...] = (
    "target",
    "dim",
    "sde",
    "sampler",
    "solver",
    "source",
    "budget",
    "status",
    "reason",
    "note",
    "steps",
    "nfe",
    "nfe_per_step",
    "options",
    "wall_time_s",
    "peak_mem_bytes",
    "mem_method",
    "tracemalloc_peak_bytes",
    *METRICS,
    "n",
    "seed",
    "device",
    "noise_floor",
)

#: Tolerance ladder ``rtol = atol`` for adaptive samplers: ``10^-1`` to ``10^-8``, 3 per decade.
TOLERANCES: tuple[float, ...] = tuple(float(f"{10.0 ** (-1 - k / 3):.3g}") for k in range(22))

# step counts tried (with the next two) when measuring a sampler's cost
_PROBE_STEPS = (1, 2, 4, 8, 16, 32, 64)
_PROBE_BATCH = 2
# the seed of the probe runs (their samples are thrown away)
_PROBE_SEED = 12345


# --------------------------------------------------------------------------------------
# small public helpers
# --------------------------------------------------------------------------------------
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


def new_record(target: str, sampler: str, budget: int, **fields) -> dict:
    """A result record with every key of :data:`RECORD_KEYS` (``None`` unless given).

    Other producers of records (e.g. the diffusers adapters in ``benchmarks/``) use it so
    that their results merge with those of :func:`run_comparison` in one table and figure.
    Extra keyword arguments are kept as extra keys.
    """
    rec = dict.fromkeys(RECORD_KEYS)
    rec.update(target=target, sampler=sampler, budget=budget, status="ok", source="scoresde")
    rec.update(fields)
    return rec


@dataclass(frozen=True)
class SamplerCost:
    """Measured NFE cost of a sampler: ``overhead + per_step * steps``, or adaptive.

    Attributes
    ----------
    per_step : int
        Score evaluations per step (0 for an adaptive sampler).
    overhead : int
        Evaluations outside the steps (e.g. a final denoising call).
    adaptive : bool
        The NFE does not depend on ``steps`` (the solver picks its own steps).
    min_steps : int
        Smallest step count that ran when the cost was measured.
    """

    per_step: int
    overhead: int
    adaptive: bool
    min_steps: int

    def steps_for(self, budget: int) -> int:
        """Most steps whose cost fits in ``budget`` (may be < 1; undefined when adaptive)."""
        if self.adaptive:
            raise ValueError("an adaptive sampler has no fixed cost per step")
        return (budget - self.overhead) // self.per_step


def _as_sampler(spec) -> Sampler:
    if isinstance(spec, Sampler):
        return spec
    if isinstance(spec, str):
        if spec not in SAMPLERS:
            raise ValueError(f"unknown sampler {spec!r}; valid names: {', '.join(sampler_names())}")
        return SAMPLERS[spec]()
    raise TypeError(f"sampler must be a name or a Sampler instance, got {type(spec).__name__}")


def measure_cost(
    sde,
    score_fn: Callable,
    sampler,
    dim: int,
    *,
    eps: float = 1e-3,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SamplerCost:
    """Measure a sampler's NFE per step by running it on a batch of 2 and counting score calls.

    Three consecutive step counts ``k, k+1, k+2`` are run for the first ``k`` of
    ``1, 2, 4, …, 64`` at which the sampler runs at all (DDPM on the VP SDE needs about 21).
    Equal positive increments give a fixed cost per step; an NFE that does not change with the
    steps marks an adaptive solver.

    Parameters
    ----------
    sde : SDE
    score_fn : callable
        ``score_fn(x, t)``.
    sampler : str or Sampler
        A name from :func:`scoresde.samplers.names` or an instance.
    dim : int
        Event dimension of the samples.
    eps : float
        End time passed to :func:`scoresde.sample`.
    device, dtype : optional
        Of the probe batch.

    Returns
    -------
    SamplerCost

    Raises
    ------
    TypeError
        When the sampler cannot be used with this SDE at all (e.g. DDPM without
        ``sde.discretize``).
    ValueError
        When it runs at none of the step counts tried; the message carries the last error.
    """
    solver = _as_sampler(sampler)
    dim = check_int("dim", dim)
    device = torch.device(device) if device is not None else torch.device("cpu")
    last: Exception | None = None
    for k in _PROBE_STEPS:
        nfes = []
        try:
            for j in range(3):
                gen = torch.Generator(device=device).manual_seed(_PROBE_SEED)
                out = sample(sde, score_fn, (_PROBE_BATCH, dim), sampler=solver, steps=k + j,
                             generator=gen, eps=eps, device=device, dtype=dtype)
                nfes.append(out.nfe)
        except TypeError:
            raise
        except (ValueError, ArithmeticError, RuntimeError) as exc:
            last = exc
            continue
        d1, d2 = nfes[1] - nfes[0], nfes[2] - nfes[1]
        if d1 == d2 and d1 > 0:
            return SamplerCost(per_step=d1, overhead=nfes[0] - k * d1, adaptive=False, min_steps=k)
        return SamplerCost(per_step=0, overhead=0, adaptive=True, min_steps=k)
    raise ValueError(f"runs with none of steps {_PROBE_STEPS} (and the next two): {last}")


# --------------------------------------------------------------------------------------
# timing and memory
# --------------------------------------------------------------------------------------
def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return None
    return None  # pragma: no cover


def _reset_rss_peak() -> int | None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``), reset the process's peak RSS
    (Linux ``clear_refs``) and return the current RSS; None where that is not possible."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # pragma: no cover - not Linux, or not permitted
        return None
    return _proc_status("VmRSS")


MEMORY_MODES: tuple[str, ...] = ("rss", "tracemalloc", "none")


def timed_call(fn: Callable[[], object], device: torch.device | str | None = None,
               memory: str = "rss") -> tuple[object, dict]:
    """Call ``fn()`` and measure its wall time and peak memory.

    Parameters
    ----------
    fn : callable
        Called once without arguments.
    device : torch.device or str, optional
        Where the work happens. On CUDA the time is taken after a synchronisation and the peak
        is :func:`torch.cuda.max_memory_allocated` above the memory allocated before the call
        (``mem_method = "cuda"``), whatever ``memory`` says (except ``"none"``).
    memory : {"rss", "tracemalloc", "none"}
        How to measure memory on the CPU. ``"rss"``: the growth of the process's peak resident
        set during the call (Linux; freed heap memory is first returned to the OS with glibc's
        ``malloc_trim`` so that the allocator's cache does not hide the growth) — no effect on
        the timing. ``"tracemalloc"``: in addition, the :mod:`tracemalloc` peak of the call,
        which sees Python and NumPy allocations only (torch's CPU allocator is invisible to it)
        and slows Python-heavy loops by up to ~1.5x, inflating ``wall_time_s``. ``"none"``.

    Returns
    -------
    result : object
        What ``fn`` returned.
    info : dict
        ``wall_time_s``, ``peak_mem_bytes``, ``mem_method`` (``"cuda"``, ``"rss"``, or
        ``"tracemalloc"`` where RSS is unavailable) and ``tracemalloc_peak_bytes``; ``None``
        where not measured.
    """
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    info = {"wall_time_s": None, "peak_mem_bytes": None, "mem_method": None,
            "tracemalloc_peak_bytes": None}
    if device.type == "cuda":  # pragma: no cover - no GPU in the test suite
        torch.cuda.synchronize(device)
        if memory != "none":
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize(device)
        info["wall_time_s"] = time.perf_counter() - start
        if memory != "none":
            info["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(device) - base)
            info["mem_method"] = "cuda"
        return result, info
    if memory == "none":
        start = time.perf_counter()
        result = fn()
        info["wall_time_s"] = time.perf_counter() - start
        return result, info
    trace = memory == "tracemalloc"
    started = trace and not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        rss0 = _reset_rss_peak()
        if trace:
            tracemalloc.reset_peak()
            tm0 = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        result = fn()
        info["wall_time_s"] = time.perf_counter() - start
        if trace:
            info["tracemalloc_peak_bytes"] = max(0, tracemalloc.get_traced_memory()[1] - tm0)
        hwm = _proc_status("VmHWM") if rss0 is not None else None
    finally:
        if started:
            tracemalloc.stop()
    if hwm is not None:
        info["peak_mem_bytes"] = max(0, hwm - rss0)
        info["mem_method"] = "rss"
    elif trace:  # pragma: no cover - not Linux
        info["peak_mem_bytes"] = info["tracemalloc_peak_bytes"]
        info["mem_method"] = "tracemalloc"
    return result, info


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
                                n_projections=ctx.n_projections, generator=gen)
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
        out = {str(label): _as_sampler(spec) for label, spec in samplers.items()}
    elif isinstance(samplers, Sequence):
        out = {}
        for spec in samplers:
            if not isinstance(spec, str):
                raise TypeError(
                    "samplers must contain sampler names (use a mapping label -> Sampler for "
                    f"instances), got {type(spec).__name__}")
            out[spec] = _as_sampler(spec)
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
        Master seed (>= 0); see the module docstring.
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
        How to measure the peak memory of each sampling call (see :func:`timed_call`).

    Returns
    -------
    list of dict
        One record per (target, sampler, budget), with the keys of :data:`RECORD_KEYS`:
        ``status`` is ``"ok"``, ``"skipped"`` or ``"error"`` (``reason`` says why); ``steps``,
        ``nfe`` (actual), ``nfe_per_step``, ``options`` (the tolerances of an adaptive run),
        ``wall_time_s``, ``peak_mem_bytes`` and ``mem_method``, ``tracemalloc_peak_bytes``, the
        metrics of :data:`METRICS` (``None`` unless ``ok``; ``inf`` where a metric is infinite)
        and ``noise_floor`` (the :func:`~scoresde.metrics.noise_floor` dict of the target at
        ``n``).
    """
    target_map = _resolve_targets(targets)
    sampler_map = _resolve_samplers(samplers)
    budgets = _resolve_budgets(nfe)
    n = check_int("n", n, minimum=2)
    seed = check_int("seed", seed, minimum=0)
    sde_obj, sde_label = _resolve_sde(sde)
    eps = check_positive("eps", eps)
    n_projections = check_int("n_projections", n_projections)
    if isinstance(tolerances, (str, bytes)) or not isinstance(tolerances, Sequence):
        raise TypeError(f"tolerances must be a sequence of floats, got {type(tolerances).__name__}")
    tols = sorted({check_positive("tolerances", t) for t in tolerances}, reverse=True)
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype if dtype is not None else torch.get_default_dtype()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(target_map) * len(sampler_map) * len(budgets), desc="compare",
                   leave=False)

    records: list[dict] = []
    try:
        for tname, target in target_map.items():
            floor = _metrics.noise_floor(
                target, n, n_projections=n_projections,
                generator=torch.Generator().manual_seed(derive_seed(seed, tname, "floor")))
            ctx = _Context(tname, target, sde_obj, sde_label, target.score_fn(sde_obj), n, seed,
                           eps, device, dtype, n_projections, memory,
                           {k: floor[k] for k in METRICS})
            for label, solver in sampler_map.items():

                def tick(label=label, tname=tname):
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(target=tname, sampler=label)

                base = ctx.base(label, solver)
                try:
                    cost = measure_cost(sde_obj, ctx.score_fn, solver, target.dim, eps=eps,
                                        device=device, dtype=dtype)
                except (TypeError, ValueError) as exc:
                    reason = f"not applicable: {exc}"
                    for budget in budgets:
                        records.append(_skip(ctx, base, label, budget, reason))
                        tick()
                    continue
                if cost.adaptive:
                    pairs = _sweep_adaptive(ctx, label, solver, budgets, base, tols, tick)
                else:
                    pairs = _sweep_fixed(ctx, label, solver, cost, budgets, base, tick)
                if keep_samples:
                    ok = [(rec, run) for rec, run in pairs if rec["status"] == "ok"]
                    if ok:
                        ok[-1][0]["samples"] = ok[-1][1].samples.cpu()
                records.extend(rec for rec, _ in pairs)
    finally:
        if bar is not None:
            bar.close()
    return records


# --------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------
def _jsonable(obj):
    """Strict-JSON version of ``obj``: non-finite floats become None, sample tensors are dropped."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()
                if not (isinstance(v, torch.Tensor) and v.numel() > 1)}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return _jsonable(obj.item())
        except (ValueError, RuntimeError):  # a tensor/array with more than one element
            pass
    return str(obj)


def to_json(records: Sequence[Mapping], indent: int | None = 2) -> str:
    """Records as strict JSON (no NaN or inf: they become ``null``; ``samples`` are dropped).

    The document is ``{"format", "scoresde_version", "torch_version", "created", "records"}``;
    :func:`load` reads it back.
    """
    from . import __version__

    doc = {
        "format": "scoresde.compare/1",
        "scoresde_version": __version__,
        "torch_version": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "records": _jsonable(list(records)),
    }
    return json.dumps(doc, indent=indent, allow_nan=False)


def load(path) -> list[dict]:
    """Read the records of a ``results.json`` written by :func:`save` (or :func:`to_json`)."""
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    if isinstance(doc, dict) and isinstance(doc.get("records"), list):
        return doc["records"]
    if isinstance(doc, list):
        return doc
    raise ValueError(f"{path} does not contain comparison records")


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}g}"
    return str(v)


def _cell(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


_COLUMNS = (
    ("target", "target"),
    ("sde", "sde"),
    ("sampler", "sampler"),
    ("budget", "budget"),
    ("steps", "steps"),
    ("nfe", "NFE"),
    ("wall_time_s", "time [s]"),
    ("peak_mem_bytes", "mem [MiB]"),
    ("sw2", "SW2"),
    ("mmd", "MMD"),
    ("weight_error", "weight err"),
    ("mean_error", "mean err"),
    ("cov_error", "cov err"),
    ("log_density_gap", "log p gap"),
    ("error", "error"),
)


def to_markdown(records: Sequence[Mapping]) -> str:
    """A markdown table with one row per record, then a table of the noise floors.

    The ``status`` column reads ``ok``, ``skipped: <reason>`` or ``error: <message>``
    (shortened to 120 characters; the full text is in the records). Missing values print as
    ``—``; adaptive runs show their tolerance next to the step count.
    """
    if isinstance(records, Mapping) or not isinstance(records, Sequence):
        raise TypeError(f"records must be a list of dicts, got {type(records).__name__}")
    head = [label for _, label in _COLUMNS] + ["status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    floors: dict[tuple, Mapping] = {}
    for r in records:
        if not isinstance(r, Mapping):
            raise TypeError(f"records must be a list of dicts, got an item {type(r).__name__}")
        cells = []
        for key, _ in _COLUMNS:
            v = r.get(key)
            if key == "peak_mem_bytes" and v is not None:
                v = v / 2**20
            if key == "steps" and v is None and isinstance(r.get("options"), Mapping):
                v = "rtol=" + _fmt(r["options"].get("rtol"), 2)
            cells.append(_cell(_fmt(v)))
        status = r.get("status") or "ok"
        if r.get("reason"):
            status += ": " + str(r["reason"])
        if r.get("note"):
            status += f" ({r['note']})"
        cells.append(_cell(status))
        lines.append("| " + " | ".join(cells) + " |")
        if isinstance(r.get("noise_floor"), Mapping):
            floors.setdefault((r.get("target"), r.get("n")), r["noise_floor"])
    if floors:
        cols = ("sw2", "mmd", "weight_error", "mean_error", "cov_error", "log_density_gap", "error")
        lines += ["", "Noise floor (an exact sample against another, same n):", "",
                  "| target | n | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
        for (tname, n), fl in floors.items():
            lines.append(f"| {_cell(_fmt(tname))} | {_fmt(n)} | "
                         + " | ".join(_fmt(fl.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "target"


def save(records: Sequence[Mapping], out_dir, *, figures: bool = True,
         figure_metrics: Sequence[str] = ("error", "sw2")) -> dict:
    """Write ``results.json``, ``results.md`` and PNG figures to ``out_dir`` (created if needed).

    Figures, one set per target: ``<metric>_vs_nfe_<target>.png`` for each of
    ``figure_metrics`` (:func:`scoresde.plotting.plot_error_vs_nfe`) and, when records carry
    ``samples`` (``keep_samples=True``), ``samples_<target>.png``
    (:func:`scoresde.plotting.plot_samples`, against an exact sample of a named target).

    Returns
    -------
    dict
        ``{"json": Path, "markdown": Path, "figures": [Path, ...]}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "figures": []}
    text = to_json(records)
    table = to_markdown(records)
    paths["json"].write_text(text + "\n", encoding="utf-8")
    paths["markdown"].write_text(table, encoding="utf-8")
    if not figures:
        return paths
    from . import plotting

    for metric in figure_metrics:
        if metric not in METRICS:
            raise ValueError(f"figure_metrics must contain names from {METRICS}, got {metric!r}")
    tnames = list(dict.fromkeys(r.get("target") for r in records))
    for tname in tnames:
        mine = [r for r in records if r.get("target") == tname]
        for metric in figure_metrics:
            fig = plotting.plot_error_vs_nfe(mine, metric=metric, target=tname)
            path = out / f"{metric}_vs_nfe_{_slug(tname)}.png"
            fig.savefig(path, dpi=110)
            paths["figures"].append(path)
        kept = {r["sampler"]: r["samples"] for r in mine
                if isinstance(r.get("samples"), torch.Tensor)}
        if kept:
            reference = None
            if tname in target_names():
                n_ref = max(int(s.shape[0]) for s in kept.values())
                gen = torch.Generator().manual_seed(
                    derive_seed(int(mine[0].get("seed") or 0), tname, "plot"))
                reference = make_target(tname).sample(n_ref, generator=gen)
            fig = plotting.plot_samples(kept, reference=reference,
                                        title=f"{tname}: largest budget per sampler")
            path = out / f"samples_{_slug(tname)}.png"
            fig.savefig(path, dpi=110)
            paths["figures"].append(path)
    return paths
