r"""One place that converts between score, noise, data and velocity predictions.

For a linear SDE with transition :math:`x_t \mid x_0 \sim \mathcal N(s(t)\,x_0, \sigma(t)^2 I)`
(:meth:`LinearSDE.scale_std <scoresde.LinearSDE.scale_std>`) write :math:`x = s\,x_0 + \sigma\,\epsilon`.
A network may predict any of four quantities, and each determines the others at the same
:math:`(x, t)`:

.. math::

    \hat\epsilon = -\sigma\,\hat s, \qquad
    \hat x_0 = \frac{x + \sigma^2 \hat s}{s} = \frac{x - \sigma\,\hat\epsilon}{s}, \qquad
    \hat v = s\,\hat\epsilon - \sigma\,\hat x_0,

where :math:`\hat s \approx \nabla_x \log p_t(x)` is the score. The middle identity is Tweedie's
formula (Efron 2011): the minimiser of the denoising loss is the posterior mean
:math:`\mathbb E[x_0 \mid x_t = x]`, and it relates to the score as above (Vincent 2011; Alain &
Bengio 2014), so score-, ε- (Ho et al. 2020), x₀- and v-prediction (Salimans & Ho 2022) are one
model seen four ways.

- :func:`convert` is the table of all twelve conversions;
- :class:`PredictionAdapter` wraps any ``score_fn`` (or a model that predicts ε, x₀ or v
  natively, see :class:`NativePrediction`) and answers the question a solver asks:
  ``score(x, t)``, ``eps(x, t)``, ``x0(x, t)`` or ``v(x, t)``, from one model evaluation and
  without a detour through the score when the model's own output is what is asked for;
- :func:`scale_std_values` gives a solver :math:`s(t), \sigma(t)` on its grid as Python floats.

A model trained elsewhere plugs in by declaring its prediction type: give it a
``parameterization`` attribute (one of :data:`PREDICTIONS`) and a ``predict(x, t)`` method
returning that raw output, as :class:`~scoresde.nets.ScoreModel` does.

References
----------
Efron (2011), *Tweedie's formula and selection bias*, JASA 106. Vincent (2011), *A connection
between score matching and denoising autoencoders*, Neural Computation 23. Alain & Bengio (2014),
*What regularized auto-encoders learn from the data-generating distribution*, JMLR 15. Ho, Jain &
Abbeel (2020), *Denoising diffusion probabilistic models*, NeurIPS. Salimans & Ho (2022),
*Progressive distillation for fast sampling of diffusion models*, ICLR (App. D).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from ._checks import bcast
from ._runtime import time_vector

__all__ = [
    "PREDICTIONS",
    "NATIVE_ALIASES",
    "NativePrediction",
    "PredictionAdapter",
    "convert",
    "prediction_type",
    "scale_std_values",
]

#: The quantities a model may predict: noise, score, clean data, velocity.
PREDICTIONS: tuple[str, ...] = ("eps", "score", "x0", "v")

#: Model parameterisations that predict one of :data:`PREDICTIONS` under another name: EDM's
#: preconditioned denoiser :math:`D(\tilde x; \tilde\sigma)` (Karras et al. 2022) is an x₀-prediction.
NATIVE_ALIASES: dict[str, str] = {"edm": "x0"}

Scale = float | torch.Tensor


# Each entry maps (output, x, s, sigma) of the source kind to the target kind, written directly
# (never through a third quantity), so a conversion costs a few element-wise operations.
_FORMULAS: dict[tuple[str, str], Callable] = {
    ("score", "eps"): lambda o, x, s, sg: -sg * o,
    ("score", "x0"): lambda o, x, s, sg: (x + sg**2 * o) / s,
    ("score", "v"): lambda o, x, s, sg: -(sg / s) * (x + (s**2 + sg**2) * o),
    ("eps", "score"): lambda o, x, s, sg: -o / sg,
    ("eps", "x0"): lambda o, x, s, sg: (x - sg * o) / s,
    ("eps", "v"): lambda o, x, s, sg: ((s**2 + sg**2) * o - sg * x) / s,
    ("x0", "score"): lambda o, x, s, sg: (s * o - x) / sg**2,
    ("x0", "eps"): lambda o, x, s, sg: (x - s * o) / sg,
    ("x0", "v"): lambda o, x, s, sg: (s * x - (s**2 + sg**2) * o) / sg,
    ("v", "score"): lambda o, x, s, sg: -(sg * x + s * o) / (sg * (s**2 + sg**2)),
    ("v", "eps"): lambda o, x, s, sg: (sg * x + s * o) / (s**2 + sg**2),
    ("v", "x0"): lambda o, x, s, sg: (s * x - sg * o) / (s**2 + sg**2),
}


def _check_kind(name: str, kind) -> str:
    if kind not in PREDICTIONS:
        raise ValueError(f"{name} must be one of {PREDICTIONS}, got {kind!r}")
    return kind


def _broadcast(v: Scale, x: torch.Tensor) -> Scale:
    """A ``(batch,)`` tensor reshaped to broadcast against ``x``; floats and 0-d tensors as they are."""
    if isinstance(v, torch.Tensor) and 1 <= v.ndim < x.ndim:
        return bcast(v, x)
    return v


def convert(value: torch.Tensor, x: torch.Tensor, s: Scale, sigma: Scale, *, source: str,
            target: str) -> torch.Tensor:
    r"""Convert a prediction at state ``x`` from one kind to another.

    With :math:`x = s\,x_0 + \sigma\,\epsilon`, :math:`\hat\epsilon = -\sigma\hat s` and
    :math:`v = s\,\epsilon - \sigma\,x_0` (Ho et al. 2020; Salimans & Ho 2022), the twelve
    conversions are, writing :math:`n = s^2 + \sigma^2`:

    - from the score :math:`\hat s`: :math:`\hat\epsilon = -\sigma\hat s`,
      :math:`\hat x_0 = (x + \sigma^2\hat s)/s`, :math:`\hat v = -\tfrac{\sigma}{s}(x + n\,\hat s)`;
    - from :math:`\hat\epsilon`: :math:`\hat s = -\hat\epsilon/\sigma`,
      :math:`\hat x_0 = (x - \sigma\hat\epsilon)/s`, :math:`\hat v = (n\,\hat\epsilon - \sigma x)/s`;
    - from :math:`\hat x_0`: :math:`\hat s = (s\hat x_0 - x)/\sigma^2`,
      :math:`\hat\epsilon = (x - s\hat x_0)/\sigma`, :math:`\hat v = (s x - n\,\hat x_0)/\sigma`;
    - from :math:`\hat v`: :math:`\hat s = -(\sigma x + s\hat v)/(\sigma n)`,
      :math:`\hat\epsilon = (\sigma x + s\hat v)/n`, :math:`\hat x_0 = (s x - \sigma\hat v)/n`.

    The score-to-x₀ line is Tweedie's formula (Efron 2011). Forms that divide by :math:`\sigma`
    are singular at ``t = 0``, those that divide by :math:`s` where the signal has vanished.

    Parameters
    ----------
    value : Tensor
        The prediction, shaped like ``x``.
    x : Tensor
        The state ``(batch, *event_shape)`` the prediction was made at.
    s, sigma : float or Tensor
        :math:`s(t)` and :math:`\sigma(t)`: floats, or ``(batch,)`` tensors (as returned by
        :meth:`~scoresde.LinearSDE.scale_std`), or tensors already broadcastable against ``x``.
    source, target : {"eps", "score", "x0", "v"}
        The kind of ``value`` and the kind wanted. Equal kinds return ``value`` itself.

    Returns
    -------
    Tensor
        Shaped like ``x``.

    Examples
    --------
    >>> import torch
    >>> from scoresde.predict import convert
    >>> x, eps = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, -0.5]])
    >>> x0 = convert(eps, x, 0.8, 0.6, source="eps", target="x0")   # (x − σ ε)/s
    >>> x0
    tensor([[0.8750, 2.8750]])
    >>> convert(x0, x, 0.8, 0.6, source="x0", target="eps")
    tensor([[ 0.5000, -0.5000]])
    """
    _check_kind("source", source)
    _check_kind("target", target)
    if source == target:
        return value
    return _FORMULAS[source, target](value, x, _broadcast(s, x), _broadcast(sigma, x))


@runtime_checkable
class NativePrediction(Protocol):
    """A model that predicts ε, x₀, v (or the score) natively and says which.

    It is still a score function (``model(x, t)`` returns :math:`\\nabla_x\\log p_t(x)`, so it
    plugs into every sampler and into the likelihood); in addition ``predict(x, t)`` returns the
    raw output of the kind ``parameterization``, which :class:`PredictionAdapter` uses directly.
    The prediction refers to the transition :math:`\\mathcal N(s x_0, \\sigma^2 I)` of the SDE the
    model is sampled with. :class:`~scoresde.nets.ScoreModel` is one; an adapter for networks
    trained elsewhere (diffusers ε-, v- or x₀-networks) declares its type the same way.

    Attributes
    ----------
    parameterization : str
        One of :data:`PREDICTIONS`.
    """

    parameterization: str

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The raw prediction at ``x`` and times ``t`` (``(batch,)``), shaped like ``x``."""


