r"""Rankings inside the noise: mean ± spread over seeds, and which differences are within noise.

One run of a sampler, and one draw of the noise floor, is one random number: on another seed
the floor itself moves by tens of percent. :func:`~scoresde.compare.run_comparison` therefore
repeats every run over ``seeds`` master seeds (:func:`replicate_seed`; each gives its own prior
draw, sampling noise, exact reference sample and noise floor) and stores, for every metric, the
mean over the seeds and their spread (sample standard deviation). :func:`rank` then marks, from
the standard errors :math:`\mathrm{se} = \text{spread}/\sqrt{\text{seeds}}`, which differences
are within noise (:func:`scoresde.metrics.within_noise`, two standard errors of the
difference): against the best sampler at the same budget, against the noise floor, and along
one sampler's line where its error *rises* with the NFE.

Examples
--------
>>> from scoresde.compare import over_seeds
>>> summary = over_seeds(lambda s: {"x": float(s % 7)}, seeds=3, seed=0)
>>> summary["seeds"], summary["runs"][0]
(3, {'x': 0.0})
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from .._checks import check_int, check_positive, derive_seed
from ..metrics import METRICS, within_noise

__all__ = ["RANKED", "replicate_seed", "mean_and_spread", "over_seeds", "standard_error", "rank"]

#: The metrics where lower is better, which :func:`rank` marks (all of
#: :data:`~scoresde.metrics.METRICS` but ``mean_log_density``).
RANKED: tuple[str, ...] = tuple(m for m in METRICS if m != "mean_log_density")


def replicate_seed(seed: int, index: int) -> int:
    """Master seed of repetition ``index``: ``seed`` itself for the first, derived for the rest.

    So a run with one seed is exactly the run of ``seed``, and repetition ``i`` of seed ``s``
    is the same whatever the number of repetitions.
    """
    seed = check_int("seed", seed, minimum=0)
    index = check_int("index", index, minimum=0)
    return seed if index == 0 else derive_seed(seed, "replicate", index)


def mean_and_spread(runs: Sequence[Mapping[str, float]]) -> tuple[dict, dict | None]:
    """Per key, the mean of the runs' values and their sample standard deviation.

    Parameters
    ----------
    runs : sequence of mapping str -> float
        One mapping per repetition, all with the keys of the first.

    Returns
    -------
    mean : dict
        ``inf`` or ``nan`` where a value is not finite.
    spread : dict or None
        Sample standard deviation (``n - 1`` in the denominator; ``nan`` where a value is not
        finite); ``None`` for a single run, whose spread is unknown.
    """
    if isinstance(runs, Mapping) or not isinstance(runs, Sequence) or not runs:
        raise ValueError("runs must be a non-empty sequence of mappings")
    keys = list(runs[0])
    mean, spread = {}, {}
    for key in keys:
        values = [float(r[key]) for r in runs]
        mean[key] = math.fsum(values) / len(values) if all(map(math.isfinite, values)) else (
            sum(values) / len(values))
        if len(values) > 1 and math.isfinite(mean[key]):
            var = math.fsum((v - mean[key]) ** 2 for v in values) / (len(values) - 1)
            spread[key] = math.sqrt(var)
        else:
            spread[key] = math.nan
    return mean, (spread if len(runs) > 1 else None)


def over_seeds(fn: Callable[[int], Mapping[str, float]], seeds: int, seed: int = 0) -> dict:
    """Call ``fn(s)`` for the master seeds of ``seeds`` repetitions; mean and spread of its results.

    ``fn`` gets the seed of repetition ``i`` (:func:`replicate_seed`) and returns a mapping of
    numbers (e.g. the metrics of one sampler run, or of the noise floor). A producer of records
    other than :func:`~scoresde.compare.run_comparison` (the ``scoresde demo`` table, a
    notebook) uses it to report mean ± spread and to feed :func:`rank`.

    Returns
    -------
    dict
        ``{"mean": dict, "spread": dict or None, "seeds": int, "runs": [dict, ...]}``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(seed), got {type(fn).__name__}")
    seeds = check_int("seeds", seeds)
    runs = [dict(fn(replicate_seed(seed, i))) for i in range(seeds)]
    mean, spread = mean_and_spread(runs)
    return {"mean": mean, "spread": spread, "seeds": seeds, "runs": runs}


