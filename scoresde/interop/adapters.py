r"""Networks trained elsewhere, seen as scoresde score functions that predict natively.

A discrete-time diffusion network (DDPM, DDIM, guided-diffusion, diffusers' ``UNet2DModel``)
is a function ``net(x, timestep)`` that predicts the noise :math:`\epsilon`, the velocity
:math:`v = s\,\epsilon - \sigma x_0` or the clean sample :math:`x_0`, with its time input a
timestep :math:`\tau \in [0, N-1]` of its training table (:class:`~scoresde.DiscreteVPSDE`).
:class:`ModelWrapper` turns it into a ``score_fn(x, t)`` that is also a
:class:`~scoresde.predict.NativePrediction`: its ``parameterization`` says what the network
predicts and ``predict(x, t)`` returns that output, so that DDIM, DPM-Solver(++) and UniPC get
:math:`\hat\epsilon` or :math:`\hat x_0` from one network call without a round trip through the
score (:class:`~scoresde.predict.PredictionAdapter`), and every network call is one counted
score evaluation.

References
----------
Ho, Jain & Abbeel (2020), *Denoising diffusion probabilistic models*, NeurIPS. Nichol & Dhariwal
(2021), *Improved denoising diffusion probabilistic models*, ICML (learned variances).
Salimans & Ho (2022), *Progressive distillation for fast sampling of diffusion models*, ICLR
(v-prediction). Lu et al. (2022), *DPM-Solver*, NeurIPS (``model_wrapper``, App. D).
"""

from __future__ import annotations

import torch
from torch import nn

from ..predict import PREDICTIONS, convert

__all__ = ["PREDICTION_TYPES", "TIME_INPUTS", "ModelWrapper", "model_output"]

#: Prediction types a network may declare, in diffusers' and in scoresde's spelling, mapped to
#: the :data:`scoresde.predict.PREDICTIONS` kind they are.
PREDICTION_TYPES: dict[str, str] = {
    "epsilon": "eps",
    "v_prediction": "v",
    "sample": "x0",
    **{kind: kind for kind in PREDICTIONS},
}

#: What a network's time input may be: a fractional timestep :math:`\tau = tN - 1`, that
#: timestep rounded to an integer, or the continuous time ``t`` itself.
TIME_INPUTS: tuple[str, ...] = ("fractional", "integer", "continuous")


def model_output(out) -> torch.Tensor:
    """The tensor a network returned: itself, the ``.sample`` of a diffusers output, or the
    first entry of a tuple (diffusers' ``return_dict=False``).

    Examples
    --------
    >>> import torch
    >>> from scoresde.interop.adapters import model_output
    >>> model_output((torch.zeros(2), None)).shape
    torch.Size([2])
    """
    if isinstance(out, torch.Tensor):
        return out
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(
        "the network must return a tensor, an object with a .sample tensor (diffusers) or a "
        f"tuple starting with one, got {type(out).__name__}")