def prediction_type(model) -> str:
    """What ``model`` predicts natively: its ``parameterization``, or ``"score"``.

    A callable counts as a native predictor when it has a ``parameterization`` attribute and a
    callable ``predict`` (:class:`NativePrediction`); anything else is a plain score function.
    A parameterisation listed in :data:`NATIVE_ALIASES` reads as the prediction it is
    (``"edm"``: its ``predict`` is the denoiser, ``"x0"``).

    Raises
    ------
    ValueError
        If ``model`` has ``predict`` but its ``parameterization`` is not one of :data:`PREDICTIONS`.

    Examples
    --------
    >>> import scoresde as sd
    >>> from scoresde.predict import prediction_type
    >>> sde = sd.VPSDE()
    >>> prediction_type(lambda x, t: -x)   # a plain score function
    'score'
    >>> prediction_type(sd.ScoreModel(sd.ScoreMLP(2), sde, parameterization="v"))
    'v'
    >>> prediction_type(sd.ScoreModel(sd.ScoreMLP(2), sde, parameterization="edm"))
    'x0'
    """
    kind = getattr(model, "parameterization", None)
    if kind is None or not callable(getattr(model, "predict", None)):
        return "score"
    return _check_kind("parameterization", NATIVE_ALIASES.get(kind, kind))


