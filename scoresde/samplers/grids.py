r"""Time grids: the decreasing times a sampler integrates over, built outside the sampler.

A grid is a *value* the caller passes (k-diffusion style): :func:`scoresde.sample` takes
``grid=None`` (the sampler's declared :attr:`~scoresde.samplers.Sampler.default_grid`), a name
from :data:`GRIDS` (built by :func:`time_grid`), a :class:`LogSNRSchedule` (fractions of the
log-SNR range, e.g. learned by :func:`~scoresde.samplers.optimize_schedule`) or an explicit
decreasing tensor of times. :func:`resolve_grid` turns any of these into the float64 CPU tensor
handed to :meth:`~scoresde.samplers.Sampler.run`.

Every grid that is spaced in the half log-SNR :math:`\lambda(t) = \log(s(t)/\sigma(t))` of a
:class:`~scoresde.LinearSDE` (``log_snr``, ``edm``, a schedule) goes through one path: fractions
:math:`f_i \in [0, 1]` of the range :math:`[\lambda(T), \lambda(\epsilon)]`, mapped back to times
by ``sde.t_from_log_snr`` with the end points set exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .._checks import check_end_time, check_int, check_linear, check_positive

__all__ = ["GRIDS", "LogSNRSchedule", "time_grid", "resolve_grid"]

GRIDS = ("uniform", "quadratic", "log_snr", "edm")

DEFAULT_STEPS = 500
"""Grid intervals when neither ``steps`` nor an explicit tensor grid is given."""

DEFAULT_EPS = 1e-3
"""End time of a sampling grid when neither ``eps`` nor an explicit tensor grid is given."""


def _fraction_times(sde, f: torch.Tensor, eps: float) -> torch.Tensor:
    """Times whose log-SNR splits ``[lambda(T), lambda(eps)]`` at the fractions ``f``; exact ends.

    The one "points in lambda -> t" path of the package: the ``log_snr`` and ``edm`` grids of
    :func:`time_grid` and :meth:`LogSNRSchedule.times` all end here.
    """
    lam_T, lam_eps = sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64)).tolist()
    times = sde.t_from_log_snr(lam_T + (lam_eps - lam_T) * f.to(torch.float64))
    times[0], times[-1] = sde.T, eps
    return times


def _edm_fractions(sde, u: torch.Tensor, eps: float, rho: float) -> torch.Tensor:
    r"""Karras et al. (2022) spacing as log-SNR fractions: :math:`(\sigma/s)^{1/\rho}` uniform in ``u``."""
    lam_T, lam_eps = sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64)).tolist()
    hi, lo = math.exp(-lam_T / rho), math.exp(-lam_eps / rho)
    lam = -rho * torch.log(hi + (lo - hi) * u)
    return (lam - lam_T) / (lam_eps - lam_T)


def time_grid(sde, steps: int, eps: float = DEFAULT_EPS, kind: str = "uniform",
              rho: float = 7.0) -> torch.Tensor:
    r"""A decreasing float64 grid of ``steps + 1`` times from ``T`` down to ``eps``.

    With :math:`u_i = i/N`, :math:`i = 0..N`:

    - ``"uniform"``: :math:`t_i = T + (\epsilon - T)\,u_i`, equal steps in ``t``;
    - ``"quadratic"``: :math:`t_i = \epsilon + (T - \epsilon)(1 - u_i)^2`, dense near the data
      (the quadratic spacing of Song, Meng & Ermon 2021, DDIM);
    - ``"log_snr"``: equal steps in :math:`\lambda = \log(s/\sigma)`,
      :math:`\lambda_i = \lambda(T) + u_i(\lambda(\epsilon) - \lambda(T))` (Lu et al. 2022,
      DPM-Solver);
    - ``"edm"``: :math:`\tilde\sigma_i^{1/\rho}` uniform in :math:`u_i`, with the
      noise-to-signal ratio :math:`\tilde\sigma = \sigma/s = e^{-\lambda}` (Karras et al. 2022,
      eq. 5).

    The last two need a :class:`~scoresde.LinearSDE`.

    Parameters
    ----------
    sde : SDE
    steps : int
        Number of intervals (>= 1).
    eps : float
        End time in ``(0, T)``. Samplers stop there rather than at 0, where the score of
        data on a low-dimensional set is singular (Song et al. 2021 use 1e-3 for sampling).
    kind : {"uniform", "quadratic", "log_snr", "edm"}
        The spacing (see above).
    rho : float
        Exponent of the ``edm`` grid (7 in the paper).

    References
    ----------
    Lu, Zhou, Bao, Chen, Li & Zhu (2022), *DPM-Solver*, NeurIPS. Karras, Aittala, Aila & Laine
    (2022), *Elucidating the design space of diffusion-based generative models*, NeurIPS.
    Song, Meng & Ermon (2021), *Denoising diffusion implicit models*, ICLR.

    Examples
    --------
    >>> import scoresde as sd
    >>> sd.samplers.time_grid(sd.VPSDE(), 4, eps=0.2)
    tensor([1.0000, 0.8000, 0.6000, 0.4000, 0.2000], dtype=torch.float64)
    """
    steps = check_int("steps", steps)
    eps = check_end_time(sde, eps)
    if kind not in GRIDS:
        raise ValueError(f"kind must be one of {GRIDS}, got {kind!r}")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)  # 0 at T, 1 at eps
    if kind == "uniform":
        times = sde.T + (eps - sde.T) * u
    elif kind == "quadratic":
        times = eps + (sde.T - eps) * (1.0 - u) ** 2
    else:
        check_linear(sde, f"the {kind!r} grid")
        if kind == "edm":
            u = _edm_fractions(sde, u, eps, check_positive("rho", rho))
        return _fraction_times(sde, u, eps)
    times[0], times[-1] = sde.T, eps
    return times


def _check_fractions(steps: int, values) -> torch.Tensor:
    f = torch.as_tensor(values, dtype=torch.float64).detach().cpu().reshape(-1)
    if f.numel() != steps + 1:
        raise ValueError(f"fractions for {steps} steps must have {steps + 1} entries, got {f.numel()}")
    if not bool(torch.isfinite(f).all()):
        raise ValueError(f"fractions for {steps} steps must be finite")
    if f[0] != 0.0 or f[-1] != 1.0 or not bool((f[1:] > f[:-1]).all()):
        raise ValueError(
            f"fractions for {steps} steps must increase strictly from 0 to 1, got {f.tolist()}")
    return f


class LogSNRSchedule:
    r"""Time grids stored as fractions of the log-SNR range, one per optimised step count.

    For ``steps`` steps, an SDE and an end time ``eps`` the grid is
    :math:`\lambda_i = \lambda(T) + f_i\,(\lambda(\epsilon) - \lambda(T))`, mapped back to times
    with ``sde.t_from_log_snr``. Pass a schedule as ``grid`` to :func:`scoresde.sample` (any
    sampler that takes a grid; it needs a :class:`~scoresde.LinearSDE`); build one with
    :func:`~scoresde.samplers.optimize_schedule`. For a step count it holds no grid for, the
    grid of the nearest stored count is interpolated linearly in :math:`i/N`, as Align Your
    Steps does (Sabour, Fidler & Kreis 2024, ICML).

    Parameters
    ----------
    fractions : mapping int -> sequence of float
        For each step count ``N >= 1``, ``N + 1`` fractions increasing strictly from 0 to 1.
    report : dict, optional
        How the schedule was made (kept as :attr:`report`, e.g. the optimiser's cost).

    Examples
    --------
    >>> import scoresde as sd
    >>> from scoresde.samplers import LogSNRSchedule
    >>> sched = LogSNRSchedule({2: [0.0, 0.75, 1.0]})
    >>> sched.fractions(4).tolist()          # interpolated from the 2-step grid
    [0.0, 0.375, 0.75, 0.875, 1.0]
    >>> sde = sd.VPSDE()
    >>> lam = sde.log_snr(sched.times(sde, 2, eps=1e-3))
    >>> round(float((lam[1] - lam[0]) / (lam[2] - lam[0])), 6)
    0.75
    """

    def __init__(self, fractions: Mapping[int, Sequence[float]], report: dict | None = None):
        if not isinstance(fractions, Mapping) or not fractions:
            raise TypeError("fractions must be a non-empty mapping from step counts to fractions")
        self._fractions = {}
        for steps, values in fractions.items():
            steps = check_int("fractions key (steps)", steps)
            self._fractions[steps] = _check_fractions(steps, values)
        self.report = dict(report) if report is not None else {}

    @property
    def steps(self) -> tuple[int, ...]:
        """The step counts the schedule holds a grid for, ascending."""
        return tuple(sorted(self._fractions))

    def fractions(self, steps: int) -> torch.Tensor:
        """The ``steps + 1`` fractions for ``steps`` steps (float64), interpolated if needed."""
        steps = check_int("steps", steps)
        if steps in self._fractions:
            return self._fractions[steps].clone()
        nearest = min(self._fractions, key=lambda k: (abs(k - steps), k))
        knots = self._fractions[nearest].numpy()
        u = np.linspace(0.0, 1.0, steps + 1)
        f = np.interp(u, np.linspace(0.0, 1.0, nearest + 1), knots)
        f[0], f[-1] = 0.0, 1.0
        return torch.from_numpy(f)

    def times(self, sde, steps: int, eps: float = DEFAULT_EPS) -> torch.Tensor:
        """The decreasing float64 time grid from ``sde.T`` to ``eps`` for ``steps`` steps."""
        check_linear(sde, "a log-SNR schedule")
        return _fraction_times(sde, self.fractions(steps), check_end_time(sde, eps))

    def to_dict(self) -> dict:
        """Plain-Python form (for JSON); :meth:`from_dict` inverts it."""
        return {"fractions": {str(k): v.tolist() for k, v in sorted(self._fractions.items())},
                "report": self.report}

    @classmethod
    def from_dict(cls, data: Mapping) -> LogSNRSchedule:
        """Rebuild a schedule from :meth:`to_dict` output."""
        if not isinstance(data, Mapping) or "fractions" not in data:
            raise ValueError("data must be a mapping with a 'fractions' entry (from to_dict)")
        raw = data["fractions"]
        if not isinstance(raw, Mapping):
            raise ValueError("data['fractions'] must be a mapping from step counts to fractions")
        try:
            fractions = {int(k): v for k, v in raw.items()}
        except (TypeError, ValueError) as exc:
            raise ValueError(f"data['fractions'] keys must be step counts: {exc}") from None
        return cls(fractions, report=data.get("report"))

    def __repr__(self) -> str:
        return f"LogSNRSchedule(steps={list(self.steps)})"


def check_times(times, sde, name: str = "grid") -> torch.Tensor:
    """An explicit grid as a fresh float64 CPU tensor, after checking it is a valid grid of ``sde``.

    Valid: a real 1-D tensor of at least 2 finite times, strictly decreasing, inside
    ``[0, T]`` (a relative slack of 1e-6 on ``T`` absorbs float32 rounding; such a first time
    is set to ``T``). The grid may end at ``t = 0``.
    """
    if not isinstance(times, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of times, got {type(times).__name__}")
    if times.is_complex() or times.dtype == torch.bool:
        raise TypeError(f"{name} must be a real tensor of times, got dtype {times.dtype}")
    t = times.detach().to("cpu", torch.float64).clone()
    if t.ndim != 1 or t.numel() < 2:
        raise ValueError(f"{name} must be a 1-D tensor of at least 2 times, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must contain only finite times")
    if not bool((t[1:] < t[:-1]).all()):
        raise ValueError(f"{name} must be strictly decreasing (from the prior towards the data)")
    T = float(sde.T)
    lo, hi = float(t[-1]), float(t[0])
    if lo < 0.0 or hi > T * (1 + 1e-6):
        raise ValueError(f"{name} must lie in [0, T] = [0, {T:g}], got times in [{lo:g}, {hi:g}]")
    if hi > T:
        t[0] = T
    return t


def resolve_grid(grid, sde, steps: int | None = None, eps: float | None = None) -> torch.Tensor:
    """The float64 CPU tensor of times described by ``grid``.

    Parameters
    ----------
    grid : str, LogSNRSchedule or Tensor
        A name from :data:`GRIDS` (see :func:`time_grid`), a :class:`LogSNRSchedule` or an
        explicit decreasing tensor of times (see :func:`check_times`).
    sde : SDE
    steps : int, optional
        Grid intervals (default :data:`DEFAULT_STEPS`). With a tensor grid the tensor's length
        sets them; a ``steps`` that disagrees raises ``ValueError``.
    eps : float, optional
        End time (default :data:`DEFAULT_EPS`). With a tensor grid its last time is the end
        time; an ``eps`` that disagrees raises ``ValueError``.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> from scoresde.samplers import resolve_grid
    >>> resolve_grid("quadratic", sd.VPSDE(), steps=2, eps=0.5).tolist()
    [1.0, 0.625, 0.5]
    >>> resolve_grid(torch.tensor([1.0, 0.5, 0.0]), sd.VPSDE()).tolist()
    [1.0, 0.5, 0.0]
    """
    if isinstance(grid, torch.Tensor):
        times = check_times(grid, sde)
        n = len(times) - 1
        if steps is not None and check_int("steps", steps) != n:
            raise ValueError(
                f"steps={steps} disagrees with the explicit grid of {n + 1} times ({n} steps); "
                "leave steps out (None) when passing a tensor grid")
        if eps is not None:
            end = float(times[-1])
            if abs(check_positive("eps", eps) - end) > 1e-6 * max(abs(end), 1e-12):
                raise ValueError(
                    f"eps={eps:g} disagrees with the explicit grid, which ends at {end:g}; leave "
                    "eps out (None) when passing a tensor grid")
        return times
    steps = DEFAULT_STEPS if steps is None else steps
    eps = DEFAULT_EPS if eps is None else eps
    if isinstance(grid, LogSNRSchedule):
        return grid.times(sde, check_int("steps", steps), eps)
    if isinstance(grid, str):
        return time_grid(sde, steps, eps=eps, kind=grid)
    raise TypeError(
        f"grid must be None, a name from {GRIDS}, a LogSNRSchedule or a tensor of times, got "
        f"{type(grid).__name__}")