class ModelWrapper(nn.Module):
    r"""A network ``net(x, timestep)`` trained elsewhere, as a natively predicting score function.

    With the SDE's :math:`s(t), \sigma(t)` (:meth:`~scoresde.LinearSDE.scale_std`; for a
    :class:`~scoresde.DiscreteVPSDE` :math:`s^2 = \bar\alpha_\tau`, :math:`\sigma^2 = 1 - \bar\alpha_\tau`
    at the table's times) and :math:`x = s\,x_0 + \sigma\,\epsilon`, the network output is read
    as :math:`\hat\epsilon` (``"epsilon"``), :math:`\hat v = s\hat\epsilon - \sigma\hat x_0`
    (``"v_prediction"``) or :math:`\hat x_0` (``"sample"``); :meth:`predict` returns it as it is
    and :meth:`forward` the score

    .. math:: \nabla_x\log p_t(x) \approx -\frac{\hat\epsilon}{\sigma}
              = -\frac{\sigma x + s\hat v}{\sigma(s^2 + \sigma^2)} = \frac{s\hat x_0 - x}{\sigma^2}

    (Tweedie's formula; :func:`scoresde.predict.convert`). Each call of either is exactly one
    network call.

    What the network sees as its time input (``time_input``):

    ``"fractional"`` (default)
        the timestep :math:`\tau = tN - 1` (:meth:`~scoresde.DiscreteVPSDE.time_to_timestep`)
        as a float32 tensor, clamped to the table's range :math:`[0, N-1]` (below
        :math:`t = 1/N` the network sees :math:`\tau = 0`). A :math:`\tau` within the round-off
        of ``t``'s dtype (:math:`16\,\epsilon_{\rm mach} N`) of a whole number is set to it, so a
        grid built from integer timesteps (:meth:`~scoresde.DiscreteVPSDE.timestep_to_time`)
        feeds the network exactly those integers. Between table steps the network is
        evaluated at a timestep it was not trained on, as in k-diffusion and DPM-Solver;
        diffusers' ``UNet2DModel`` accepts fractional timesteps.
    ``"integer"``
        :math:`\operatorname{round}(tN - 1)` clamped to :math:`[0, N-1]`, as an int64 tensor,
        for networks that index an embedding table. Off the table's times the network then
        sees a noise level up to half a step away from :math:`\sigma(t)`.
    ``"continuous"``
        ``t`` itself (any :class:`~scoresde.LinearSDE`).

    A network with learned variances (Nichol & Dhariwal 2021; guided-diffusion, diffusers'
    ``variance_type="learned_range"``) returns :math:`2C` channels for :math:`C` input channels;
    with ``learned_variance=True`` the first :math:`C` (the mean's parameterisation) are kept and
    the variance channels dropped: the samplers here draw their own noise.

    Parameters
    ----------
    net : callable
        ``net(x, timestep)``, returning a tensor, a diffusers output (``.sample``) or a tuple
        whose first entry is the prediction (:func:`model_output`). An ``nn.Module`` is
        registered as a sub-module.
    sde : LinearSDE
        The process the network was trained on; a :class:`~scoresde.DiscreteVPSDE` (with
        ``time_to_timestep``) unless ``time_input="continuous"``.
    prediction : str
        A key of :data:`PREDICTION_TYPES`: ``"epsilon"``, ``"v_prediction"``, ``"sample"``
        (diffusers' names) or ``"eps"``, ``"v"``, ``"x0"``, ``"score"``.
    time_input : {"fractional", "integer", "continuous"}
    learned_variance : bool
        Drop the second half of the output channels (dimension 1).

    Attributes
    ----------
    parameterization : str
        The :data:`scoresde.predict.PREDICTIONS` kind of :meth:`predict`'s output.

    Raises
    ------
    ValueError
        At call time, when the output (after dropping variance channels) is not shaped like
        ``x``.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> from scoresde.interop import ModelWrapper
    >>> sde = sd.DiscreteVPSDE.from_schedule("linear", N=1000)
    >>> seen = []
    >>> def net(x, timestep):                       # an ε-network indexed by timestep
    ...     seen.append(timestep)
    ...     return torch.zeros_like(x)
    >>> model = ModelWrapper(net, sde, prediction="epsilon")
    >>> t = sde.timestep_to_time(torch.tensor([980, 980])).float()
    >>> model.predict(torch.ones(2, 3), t).shape, seen[-1].tolist()
    (torch.Size([2, 3]), [980.0, 980.0])
    >>> model.parameterization
    'eps'
    """

    def __init__(self, net, sde, prediction: str = "epsilon", time_input: str = "fractional",
                 learned_variance: bool = False):
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, timestep), got {type(net).__name__}")
        if not callable(getattr(sde, "scale_std", None)):
            raise TypeError(f"sde must be a scoresde LinearSDE (with scale_std), got {type(sde).__name__}")
        if prediction not in PREDICTION_TYPES:
            raise ValueError(f"prediction must be one of {tuple(PREDICTION_TYPES)}, got {prediction!r}")
        if time_input not in TIME_INPUTS:
            raise ValueError(f"time_input must be one of {TIME_INPUTS}, got {time_input!r}")
        if time_input != "continuous" and not isinstance(getattr(sde, "N", None), int):
            raise TypeError(
                f"time_input={time_input!r} needs a DiscreteVPSDE (a table of N timesteps), got sde "
                f"of type {type(sde).__name__}; use time_input='continuous' for a network of t")
        if not isinstance(learned_variance, bool):
            raise TypeError(f"learned_variance must be a bool, got {type(learned_variance).__name__}")
        self.net = net
        self.sde = sde
        self.prediction = prediction
        self.parameterization = PREDICTION_TYPES[prediction]
        self.time_input = time_input
        self.learned_variance = learned_variance

    def extra_repr(self) -> str:
        return (f"sde={self.sde!r}, prediction={self.prediction!r}, time_input={self.time_input!r}, "
                f"learned_variance={self.learned_variance}")

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """What the network gets as its time input at times ``t`` (see ``time_input``)."""
        if self.time_input == "continuous":
            return t
        N = self.sde.N
        tau = t.to(torch.float64) * N - 1.0
        nearest = torch.round(tau)
        if self.time_input == "integer":
            return nearest.clamp(0, N - 1).to(torch.int64)
        tol = 16.0 * torch.finfo(t.dtype).eps * N
        tau = torch.where((tau - nearest).abs() <= tol, nearest, tau)
        return tau.clamp(0, N - 1).to(torch.float32)

    def predict(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""The network's own prediction (of kind :attr:`parameterization`) at ``x`` and times ``t``.

        ``t`` is a float or a ``(batch,)`` tensor; one network call.
        """
        if not isinstance(t, torch.Tensor):
            t = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        elif t.ndim == 0:
            t = t.expand(x.shape[0])
        out = model_output(self.net(x, self.timestep(t)))
        if self.learned_variance:
            if out.ndim < 2 or out.shape[1] != 2 * x.shape[1]:
                raise ValueError(
                    f"with learned_variance=True the network must return 2 x {x.shape[1]} channels "
                    f"(mean and variance), got output shape {tuple(out.shape)}")
            out = out[:, : x.shape[1]]
        if out.shape != x.shape:
            hint = " (a learned-variance network? pass learned_variance=True)" if (
                out.ndim >= 2 and x.ndim >= 2 and out.shape[1] == 2 * x.shape[1]) else ""
            raise ValueError(
                f"the network's output must have the shape of its input {tuple(x.shape)}, got "
                f"{tuple(out.shape)}{hint}")
        return out

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""The score :math:`\nabla_x\log p_t(x)` from one network call."""
        out = self.predict(x, t)
        if self.parameterization == "score":
            return out
        if not isinstance(t, torch.Tensor) or t.ndim == 0:
            t = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        s, sigma = self.sde.scale_std(t.to(x.dtype))
        return convert(out, x, s, sigma, source=self.parameterization, target="score")