def _require_scale_std(sde, who: str) -> None:
    if not callable(getattr(sde, "scale_std", None)):
        raise TypeError(
            f"{who} needs a LinearSDE (with scale_std), got sde of type {type(sde).__name__}"
        )


def scale_std_values(sde, times, *, who: str = "this sampler") -> tuple[list[float], list[float]]:
    r""":math:`s(t)` and :math:`\sigma(t)` at each of ``times``, as lists of float64 Python floats.

    What a solver needs for the per-step coefficients of its update, computed once for its whole
    grid by :meth:`LinearSDE.scale_std <scoresde.LinearSDE.scale_std>` in float64.

    Parameters
    ----------
    sde : LinearSDE
    times : Tensor or sequence of float
        Times in ``[0, T]``, e.g. a sampler's grid.
    who : str
        Named in the error when ``sde`` is not a :class:`~scoresde.LinearSDE`.

    Examples
    --------
    >>> import scoresde as sd
    >>> from scoresde.predict import scale_std_values
    >>> s, sigma = scale_std_values(sd.VESDE(), [1.0, 0.0])
    >>> s, [round(v, 4) for v in sigma]
    ([1.0, 1.0], [50.0, 0.0])
    """
    _require_scale_std(sde, who)
    t = torch.as_tensor(times, dtype=torch.float64).detach().cpu().reshape(-1)
    s, sigma = sde.scale_std(t)
    return s.tolist(), sigma.tolist()


