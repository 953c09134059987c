"""Tiny model and loss shared by tests/test_training.py and its subprocess workers."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


class TinyScore(nn.Module):
    """A two-layer MLP ``(x, t) -> score``, initialised from a generator (no global RNG)."""

    def __init__(self, dim: int = 2, hidden: int = 16, seed: int = 0, big_buffer: int = 0):
        super().__init__()
        self.l1 = nn.Linear(dim + 1, hidden)
        self.l2 = nn.Linear(hidden, dim)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        if big_buffer:  # makes checkpoints large, so a kill lands mid-write more often
            self.register_buffer("ballast", torch.zeros(big_buffer))

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        return self.l2(torch.tanh(self.l1(torch.cat([x, t[:, None]], dim=1))))


def toy_loss(model, batch, generator):
    """A DSM-like loss whose noise comes only from ``generator``."""
    t = 0.05 + 0.95 * torch.rand(batch.shape[0], generator=generator)
    z = torch.randn(batch.shape, generator=generator)
    x = batch + t[:, None] * z
    return (t[:, None] * model(x, t) + z).square().sum(1).mean()


def param_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
