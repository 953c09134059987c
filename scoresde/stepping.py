r"""Step control written once: Runge–Kutta tableaus, the error norm, the PI controller, ``solve_ivp``.

Every solver of the package that integrates an ODE (or the reverse SDE) with an error estimate
is built from the pieces of this module, and the likelihood uses the same pieces as the
samplers (it imports nothing from :mod:`scoresde.samplers`):

- :class:`ButcherTableau` — an explicit Runge–Kutta method (optionally an embedded pair) as
  validated, immutable data, with one :meth:`~ButcherTableau.step`; :data:`TABLEAUS` names the
  built-in ones;
- :func:`error_ratio` — the one weighted error norm of a step (accepted when at most 1);
- :class:`PIController` — the proportional–integral step-size rule, and
  :func:`integrate_adaptive`, the accept/reject loop around it (rejections, non-finite trial
  steps, ``max_steps``); :func:`initial_step` chooses the first step;
- :func:`scipy_solve` — :func:`scipy.integrate.solve_ivp` on a batch of independent systems held
  in one torch tensor, with the block-diagonal Jacobian structure of :func:`jacobian_structure`.

References
----------
Hairer, Nørsett & Wanner (1993), *Solving Ordinary Differential Equations I*, 2nd ed., §II.1
(order conditions), §II.4 (error norm, initial step). Hairer & Wanner (1996), *Solving Ordinary
Differential Equations II*, §IV.2 (PI control). Gustafsson (1991), *Control theoretic techniques
for stepsize selection in explicit Runge–Kutta methods*, ACM TOMS 17(4).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import torch

from ._runtime import NonFiniteError

__all__ = [
    "ButcherTableau",
    "RKStep",
    "TABLEAUS",
    "EULER",
    "HEUN",
    "RK4",
    "BS3",
    "DOPRI5",
    "NORMS",
    "error_ratio",
    "PIController",
    "initial_step",
    "integrate_adaptive",
    "SCIPY_METHODS",
    "jacobian_structure",
    "scipy_solve",
    "ScipySolution",
]

Field = Callable[[torch.Tensor, float], torch.Tensor]

_TOL = 1e-12  # tolerance of the tableau consistency checks (the coefficients are rationals)


def _floats(name: str, values, length: int | None = None) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite, got {out}")
    if length is not None and len(out) != length:
        raise ValueError(f"{name} must have {length} entries (one per stage), got {len(out)}")
    return out


def _combine(x: torch.Tensor, h: float, weights: Sequence[float], ks: Sequence[torch.Tensor]):
    """``x + h Σ_j w_j k_j`` over the non-zero weights (``x`` itself when all are zero)."""
    terms = [w * k for w, k in zip(weights, ks) if w != 0.0]
    return x + h * sum(terms) if terms else x


class RKStep(NamedTuple):
    r"""One attempted Runge–Kutta step: the new state, its last stage and the error estimate.

    ``k_last`` is the derivative at the new state for an FSAL pair (the next step's first
    stage), else ``None``; ``error`` is :math:`h\sum_j (b_j - \hat b_j) k_j` for an embedded pair,
    else ``None``.
    """

    x: torch.Tensor
    k_last: torch.Tensor | None
    error: torch.Tensor | None


@dataclass(frozen=True)
class ButcherTableau:
    r"""An explicit Runge–Kutta method as validated data (optionally an embedded pair).

    With :math:`s` stages, from :math:`(x_n, t_n)` and step :math:`h` (negative when time runs
    backwards),

    .. math:: k_i = f\Big(x_n + h\sum_{j<i} a_{ij} k_j,\ t_n + c_i h\Big), \qquad
              x_{n+1} = x_n + h\sum_i b_i k_i, \qquad
              \hat x_{n+1} = x_n + h\sum_i \hat b_i k_i,

    and the embedded solution :math:`\hat x` (weights ``b_hat``) gives the local error estimate
    :math:`x_{n+1} - \hat x_{n+1}` (Hairer, Nørsett & Wanner 1993, §II.4).

    Parameters
    ----------
    name : str
        Short name (used in messages).
    c : sequence of float, length ``s``
        Nodes; ``c[0]`` must be 0.
    a : sequence of sequences
        The strictly lower-triangular matrix, row ``i`` holding the ``i`` entries
        :math:`a_{i0}, \dots, a_{i,i-1}` (row 0 is empty). Every row must satisfy the row-sum
        condition :math:`c_i = \sum_j a_{ij}`.
    b : sequence of float, length ``s``
        Weights of the kept solution; consistency needs :math:`\sum_i b_i = 1`.
    order : int
        Order :math:`p` of the kept solution.
    b_hat : sequence of float, optional
        Weights of the embedded solution (:math:`\sum_i \hat b_i = 1`, ``b_hat != b``).
    error_order : int, optional
        Order :math:`\hat p` of the embedded solution (required with ``b_hat``, ``< order``).
    fsal : bool
        "First same as last": the last stage is evaluated at :math:`x_{n+1}` itself
        (:math:`a_{s-1,\cdot} = b_{0..s-2}`, :math:`b_{s-1} = 0`, :math:`c_{s-1} = 1`), so it is the
        next step's first stage and an accepted step costs ``s - 1`` evaluations.

    Attributes
    ----------
    b_error : tuple of float or None
        :math:`b - \hat b`, the weights of the error estimate.

    Raises
    ------
    ValueError, TypeError
        If the shapes or the conditions above do not hold (the message names the entry).

    Examples
    --------
    The Heun–Euler 2(1) pair in four lines, then one step of :math:`\dot x = -x`:

    >>> import torch
    >>> from scoresde.stepping import ButcherTableau
    >>> heun_euler = ButcherTableau("heun_euler", c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5),
    ...                             order=2, b_hat=(1.0, 0.0), error_order=1)
    >>> step = heun_euler.step(lambda x, t: -x, torch.ones(1, 1), 0.0, 0.1)
    >>> round(float(step.x), 6), round(float(step.error), 6)
    (0.905, 0.005)
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    b_hat: tuple[float, ...] | None = None
    error_order: int | None = None
    fsal: bool = False
    b_error: tuple[float, ...] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name must be a non-empty str, got {self.name!r}")
        c = _floats("c", self.c)
        s = len(c)
        if s == 0:
            raise ValueError("c must have at least one entry (one per stage)")
        if c[0] != 0.0:
            raise ValueError(f"c[0] must be 0 (the first stage is evaluated at t_n), got {c[0]}")
        try:
            rows = tuple(self.a)
        except TypeError:
            raise TypeError(f"a must be a sequence of rows, got {self.a!r}") from None
        if len(rows) != s:
            raise ValueError(f"a must have {s} rows (one per stage), got {len(rows)}")
        a = tuple(_floats(f"a[{i}]", row, i) for i, row in enumerate(rows))
        for i in range(1, s):
            if abs(sum(a[i]) - c[i]) > _TOL:
                raise ValueError(
                    f"row-sum condition violated at stage {i}: c[{i}] = {c[i]!r} but "
                    f"sum(a[{i}]) = {sum(a[i])!r}"
                )
        b = _floats("b", self.b, s)
        if abs(sum(b) - 1.0) > _TOL:
            raise ValueError(f"b must sum to 1 (consistency), got sum(b) = {sum(b)!r}")
        if isinstance(self.order, bool) or not isinstance(self.order, int) or self.order < 1:
            raise ValueError(f"order must be an int >= 1, got {self.order!r}")
        b_hat = b_error = None
        if self.b_hat is not None:
            b_hat = _floats("b_hat", self.b_hat, s)
            if abs(sum(b_hat) - 1.0) > _TOL:
                raise ValueError(f"b_hat must sum to 1 (consistency), got {sum(b_hat)!r}")
            if b_hat == b:
                raise ValueError("b_hat must differ from b (it would estimate no error)")
            eo = self.error_order
            if isinstance(eo, bool) or not isinstance(eo, int) or not 1 <= eo < self.order:
                raise ValueError(
                    f"error_order must be an int in [1, order={self.order}) with b_hat, got {eo!r}"
                )
            b_error = tuple(bi - bh for bi, bh in zip(b, b_hat))
        elif self.error_order is not None:
            raise ValueError("error_order is only meaningful with b_hat")
        if not isinstance(self.fsal, bool):
            raise TypeError(f"fsal must be a bool, got {self.fsal!r}")
        if self.fsal and (s < 2 or c[-1] != 1.0 or b[-1] != 0.0
                          or any(abs(x - y) > _TOL for x, y in zip(a[-1], b))):
            raise ValueError(
                "fsal=True needs the last stage at the new state: c[-1] = 1, b[-1] = 0 and "
                "a[-1] = b[:-1]"
            )
        for name, value in (("c", c), ("a", a), ("b", b), ("b_hat", b_hat), ("b_error", b_error)):
            object.__setattr__(self, name, value)

    @property
    def stages(self) -> int:
        """Number of stages :math:`s`."""
        return len(self.c)

    @property
    def embedded(self) -> bool:
        """Whether the tableau carries an embedded solution (an error estimate)."""
        return self.b_hat is not None

    @property
    def evaluations_per_step(self) -> int:
        """Evaluations of ``f`` per accepted step once running (``s - 1`` for FSAL pairs)."""
        return self.stages - 1 if self.fsal else self.stages

    def step(self, f: Field, x: torch.Tensor, t: float, h: float,
             k0: torch.Tensor | None = None) -> RKStep:
        """One step of size ``h`` from ``(x, t)``; ``k0 = f(x, t)`` if already known (FSAL).

        Evaluates ``f(y, t)`` once per stage (``s`` times, ``s - 1`` when ``k0`` is given) and
        returns :class:`RKStep`. Exceptions raised by ``f`` propagate.
        """
        ks = [f(x, t) if k0 is None else k0]
        y = x
        for ci, row in zip(self.c[1:], self.a[1:]):
            y = _combine(x, h, row, ks)
            ks.append(f(y, t + ci * h))
        x_new = y if self.fsal else _combine(x, h, self.b, ks)
        error = None
        if self.b_error is not None:
            error = h * sum(e * k for e, k in zip(self.b_error, ks) if e != 0.0)
        return RKStep(x_new, ks[-1] if self.fsal else None, error)


