r"""Exact log-likelihoods through the probability-flow ODE, and bits per dimension.

Along the probability-flow ODE :math:`\mathrm dx/\mathrm dt = \tilde f(x, t) = f(x, t) -
\tfrac12 g(t)^2 \nabla_x\log p_t(x)` the density obeys the instantaneous change of variables
(Chen et al. 2018, Thm. 1; Song et al. 2021, §4.3 and App. D.2)

.. math:: \frac{\mathrm d}{\mathrm dt}\log p_t(x_t) = -\nabla\cdot\tilde f(x_t, t)
          \quad\Longrightarrow\quad
          \log p_\epsilon(x_\epsilon) = \log p_T(x_T)
          + \int_\epsilon^T \nabla\cdot\tilde f(x_t, t)\,\mathrm dt,

so the log-density of a point is one ODE solve from the data (``t = eps``) to the prior
(``t = T``) of the augmented state :math:`[x, \Delta]`, :math:`\mathrm d\Delta/\mathrm dt =
\nabla\cdot\tilde f`, followed by one prior evaluation. The solvers (fixed-step Runge–Kutta
tableaus, the embedded pairs with their error norm and PI controller, and the
:func:`scipy.integrate.solve_ivp` wrapper) are those of :mod:`scoresde.stepping`, shared with the
samplers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._checks import all_finite, check_end_time, check_int, check_positive, check_tensor
from ._runtime import CountingScore, NonFiniteError, gaussian_like, time_vector
from .sde import SDE
from .stepping import (
    BS3,
    DOPRI5,
    EULER,
    HEUN,
    RK4,
    SCIPY_METHODS,
    PIController,
    RKStep,
    error_ratio,
    initial_step,
    integrate_adaptive,
    scipy_solve,
)

__all__ = ["log_likelihood", "flow_likelihood", "LikelihoodResult", "bits_per_dim"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

TRACES = ("exact", "hutchinson")
NOISES = ("rademacher", "gaussian")
_FIXED = {tab.name: tab for tab in (EULER, HEUN, RK4)}  # the fixed-step torch methods
METHODS = SCIPY_METHODS + tuple(_FIXED)  # the scipy and fixed-step methods
# the torch embedded pairs with per-sample error control (the default is dopri5)
_ADAPTIVE = {tab.name: tab for tab in (DOPRI5, BS3)}
ADAPTIVE_METHODS = tuple(_ADAPTIVE)
# how the exact trace differentiates the drift: "auto" tries torch.func, then autograd
TRACE_BACKENDS = ("auto", "func", "autograd")
# attempts (accepted or rejected steps) of an adaptive solve before it gives up
_MAX_STEPS = 100_000

# Largest number of grad-output entries (rows x batch x d) handed to one vectorised backward
# pass of the exact trace. Measured on CPU: one pass over all d basis vectors is fastest for
# small batch * d, but for large ones the (d, batch, d) grad outputs make it up to 2x slower
# than a plain loop; chunks of ~2**16 entries were never slower than either.
_TRACE_CHUNK = 2**16

# the old positional order of log_likelihood's options (deprecated: keywords only now)
_POSITIONAL = ("trace", "noise", "method", "rtol", "atol", "eps", "generator", "steps",
               "return_nfe")


def _rademacher_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Independent ±1 entries shaped like ``x``, drawn from ``generator`` on its device."""
    device = generator.device if generator is not None else x.device
    bits = torch.randint(0, 2, x.shape, generator=generator, device=device)
    return (2 * bits - 1).to(device=x.device, dtype=x.dtype)


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or (
        "can't allocate memory" in text
    )


def _out_of_memory(rows: int, batch: int, d: int) -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError(
        f"log_likelihood: out of memory in the exact trace's backward pass over {rows} basis "
        f"vector(s) x batch {batch} x d {d}; pass trace_chunk=1 (one backward pass per "
        "coordinate: least memory, slowest) or a smaller trace_chunk, a smaller batch, or "
        "trace='hutchinson'"
    )


