r"""Noise sources: where the samplers' Gaussian draws come from.

Every random draw of a sampler — the prior sample :meth:`SDE.prior_sample
<scoresde.SDE.prior_sample>` and each step's noise — goes through one function
(:func:`scoresde._runtime.gaussian_like`), which accepts as ``generator``

- ``None`` (PyTorch's global generator),
- a :class:`torch.Generator` (one stream for the whole batch: the same seed gives the same
  samples, but sample ``i`` changes with the batch size, since it gets whichever numbers
  follow the other samples' draws), or
- a *noise source*: any object with a method ``randn(shape, *, dtype, device) -> Tensor`` and a
  ``device`` attribute. :class:`PerSampleGenerator` is the one shipped here.

:class:`PerSampleGenerator` gives every sample its own stream, seeded from one seed and the
sample's index, so the noise of sample ``i`` is the same whether it is drawn alone or in a batch
of any size — what diffusers offers through a list of generators, one per image, and
k-diffusion through a Brownian tree seeded per sample (``BrownianTreeNoiseSampler``).
"""

from __future__ import annotations

import torch

from ._checks import check_int, derive_seed

__all__ = ["PerSampleGenerator"]


class PerSampleGenerator:
    r"""Batch-independent noise: one :class:`torch.Generator` per sample, seeded from one seed.

    Pass it as ``generator=`` to :func:`scoresde.sample` (or to ``prior_sample``). Row ``j`` of
    every draw of shape ``(batch, *event)`` is drawn from the stream of sample ``start + j``,
    a generator seeded with ``derive_seed(seed, "sample", start + j)``
    (:func:`~scoresde._checks.derive_seed`, a CRC-32 mix), so that

    - sample ``i`` of a batch drawn with ``PerSampleGenerator(seed)`` equals the one sample
      drawn with ``PerSampleGenerator(seed, start=i)``, whatever the batch size, as long as the
      sampler's update of a sample depends only on that sample (true of Euler–Maruyama,
      reverse diffusion, DDPM, DDIM, EDM, the DPM-Solver++ SDE solvers, SA-Solver, the
      ancestral samplers and PC with the ``"annealed_langevin"`` corrector; *not* of PC with
      the default ``"langevin"`` corrector, whose step size averages norms over the batch, nor
      of the adaptive SDE solver, whose step sizes are chosen for the whole batch);
    - a run can be split across processes or batches (``start`` = the first index of each
      part) and reassembled exactly.

    The streams live on the CPU by default, so the same seed gives the same numbers on any
    device (draws are moved to the state's device). The object is stateful like a
    :class:`torch.Generator`: each draw continues every stream; build a new one (or call
    :meth:`manual_seed`) to start over. Drawing ``B`` rows costs ``B`` small ``randn`` calls
    (about a microsecond each on the CPU), negligible against a network evaluation but
    noticeable for an exact score on a large batch.

    Parameters
    ----------
    seed : int
        Master seed (>= 0).
    start : int
        Index of the batch's first sample (>= 0).
    device : torch.device or str
        Where the streams' generators live (default ``"cpu"``).

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> from scoresde.noise import PerSampleGenerator
    >>> sde = sd.VPSDE()
    >>> score = sd.Gaussian(torch.zeros(2), torch.eye(2)).score_fn(sde)
    >>> batch = sd.sample(sde, score, (100, 2), steps=20, generator=PerSampleGenerator(0)).samples
    >>> alone = sd.sample(sde, score, (1, 2), steps=20, generator=PerSampleGenerator(0, start=7)).samples
    >>> torch.allclose(batch[7], alone[0], rtol=0, atol=1e-6)
    True
    """

    def __init__(self, seed: int, start: int = 0, device: torch.device | str = "cpu"):
        self.seed = check_int("seed", seed, minimum=0)
        self.start = check_int("start", start, minimum=0)
        self.device = torch.device(device)
        self._streams: list[torch.Generator] = []

    def __repr__(self) -> str:
        return f"PerSampleGenerator(seed={self.seed}, start={self.start}, device={str(self.device)!r})"

    def manual_seed(self, seed: int) -> PerSampleGenerator:
        """Restart every stream from ``seed`` (returns ``self``, like :meth:`torch.Generator.manual_seed`)."""
        self.seed = check_int("seed", seed, minimum=0)
        self._streams = []
        return self

    def stream(self, j: int) -> torch.Generator:
        """The generator of row ``j`` (sample ``start + j``), created on first use."""
        while len(self._streams) <= j:
            index = self.start + len(self._streams)
            g = torch.Generator(device=self.device)
            g.manual_seed(derive_seed(self.seed, "sample", index))
            self._streams.append(g)
        return self._streams[j]

    def randn(self, shape, *, dtype: torch.dtype | None = None,
              device: torch.device | str | None = None) -> torch.Tensor:
        """Standard normals of ``shape = (batch, *event)``; row ``j`` from stream ``j``."""
        shape = tuple(shape)
        if len(shape) < 1:
            raise ValueError(f"shape must be (batch, *event_shape), got {shape}")
        rows = [torch.randn(shape[1:], generator=self.stream(j), device=self.device, dtype=dtype)
                for j in range(shape[0])]
        out = torch.stack(rows) if rows else torch.empty(shape, device=self.device, dtype=dtype)
        return out if device is None else out.to(device)
