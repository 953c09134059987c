r"""Sampler comparison harness: sample quality against the number of score evaluations.

For every reference target with an exact score (:func:`~scoresde.target_names`) and every
sampler (:func:`scoresde.samplers.names`), :func:`run_comparison` draws ``n`` samples with
:func:`scoresde.sample` at a sweep of NFE budgets and scores them with
:func:`scoresde.metrics.evaluate` against a fresh exact sample of the target. The value a
*perfect* sampler gets at the same ``n``, :func:`scoresde.metrics.noise_floor`, is stored with
every record: no sampler can be expected to do better than that.

A budget of :math:`B` score evaluations is turned into a number of steps with the cost the
sampler declares (:func:`measure_cost`): a fixed-step sampler whose run costs
:math:`c_0 + c\cdot\text{steps}` evaluations gets :math:`\lfloor (B - c_0)/c \rfloor` steps
(Heun 2 per step, predictor–corrector :math:`1 + n_{\rm corr}`); an adaptive sampler (the
scipy probability-flow ODE) is run along a ladder of tolerances ``rtol = atol`` from loose to
tight, and the budget gets the run with the most evaluations that does not exceed it. Every
record reports the *actual* NFE. Combinations that cannot run (DDPM needs an SDE with a
``discretize`` method, and on the default VP SDE at least 21 steps, since
:math:`\beta_{\max}/N` must stay below 1; a budget below the cost of one step; an adaptive
solver whose loosest tolerance already costs more than the budget) are recorded as
``"skipped"`` with the reason; a run that raises is recorded as ``"error"`` with the message.

Randomness: the prior draw of every run of one target comes from the same seed (common random
numbers: samplers and budgets are compared on the same :math:`x_T`), the reference sample and
projections of each evaluation and the noise floor from their own seeds, all derived from
``seed`` and the names involved with :func:`derive_seed`, so any single run is reproducible
whatever ran before it.

Rankings inside the noise: with ``seeds=k`` every run is repeated on ``k`` master seeds and
every metric (and the noise floor) is a mean with its spread; :func:`rank` marks which
differences are within two standard errors (:mod:`~scoresde.compare.noise`), and the markdown
table and the figures show it.

The package is cut into one file per concern: :mod:`~scoresde.compare.sweep` (the sweep),
:mod:`~scoresde.compare.cost` (declared cost), :mod:`~scoresde.compare.noise` (repetitions
over seeds and which differences are within noise), :mod:`~scoresde.compare.records`
(records, JSON, markdown, saving) and :mod:`~scoresde.compare.profiling` (wall time and peak
memory, imported only when a run is timed). Figures are drawn by :mod:`scoresde.plotting`.

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

from .._checks import derive_seed
from ..metrics import METRICS
from ..sde import SDE_NAMES, make_sde
from .cost import SamplerCost, measure_cost
from .inverse import INVERSE_NFE, run_inverse_comparison, save_inverse
from .noise import over_seeds, rank
from .records import RECORD_KEYS, load, new_record, save, to_json, to_markdown
from .sweep import DEFAULT_NFE, TOLERANCES, quick_preset, run_comparison

__all__ = [
    "DEFAULT_NFE",
    "INVERSE_NFE",
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
    "over_seeds",
    "quick_preset",
    "rank",
    "run_comparison",
    "run_inverse_comparison",
    "save",
    "save_inverse",
    "timed_call",
    "to_json",
    "to_markdown",
]

# served by the profiling module, which is imported on first use only
_PROFILING = ("MEMORY_MODES", "timed_call")


def __getattr__(name: str):
    if name in _PROFILING:
        from . import profiling

        return getattr(profiling, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PROFILING})