def standard_error(record: Mapping, metric: str, *, floor: bool = False) -> float | None:
    """Standard error of a record's metric (or of its noise floor), ``None`` when unknown.

    ``spread / sqrt(seeds)`` from the record's ``spread`` (``noise_floor_spread``) and ``seeds``;
    unknown with fewer than two seeds or a non-finite spread.
    """
    spread = record.get("noise_floor_spread" if floor else "spread")
    seeds = record.get("seeds") or 1
    if not isinstance(spread, Mapping) or seeds < 2:
        return None
    s = spread.get(metric)
    if not isinstance(s, (int, float)) or not math.isfinite(s):
        return None
    return float(s) / math.sqrt(seeds)


def _value(record: Mapping, metric: str) -> float | None:
    v = record.get(metric)
    ok = (record.get("status") or "ok") == "ok"
    if not ok or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _floor(record: Mapping, metric: str) -> float | None:
    floor = record.get("noise_floor")
    v = floor.get(metric) if isinstance(floor, Mapping) else None
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _marks(records: list[dict], metric: str, z: float) -> list[dict]:
    marks = [{"vs_best": None, "vs_floor": None, "rises_from": None} for _ in records]
    values = [_value(r, metric) for r in records]
    ses = [standard_error(r, metric) for r in records]
    # against the best sampler at the same target, SDE and budget
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(records):
        if values[i] is not None and ses[i] is not None:
            groups.setdefault((r.get("target"), r.get("sde"), r.get("budget")), []).append(i)
    for members in groups.values():
        best = min(members, key=lambda i: values[i])
        for i in members:
            if i == best:
                marks[i]["vs_best"] = "best"
            else:
                near = within_noise(values[i], ses[i], values[best], ses[best], z)
                marks[i]["vs_best"] = "≈" if near else ">"
    # against the noise floor
    for i, r in enumerate(records):
        floor, floor_se = _floor(r, metric), standard_error(r, metric, floor=True)
        if values[i] is None or ses[i] is None or floor is None or floor_se is None:
            continue
        if within_noise(values[i], ses[i], floor, floor_se, z):
            marks[i]["vs_floor"] = "≈"
        else:
            marks[i]["vs_floor"] = "<" if values[i] < floor else ">"
    # along one sampler's line: where the metric rises with the NFE
    lines: dict[tuple, list[int]] = {}
    for i, r in enumerate(records):
        if values[i] is not None and isinstance(r.get("nfe"), (int, float)):
            key = (r.get("target"), r.get("sde"), r.get("sampler"), r.get("source"))
            lines.setdefault(key, []).append(i)
    for members in lines.values():
        members.sort(key=lambda i: records[i]["nfe"])
        for lo, hi in zip(members, members[1:], strict=False):
            if not (records[hi]["nfe"] > records[lo]["nfe"] and values[hi] > values[lo]):
                continue
            known = ses[lo] is not None and ses[hi] is not None
            if known and within_noise(values[hi], ses[hi], values[lo], ses[lo], z):
                continue
            marks[hi]["rises_from"] = {"nfe": int(records[lo]["nfe"]), "value": values[lo],
                                       "beyond_noise": True if known else None}
    return marks


def rank(records: Sequence[Mapping], metrics: Sequence[str] = ("error",),
         z: float = 2.0) -> list[dict]:
    r"""Copies of ``records`` whose ``noise_marks`` say which differences are within noise.

    For each of ``metrics``, ``record["noise_marks"][metric]`` is a dict with

    - ``vs_best``: ``"best"`` for the lowest value among the ``ok`` records of the same target,
      SDE and budget whose standard error is known, ``"≈"`` within ``z`` standard errors of
      it, ``">"`` beyond;
    - ``vs_floor``: ``"≈"`` within ``z`` standard errors of the noise floor, ``">"`` above it,
      ``"<"`` below it;
    - ``rises_from``: where the value is higher than at the sampler's previous (smaller) NFE
      beyond noise, ``{"nfe", "value", "beyond_noise"}`` of that previous point
      (``beyond_noise`` is ``None`` when the spread is unknown: then any rise is reported).

    ``vs_best`` and ``vs_floor`` are ``None`` where a standard error is unknown (one seed).
    The test is :func:`scoresde.metrics.within_noise` on the standard errors of
    :func:`standard_error`.
    """
    if isinstance(records, Mapping) or not isinstance(records, Sequence):
        raise TypeError(f"records must be a list of dicts, got {type(records).__name__}")
    z = check_positive("z", z)
    out = [dict(r) for r in records]
    for r in out:
        r["noise_marks"] = dict(r["noise_marks"]) if isinstance(r.get("noise_marks"), Mapping) else {}
    for metric in metrics:
        for r, mark in zip(out, _marks(out, metric, z), strict=True):
            r["noise_marks"][metric] = mark
    return out
