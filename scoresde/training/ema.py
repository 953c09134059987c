r"""An exponential moving average of a model's weights, the model to sample with.

Polyak & Juditsky 1992 ("Acceleration of stochastic approximation by averaging"); its use for
score models: Song & Ermon 2020, "Improved techniques for training score-based generative
models", https://arxiv.org/abs/2006.09011.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .._checks import check_positive

__all__ = ["EMA"]


class EMA:
    r"""Exponential moving average of a model's parameters.

    After each :meth:`update`, every floating-point parameter :math:`\bar\theta` of the copy
    :attr:`module` becomes

    .. math:: \bar\theta \leftarrow d\,\bar\theta + (1 - d)\,\theta,

    so after ``k`` updates from :math:`\bar\theta_0` it is
    :math:`d^k\bar\theta_0 + (1 - d)\sum_{j=1}^{k} d^{k-j}\theta_j`. Buffers are copied.

    Parameters
    ----------
    model : nn.Module
        The model to track (a deep copy is made, with ``requires_grad=False``, in eval mode).
    decay : float
        :math:`d \in [0, 1)`.

    Examples
    --------
    >>> import torch
    >>> from scoresde.training import EMA
    >>> lin = torch.nn.Linear(1, 1, bias=False)
    >>> _ = lin.weight.data.fill_(0.0)
    >>> ema = EMA(lin, decay=0.5)
    >>> _ = lin.weight.data.fill_(1.0); ema.update(lin); ema.update(lin)
    >>> float(ema.module.weight)     # 1 - 0.5**2
    0.75
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        decay = check_positive("decay", decay, strict=False)
        if decay >= 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay!r}")
        self.decay = decay
        self.num_updates = 0
        self.module = copy.deepcopy(model)
        self.module.eval()
        self.module.requires_grad_(False)
        self._ema_params = list(self.module.parameters())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current parameters."""
        ema_ps = self._ema_params
        ps = [p.detach() for p in model.parameters()]
        if len(ema_ps) != len(ps):
            raise ValueError(f"model has {len(ps)} parameters, the EMA copy {len(ema_ps)}")
        # one fused pass over all tensors: ema <- ema + (1 - d) (p - ema) = d ema + (1 - d) p
        torch._foreach_lerp_(ema_ps, ps, 1.0 - self.decay)
        for ema_b, b in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict:
        """``decay``, ``num_updates`` and the averaged ``module`` state."""
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "module": self.module.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`."""
        self.module.load_state_dict(state["module"])
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