class PredictionAdapter:
    r"""Any score function or native predictor, seen as the quantity a solver's update uses.

    Solvers ask for :meth:`score`, :meth:`eps` (noise), :meth:`x0` (Tweedie's posterior mean) or
    :meth:`v`. Each request makes **exactly one** evaluation of the wrapped model: a plain
    ``score_fn(x, t)`` is called, a :class:`NativePrediction` (e.g. an ε-predicting
    :class:`~scoresde.nets.ScoreModel`) has its ``predict`` called, and the output is converted
    by :func:`convert` only when it is not already the quantity asked for (an ε-model asked for
    ε returns its output unchanged; asked for x₀ it costs one conversion
    :math:`(x - \sigma\hat\epsilon)/s`, with no detour through the score).

    Counting: the sampler driver wraps the user's model in a counting wrapper that forwards
    ``parameterization`` and a counted ``predict``, so every evaluation counts once whichever
    quantity is asked for.

    Parameters
    ----------
    sde : LinearSDE
        Provides :math:`s(t), \sigma(t)` through :meth:`~scoresde.LinearSDE.scale_std`.
    model : callable
        ``score_fn(x, t)``, or a :class:`NativePrediction`.
    who : str
        Named in the error when ``sde`` is not a :class:`~scoresde.LinearSDE`.

    Notes
    -----
    Every request takes ``(x, t)`` with ``t`` a float (a grid time) or a ``(batch,)`` tensor, and
    optionally the keywords ``s`` and ``sigma`` (both or neither): solvers pass the float64
    values of their grid (:func:`scale_std_values`) so that no coefficient is recomputed per
    call; without them :meth:`~scoresde.LinearSDE.scale_std` is evaluated at ``t`` when a
    conversion needs them.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> from scoresde.predict import PredictionAdapter
    >>> sde = sd.VPSDE()
    >>> model = sd.ScoreModel(sd.ScoreMLP(2), sde, parameterization="eps")
    >>> pred = PredictionAdapter(sde, model)
    >>> x = torch.randn(3, 2)
    >>> torch.equal(pred.eps(x, 0.5), model.predict(x, torch.full((3,), 0.5)))   # native ε
    True
    >>> torch.equal(pred.x0(x, 0.5), model.predict_x0(x, 0.5))
    True
    """

    def __init__(self, sde, model, *, who: str = "PredictionAdapter"):
        if not callable(model):
            raise TypeError(f"model must be callable as score_fn(x, t), got {type(model).__name__}")
        _require_scale_std(sde, who)
        self.sde = sde
        self.model = model
        #: What the wrapped model returns natively (one of :data:`PREDICTIONS`).
        self.prediction = prediction_type(model)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sde={self.sde!r}, prediction={self.prediction!r})"

    def _get(self, target: str, x: torch.Tensor, t, s: Scale | None, sigma: Scale | None) -> torch.Tensor:
        if (s is None) != (sigma is None):
            raise ValueError("pass both s and sigma, or neither")
        tt = t if isinstance(t, torch.Tensor) else time_vector(t, x)
        out = self.model(x, tt) if self.prediction == "score" else self.model.predict(x, tt)
        if target == self.prediction:
            return out
        if s is None:
            s, sigma = self.sde.scale_std(tt)
        return convert(out, x, s, sigma, source=self.prediction, target=target)

    def score(self, x: torch.Tensor, t, *, s: Scale | None = None, sigma: Scale | None = None) -> torch.Tensor:
        r"""The score :math:`\hat s \approx \nabla_x \log p_t(x)`."""
        return self._get("score", x, t, s, sigma)

    def eps(self, x: torch.Tensor, t, *, s: Scale | None = None, sigma: Scale | None = None) -> torch.Tensor:
        r"""The noise prediction :math:`\hat\epsilon = -\sigma(t)\,\hat s`."""
        return self._get("eps", x, t, s, sigma)

    def x0(self, x: torch.Tensor, t, *, s: Scale | None = None, sigma: Scale | None = None) -> torch.Tensor:
        r"""The data prediction :math:`\hat x_0 = \mathbb E[x_0 \mid x_t = x] = (x + \sigma^2\hat s)/s`."""
        return self._get("x0", x, t, s, sigma)

    def v(self, x: torch.Tensor, t, *, s: Scale | None = None, sigma: Scale | None = None) -> torch.Tensor:
        r"""The velocity prediction :math:`\hat v = s\,\hat\epsilon - \sigma\,\hat x_0` (Salimans & Ho 2022)."""
        return self._get("v", x, t, s, sigma)
