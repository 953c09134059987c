"""Matplotlib figures: error against NFE, sample scatter grids and sampling trajectories.

:func:`save_comparison_figures` writes the figures of a comparison (the records of
:func:`scoresde.compare.run_comparison`) to a folder; this module reads records as plain dicts
and never imports :mod:`scoresde.compare`.

Every function builds a fresh :class:`matplotlib.figure.Figure` on an Agg canvas and returns
it; nothing goes through ``pyplot``, so no global figure state is created or left behind and
no window is ever opened. Save with ``fig.savefig(path)``; in a notebook the returned figure
displays itself.
"""

from __future__ import annotations

import math
import re
import textwrap
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.ticker as mticker
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ._checks import check_int, check_positive, derive_seed
from .metrics import METRIC_DESCRIPTIONS, METRICS, REFERENCE_DESCRIPTIONS
from .targets import make_target, target_names

__all__ = [
    "plot_error_vs_nfe",
    "plot_samples",
    "plot_trajectories",
    "plot_image_grid",
    "save_comparison_figures",
    "sampler_color",
]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h")
# line styles of the record sources in order of appearance; scoresde's own records are solid
_SOURCE_STYLES = ("--", ":", "-.")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _as_numpy(name: str, x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a tensor or an array of numbers, got {type(x).__name__}") from None


def _points(name: str, x) -> np.ndarray:
    """First two coordinates of a sample ``(n, *event)`` with >= 2 entries per point."""
    a = _as_numpy(name, x)
    if a.ndim < 2 or a.shape[0] < 1:
        raise ValueError(f"{name} must have shape (n, *event_shape), got {a.shape}")
    a = a.reshape(a.shape[0], -1)
    if a.shape[1] < 2:
        raise ValueError(f"{name} must have at least 2 coordinates per point, got {a.shape[1]}")
    a = a[:, :2]
    return a[np.isfinite(a).all(axis=1)]


def _finite_positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def sampler_color(name: str):
    """The colour of a sampler in every figure, keyed on its name (an RGBA tuple).

    Registered samplers (:func:`scoresde.samplers.names`) get fixed, distinct colours; any
    other name a colour derived from a CRC-32 of the name, so it is the same in every figure
    and every process. A label with a parenthesised suffix (``"heun (vp)"``,
    ``"heun (100 NFE)"``) has the colour of its first part.

    Examples
    --------
    >>> from scoresde.plotting import sampler_color
    >>> sampler_color("heun") == sampler_color("heun (ve)")
    True
    """
    from .samplers import names

    base = str(name).split(" (")[0]
    registered = names()
    if base in registered:  # the dark halves of tab20 first (tab10's colours), the light, then tab20b
        i = registered.index(base) % 40
        if i >= 20:
            return matplotlib.colormaps["tab20b"](i - 20)
        return matplotlib.colormaps["tab20"](2 * i if i < 10 else 2 * (i - 10) + 1)
    k = zlib.crc32(base.encode()) % 40
    return matplotlib.colormaps["tab20b" if k < 20 else "tab20c"](k % 20)


def plot_error_vs_nfe(records: Sequence[Mapping], metric: str = "error", target: str | None = None,
                      *, title: str | None = None, caption: bool = True) -> Figure:
    """Log-log plot of a metric against the actual NFE, one line per sampler.

    Only records with ``status == "ok"`` and a finite positive value are drawn; the target's
    noise floor (the metric for exact samples at the same ``n``, from the records'
    ``noise_floor``) is a dashed grey horizontal line. With ``target=None`` every target in the
    records gets its own panel. Records may come from
    :func:`scoresde.compare.run_comparison`, :func:`scoresde.compare.load` or any producer
    that writes the same keys; when they hold several SDEs the SDE is added to the labels
    (and sets the marker).

    What is drawn comes from explicit fields of the records:

    - colour: the sampler (:func:`sampler_color`, the same in every figure);
    - line style: ``source`` — solid for ``"scoresde"`` (or no source), then dashed, dotted
      and dash-dotted for other sources (e.g. ``"diffusers"``) in the order they appear;
    - error bars, and a grey band around the floor: two standard errors over the records'
      ``seeds`` (from ``spread`` and ``noise_floor_spread``; none with one seed);
    - hollow markers: within noise of the floor, an up-arrow: the value rises from the
      sampler's previous NFE beyond noise (``noise_marks`` of
      :func:`scoresde.compare.noise.rank`).

    The NFE axis is labelled with the NFE values themselves as plain numbers, the metric axis
    with plain numbers. With ``caption`` the figure says what the metric is
    (:data:`scoresde.metrics.METRIC_DESCRIPTIONS`), over how many seeds, and where a sampler's
    value rises with the NFE.

    Parameters
    ----------
    records : list of dict
    metric : str
        One of :data:`scoresde.metrics.METRICS` (default the combined ``"error"``).
    target : str, optional
        Plot only this target.
    title : str, optional
        Figure title.
    caption : bool
        Write the caption below the panels.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if isinstance(records, Mapping) or not isinstance(records, Sequence):
        raise TypeError(f"records must be a list of dicts, got {type(records).__name__}")
    if not all(isinstance(r, Mapping) for r in records):
        raise TypeError("records must be a list of dicts")
    present = list(dict.fromkeys(r.get("target") for r in records))
    if target is not None:
        if target not in present:
            raise ValueError(
                f"target {target!r} is not in the records; present: {', '.join(map(str, present))}")
        present = [target]
    if not present:
        raise ValueError("records is empty")
    ncols = min(2, len(present))
    nrows = math.ceil(len(present) / ncols)
    fig = _figure(6.0 * ncols, 4.2 * nrows + (0.9 if caption else 0.0))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    rises: list[str] = []
    for ax, tname in zip(axes, present, strict=False):
        rises += _error_panel(ax, [r for r in records if r.get("target") == tname], metric)
        ax.set_title(str(tname))
    for ax in axes[len(present):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    if caption:
        shown = [r for r in records if r.get("target") in present]
        fig.supxlabel(_caption(shown, metric, rises, width=int(105 * ncols)), fontsize=7,
                      ha="left", x=0.01)
    return fig


def _se(record: Mapping, metric: str, key: str = "spread") -> float | None:
    """Standard error of a record's metric over its seeds (None with one seed)."""
    spread, seeds = record.get(key), record.get("seeds") or 1
    s = spread.get(metric) if isinstance(spread, Mapping) else None
    if seeds < 2 or not isinstance(s, (int, float)) or not math.isfinite(s):
        return None
    return float(s) / math.sqrt(seeds)


def _mark(record: Mapping, metric: str, key: str):
    marks = record.get("noise_marks")
    mark = marks.get(metric) if isinstance(marks, Mapping) else None
    return mark.get(key) if isinstance(mark, Mapping) else None


def _caption(records: Sequence[Mapping], metric: str, rises: list[str], width: int) -> str:
    seeds = sorted({int(r.get("seeds") or 1) for r in records})
    text = f"{metric}: {METRIC_DESCRIPTIONS[metric]}."
    if records and all(r.get("mode") == "reference" for r in records):
        text = f"{metric}: {REFERENCE_DESCRIPTIONS.get(metric, METRIC_DESCRIPTIONS[metric])}."
    if seeds and seeds[-1] > 1:
        text += (f" Mean over {'/'.join(map(str, seeds))} seeds; bars and the grey band around "
                 "the noise floor: ±2 standard errors (overlapping bars: within noise); hollow "
                 "markers: within noise of the floor.")
    else:
        text += " One seed: no spread, differences within noise are not marked."
    if rises:
        text += " ↑ rises with NFE: " + "; ".join(rises) + "."
    return textwrap.fill(text, width)


def _plain(value, _pos=None) -> str:
    return f"{value:g}"


def _plain_2_5(value, _pos=None) -> str:
    """Minor log ticks (positive): label 2 and 5 times a power of ten, leave the others blank."""
    lead = round(value / 10.0 ** math.floor(math.log10(value) + 1e-9), 6)
    return f"{value:g}" if lead in (2.0, 5.0) else ""


def _error_panel(ax, records: list[Mapping], metric: str) -> list[str]:
    """Draw one target's lines; return the ``"sampler a→b"`` of every rise with NFE."""
    sdes = list(dict.fromkeys(r.get("sde") for r in records))
    lines: dict[str, list[tuple[float, float, float | None, bool, bool]]] = {}
    styles: dict[str, tuple] = {}
    for r in records:
        if r.get("status", "ok") != "ok":
            continue
        v, nfe = r.get(metric), r.get("nfe")
        if not (_finite_positive(v) and _finite_positive(nfe)):
            continue
        label = str(r.get("sampler"))
        if len(sdes) > 1:
            label += f" ({r.get('sde')})"
        hollow = _mark(r, metric, "vs_floor") == "≈"
        rises = bool(_mark(r, metric, "rises_from"))
        lines.setdefault(label, []).append((float(nfe), float(v), _se(r, metric), hollow, rises))
        marker = _MARKERS[(sdes.index(r.get("sde")) if len(sdes) > 1 else len(styles))
                          % len(_MARKERS)]
        styles.setdefault(label, (sampler_color(label), _source_style(r.get("source"), records),
                                  marker))
    risen: list[str] = []
    xs_all: set[float] = set()
    ys_all: list[float] = []
    for label, pts in lines.items():
        pts.sort()
        color, ls, marker = styles[label]
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        xs_all.update(xs)
        ys_all += ys
        filled = [i for i, p in enumerate(pts) if not p[3]]
        ax.plot(xs, ys, marker=marker, markevery=filled, ms=4, lw=1.3, label=label, color=color,
                ls=ls)
        hollow = [i for i, p in enumerate(pts) if p[3]]
        if hollow:
            ax.plot([xs[i] for i in hollow], [ys[i] for i in hollow], ls="none", marker=marker,
                    ms=5, mfc="white", mec=color, label="_nolegend_")
        bars = [(x, y, se) for x, y, se, _, _ in pts if se is not None]
        if bars:
            bx, by, bse = zip(*bars, strict=True)
            lo = [min(2 * e, 0.95 * y) for y, e in zip(by, bse, strict=True)]
            ax.errorbar(bx, by, yerr=[lo, [2 * e for e in bse]], fmt="none", ecolor=color,
                        elinewidth=0.8, capsize=2, label="_nolegend_")
        for i, p in enumerate(pts):
            if p[4] and i > 0:
                ax.annotate("↑", (p[0], p[1]), textcoords="offset points", xytext=(0, 5),
                            ha="center", va="bottom", color=color, fontsize=9)
                risen.append(f"{label} {xs[i - 1]:g}→{p[0]:g}")
    floor_rec = next((r for r in records if isinstance(r.get("noise_floor"), Mapping)), None)
    floor = floor_rec["noise_floor"] if floor_rec is not None else None
    if floor is not None and _finite_positive(floor.get(metric)):
        ax.axhline(floor[metric], color="0.35", ls="--", lw=1.0, label="noise floor (exact)")
        ys_all.append(float(floor[metric]))
        se = _se(floor_rec, metric, "noise_floor_spread")
        if se is not None:
            ax.axhspan(max(floor[metric] - 2 * se, 0.05 * floor[metric]), floor[metric] + 2 * se,
                       color="0.6", alpha=0.2, lw=0, label="_nolegend_")
    if lines:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = sorted(xs_all)
        if len(ticks) <= 12:  # label the NFE values themselves
            ax.xaxis.set_major_locator(mticker.FixedLocator(ticks))
            ax.xaxis.set_minor_locator(mticker.NullLocator())
        ax.xaxis.set_major_formatter(mticker.FuncFormatter(_plain))
        ax.yaxis.set_major_formatter(mticker.FuncFormatter(_plain))
        span = max(ys_all) / min(ys_all)
        minor = _plain if span < 10.0 else _plain_2_5 if span < 1e3 else None
        ax.yaxis.set_minor_formatter(mticker.FuncFormatter(minor) if minor
                                     else mticker.NullFormatter())
    else:
        ax.text(0.5, 0.5, "no successful runs", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("NFE (score evaluations)")
    ax.set_ylabel(metric)
    ax.grid(True, which="both", alpha=0.25)
    if lines or floor is not None:
        ax.legend(fontsize=7, loc="best")
    return risen


def _source_style(source, records: Sequence[Mapping]) -> str:
    """Line style of a record source: solid for scoresde's own, then one style per source."""
    if source in (None, "scoresde"):
        return "-"
    others = list(dict.fromkeys(r.get("source") for r in records
                                if r.get("source") not in (None, "scoresde")))
    return _SOURCE_STYLES[others.index(source) % len(_SOURCE_STYLES)]


def plot_samples(samples_by_name: Mapping[str, torch.Tensor], reference=None, ncols: int = 4, *,
                 max_points: int = 2000, size: float = 3.0, title: str | None = None) -> Figure:
    """Scatter grid of samples, first two coordinates, one panel per name.

    With a ``reference`` (an exact sample) the first panel shows it and every other panel draws
    it faintly in grey behind the samples; all panels share the axis limits of the reference
    (or of all samples when there is none), so a sampler that spreads too far shows up as
    points leaving the frame — their count is given in the panel title. Each panel is drawn in
    the colour of its sampler (:func:`sampler_color`), as in :func:`plot_error_vs_nfe`.

    Parameters
    ----------
    samples_by_name : mapping str -> Tensor
        Samples ``(n, *event)`` with at least 2 coordinates each.
    reference : Tensor, optional
        An exact sample of the target.
    ncols : int
        Panels per row (>= 1).
    max_points : int
        At most this many points per panel (the first ones).
    size : float
        Panel size in inches.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(samples_by_name, Mapping) or not samples_by_name:
        raise ValueError("samples_by_name must be a non-empty mapping name -> samples")
    ncols = check_int("ncols", ncols)
    max_points = check_int("max_points", max_points)
    size = check_positive("size", size)
    panels = [(str(k), _points(f"samples_by_name[{k!r}]", v)[:max_points])
              for k, v in samples_by_name.items()]
    ref = None
    if reference is not None:
        ref = _points("reference", reference)[:max_points]
        panels.insert(0, ("reference (exact)", ref))
    basis = ref if ref is not None and len(ref) else np.concatenate([p for _, p in panels])
    if len(basis):
        lo, hi = np.quantile(basis, 0.002, axis=0), np.quantile(basis, 0.998, axis=0)
    else:
        lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    pad = 0.15 * np.maximum(hi - lo, 1e-6)
    lo, hi = lo - pad, hi + pad
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = _figure(size * ncols, size * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, (ax, (name, pts)) in enumerate(zip(axes, panels, strict=False)):
        is_ref = ref is not None and i == 0
        if ref is not None and not is_ref:
            ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.8", linewidths=0)
        ax.scatter(pts[:, 0], pts[:, 1], s=2, color="0.2" if is_ref else sampler_color(name),
                   linewidths=0, alpha=0.7)
        outside = int((~((pts >= lo) & (pts <= hi)).all(axis=1)).sum())
        ax.set_title(name if not outside else f"{name} ({outside} outside)", fontsize=9)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal", adjustable="box")
        ax.tick_params(labelsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def plot_trajectories(trajectory, times, *, n_paths: int = 50, reference=None,
                      title: str | None = None) -> Figure:
    """Sampling paths of 2-D points: in the plane, and the first coordinate against time.

    Takes the ``trajectory`` and ``times`` of a :class:`~scoresde.samplers.SampleResult`
    produced with ``trajectory=True``. Left panel: ``n_paths`` paths in the plane (first two
    coordinates) from the prior draw (grey) to the final samples (coloured), over a faint
    ``reference`` sample when given. Right panel: the first coordinate of the same paths
    against ``t``, with time running from ``T`` (left) to the end time (right), as the
    sampler integrates.

    Parameters
    ----------
    trajectory : Tensor
        ``(n_states, batch, *event)`` with at least 2 coordinates per point.
    times : Tensor or sequence of float
        ``(n_states,)``, the time of each state.
    n_paths : int
        Number of paths drawn (>= 1; the first ones).
    reference : Tensor, optional
        An exact sample of the target, drawn behind the paths.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    traj = _as_numpy("trajectory", trajectory)
    if traj.ndim < 3:
        raise ValueError(f"trajectory must have shape (n_states, batch, *event), got {traj.shape}")
    traj = traj.reshape(traj.shape[0], traj.shape[1], -1)
    if traj.shape[2] < 2:
        raise ValueError(
            f"trajectory must have at least 2 coordinates per point, got {traj.shape[2]}")
    ts = _as_numpy("times", times).reshape(-1)
    if ts.shape[0] != traj.shape[0]:
        raise ValueError(
            f"times must have {traj.shape[0]} entries (one per state), got {ts.shape[0]}")
    n_paths = min(check_int("n_paths", n_paths), traj.shape[1])
    paths = traj[:, :n_paths, :2]
    fig = _figure(10.0, 4.3)
    ax_plane, ax_time = fig.subplots(1, 2)
    if reference is not None:
        ref = _points("reference", reference)
        ax_plane.scatter(ref[:, 0], ref[:, 1], s=2, c="0.85", linewidths=0, label="reference")
    for j in range(n_paths):
        ax_plane.plot(paths[:, j, 0], paths[:, j, 1], lw=0.6, alpha=0.5, color=f"C{j % 10}")
        ax_time.plot(ts, paths[:, j, 0], lw=0.6, alpha=0.6, color=f"C{j % 10}")
    ax_plane.scatter(paths[0, :, 0], paths[0, :, 1], s=8, c="0.5", label=f"t = {ts[0]:.3g}")
    ax_plane.scatter(paths[-1, :, 0], paths[-1, :, 1], s=10, c="k", label=f"t = {ts[-1]:.3g}")
    ax_plane.set_xlabel("x[0]")
    ax_plane.set_ylabel("x[1]")
    ax_plane.legend(fontsize=7, loc="best")
    ax_plane.set_title("paths in the plane", fontsize=9)
    ax_time.set_xlabel("t")
    ax_time.set_ylabel("x[0]")
    if ts[0] > ts[-1]:
        ax_time.invert_xaxis()
    ax_time.set_title("first coordinate against time", fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def plot_image_grid(images, ncols: int = 8, *, value_range: tuple[float, float] = (-1.0, 1.0),
                    size: float = 0.9, title: str | None = None) -> Figure:
    """A grid of images ``(n, C, H, W)`` (one or three channels), e.g. sampled digits.

    Pixel values are clipped to ``value_range`` (``[-1, 1]`` for the package's image data) and
    shown in grey for one channel, as RGB for three.

    Returns
    -------
    matplotlib.figure.Figure
    """
    a = _as_numpy("images", images)
    if a.ndim != 4 or a.shape[0] < 1 or a.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (n, C, H, W) with C in (1, 3), got {a.shape}")
    ncols = min(check_int("ncols", ncols), a.shape[0])
    size = check_positive("size", size)
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range!r}")
    a = (np.clip(np.nan_to_num(a, nan=lo), lo, hi) - lo) / (hi - lo)
    nrows = math.ceil(a.shape[0] / ncols)
    fig = _figure(size * ncols, size * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, img in zip(axes, a, strict=False):
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0.0, vmax=1.0)
        else:
            ax.imshow(np.transpose(img, (1, 2, 0)))
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "target"


def save_comparison_figures(records: Sequence[Mapping], out_dir, *,
                            metrics: Sequence[str] = ("error", "sw2"), dpi: int = 110) -> list[Path]:
    """Write the PNG figures of a sampler comparison to ``out_dir`` (created if needed).

    One set per target of the records: ``<metric>_vs_nfe_<target>.png`` for each of
    ``metrics`` (:func:`plot_error_vs_nfe`) and, when records carry ``samples`` (from
    :func:`scoresde.compare.run_comparison` with ``keep_samples=True``),
    ``samples_<target>.png`` (:func:`plot_samples`, against an exact sample of the target when
    it is a named one). File names keep letters, digits and ``_.-`` of the target's name.

    Parameters
    ----------
    records : list of dict
        Comparison records (see :data:`scoresde.compare.RECORD_KEYS`).
    out_dir : str or Path
    metrics : sequence of str
        Names from :data:`scoresde.metrics.METRICS`.
    dpi : int
        Resolution of the PNGs.

    Returns
    -------
    list of Path
        The files written, in order.
    """
    if isinstance(records, Mapping) or not isinstance(records, Sequence):
        raise TypeError(f"records must be a list of dicts, got {type(records).__name__}")
    for metric in metrics:
        if metric not in METRICS:
            raise ValueError(f"metrics must contain names from {METRICS}, got {metric!r}")
    dpi = check_int("dpi", dpi)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for tname in dict.fromkeys(r.get("target") for r in records):
        mine = [r for r in records if r.get("target") == tname]
        for metric in metrics:
            fig = plot_error_vs_nfe(mine, metric=metric, target=tname)
            path = out / f"{metric}_vs_nfe_{_slug(tname)}.png"
            fig.savefig(path, dpi=dpi)
            paths.append(path)
        kept = {r["sampler"]: r["samples"] for r in mine
                if isinstance(r.get("samples"), torch.Tensor)}
        if kept:
            reference = None
            if tname in target_names():
                n_ref = max(int(s.shape[0]) for s in kept.values())
                gen = torch.Generator().manual_seed(
                    derive_seed(int(mine[0].get("seed") or 0), tname, "plot"))
                reference = make_target(tname).sample(n_ref, generator=gen)
            fig = plot_samples(kept, reference=reference,
                               title=f"{tname}: largest budget per sampler")
            path = out / f"samples_{_slug(tname)}.png"
            fig.savefig(path, dpi=dpi)
            paths.append(path)
    return paths
