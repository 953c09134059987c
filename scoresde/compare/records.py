"""Comparison records: their keys, strict JSON, markdown tables, and saving them to a folder.

A record is a plain dict with every key of :data:`RECORD_KEYS` (one per target, sampler and
NFE budget); :func:`~scoresde.compare.run_comparison` produces them and other producers (the
diffusers baselines in ``benchmarks/``) build theirs with :func:`new_record`, so that both merge
in one table and one figure.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..metrics import METRIC_DESCRIPTIONS, METRICS, REFERENCE_DESCRIPTIONS
from .noise import RANKED, rank, standard_error

__all__ = ["RECORD_KEYS", "new_record", "to_json", "load", "to_markdown", "save"]

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
    "seeds",
    "spread",
    "noise_floor",
    "noise_floor_spread",
    "noise_marks",
)


def new_record(target: str, sampler: str, budget: int, **fields) -> dict:
    """A result record with every key of :data:`RECORD_KEYS` (``None`` unless given).

    ``status`` defaults to ``"ok"`` and ``source`` (who produced the record; the figures draw
    every source other than ``"scoresde"`` with its own line style) to ``"scoresde"``. Other
    producers of records (e.g. the diffusers adapters in ``benchmarks/``, with
    ``source="diffusers"``) use it so that their results merge with those of
    :func:`~scoresde.compare.run_comparison` in one table and figure. Extra keyword arguments
    are kept as extra keys.

    Examples
    --------
    >>> from scoresde.compare import new_record
    >>> rec = new_record("ring8", "heun", 20, nfe=20)
    >>> rec["status"], rec["source"], rec["nfe"], rec["error"]
    ('ok', 'scoresde', 20, None)
    """
    rec = dict.fromkeys(RECORD_KEYS)
    rec.update(target=target, sampler=sampler, budget=budget, status="ok", source="scoresde")
    rec.update(fields)
    return rec


# --------------------------------------------------------------------------------------
# JSON
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
    from .. import __version__

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


# --------------------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------------------
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
    ("vs_best", "vs best"),
    ("vs_floor", "vs floor"),
)
_MARKED = ("vs_best", "vs_floor")
_FLOOR_COLUMNS = ("sw2", "mmd", "weight_error", "mean_error", "cov_error", "log_density_gap",
                  "error")
# columns that need a target with known modes: left out of tables of reference-mode records
_TARGET_ONLY = ("weight_error", "mean_error", "cov_error", "log_density_gap")


def _reference_mode(records) -> bool:
    """Whether every record comes from the reference-solution mode (:mod:`~scoresde.compare.reference`)."""
    return bool(records) and all(r.get("mode") == "reference" for r in records)


def _columns(records) -> tuple[tuple[str, str], ...]:
    if not _reference_mode(records):
        return _COLUMNS
    return tuple((k, "RMSE vs ODE ref" if k == "error" else label) for k, label in _COLUMNS
                 if k not in _TARGET_ONLY)


def _check_records(records) -> None:
    if isinstance(records, Mapping) or not isinstance(records, Sequence):
        raise TypeError(f"records must be a list of dicts, got {type(records).__name__}")
    for r in records:
        if not isinstance(r, Mapping):
            raise TypeError(f"records must be a list of dicts, got an item {type(r).__name__}")


def _with_se(r: Mapping, key: str, *, floor: bool = False) -> str:
    """``mean ± standard error`` of a metric, or the bare value when its spread is unknown."""
    source = r.get("noise_floor") if floor else r
    v = source.get(key) if isinstance(source, Mapping) else None
    se = standard_error(r, key, floor=floor)
    return _fmt(v) if se is None or not isinstance(v, float) else f"{_fmt(v)} ± {_fmt(se, 2)}"


def _seed_counts(records) -> str:
    counts = sorted({int(r.get("seeds") or 1) for r in records})
    return "/".join(map(str, counts)) or "1"


def _caption(records) -> list[str]:
    seeds = _seed_counts(records)
    lines = []
    if any(r.get("mode") == "reference" for r in records):
        ref = REFERENCE_DESCRIPTIONS
        lines.append(f"Reference mode (scoresde.compare.reference): error = {ref['error']}; SW2 = "
                     f"{ref['sw2']}; MMD = {ref['mmd']}. Mean over {seeds} seed(s) ± one standard "
                     "error.")
        if _reference_mode(records):
            lines[0] = lines[0].replace("error =", "error (RMSE vs ODE ref) =", 1)
            return [*lines, *_caption_marks(records)]
        lines.append("")
    lines += [f"error = {METRIC_DESCRIPTIONS['error']} (scoresde.metrics.evaluate; columns cov "
             f"err, log p gap, weight err). Every metric in the table is lower-is-better and is a mean over {seeds} "
             f"seed(s) (prior draw, sampling noise, exact reference sample and noise floor "
             f"each drawn from the seed) ± one standard error of that mean (spread over the seeds "
             f"/ sqrt(seeds))."]
    return lines + _caption_marks(records)


def _caption_marks(records) -> list[str]:
    lines = []
    if any((r.get("seeds") or 1) > 1 for r in records):
        lines.append("")
        lines.append(
            "vs best: best = lowest error at this target, SDE and budget; ≈ = within two "
            "standard errors of the best (not distinguishable from it at these seeds); > = "
            "worse beyond noise. vs floor: ≈ = within two standard errors of the noise floor "
            "(as good as an exact sample at this n); > above it; < below it.")
    else:
        lines.append("")
        lines.append("One seed: the spread is unknown, so no difference is marked as within or "
                     "beyond noise (run with seeds >= 2, e.g. `scoresde compare --seeds 3`).")
    return lines


def _rises(records) -> list[str]:
    out = []
    for r in records:
        rise = (r.get("noise_marks") or {}).get("error", {}).get("rises_from")
        if not rise:
            continue
        why = "beyond noise" if rise.get("beyond_noise") else "one seed: may be noise"
        out.append(f"- {_cell(r.get('sampler'))} on {_cell(r.get('target'))} ({r.get('sde')}): "
                   f"error rises from {_fmt(rise['value'])} at NFE {rise['nfe']} to "
                   f"{_fmt(r.get('error'))} at NFE {r.get('nfe')} ({why}).")
    if out:
        out = ["Error rising with NFE (a smaller budget was better):", "", *out, "",
               "A rise usually means that errors of opposite sign cancel at the smaller budget "
               "- the discretisation error against the bias of stopping at the end time eps "
               "(or of the final step) - so the smaller budget is not better in general; "
               "compare at several budgets and targets."]
    return out


def to_markdown(records: Sequence[Mapping]) -> str:
    """A markdown table with one row per record, its caption, the noise floors and footnotes.

    Metrics read ``mean ± standard error`` over the records' seeds (just the mean with one
    seed). The ``vs best`` and ``vs floor`` columns mark, for the combined ``error``, which
    differences are within noise (:func:`~scoresde.compare.noise.rank`, recomputed from the
    records given, so tables of merged records are consistent). The ``status`` column reads
    ``ok``, ``skipped: <reason>`` or ``error: <message>`` (shortened to 120 characters; the
    full text is in the records). Missing values print as ``—``; adaptive runs show their
    tolerance next to the step count. Below the table: what ``error`` is, the noise floors,
    and a footnote for every sampler whose error rises with the NFE.
    """
    _check_records(records)
    records = rank(records, ("error",))
    columns = _columns(records)
    floor_columns = tuple(c for c in _FLOOR_COLUMNS if not (_reference_mode(records) and c in _TARGET_ONLY))
    head = [label for _, label in columns] + ["status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    floors: dict[tuple, Mapping] = {}
    for r in records:
        marks = r["noise_marks"]["error"]
        cells = []
        for key, _ in columns:
            v = r.get(key)
            if key in _MARKED:
                cells.append(_fmt(marks[key]))
                continue
            if key in METRICS:
                cells.append(_cell(_with_se(r, key)))
                continue
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
            floors.setdefault((r.get("target"), r.get("n")), r)
    lines += ["", *_caption(records)]
    if floors:
        what = ("the reference's own accuracy for error, one SDE reference sample against "
                "another for sw2 and mmd" if _reference_mode(records) else "an exact sample against another")
        lines += ["", f"Noise floor ({what}, same n; mean ± standard "
                  "error over the seeds):", "",
                  "| target | n | " + " | ".join(floor_columns) + " |",
                  "|" + "---|" * (len(floor_columns) + 2)]
        for (tname, n), r in floors.items():
            lines.append(f"| {_cell(_fmt(tname))} | {_fmt(n)} | "
                         + " | ".join(_with_se(r, c, floor=True) for c in floor_columns) + " |")
    rises = _rises(records)
    if rises:
        lines += ["", *rises]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# a results folder
# --------------------------------------------------------------------------------------
def save(records: Sequence[Mapping], out_dir, *, figures: bool = True,
         figure_metrics: Sequence[str] = ("error", "sw2")) -> dict:
    """Write ``results.json``, ``results.md`` and PNG figures to ``out_dir`` (created if needed).

    The figures are drawn by :func:`scoresde.plotting.save_comparison_figures` (matplotlib is
    imported only when ``figures`` is true) from the records marked by
    :func:`~scoresde.compare.noise.rank`: one set per target, ``<metric>_vs_nfe_<target>.png``
    for each of ``figure_metrics`` and, when records carry ``samples``
    (``keep_samples=True``), ``samples_<target>.png``.

    Returns
    -------
    dict
        ``{"json": Path, "markdown": Path, "figures": [Path, ...]}``.
    """
    _check_records(records)
    if figures:
        for metric in figure_metrics:
            if metric not in METRICS:
                raise ValueError(
                    f"figure_metrics must contain names from {METRICS}, got {metric!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "figures": []}
    paths["json"].write_text(to_json(records) + "\n", encoding="utf-8")
    paths["markdown"].write_text(to_markdown(records), encoding="utf-8")
    if figures:
        from ..plotting import save_comparison_figures

        ranked = rank(records, [m for m in figure_metrics if m in RANKED])
        paths["figures"] = save_comparison_figures(ranked, out, metrics=figure_metrics)
    return paths
