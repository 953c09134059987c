r"""What a sampler costs in score evaluations, read from its declarations.

Every :class:`~scoresde.samplers.Sampler` declares its cost: :meth:`~scoresde.samplers.Sampler.nfe`
gives the exact number of score evaluations of a run over ``steps`` grid intervals (``None``
for an adaptive solver, which picks its own steps), ``nfe_per_step`` the evaluations per
interval, ``adaptive`` whether the count follows from ``steps`` at all. The comparison harness
turns a budget :math:`B` into a step count with these numbers instead of probing the sampler
(``tests/test_capabilities.py`` checks every declaration against counted NFE).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._checks import check_int
from ..samplers import Sampler, resolve, sample
from ..sde import LinearSDE

__all__ = ["SamplerCost", "measure_cost"]

# the grid search for the smallest step count stops here
_MAX_STEPS = 2**16
# batch and seed of the one run that checks a declaration (its samples are thrown away)
_CHECK_BATCH = 2
_CHECK_SEED = 12345


@dataclass(frozen=True)
class SamplerCost:
    r"""NFE cost of a sampler: ``overhead + per_step * steps``, or adaptive.

    Attributes
    ----------
    per_step : int
        Score evaluations per step (0 for an adaptive sampler).
    overhead : int
        Evaluations outside the steps (e.g. a final denoising call; ``-1`` for a Heun run whose
        last step is an Euler step).
    adaptive : bool
        The NFE does not follow from ``steps`` (the solver picks its own steps).
    min_steps : int
        Smallest step count whose time grid the sampler accepts (DDPM on the VP SDE needs
        :math:`\beta_{\max}/N < 1`, so about 21).

    Examples
    --------
    >>> from scoresde.compare import SamplerCost
    >>> SamplerCost(per_step=2, overhead=-1, adaptive=False, min_steps=1).steps_for(10)
    5
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


def _label(solver: Sampler) -> str:
    return solver.name or type(solver).__name__


def _accepts(solver: Sampler, sde, steps: int, eps: float) -> Exception | None:
    """None if the sampler builds its uniform grid of ``steps`` intervals, else the error."""
    try:
        solver.grid(sde, steps, eps, "uniform")
    except ValueError as exc:
        return exc
    return None


def _min_steps(solver: Sampler, sde, eps: float) -> int:
    """Smallest step count the sampler's grid accepts: doubling, then bisection (no score calls)."""
    hi = 1
    while (err := _accepts(solver, sde, hi, eps)) is not None:
        if hi >= _MAX_STEPS:
            raise ValueError(f"{_label(solver)} accepts no grid of 1 to {_MAX_STEPS} steps: {err}")
        hi *= 2
    lo = hi // 2  # refused (or 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _accepts(solver, sde, mid, eps) is None:
            hi = mid
        else:
            lo = mid
    return hi


def measure_cost(
    sde,
    score_fn: Callable,
    sampler,
    dim: int,
    *,
    eps: float = 1e-3,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    verify: bool = True,
) -> SamplerCost:
    r"""The NFE cost of a sampler on ``sde``, from its declarations.

    A fixed-step sampler whose run over :math:`k` intervals costs ``sampler.nfe(k)``
    :math:`= c_0 + c\,k` evaluations (:math:`c` = ``sampler.nfe_per_step``) gets
    ``SamplerCost(per_step=c, overhead=c_0)`` (plus one for a sampler whose
    :attr:`~scoresde.samplers.Sampler.default_denoise` adds a final step: the cost is that of
    :func:`scoresde.sample` with its defaults); one that declares ``adaptive`` (or whose
    ``nfe`` is ``None``) gets ``SamplerCost(adaptive=True)``. ``min_steps`` is the smallest step
    count whose grid the sampler accepts, found from :meth:`~scoresde.samplers.Sampler.grid`
    without evaluating the score.

    With ``verify`` (the default) one run of a fixed-step sampler at ``min_steps`` on a batch of
    2 checks the declaration against the counted score evaluations — and that the sampler runs
    on this SDE at all; ``verify=False`` evaluates nothing.

    Parameters
    ----------
    sde : SDE
    score_fn : callable
        ``score_fn(x, t)``, used by the verifying run only.
    sampler : str or Sampler
        A name from :func:`scoresde.samplers.names` or an instance.
    dim : int
        Event dimension of the verifying run's samples.
    eps : float
        End time passed to :func:`scoresde.sample`.
    device, dtype : optional
        Of the verifying run.
    verify : bool
        Run the sampler once to check its declared cost.

    Returns
    -------
    SamplerCost

    Raises
    ------
    TypeError
        When the sampler cannot be used with this SDE at all (a sampler that declares
        ``needs_linear_sde`` on another SDE, DDPM without ``sde.discretize``).
    ValueError
        When it accepts no grid of up to 65536 steps, its declarations contradict each other,
        or (``verify``) the verifying run fails or counts another NFE than declared.

    Examples
    --------
    >>> import scoresde as sd
    >>> from scoresde.compare import measure_cost
    >>> sde = sd.VPSDE()
    >>> measure_cost(sde, sd.imbalanced_2d().score_fn(sde), "heun", 2)
    SamplerCost(per_step=2, overhead=0, adaptive=False, min_steps=1)
    >>> measure_cost(sde, None, "ddpm", 2, verify=False).min_steps
    21
    """
    solver = resolve(sampler, {})
    dim = check_int("dim", dim)
    label = _label(solver)
    if solver.needs_linear_sde and not isinstance(sde, LinearSDE):
        raise TypeError(f"{label} needs a LinearSDE, got {type(sde).__name__}")
    k = _min_steps(solver, sde, eps)
    declared = solver.nfe(k)
    if solver.adaptive or declared is None:
        return SamplerCost(per_step=0, overhead=0, adaptive=True, min_steps=k)
    per_step = int(solver.nfe_per_step)
    if per_step < 1 or solver.nfe(k + 1) - declared != per_step:
        raise ValueError(
            f"{label} declares nfe_per_step = {per_step} but nfe({k + 1}) - nfe({k}) = "
            f"{solver.nfe(k + 1) - declared}")
    # a run of sample() with its defaults: the sampler's steps and its default final step
    run_nfe = declared + (1 if solver.default_denoise else 0)
    if verify:
        gen = torch.Generator(device=device or "cpu").manual_seed(_CHECK_SEED)
        try:
            out = sample(sde, score_fn, (_CHECK_BATCH, dim), sampler=solver, steps=k,
                         generator=gen, eps=eps, device=device, dtype=dtype)
        except (ValueError, ArithmeticError, RuntimeError) as exc:
            raise ValueError(f"{label} does not run with steps={k}: {exc}") from exc
        if out.nfe != run_nfe:
            raise ValueError(
                f"{label} declares nfe({k}) = {declared}"
                + (" plus its default denoising step" if run_nfe != declared else "")
                + f" but made {out.nfe} score evaluations")
    return SamplerCost(per_step=per_step, overhead=run_nfe - per_step * k, adaptive=False,
                       min_steps=k)