EULER = ButcherTableau("euler", c=(0.0,), a=((),), b=(1.0,), order=1)
HEUN = ButcherTableau("heun", c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2)
RK4 = ButcherTableau(
    "rk4",
    c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    order=4,
)
# Bogacki & Shampine (1989), Appl. Math. Lett. 2(4): the 3(2) pair of scipy's RK23
BS3 = ButcherTableau(
    "bs3",
    c=(0.0, 0.5, 0.75, 1.0),
    a=((), (0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    b_hat=(7 / 24, 1 / 4, 1 / 3, 1 / 8),
    order=3,
    error_order=2,
    fsal=True,
)
# Dormand & Prince (1980), J. Comput. Appl. Math. 6(1): the 5(4) pair of scipy's RK45
DOPRI5 = ButcherTableau(
    "dopri5",
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    b_hat=(5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    order=5,
    error_order=4,
    fsal=True,
)

#: The built-in tableaus by name (read-only).
TABLEAUS = MappingProxyType({tab.name: tab for tab in (EULER, HEUN, RK4, BS3, DOPRI5)})

NORMS = ("rms", "max")


def error_ratio(error: torch.Tensor, x_old: torch.Tensor, x_new: torch.Tensor, *, rtol: float,
                atol: float, norm: str = "rms", mixed: str = "sum",
                blocks: Sequence[int] | None = None) -> float:
    r"""The weighted norm of a local error estimate; a step is accepted when it is at most 1.

    .. math:: \mathrm{err} = \Big\lVert \frac{e}{\delta} \Big\rVert, \qquad
              \delta = \mathrm{atol} + \mathrm{rtol}\,\max(|x_{\rm old}|, |x_{\rm new}|)
              \ \ (\texttt{mixed="sum"}) \quad\text{or}\quad
              \max\big(\mathrm{atol}, \mathrm{rtol}\,\max(|x_{\rm old}|, |x_{\rm new}|)\big)
              \ \ (\texttt{mixed="max"}),

    entrywise, with :math:`\lVert\cdot\rVert` the root mean square over every entry of the batch
    (``norm="rms"``, as :func:`scipy.integrate.solve_ivp` and Hairer, Nørsett & Wanner 1993,
    §II.4, eq. 4.11) or the largest per-sample RMS (``norm="max"``: every sample meets the
    tolerance). ``mixed="max"`` is the tolerance of Jolicoeur-Martineau et al. (2021).

    ``blocks`` splits each sample's (flattened) entries into consecutive groups of these sizes
    (they must add up to the entries per sample): a sample's error is then the largest of the
    groups' RMS values instead of the RMS over all its entries, so that a small group (e.g. the
    one log-determinant entry next to ``d`` state entries of an augmented flow) is held to the
    tolerance on its own rather than diluted by the others. The batch norm is taken over these
    per-sample errors as above.

    Returns a Python float (one host synchronisation) that is ``inf`` whenever ``e`` or
    ``x_new`` holds a NaN or an infinity, so that a non-finite trial step is rejected.
    """
    mag = torch.maximum(x_old.abs(), x_new.abs())
    scale = atol + rtol * mag if mixed == "sum" else torch.clamp(rtol * mag, min=atol)
    # (x_new - x_new) is 0 where x_new is finite and NaN where it is not: one fused check
    ratio2 = ((error / scale).square() + (x_new - x_new)).reshape(error.shape[0], -1)
    if blocks is not None:
        sizes = [int(n) for n in blocks]
        if any(n < 1 for n in sizes) or sum(sizes) != ratio2.shape[1]:
            raise ValueError(
                f"blocks must be sizes >= 1 adding up to the {ratio2.shape[1]} entries per "
                f"sample, got {tuple(blocks)}"
            )
        # a sample's squared error: the largest mean square over its blocks (NaN propagates)
        per_sample = torch.stack([part.mean(dim=1) for part in ratio2.split(sizes, dim=1)])
        per_sample = per_sample.amax(dim=0)
        value = per_sample.mean().sqrt() if norm == "rms" else per_sample.amax().sqrt()
    else:
        value = ratio2.mean().sqrt() if norm == "rms" else ratio2.mean(dim=1).amax().sqrt()
    value = float(value)
    return value if math.isfinite(value) else math.inf


@dataclass(frozen=True)
class PIController:
    r"""Proportional–integral step-size control (Gustafsson 1991; Hairer & Wanner 1996, §IV.2).

    After an accepted step with error ratio :math:`\mathrm{err}_n` (previous accepted
    :math:`\mathrm{err}_{n-1}`, 1 at the start) the next step is :math:`h_{n+1} = h_n\,\phi` with

    .. math:: \phi = \min\!\Big(\phi_{\max},\ \max\big(\phi_{\min},\ \theta\,
              \mathrm{err}_n^{-\alpha/k}\,\mathrm{err}_{n-1}^{\beta/k}\big)\Big),

    where :math:`k` is the order of the error estimate plus one (``order``; :math:`p` for a
    :math:`p(p-1)` pair), :math:`\theta` the safety factor and :math:`\phi_{\max}` is
    ``fac_max``, or ``fac_max_after_reject`` right after a rejection (no growth straight after
    a failure). A rejected step is retried with :math:`\phi = \max(\phi_{\min}, \theta\,
    \mathrm{err}^{-\alpha_{\rm rej}/k})`, and with ``fac_nonfinite`` when the trial was not
    finite. ``beta = 0`` gives the classical (integral) controller
    :math:`\theta\,\mathrm{err}^{-\alpha/k}`.

    Parameters
    ----------
    order : int
        :math:`k` above (>= 1).
    alpha, beta : float
        Integral and proportional gains (defaults 0.7 and 0.4, Hairer & Wanner's values).
    reject_alpha : float
        Exponent gain after a rejection (default 1, the plain :math:`\mathrm{err}^{-1/k}`).
    safety : float
        :math:`\theta` in ``(0, 1]`` (default 0.9).
    fac_min, fac_max, fac_max_after_reject : float
        Factor limits, ``0 <= fac_min < 1 <= fac_max_after_reject <= fac_max`` (``inf``
        allowed for the upper ones); defaults 0.2, 10 and 1.
    fac_nonfinite : float
        Factor after a non-finite trial, in ``(0, 1)`` (default 0.2).
    err_floor : float
        Errors below this are treated as this (default ``1e-10``), so a step with no error
        estimate grows by the factor limit rather than overflowing.
    """

    order: int
    alpha: float = 0.7
    beta: float = 0.4
    reject_alpha: float = 1.0
    safety: float = 0.9
    fac_min: float = 0.2
    fac_max: float = 10.0
    fac_max_after_reject: float = 1.0
    fac_nonfinite: float = 0.2
    err_floor: float = 1e-10

    def __post_init__(self):
        if isinstance(self.order, bool) or not isinstance(self.order, int) or self.order < 1:
            raise ValueError(f"order must be an int >= 1, got {self.order!r}")
        checks = (
            ("alpha", lambda v: 0.0 < v < math.inf, "> 0"),
            ("beta", lambda v: 0.0 <= v < math.inf, ">= 0"),
            ("reject_alpha", lambda v: 0.0 < v < math.inf, "> 0"),
            ("safety", lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
            ("fac_min", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
            ("fac_max", lambda v: v >= 1.0, ">= 1"),
            ("fac_max_after_reject", lambda v: 1.0 <= v <= self.fac_max, "in [1, fac_max]"),
            ("fac_nonfinite", lambda v: 0.0 < v < 1.0, "in (0, 1)"),
            ("err_floor", lambda v: 0.0 < v < 1.0, "in (0, 1)"),
        )
        for name, ok, allowed in checks:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not ok(value):
                raise ValueError(f"{name} must be {allowed}, got {value!r}")

    def accepted(self, err: float, err_prev: float, after_reject: bool) -> float:
        """The step factor after an accepted step (``err <= 1``)."""
        err = max(err, self.err_floor)
        fac = self.safety * err ** (-self.alpha / self.order) * err_prev ** (self.beta / self.order)
        top = self.fac_max_after_reject if after_reject else self.fac_max
        return min(top, max(self.fac_min, fac))

    def rejected(self, err: float) -> float:
        """The step factor after a rejected step (``err > 1``, ``inf`` if not finite)."""
        if not math.isfinite(err):
            return self.fac_nonfinite
        return max(self.fac_min, self.safety * err ** (-self.reject_alpha / self.order))


def initial_step(f: Field, x: torch.Tensor, t0: float, k0: torch.Tensor, t_end: float, order: int,
                 rtol: float, atol: float, *, label: str = "initial_step") -> float:
    r"""Hairer's starting step size (Hairer, Nørsett & Wanner 1993, §II.4, p. 169), ``> 0``.

    With :math:`\delta = \mathrm{atol} + \mathrm{rtol}|x_0|`, :math:`d_0 = \lVert x_0/\delta\rVert`,
    :math:`d_1 = \lVert f(x_0)/\delta\rVert`, a trial :math:`h_0 = 0.01\, d_0/d_1` (or
    :math:`10^{-6}`), one extra evaluation :math:`d_2 = \lVert (f(x_0 + h_0 f_0) - f_0)/\delta
    \rVert / h_0`, and :math:`h_1 = (0.01/\max(d_1, d_2))^{1/k}`, the step is
    :math:`\min(100 h_0, h_1, |t_{\rm end} - t_0|)` (RMS norms, ``k = order``). Costs one
    evaluation of ``f``; if that evaluation is not finite (or raises :class:`NonFiniteError`),
    :math:`h_0` is returned and the step controller shrinks it as needed.

    Raises
    ------
    NonFiniteError
        If ``x`` or ``k0 = f(x, t0)`` is not finite (no step size can help): the message
        names step 0 and ``t0``.
    """
    span = t_end - t0
    direction = -1.0 if span < 0 else 1.0

    def rms(y):
        return float(y.square().mean().sqrt())

    scale = atol + rtol * x.abs()
    d0, d1 = rms(x / scale), rms(k0 / scale)
    if not math.isfinite(d0 + d1):
        raise NonFiniteError(f"{label}: non-finite state or derivative at step 0 (t={t0:.6g})")
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, abs(span))
    try:
        k_probe = f(x + direction * h0 * k0, t0 + direction * h0)
    except NonFiniteError:
        return h0
    d2 = rms((k_probe - k0) / scale) / h0
    if not math.isfinite(d2):
        return h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1.0 / order)
    return min(100 * h0, h1, abs(span))


def integrate_adaptive(
    propose: Callable[[Any, float, float, float], tuple[float, Any]],
    state: Any,
    *,
    t0: float,
    t_end: float,
    h: float,
    controller: PIController,
    max_steps: int,
    label: str,
    on_accept: Callable[[int, float, Any], None] | None = None,
) -> Any:
    """The accept/reject loop of an error-controlled solver, from ``t0`` to exactly ``t_end``.

    Each attempt calls ``propose(state, t, t_next, h) -> (err, candidate)`` with the signed step
    ``h`` (``t_next = t + h``, the last step clipped to end exactly at ``t_end``) and the error
    ratio ``err`` of :func:`error_ratio`. The step is accepted when ``err <= 1``: ``state``
    becomes ``candidate`` and ``on_accept(step, t_next, state)`` is called (``step`` counts
    accepted steps from 0). The next step size follows ``controller``.

    A trial that is **not finite** — ``propose`` raises :class:`NonFiniteError` (e.g. from a
    score evaluation checked by the sampler driver) or returns a non-finite ``err`` — is a
    rejected step and is retried with a smaller step.

    Returns the final state.

    Raises
    ------
    NonFiniteError
        If trials keep failing to be finite until the step cannot shrink further (below ten
        units in the last place of ``t``) or until ``max_steps`` attempts; the message names the
        step and the time, and the last error of the trial is chained.
    RuntimeError
        If ``max_steps`` attempts (accepted or rejected) do not reach ``t_end``, or the step size
        underflows, with finite errors (the message names ``max_steps`` and what to change).
    """
    if not (isinstance(h, (int, float)) and math.isfinite(h) and h != 0):
        raise ValueError(f"h must be a finite non-zero step size, got {h!r}")
    direction = -1.0 if t_end < t0 else 1.0
    h = abs(h)
    t, step, attempts, err_prev, after_reject = t0, 0, 0, 1.0, False
    cause: NonFiniteError | None = None
    non_finite = False
    while t != t_end:
        attempts += 1
        remaining = abs(t_end - t)
        last = h >= remaining * (1 - 1e-12)
        too_small = not last and h < 10 * math.ulp(t)
        if attempts > max_steps or too_small:
            why = (f"more than max_steps={max_steps} attempted steps" if attempts > max_steps
                   else f"the step size underflowed ({h:.3g})")
            if non_finite:
                raise NonFiniteError(
                    f"{label}: non-finite trial state at step {step} (t={t:.6g}): {why} while "
                    "shrinking the step; check score_fn or use a larger end time"
                ) from cause
            raise RuntimeError(
                f"{label}: {why} before reaching t={t_end:g} (stuck at t={t:.6g}, step "
                f"{h:.3g}); loosen rtol/atol or raise max_steps"
            )
        hs = (t_end - t) if last else direction * h
        t_next = t_end if last else t + hs
        try:
            err, candidate = propose(state, t, t_next, hs)
            cause = None
        except NonFiniteError as exc:
            err, candidate, cause = math.inf, None, exc
        if not math.isfinite(err):
            err = math.inf
        if err <= 1.0:
            state, t = candidate, t_next
            if on_accept is not None:
                on_accept(step, t, state)
            step += 1
            fac = controller.accepted(err, err_prev, after_reject)
            err_prev, after_reject, non_finite = max(err, controller.err_floor), False, False
        else:
            fac = controller.rejected(err)
            after_reject, non_finite = True, not math.isfinite(err)
        h = abs(hs) * fac
    return state


SCIPY_METHODS = ("RK23", "RK45", "DOP853", "Radau", "BDF", "LSODA")
_IMPLICIT = ("Radau", "BDF")


def jacobian_structure(method: str, batch: int, d: int) -> dict:
    """``solve_ivp`` keywords describing a flattened batch of ``batch`` independent d-dim systems.

    Implicit methods (Radau, BDF) get a block-diagonal ``jac_sparsity`` so that a numerical
    Jacobian costs about ``d`` right-hand-side calls instead of ``batch·d``; LSODA gets the
    equivalent band width; explicit methods need nothing.
    """
    if method in _IMPLICIT:
        from scipy import sparse

        # == sparse.block_diag([ones((d, d))] * batch), built ~50x faster for large batches
        ones = np.ones((d, d), dtype=np.int8)
        pattern = sparse.kron(sparse.identity(batch, format="csr"), ones, format="csc")
        return {"jac_sparsity": pattern}
    if method == "LSODA":
        return {"lband": d - 1, "uband": d - 1}
    return {}


class ScipySolution:
    """What :func:`scipy_solve` returns: the state at each requested time, as torch tensors.

    ``len(sol)`` output times ``sol.times``; ``sol[i]`` converts the ``i``-th state (shape,
    dtype and device of ``y0``) on demand; ``sol.final`` is the last one; ``sol.nfev`` is
    scipy's count of right-hand-side evaluations.
    """

    def __init__(self, sol, like: torch.Tensor):
        self._sol, self._like = sol, like
        self.times = tuple(float(t) for t in sol.t)
        self.nfev = int(sol.nfev)

    def __len__(self) -> int:
        return len(self.times)

    def __getitem__(self, i: int) -> torch.Tensor:
        column = np.ascontiguousarray(self._sol.y[:, i])  # own memory, not a view into sol.y
        like = self._like
        return torch.from_numpy(column).reshape(like.shape).to(device=like.device, dtype=like.dtype)

    @property
    def final(self) -> torch.Tensor:
        """The state at the last output time."""
        return self[len(self) - 1]


def scipy_solve(
    f: Field,
    y0: torch.Tensor,
    t_span: tuple[float, float],
    *,
    method: str,
    rtol: float,
    atol: float,
    t_eval: Sequence[float] | None = None,
    label: str,
    what: str = "derivative",
    hint: str = "check the right-hand side",
) -> ScipySolution:
    r""":func:`scipy.integrate.solve_ivp` for a batch of independent systems held in one tensor.

    Solves :math:`\mathrm dy/\mathrm dt = f(y, t)` for ``y0`` shaped ``(batch, *event)``: the
    batch is flattened into one float64 NumPy system; each right-hand-side call converts the
    state once to the dtype and device of ``y0``, makes one call ``f(y, t)`` (``t`` a float) and
    converts the result back once. Samples are independent, so the Jacobian is block diagonal
    with dense ``d × d`` blocks (``d = prod(event)``): the implicit methods get that structure
    (:func:`jacobian_structure`), so a finite-difference Jacobian costs about ``d`` calls.

    Only the states at ``t_eval`` are kept (dense output, computed once per solver step that
    contains one of them); ``t_eval=None`` keeps just the end point, so the cost and the memory
    do not grow with any output grid.

    Raises
    ------
    NonFiniteError
        At once when ``f`` returns a NaN or an infinity (scipy cannot reject such a step): the
        message is ``"{label}: non-finite {what} at t=... (method ...); {hint}"``.
    RuntimeError
        If ``solve_ivp`` fails (e.g. the step size underflows), with scipy's message.
    """
    from scipy.integrate import solve_ivp

    shape, dtype, device = y0.shape, y0.dtype, y0.device
    batch = shape[0]

    def fun(t: float, y: np.ndarray) -> np.ndarray:
        yt = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        out = f(yt, t).detach().to("cpu", torch.float64).numpy().ravel()
        if not np.isfinite(out).all():
            raise NonFiniteError(f"{label}: non-finite {what} at t={t:.6g} (method {method}); {hint}")
        return out

    t_start, t_stop = float(t_span[0]), float(t_span[1])
    y_flat = y0.detach().to("cpu", torch.float64).numpy().ravel().copy()
    sol = solve_ivp(
        fun, (t_start, t_stop), y_flat, method=method,
        t_eval=[t_stop] if t_eval is None else np.asarray(t_eval, dtype=np.float64),
        rtol=rtol, atol=atol, **jacobian_structure(method, batch, y0[0].numel()),
    )
    if not sol.success:
        raise RuntimeError(
            f"{label}: solve_ivp ({method}, rtol={rtol:g}, atol={atol:g}) failed: {sol.message}"
        )
    return ScipySolution(sol, y0)
