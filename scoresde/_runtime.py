"""What every solver of the package shares: counted, checked score calls and noise draws.

The sampler driver (:func:`scoresde.sample`) and the likelihood
(:func:`scoresde.log_likelihood`) both evaluate a user's ``score_fn`` through
:class:`CountingScore`, which counts the evaluations honestly, checks the returned shape and
stops on non-finite values with an error that names the step and time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._checks import all_finite

__all__ = ["NonFiniteError", "CountingScore", "time_vector", "gaussian_like", "standard_normal"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteError(FloatingPointError):
    """Raised when a sampler produces NaN or inf; the message names the step and time."""


def time_vector(t: float, x: torch.Tensor) -> torch.Tensor:
    """``t`` as a ``(batch,)`` tensor with the dtype and device of ``x`` (for calling ``score_fn``)."""
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def standard_normal(shape, generator, *, device=None, dtype=None) -> torch.Tensor:
    """Standard normals of ``shape`` from ``generator``: ``None``, a :class:`torch.Generator`
    (drawn on its device unless ``device`` is given) or a noise source with a
    ``randn(shape, dtype=, device=)`` method (:class:`scoresde.noise.PerSampleGenerator`).

    The one place the package's sampling noise and prior draws are made.
    """
    if generator is None or isinstance(generator, torch.Generator):
        if device is None and generator is not None:
            device = generator.device
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    draw = getattr(generator, "randn", None)
    if not callable(draw):
        raise TypeError(
            "generator must be None, a torch.Generator or a noise source with a randn(shape, "
            f"dtype=, device=) method (e.g. scoresde.noise.PerSampleGenerator), got "
            f"{type(generator).__name__}"
        )
    return draw(tuple(shape), dtype=dtype, device=device)


def gaussian_like(x: torch.Tensor, generator) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn from ``generator`` (see
    :func:`standard_normal`) on its device and moved to ``x``'s."""
    if generator is None:
        return torch.randn_like(x)
    return standard_normal(x.shape, generator, dtype=x.dtype).to(x.device)


class CountingScore:
    """Wraps a score function: counts calls, checks shapes and stops on non-finite values.

    A model that predicts ε, x₀ or v natively (:class:`scoresde.predict.NativePrediction`) keeps
    its ``parameterization`` visible through the wrapper, and its ``predict`` calls are counted
    and checked like score calls, so :class:`scoresde.predict.PredictionAdapter` built on the
    wrapper counts every network evaluation once.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(x, t)``.
    label : str
        Who is calling (the sampler's name), for error messages.
    check_finite : bool
        Check each evaluation's input state and output for NaN/inf (default). The check is a
        single reduction over both, i.e. one host synchronisation per evaluation; which of
        the two was non-finite is worked out only once it has failed.

    Attributes
    ----------
    calls : int
        Score evaluations made.
    step : int
        The step in progress, kept current by whoever drives the solver (the sampler driver
        does when it has a per-step callback), so that an error can name it.
    times : list of float or None
        The run's grid. When set, an error names the grid step that holds the failing time
        (the last ``i`` with ``times[i] >= t``) instead of ``step``.
    """

    def __init__(self, score_fn: ScoreFn, label: str, check_finite: bool = True):
        self.score_fn = score_fn
        self.label = label
        self.check_finite = bool(check_finite)
        self.calls = 0
        self.step = 0
        self.times: list[float] | None = None

    def _step_at(self, t: float) -> int:
        if self.times is None:
            return self.step
        i = sum(1 for ti in self.times if ti >= t) - 1  # grids are short: a scan is cheap
        return min(max(i, 0), max(len(self.times) - 2, 0))

    def _non_finite(self, what: str, t) -> NonFiniteError:
        t0 = float(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) else float(t)
        return NonFiniteError(
            f"{self.label}: non-finite {what} at step {self._step_at(t0)} (t={t0:.6g}); try "
            "more steps, a smaller step size, or check score_fn"
        )

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        return self._evaluate(self.score_fn, "score_fn", "score", x, t)

    @property
    def parameterization(self) -> str:
        """What the wrapped model's ``predict`` returns (see :mod:`scoresde.predict`)."""
        return getattr(self.score_fn, "parameterization", "score")

    def predict(self, x: torch.Tensor, t) -> torch.Tensor:
        """The wrapped model's native prediction ``score_fn.predict(x, t)``, counted and checked."""
        return self._evaluate(self.score_fn.predict, "score_fn.predict", "prediction", x, t)

    def _evaluate(self, fn: ScoreFn, name: str, what: str, x: torch.Tensor, t) -> torch.Tensor:
        self.calls += 1
        out = fn(x, t)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{name} must return a tensor shaped like x {tuple(x.shape)}, got {got}")
        if self.check_finite and x.numel() > 0:
            # max|x| + max|s| is NaN or inf iff either tensor holds a NaN or inf: one sync
            both = x.detach().abs().amax() + out.detach().abs().amax().to(x.dtype)
            if not math.isfinite(float(both)):  # rare: now find out which (or an overflow)
                if not all_finite(x):
                    raise self._non_finite("state", t)
                if not all_finite(out):
                    raise self._non_finite(what, t)
        return out