class _AugmentedFlow:
    r"""Right-hand side :math:`(\tilde f, \nabla\cdot\tilde f)` of the augmented flow ODE.

    Every call makes one (counted) ``score_fn`` evaluation, then differentiates it: ``d``
    vector-Jacobian products for the exact trace (``chunk`` of them per vectorised backward
    pass), one for Hutchinson's estimate with the fixed ``probe``. The exact trace runs through
    :mod:`torch.func` (``backend`` "func", or "auto" until torch.func fails on the score: then
    "autograd" for the rest of the solve, which costs that evaluation again) or through
    :func:`torch.autograd.grad`; ``used`` is the one that ran (``None`` for Hutchinson).
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn, probe: torch.Tensor | None, label: str,
                 chunk: int | None, backend: str = "autograd"):
        self.counted = CountingScore(score_fn, label)
        self.flow = sde.probability_flow(self._score)
        self.probe = probe
        self.chunk = chunk  # None: automatic (bounded by _TRACE_CHUNK entries)
        self.batched = chunk is None or chunk > 1  # until a backward without batching rule
        self.backend = backend
        self.used: str | None = None

    def _score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.counted(x, t)
        if not out.requires_grad:
            raise ValueError(
                "score_fn must return a tensor differentiable in x (the likelihood needs its "
                "divergence), got one that does not require grad: do not call it under "
                "torch.no_grad() or detach its output (write a constant score as 0 * x)"
            )
        return out

    def _rows(self, batch: int, d: int) -> int:
        """Basis vectors per vectorised backward pass."""
        if not self.batched:
            return 1
        if self.chunk is None:
            return max(1, min(d, _TRACE_CHUNK // (batch * d)))
        return min(d, self.chunk)

    def __call__(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        if self.probe is None and self.backend != "autograd":
            try:
                out = self._func_call(x, t)
                self.used = "func"
                return out
            except RuntimeError as exc:
                if _is_out_of_memory(exc) or self.backend == "func":
                    raise
                # torch.func cannot transform this score (e.g. an autograd.Function without
                # setup_context): autograd from now on
                self.backend = "autograd"
        if self.probe is None:
            self.used = "autograd"
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            v = self.flow.drift(xg, time_vector(t, xg))
            if self.probe is None:
                div = self._exact_div(v, xg)
            else:
                (u,) = torch.autograd.grad(
                    v, xg, self.probe, allow_unused=True, materialize_grads=True
                )
                div = (u * self.probe).reshape(x.shape[0], -1).sum(-1)
        return v.detach(), div.detach()

    def _func_call(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The drift and its exact divergence by ``torch.func``: one vjp, vmapped over rows."""
        from torch import func

        tt = time_vector(t, x)
        with torch.enable_grad():  # the score's own requires_grad check needs grad mode on
            v, vjp_fn = func.vjp(lambda y: self.flow.drift(y, tt), x.detach())
        batch, d = x.shape[0], x[0].numel()
        chunk = self._rows(batch, d)
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        div = torch.zeros(batch, dtype=x.dtype, device=x.device)
        for i0 in range(0, d, chunk):
            i1 = min(d, i0 + chunk)
            rows = eye[i0:i1, None, :].expand(i1 - i0, batch, d).reshape(i1 - i0, *x.shape)
            try:
                (jac,) = func.vmap(vjp_fn)(rows) if i1 - i0 > 1 else vjp_fn(rows[0])
            except RuntimeError as exc:
                if _is_out_of_memory(exc):
                    raise _out_of_memory(i1 - i0, batch, d) from exc
                raise
            div += jac.reshape(i1 - i0, batch, d)[:, :, i0:i1].diagonal(dim1=0, dim2=2).sum(-1)
        return v.detach(), div.detach()

    def _exact_div(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        batch, d = x.shape[0], x[0].numel()
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        chunk = self._rows(batch, d)
        div = torch.zeros(batch, dtype=x.dtype, device=x.device)
        for i0 in range(0, d, chunk):
            i1 = min(d, i0 + chunk)
            rows = eye[i0:i1, None, :].expand(i1 - i0, batch, d).reshape(i1 - i0, *x.shape)
            try:
                (jac,) = torch.autograd.grad(
                    v, x, rows if self.batched else rows[0], retain_graph=True,
                    is_grads_batched=self.batched, allow_unused=True, materialize_grads=True,
                )
            except RuntimeError as exc:
                if _is_out_of_memory(exc):
                    raise _out_of_memory(i1 - i0, batch, d) from exc
                if not self.batched:
                    raise
                # a backward without a batching rule (e.g. calls .item()): one pass per row
                self.batched = False
                return self._exact_div(v, x)
            # jac[i, b] = e_iᵀ J_b; keep the diagonal entries J_b[i, i]
            div += jac.reshape(i1 - i0, batch, d)[:, :, i0:i1].diagonal(dim1=0, dim2=2).sum(-1)
        return div


@dataclass(frozen=True)
class LikelihoodResult:
    r"""What :func:`flow_likelihood` returns.

    Attributes
    ----------
    logp : Tensor, shape (batch,)
        :math:`\log p_\epsilon(x) = \log\pi(x_T) + \Delta_T` in nats (``prior_logp + delta_logp``),
        in the dtype and on the device of ``x``; detached.
    nfe : int
        Number of ``score_fn`` calls. One call is one batched forward evaluation; the
        vector-Jacobian products that differentiate it are not counted separately (the exact
        trace makes ``d`` of them per call, Hutchinson one); for ``Radau``/``BDF`` the
        finite-difference Jacobian evaluations are included.
    x_T : Tensor, shape like ``x``
        The end point of the flow at ``t = T``: ``x`` mapped into prior space.
    prior_logp : Tensor, shape (batch,)
        :math:`\log\pi(x_T)` (or ``prior_log_prob(x_T)`` when given).
    delta_logp : Tensor, shape (batch,)
        :math:`\Delta_T = \int_\epsilon^T \nabla\cdot\tilde f(x_t, t)\,\mathrm dt`, the
        log-determinant of the flow map's Jacobian from ``eps`` to ``T``.
    trace_backend : str or None
        How the exact trace was differentiated: ``"func"`` (:mod:`torch.func`) or
        ``"autograd"`` (:func:`torch.autograd.grad`); ``None`` for Hutchinson's estimate.
        With ``trace_backend="auto"`` it says whether the solve fell back to autograd.
    """

    logp: torch.Tensor
    nfe: int
    x_T: torch.Tensor
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    trace_backend: str | None = None


def _choice(name: str, value, valid: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, valid))}; got {value!r}")
    return value


