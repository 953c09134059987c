"""Input validation and broadcasting helpers shared by the whole package.

Every public function of :mod:`scoresde` checks its arguments through these helpers so that
errors read the same everywhere: they name the argument and the range it must lie in.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import torch

__all__: list[str] = []


def check_positive(name: str, value: float, *, strict: bool = True) -> float:
    """Return ``float(value)`` after checking it is finite and positive (or non-negative)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    if not math.isfinite(v) or (v <= 0 if strict else v < 0):
        bound = "> 0" if strict else ">= 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


def check_int(name: str, value: int, *, minimum: int = 1) -> int:
    """Return ``value`` after checking it is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                value = int(value)
            else:
                raise TypeError
        except TypeError:
            raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def all_finite(x: torch.Tensor) -> bool:
    """Whether every entry of ``x`` is finite, with one reduction (max |x| propagates NaN and inf)."""
    return x.numel() == 0 or math.isfinite(float(x.detach().abs().amax()))


def check_tensor(name: str, x, *, min_dim: int = 1) -> torch.Tensor:
    """Check ``x`` is a floating-point tensor with at least ``min_dim`` dims and finite values."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimension(s) (batch first), got shape "
            f"{tuple(x.shape)}"
        )
    if not all_finite(x):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


def check_shape(name: str, shape) -> tuple[int, ...]:
    """Return ``shape`` as a tuple of positive ints ``(batch, *event)``."""
    if isinstance(shape, int) or not isinstance(shape, (Sequence, torch.Size)):
        raise TypeError(f"{name} must be a tuple (batch, *event_shape), got {shape!r}")
    out = tuple(shape)
    if len(out) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in out):
        raise ValueError(f"{name} must be a tuple of ints (batch, *event_shape), got {shape!r}")
    if any(s <= 0 for s in out):
        raise ValueError(f"{name} must have positive sizes, got {shape!r}")
    return out


def as_time(
    t,
    batch: int | None,
    T: float,
    *,
    like: torch.Tensor | None = None,
    name: str = "t",
) -> torch.Tensor:
    """Return ``t`` as a ``(batch,)`` tensor, checking ``0 <= t <= T``.

    A float (or 0-d tensor) is broadcast to ``(batch,)``; a ``(batch,)`` tensor is checked
    against ``batch``. When ``like`` is given the result has its dtype and device. A relative
    slack of ``1e-6`` on ``T`` absorbs float32 rounding of the horizon; values inside the slack
    are clamped to ``T``.
    """
    if isinstance(t, torch.Tensor):
        if t.ndim > 1:
            raise ValueError(f"{name} must be a float or a (batch,) tensor, got shape {tuple(t.shape)}")
        if like is not None:
            t = t.to(device=like.device, dtype=like.dtype if like.is_floating_point() else None)
        elif not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
    elif isinstance(t, (int, float)) and not isinstance(t, bool):
        dtype = like.dtype if like is not None else torch.get_default_dtype()
        device = like.device if like is not None else None
        t = torch.tensor(float(t), dtype=dtype, device=device)
    else:
        raise TypeError(f"{name} must be a float or a torch.Tensor, got {type(t).__name__}")
    if t.ndim == 0:
        t = t.expand(batch) if batch is not None else t.reshape(1)
    elif batch is not None and t.shape[0] != batch:
        raise ValueError(f"{name} must have shape ({batch},) to match the batch, got {tuple(t.shape)}")
    lo, hi = (float(v) for v in torch.aminmax(t.detach()))  # one reduction, one sync
    if math.isnan(lo) or math.isnan(hi) or math.isinf(lo) or math.isinf(hi):
        raise ValueError(f"{name} contains non-finite values")
    slack = 1e-6 * max(T, 1.0)
    if lo < 0.0 or hi > T + slack:
        raise ValueError(f"{name} must lie in [0, T] = [0, {T:g}], got values in [{lo:g}, {hi:g}]")
    if hi > T:
        t = t.clamp(max=T)
    return t


def bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a ``(batch,)`` tensor to broadcast against ``x`` of shape ``(batch, *event)``."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def check_end_time(sde, eps: float) -> float:
    """``eps`` as a float in ``(0, sde.T)``, or a ValueError naming it."""
    eps = check_positive("eps", eps)
    if eps >= sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T:g}), got {eps}")
    return eps


def check_linear(sde, who: str) -> None:
    """TypeError unless ``sde`` has ``log_snr`` and ``t_from_log_snr`` (a LinearSDE)."""
    if not (callable(getattr(sde, "log_snr", None)) and callable(getattr(sde, "t_from_log_snr", None))):
        raise TypeError(
            f"{who} needs a LinearSDE (with log_snr and t_from_log_snr), got sde of type "
            f"{type(sde).__name__}"
        )


def derive_seed(seed: int, *keys) -> int:
    """A 63-bit seed derived from ``seed`` and ``keys``, stable across processes and platforms.

    CRC-32 of the keys' ``repr`` mixed with ``seed`` (Python's ``hash`` of a string changes
    between runs), so related streams (a rank, a target name, a purpose) get distinct seeds.
    The one seed derivation of the package: the trainer's data and loss streams and the
    comparison harness both use it.
    """
    seed = check_int("seed", seed, minimum=0)
    text = "\x1f".join(repr(k) for k in keys).encode()
    return (seed * 1_000_003 + zlib.crc32(text)) % (2**63 - 1)