def flow_likelihood(
    sde: SDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    *,
    trace: str = "exact",
    noise: str = "rademacher",
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    trace_chunk: int | None = None,
    trace_backend: str = "autograd",
) -> LikelihoodResult:
    r"""Log-density (nats) of ``x`` through the flow ODE, with the count and the parts of the result.

    Integrates the probability-flow ODE forward in time, from the data at ``t = eps`` to the
    prior at ``t = T``, together with the divergence of its drift (Song et al. 2021, eq. 39;
    Chen et al. 2018, Thm. 1):

    .. math::
        \frac{\mathrm d}{\mathrm dt}\begin{bmatrix} x_t \\ \Delta_t \end{bmatrix} =
        \begin{bmatrix} \tilde f(x_t, t) \\ \nabla\cdot\tilde f(x_t, t) \end{bmatrix},
        \quad \tilde f = f - \tfrac12 g^2\,s_\theta, \quad x_\epsilon = x,\ \Delta_\epsilon = 0,

    .. math:: \log p_\epsilon(x) = \log \pi(x_T) + \Delta_T,

    with :math:`\pi` the prior (:meth:`SDE.prior_log_prob`). With the exact score and the true
    :math:`p_T` in place of :math:`\pi` this is an identity. :func:`log_likelihood` returns
    just ``logp``.

    Parameters
    ----------
    sde : SDE
        The forward process.
    score_fn : callable
        ``score_fn(x, t) -> tensor like x``, differentiable in ``x`` (it is called with
        ``x.requires_grad``; do not detach). Samples must be treated independently (no
        batch statistics): the divergence is taken through a batched call.
    x : Tensor, shape ``(batch, *event)``
        Points at which to evaluate the density, finite; ``d = prod(event)``.
    trace : {"exact", "hutchinson"}
        ``exact``: :math:`\nabla\cdot\tilde f = \sum_i \partial\tilde f_i/\partial x_i` from
        ``d`` vector-Jacobian products :math:`e_i^\top \partial\tilde f/\partial x` per drift
        evaluation, vectorised in chunks bounded in memory (see ``trace_chunk``) through
        :func:`torch.autograd.grad` or :mod:`torch.func` (see ``trace_backend``). Each drift
        evaluation then costs one forward call of ``score_fn`` and ``d`` backward passes
        through it — use it for small ``d``.
        ``hutchinson``: the Hutchinson–Skilling estimate :math:`v^\top (\partial\tilde
        f/\partial x)\, v` with one probe ``v`` per sample, drawn once per solve and held fixed
        along the path (Grathwohl et al. 2019): one backward pass per evaluation; unbiased,
        :math:`\mathbb E_v[v^\top J v] = \operatorname{tr} J` for :math:`\mathbb E[vv^\top] = I`.
    noise : {"rademacher", "gaussian"}
        Distribution of the Hutchinson probe (ignored by the exact trace). Rademacher
        :math:`\pm 1` entries have the smaller variance: :math:`2(\|J_s\|_F^2 - \sum_i J_{ii}^2)`
        against :math:`2\|J_s\|_F^2` for Gaussian (:math:`J_s` the symmetric part).
    method : str
        ``"dopri5"`` (default) or ``"bs3"``: the Dormand–Prince 5(4) pair (the pair of scipy's
        ``RK45``) or the Bogacki–Shampine 3(2) pair, in torch (dtype and device of ``x``), with
        **per-sample** error control: a step is accepted only when every sample's local error
        is within its own tolerance, its state and its log-determinant each on their own
        (:func:`scoresde.stepping.error_ratio` with ``norm="max"``, ``blocks=(d, 1)``), under
        PI step-size control (:class:`scoresde.stepping.PIController`). Or a
        :func:`scipy.integrate.solve_ivp` method (``"RK45"`` — Song et al.'s choice —
        ``"RK23"``, ``"DOP853"``, ``"Radau"``, ``"BDF"``, ``"LSODA"``): the batch flattened into
        one float64 system (:func:`scoresde.stepping.scipy_solve`) whose error is the RMS over
        all ``batch · (d + 1)`` entries, so in a large batch one sample can miss the tolerance
        by far (see Notes). Or ``"euler"``, ``"heun"``, ``"rk4"``: explicit Runge–Kutta of
        order 1, 2, 4 (1, 2, 4 score calls per step) in torch over ``steps`` uniform steps
        from ``eps`` to ``T``.
    rtol, atol : float
        Tolerances of the adaptive methods (> 0): the local error of each entry of ``x`` and of
        :math:`\Delta` is measured against :math:`\mathrm{atol} + \mathrm{rtol}\,|\cdot|`.
    eps : float
        Start time in ``(0, T)`` (default ``1e-5``, Song et al.'s choice for likelihoods).
    steps : int, optional
        Number of steps of the fixed-step methods; required by them, not accepted otherwise.
    generator : torch.Generator, optional
        Source of the Hutchinson probes.
    prior_log_prob : callable, optional
        ``prior_log_prob(x_T) -> (batch,)`` used instead of :meth:`SDE.prior_log_prob`, e.g.
        the exact :math:`\log p_T` of a reference target (removes the prior mismatch below).
    trace_chunk : int, optional
        Exact trace only: how many of the ``d`` basis vectors go into one vectorised backward
        pass (>= 1). Default: as many as keep one pass within :math:`2^{16}` grad-output entries
        (``chunk · batch · d``). ``1`` makes one plain backward pass per coordinate (least
        memory, slowest). Running out of memory raises an error that suggests it; the solve
        never switches to the slow path on its own.
    trace_backend : {"autograd", "func", "auto"}
        Exact trace only: how the ``d`` vector-Jacobian products are taken. ``"autograd"``
        (default): :func:`torch.autograd.grad` on the drift's graph, ``is_grads_batched=True``
        per chunk; a score whose backward has no batching rule (e.g. calls ``.item()``) is
        differentiated one coordinate at a time instead. ``"func"``: one
        :func:`torch.func.vjp` per evaluation, :func:`torch.func.vmap` over the basis vectors of
        each chunk; an error of the transform is raised. ``"auto"``: ``"func"``, and if
        :mod:`torch.func` cannot transform the score (it raises, e.g. for an
        :class:`torch.autograd.Function` without ``setup_context`` or for in-place writes into
        captured tensors) the solve switches to ``"autograd"`` for good, paying that score
        evaluation again (counted); running out of memory is never a reason to switch.
        :attr:`LikelihoodResult.trace_backend` says which ran. The two agree to round-off.

    Returns
    -------
    LikelihoodResult
        ``logp`` (shape ``(batch,)``), ``nfe``, ``x_T``, ``prior_logp`` and ``delta_logp``.

    Notes
    -----
    **What is evaluated.** The solve starts at ``t = eps``, so the result is the density of
    :math:`p_\epsilon`, the data law convolved with the transition kernel
    :math:`\mathcal N(s(\epsilon) x_0, \sigma(\epsilon)^2 I)`, at ``x`` — not of :math:`p_0`
    (whose score may be singular): :math:`\log p_\epsilon - \log p_0 \approx
    \tfrac12\sigma(\epsilon)^2 (\Delta\log p_0 + \|\nabla\log p_0\|^2)`, negligible unless the
    data have structure on the scale :math:`\sigma(\epsilon)` (discrete data do: dequantise
    them, see :func:`bits_per_dim`).

    **Prior mismatch.** The prior :math:`\pi` replaces the true :math:`p_T`; the error of each
    result is :math:`\log p_T(x_T) - \log\pi(x_T)`, whose mean over :math:`x_T \sim p_T` is
    :math:`\mathrm{KL}(p_T\,\|\,\pi)`. For a VP SDE with :math:`\sigma(T)^2 \approx 1` and
    :math:`m = \mathbb E x_0`,

    .. math:: \log p_T(x) - \log\pi(x) = s(T)\, x^\top m + O(s(T)^2), \qquad
              \mathrm{KL}(p_T\|\pi) = \tfrac12 s(T)^2\|m\|^2 + O(s(T)^4),

    and for a VE SDE the first-order term is :math:`x^\top m/\sigma_{\max}^2`. Pass
    ``prior_log_prob`` to use a known :math:`p_T` instead. The values for the default SDEs
    are worked out in the user guide ("Likelihood").

    **Accuracy.** With an adaptive method the error is set by ``rtol``/``atol``; with ``rk4``
    it falls as ``steps^-4``. ``dopri5`` and ``bs3`` control each sample's error, so the batch
    takes the steps its hardest sample needs (the others come out more accurate than asked);
    the scipy methods control the RMS over the flattened batch, which averages a hard sample
    away — with ``RK45`` at ``1e-5`` on 256 points of a mixture with a tight mode, the median
    error was :math:`3\cdot10^{-6}` nats and the largest :math:`1.3\cdot10^{-2}` (the user
    guide, "Likelihood", has the measurements). The uniform torch grid is not refined near ``eps``, where the flow is
    stiffest for tight modes. Use float64 inputs for comparisons at the 1e-4 level.

    Raises
    ------
    NonFiniteError
        If the drift or its divergence becomes NaN or inf (the message names the time).
    RuntimeError
        If ``solve_ivp`` fails, or an adaptive torch solve takes more than 100,000 attempted
        steps; with ``trace_backend="func"``, if :mod:`torch.func` cannot transform the score.
    torch.OutOfMemoryError
        If a vectorised backward pass of the exact trace runs out of memory (see
        ``trace_chunk``).

    References
    ----------
    Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), *Score-based generative
    modeling through stochastic differential equations*, ICLR, §4.3 and App. D.2.
    Chen, Rubanova, Bettencourt & Duvenaud (2018), *Neural ordinary differential equations*.
    Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud (2019), *FFJORD*, ICLR.
    Hutchinson (1989); Skilling (1989).
    Dormand & Prince (1980), *A family of embedded Runge–Kutta formulae*, J. Comput. Appl.
    Math. 6(1). Hairer & Wanner (1996), *Solving Ordinary Differential Equations II*, §IV.2.

    Examples
    --------
    With the exact score of a Gaussian and its exact :math:`p_T`, the result is the true
    log-density at ``eps``:

    >>> import torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.tensor([0.5, -0.5]), torch.tensor([[1.0, 0.3], [0.3, 0.5]]))
    >>> x = torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=torch.float64)
    >>> exact = target.log_prob_fn(sde)
    >>> res = sd.flow_likelihood(sde, target.score_fn(sde), x,
    ...                          prior_log_prob=lambda xT: exact(xT, sde.T))
    >>> bool(((res.logp - exact(x, 1e-5)).abs() < 1e-3).all()), res.nfe > 10
    (True, True)
    >>> bool(torch.equal(res.logp, res.prior_logp + res.delta_logp)), res.x_T.shape
    (True, torch.Size([2, 2]))
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an SDE, got {type(sde).__name__}")
    if not callable(score_fn):
        raise TypeError("score_fn must be callable as score_fn(x, t)")
    check_tensor("x", x, min_dim=2)
    if x.numel() == 0:
        raise ValueError(f"x must be non-empty, shape (batch, *event), got {tuple(x.shape)}")
    trace = _choice("trace", trace, TRACES)
    noise = _choice("noise", noise, NOISES)
    method = _choice("method", method, METHODS + ADAPTIVE_METHODS)
    trace_backend = _choice("trace_backend", trace_backend, TRACE_BACKENDS)
    rtol = check_positive("rtol", rtol)
    atol = check_positive("atol", atol)
    eps = check_end_time(sde, eps)
    T = float(sde.T)
    if method in _FIXED:
        if steps is None:
            raise ValueError(f"steps is required with the fixed-step method {method!r}")
        steps = check_int("steps", steps)
    elif steps is not None:
        raise ValueError(
            f"steps is only used by the fixed-step methods {tuple(_FIXED)}; the scipy method "
            f"{method!r} chooses its own steps (set rtol/atol instead), got steps={steps!r}"
        )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if prior_log_prob is not None and not callable(prior_log_prob):
        raise TypeError("prior_log_prob must be callable as prior_log_prob(x_T) -> (batch,)")
    if trace_chunk is not None:
        if trace != "exact":
            raise ValueError(f"trace_chunk is only used by trace='exact', got trace={trace!r}")
        trace_chunk = check_int("trace_chunk", trace_chunk)
    if trace_backend != "autograd" and trace != "exact":
        raise ValueError(
            f"trace_backend is only used by trace='exact', got trace_backend={trace_backend!r} "
            f"with trace={trace!r}"
        )

    x = x.detach()
    probe = None
    if trace == "hutchinson":
        draw = _rademacher_like if noise == "rademacher" else gaussian_like
        probe = draw(x, generator)
    aug = _AugmentedFlow(sde, score_fn, probe, f"log_likelihood ({method})", trace_chunk,
                         trace_backend)
    shape, batch, d = x.shape, x.shape[0], x[0].numel()

    def rhs(z: torch.Tensor, t: float) -> torch.Tensor:
        """The augmented state ``z = [x (d entries), Δ]`` per sample, shape ``(batch, d + 1)``."""
        v, div = aug(z[:, :d].reshape(shape), t)
        return torch.cat([v.reshape(batch, d), div[:, None]], dim=1)

    z = torch.cat([x.reshape(batch, d), x.new_zeros(batch, 1)], dim=1)
    if method in _FIXED:
        z = _solve_fixed(rhs, z, eps, T, steps, _FIXED[method], aug.counted)
    elif method in _ADAPTIVE:
        z = _solve_adaptive(rhs, z, eps, T, _ADAPTIVE[method], rtol, atol, d, aug.counted)
    else:
        def counted_rhs(z: torch.Tensor, t: float) -> torch.Tensor:
            aug.counted.step = aug.counted.calls  # scipy has no steps to name: the call index
            return rhs(z, t)

        z = scipy_solve(
            counted_rhs, z, (eps, T), method=method, rtol=rtol, atol=atol,
            label="log_likelihood", what="drift or divergence",
            hint="check score_fn, use a tighter tolerance, or a larger eps",
        ).final
    x_T, delta = z[:, :d].reshape(shape), z[:, d]

    prior = sde.prior_log_prob(x_T) if prior_log_prob is None else prior_log_prob(x_T)
    if not isinstance(prior, torch.Tensor) or tuple(prior.shape) != (batch,):
        got = tuple(prior.shape) if isinstance(prior, torch.Tensor) else type(prior).__name__
        raise ValueError(f"prior_log_prob must return a ({batch},) tensor, got {got}")
    prior = prior.detach().to(device=x.device, dtype=x.dtype)
    return LikelihoodResult(logp=prior + delta, nfe=aug.counted.calls, x_T=x_T,
                            prior_logp=prior, delta_logp=delta,
                            trace_backend=aug.used)


def _solve_adaptive(rhs, z: torch.Tensor, eps: float, T: float, tableau, rtol: float,
                    atol: float, d: int, counted: CountingScore) -> torch.Tensor:
    """An embedded pair from ``eps`` to ``T`` with per-sample error control.

    A step is accepted when every sample's error is within its tolerance, its state (RMS over
    the ``d`` entries) and its log-determinant each on their own (:func:`error_ratio` with
    ``norm="max"``, ``blocks=(d, 1)``); PI step-size control.
    """
    label = f"log_likelihood ({tableau.name})"
    k0 = rhs(z, eps)
    if not all_finite(k0):
        raise NonFiniteError(
            f"{label}: non-finite drift or divergence at step 0 (t={eps:.6g}); check score_fn "
            "or use a larger eps"
        )

    def propose(state: RKStep, t: float, t_next: float, h: float):
        trial = tableau.step(rhs, state.x, t, h, k0=state.k_last)
        err = error_ratio(trial.error, state.x, trial.x, rtol=rtol, atol=atol, norm="max",
                          blocks=(d, 1))
        return err, trial

    def on_accept(step: int, t: float, state: RKStep) -> None:
        counted.step = step + 1

    h = initial_step(rhs, z, eps, k0, T, tableau.order, rtol, atol, label=label)
    final = integrate_adaptive(
        propose, RKStep(z, k0, None), t0=eps, t_end=T, h=h,
        controller=PIController(order=tableau.order), max_steps=_MAX_STEPS, label=label,
        on_accept=on_accept,
    )
    return final.x


def _solve_fixed(rhs, z: torch.Tensor, eps: float, T: float, steps: int, tableau,
                 counted: CountingScore) -> torch.Tensor:
    """``steps`` uniform steps of an explicit Runge–Kutta ``tableau`` from ``eps`` to ``T``."""
    times = torch.linspace(eps, T, steps + 1, dtype=torch.float64).tolist()
    times[-1] = T

    def checked(z: torch.Tensor, t: float) -> torch.Tensor:
        out = rhs(z, t)
        if not all_finite(out):
            raise NonFiniteError(
                f"log_likelihood: non-finite drift or divergence at step {counted.step} "
                f"(t={t:.6g}, method {tableau.name}); check score_fn, use more steps, or a "
                "larger eps"
            )
        return out

    for step in range(steps):
        counted.step = step
        z = tableau.step(checked, z, times[step], times[step + 1] - times[step]).x
    return z


def log_likelihood(
    sde: SDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    *args,
    trace: str = "exact",
    noise: str = "rademacher",
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    generator: torch.Generator | None = None,
    steps: int | None = None,
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    trace_chunk: int | None = None,
    trace_backend: str = "autograd",
    return_nfe: bool = False,
):
    r"""Log-density (nats) of ``x`` under the model defined by ``score_fn``, via the flow ODE.

    Integrates the augmented probability-flow ODE from the data at ``t = eps`` to the prior at
    ``t = T`` (Song et al. 2021, eq. 39; Chen et al. 2018, Thm. 1),

    .. math:: \log p_\epsilon(x) = \log \pi(x_T)
              + \int_\epsilon^T \nabla\cdot\tilde f(x_t, t)\,\mathrm dt, \qquad
              \tilde f = f - \tfrac12 g^2\,s_\theta, \quad x_\epsilon = x,

    exactly as :func:`flow_likelihood` (which documents every option and also returns the
    NFE, the prior-space point :math:`x_T` and both terms) and returns only the log-density.

    Parameters
    ----------
    sde, score_fn, x
        The forward process, the score ``score_fn(x, t)`` (differentiable in ``x``) and the
        points, shape ``(batch, *event)``.
    trace, noise, method, rtol, atol, eps, generator, steps, prior_log_prob, trace_chunk, trace_backend
        Keyword-only; see :func:`flow_likelihood`.
    *args
        Deprecated: the options above given by position in their old order (``trace``,
        ``noise``, ``method``, ``rtol``, ``atol``, ``eps``, ``generator``, ``steps``,
        ``return_nfe``) still work for one release with a ``DeprecationWarning``.
    return_nfe : bool
        Deprecated (``DeprecationWarning``; removed in the next release): also return the
        number of score calls, as ``(logp, nfe)``. Use :func:`flow_likelihood` instead.

    Returns
    -------
    logp : Tensor, shape (batch,)
        :math:`\log p_\epsilon(x)` in nats, in the dtype and on the device of ``x``; detached
        (no gradient flows back to ``x`` or to the parameters of ``score_fn``).

    References
    ----------
    Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), *Score-based generative
    modeling through stochastic differential equations*, ICLR, §4.3 and App. D.2.
    Chen, Rubanova, Bettencourt & Duvenaud (2018), *Neural ordinary differential equations*.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.zeros(2), 0.5 * torch.eye(2))
    >>> x = torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=torch.float64)
    >>> logp = sd.log_likelihood(sde, target.score_fn(sde), x, trace="exact")
    >>> logp.shape, bool(((logp - target.log_prob(x)).abs() < 1e-2).all())
    (torch.Size([2]), True)
    """
    options = dict(trace=trace, noise=noise, method=method, rtol=rtol, atol=atol, eps=eps,
                   generator=generator, steps=steps)
    if args:
        if len(args) > len(_POSITIONAL):
            raise TypeError(
                f"log_likelihood takes at most {3 + len(_POSITIONAL)} positional arguments "
                f"(sde, score_fn, x and the deprecated {', '.join(_POSITIONAL)}), got "
                f"{3 + len(args)}"
            )
        names = _POSITIONAL[: len(args)]
        warnings.warn(
            f"passing {', '.join(names)} to log_likelihood by position is deprecated and will "
            "stop working in the next release; pass them by keyword "
            f"({', '.join(f'{n}=...' for n in names)})",
            DeprecationWarning, stacklevel=2,
        )
        given = dict(zip(names, args))
        return_nfe = given.pop("return_nfe", return_nfe)
        options.update(given)
    if return_nfe:
        warnings.warn(
            "log_likelihood(..., return_nfe=True) is deprecated and will be removed in the next "
            "release; use flow_likelihood(...), whose result has .logp and .nfe",
            DeprecationWarning, stacklevel=2,
        )
    res = flow_likelihood(sde, score_fn, x, prior_log_prob=prior_log_prob,
                          trace_chunk=trace_chunk, trace_backend=trace_backend, **options)
    return (res.logp, res.nfe) if return_nfe else res.logp


def bits_per_dim(
    sde: SDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    *,
    n_bins: int = 256,
    data_range: tuple[float, float] = (-1.0, 1.0),
    dequantize: bool = True,
    generator: torch.Generator | None = None,
    **kwargs,
):
    r"""Bits per dimension of discrete data under the flow-ODE density (Song et al. 2021, Appendix D.2).

    The data take ``n_bins`` levels per coordinate, mapped affinely onto ``data_range =
    (lo, hi)``: level :math:`k \in \{0, \dots, n-1\}` is stored as :math:`x = lo + k\,(hi -
    lo)/(n - 1)` (both ends included: 8-bit pixels ``k/127.5 - 1`` in ``[-1, 1]``). Level ``k``
    owns the bin :math:`[lo + k\Delta, lo + (k+1)\Delta)` of width :math:`\Delta = (hi - lo)/n`;
    the bins tile ``[lo, hi)``. A continuous density :math:`p` gives the discrete model
    :math:`P(k) = \int_{\text{bin}(k)} p \approx p(y)\,\Delta^d`, hence

    .. math:: \text{bpd} = -\frac{\log p(y) + d\log\Delta}{d\ln 2}
              = -\frac{\log p(y)}{d \ln 2} + \log_2\frac{n}{hi - lo}.

    The offset :math:`-\log_2\Delta` is 7 bits for 8-bit data in ``[-1, 1]`` (score_sde's
    hard-coded ``offset = 7``) and 8 bits for 8-bit data in ``[0, 1]``.

    - ``dequantize=True`` (default): :math:`y = lo + (k + u)\Delta`, :math:`u \sim U(0, 1)^d`
      from ``generator`` (uniform dequantisation, Theis et al. 2016; score_sde's
      ``(255 x + u)/256``). ``x`` must then lie on the level grid (within 1e-3 of a level
      spacing). By Jensen, :math:`\mathbb E_u[\text{bpd}] \ge -\log_2 P(k)/d`: the result is an
      unbiased estimate of an upper bound on the discrete code length.
    - ``dequantize=False``: :math:`y = x` as given (any point of its bin), the one-point
      approximation :math:`P \approx p(x)\Delta^d`.

    Parameters
    ----------
    sde, score_fn
        As for :func:`flow_likelihood`.
    x : Tensor, shape ``(batch, *event)``
        The discrete data, scaled to ``data_range``.
    n_bins : int
        Number of levels per coordinate (>= 2), 256 for 8-bit data.
    data_range : (float, float)
        ``(lo, hi)``, ``lo < hi``: where levels ``0`` and ``n_bins - 1`` sit.
    dequantize : bool
        Add uniform noise within each bin (see above).
    generator : torch.Generator, optional
        Draws the dequantisation noise, then is handed to :func:`flow_likelihood` (Hutchinson
        probes): the same seed gives the same result.
    **kwargs
        Keyword options of :func:`flow_likelihood` (``trace``, ``method``, ``eps``,
        ``prior_log_prob`` ...). ``return_nfe=True`` (deprecated, ``DeprecationWarning``;
        removed in the next release) also returns the number of score calls.

    Returns
    -------
    bpd : Tensor, shape (batch,)
        Or ``(bpd, nfe)`` with the deprecated ``return_nfe=True``.

    Examples
    --------
    Without dequantisation, 8-bit data in ``[-1, 1]`` cost :math:`-\log p/(d\ln 2) + 7` bits:

    >>> import math, torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.zeros(2), 0.25 * torch.eye(2))
    >>> x = torch.tensor([[0.0, 127.0 / 127.5 - 1.0]], dtype=torch.float64)
    >>> exact = target.log_prob_fn(sde)
    >>> bpd = sd.bits_per_dim(sde, target.score_fn(sde), x, dequantize=False,
    ...                       prior_log_prob=lambda xT: exact(xT, sde.T))
    >>> expected = -exact(x, 1e-5) / (2 * math.log(2)) + 7
    >>> bool((bpd - expected).abs().max() < 1e-3)
    True
    """
    check_tensor("x", x, min_dim=2)
    n_bins = check_int("n_bins", n_bins, minimum=2)
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise TypeError(
            f"data_range must be a pair of numbers (lo, hi), got {data_range!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"data_range must be finite with lo < hi, got {data_range!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    width = (hi - lo) / n_bins
    y = x
    if dequantize:
        level = (x.detach().to(torch.float64) - lo) * ((n_bins - 1) / (hi - lo))
        k = level.round()
        off = float((level - k).abs().max()) if x.numel() else 0.0
        if off > 1e-3 or bool((k < 0).any()) or bool((k > n_bins - 1).any()):
            raise ValueError(
                f"x must hold the {n_bins} levels lo + k (hi - lo)/(n_bins - 1), "
                f"k = 0..{n_bins - 1}, "
                f"of data_range = ({lo:g}, {hi:g}) when dequantize=True (got values off the grid "
                f"or outside the range); pass dequantize=False for continuous x"
            )
        device = generator.device if generator is not None else x.device
        u = torch.rand(x.shape, generator=generator, device=device, dtype=torch.float64)
        u = u.to(x.device)
        y = (lo + (k + u) * width).to(x.dtype)
    return_nfe = kwargs.pop("return_nfe", False)
    if return_nfe:
        warnings.warn(
            "bits_per_dim(..., return_nfe=True) is deprecated and will be removed in the next "
            "release; count the score calls with a wrapper around score_fn, or call "
            "flow_likelihood on the dequantised data for .nfe",
            DeprecationWarning, stacklevel=2,
        )
    res = flow_likelihood(sde, score_fn, y, generator=generator, **kwargs)
    d = x[0].numel()
    bpd = -res.logp / (d * math.log(2)) - math.log2(width)
    return (bpd, res.nfe) if return_nfe else bpd
