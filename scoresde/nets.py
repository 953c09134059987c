r"""Score networks and the parameterisations that turn their outputs into scores.

Two small time-conditioned networks, both called as ``net(x, t) -> tensor like x``:

- :class:`ScoreMLP` for vector data ``(batch, dim)`` (2-D toy sets, low-dimensional targets);
- :class:`UNet` for images ``(batch, C, H, W)``, from 1×8×8 (sklearn digits) to 3×32×32.

Time enters through :class:`GaussianFourierEmbedding` (random Fourier features, Tancik et al.
2020; Song et al. 2021). With ``num_classes=K`` both networks are *class-conditional*,
``net(x, t, y)``: a learned embedding of the label ``y`` (one row per class plus a *null* row,
index ``K``, for "no label") is added to the time embedding, so one network holds the
conditional scores :math:`\nabla\log p_t(x \mid y)` and the unconditional one
:math:`\nabla\log p_t(x)` for classifier-free guidance (Ho & Salimans 2021;
:meth:`ScoreModel.conditional`, :meth:`ScoreModel.unconditional`, :meth:`ScoreModel.guided`).
:class:`ScoreModel` wraps such a network together with a forward SDE and reads its output as an
ε-, x₀-, v- or score prediction; by Tweedie's formula (Efron 2011; the conversions are in
:mod:`scoresde.predict`) every one of them defines the same score function, so a
:class:`ScoreModel` *is* a ``score_fn(x, t)`` for every sampler and for the likelihood.

Weights are initialised from an optional ``generator`` (PyTorch's default distribution,
:math:`\mathcal U(\pm 1/\sqrt{\text{fan\_in}})`), so that a seed fixes a network without touching
the global random state. Networks are built in float32 on the CPU; move them with ``.to()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._checks import as_time, bcast, check_int, check_positive
from .predict import PREDICTIONS, convert
from .sde import SDE

__all__ = [
    "GaussianFourierEmbedding",
    "ScoreMLP",
    "UNet",
    "ScoreModel",
    "ConditionalScore",
    "PARAMETERIZATIONS",
]

#: The output kinds :class:`ScoreModel` understands: :data:`scoresde.predict.PREDICTIONS` and
#: ``"edm"`` (Karras et al. 2022 preconditioning, a denoiser: an x₀-prediction).
PARAMETERIZATIONS = PREDICTIONS + ("edm",)


# -- helpers -----------------------------------------------------------------------------


def _init_uniform(module: nn.Module, generator: torch.Generator | None) -> None:
    """Re-draw every Linear/Conv2d weight and bias from U(±1/sqrt(fan_in)) using ``generator``.

    This is PyTorch's default initialisation (Kaiming-uniform with ``a = sqrt(5)``), drawn from
    an explicit generator so that a seed reproduces the network.
    """
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                m.weight.uniform_(-bound, bound, generator=generator)
                if m.bias is not None:
                    m.bias.uniform_(-bound, bound, generator=generator)


def _zero(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


def _time_input(t, x: torch.Tensor) -> torch.Tensor:
    """``t`` as a ``(batch,)`` tensor with ``x``'s dtype and device (a float is broadcast)."""
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        t = torch.tensor(float(t))
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a float or a torch.Tensor, got {type(t).__name__}")
    t = t.to(device=x.device, dtype=x.dtype)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a float or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t


def _groups(groups: int, channels: int) -> int:
    return math.gcd(groups, channels)


def _check_num_classes(num_classes) -> int | None:
    if num_classes is None:
        return None
    return check_int("num_classes", num_classes)


def _label_embedding(num_classes: int | None, dim: int, generator: torch.Generator | None):
    """``num_classes + 1`` rows (the last is the null label) drawn from N(0, 1), or None."""
    if num_classes is None:
        return None
    emb = nn.Embedding(num_classes + 1, dim)
    with torch.no_grad():
        emb.weight.normal_(0.0, 1.0, generator=generator)
    return emb


def _label_input(y, x: torch.Tensor, num_classes: int | None) -> torch.Tensor | None:
    """``y`` as a ``(batch,)`` int64 tensor on ``x``'s device, checked against ``num_classes``.

    ``None`` stays None for an unconditional network and is the null label ``num_classes`` for
    a conditional one; an int is broadcast over the batch.
    """
    if num_classes is None:
        if y is not None:
            raise ValueError("y must be None: this network is unconditional (built without num_classes)")
        return None
    if y is None:
        return torch.full((x.shape[0],), num_classes, dtype=torch.long, device=x.device)
    if isinstance(y, bool) or not isinstance(y, (int, torch.Tensor)):
        raise TypeError(f"y must be an int or an integer tensor of labels, got {type(y).__name__}")
    if isinstance(y, int):
        y = torch.tensor(y)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer labels, got dtype {y.dtype}")
    y = y.to(device=x.device, dtype=torch.long)
    if y.ndim == 0:
        y = y.expand(x.shape[0])
    elif y.shape != (x.shape[0],):
        raise ValueError(f"y must be an int or have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if y.numel() and bool(((y < 0) | (y > num_classes)).any()):
        raise ValueError(
            f"y must hold labels in 0..{num_classes - 1} (or the null label {num_classes}), got values "
            f"in {int(y.min())}..{int(y.max())}"
        )
    return y


# -- time embedding ------------------------------------------------------------------------


class GaussianFourierEmbedding(nn.Module):
    r"""Random Fourier features of a scalar time (Tancik et al. 2020; Song et al. 2021).

    .. math:: \gamma(t) = \big[\sin(2\pi w_1 t), \dots, \sin(2\pi w_{m} t),
              \cos(2\pi w_1 t), \dots, \cos(2\pi w_{m} t)\big],
              \qquad w_j \sim \mathcal N(0, \text{scale}^2),\; m = \text{dim}/2.

    The frequencies are drawn once, at construction, and stored as a buffer (moved by ``.to()``
    and saved in the ``state_dict``, never trained). ``scale`` sets the bandwidth relative to the
    range of the input: for a time normalised to ``[0, 1]`` (what :class:`ScoreModel` feeds its
    network) a scale of a few units resolves the whole range smoothly; Song et al. use 16 with
    :math:`\log\sigma` as input.

    Parameters
    ----------
    dim : int
        Output size, even (>= 2).
    scale : float
        Standard deviation of the frequencies (> 0).
    generator : torch.Generator, optional
        Source of the frequencies (CPU).

    Examples
    --------
    >>> import torch
    >>> from scoresde.nets import GaussianFourierEmbedding
    >>> emb = GaussianFourierEmbedding(8, generator=torch.Generator().manual_seed(0))
    >>> emb(torch.tensor([0.0, 0.5])).shape
    torch.Size([2, 8])
    >>> emb(torch.tensor([0.0]))          # sin(0) = 0, cos(0) = 1
    tensor([[0., 0., 0., 0., 1., 1., 1., 1.]])
    """

    W: torch.Tensor

    def __init__(self, dim: int, scale: float = 16.0, generator: torch.Generator | None = None):
        super().__init__()
        dim = check_int("dim", dim, minimum=2)
        if dim % 2:
            raise ValueError(f"dim must be even (sin and cos features), got {dim}")
        self.dim = dim
        self.scale = check_positive("scale", scale)
        self.register_buffer("W", torch.randn(dim // 2, generator=generator) * self.scale)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale:g}"

    def forward(self, t) -> torch.Tensor:
        """Features of ``t`` (a float or a ``(batch,)`` tensor), shape ``(batch, dim)``."""
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(float(t), dtype=self.W.dtype, device=self.W.device)
        if not t.is_floating_point():
            t = t.to(self.W.dtype)
        proj = 2 * math.pi * t.reshape(-1, 1) * self.W.to(t.dtype)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


# -- vector data ---------------------------------------------------------------------------


class _MLPBlock(nn.Module):
    """Pre-norm residual block ``h + W·SiLU(LN(h) + e(t))``."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.lin = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return h + self.lin(nn.functional.silu(self.norm(h) + temb))


class ScoreMLP(nn.Module):
    r"""A residual MLP ``net(x, t)`` for vector data ``(batch, dim) -> (batch, dim)``.

    .. math::
        e &= W_e\,\gamma(t) + b_e \quad\text{(Fourier features, then a linear map)}, \\
        h_0 &= W_{\rm in} x + b_{\rm in}, \qquad
        h_{k} = h_{k-1} + W_k\,\mathrm{SiLU}\big(\mathrm{LN}_k(h_{k-1}) + e\big), \\
        \text{out} &= W_{\rm out}\,\mathrm{SiLU}(h_K) + b_{\rm out},
        \qquad W_{\rm out} = 0,\ b_{\rm out} = 0 \text{ at initialisation,}

    and, class-conditional (``num_classes=K``), :math:`e = W_e\gamma(t) + b_e + E_y` with a
    learned label embedding :math:`E \in \mathbb R^{(K+1) \times \text{hidden}}` whose last
    row :math:`E_K` is the *null label* of the unconditional model (classifier-free guidance,
    Ho & Salimans 2021).

    Design choices:

    - *Pre-norm LayerNorm in every block.* The scale of ``x`` changes by orders of magnitude
      along the forward process (VE reaches :math:`\sigma_{\max} = 50`); normalising each block's
      input keeps the pre-activations O(1) at every ``t``, while the un-normalised residual
      stream still carries the magnitude of ``x`` to the output. There is deliberately no final
      norm: ε- and score-targets are close to linear in ``x`` at large ``t`` (e.g.
      :math:`\hat\epsilon \approx x` for VP), which a normalised last layer cannot express.
    - *Additive time conditioning*: one learned embedding :math:`e(t)` (of size ``hidden``)
      added inside every block, concatenation-style conditioning at no extra cost per block.
    - *Zero-initialised output layer*: the initial prediction is exactly 0 (ε̂ = 0, i.e. the
      prior guess for ε-prediction), which makes early training stable.

    At the defaults (``dim=2``) the network has 59,266 parameters, about 0.12 MFLOP per sample
    and forward pass (two per parameter).

    Parameters
    ----------
    dim : int
        Data dimension.
    hidden : int
        Width of the residual stream.
    n_blocks : int
        Number of residual blocks.
    embed_dim : int
        Number of Fourier features of ``t`` (even).
    time_scale : float
        Standard deviation of the Fourier frequencies; the default 4 suits a time input in
        ``[0, 1]`` (what :class:`ScoreModel` passes with ``normalize_time=True``).
    generator : torch.Generator, optional
        Source of the initial weights and of the Fourier frequencies.
    num_classes : int, optional
        Number of classes ``K`` of a class-conditional network (called as ``net(x, t, y)``
        with labels ``0..K-1``, or ``K`` = :attr:`null_label`; ``y=None`` means the null
        label). None (default): unconditional, called as ``net(x, t)``. The embedding rows are
        drawn from :math:`\mathcal N(0, 1)` (PyTorch's default for ``nn.Embedding``) after
        the other weights, so the unconditional weights of a seed are unchanged.

    Attributes
    ----------
    num_classes : int or None
        ``K``, or None for an unconditional network.
    null_label : int or None
        The label index of "no label", ``K`` (None when unconditional).

    Examples
    --------
    >>> import torch
    >>> from scoresde.nets import ScoreMLP
    >>> net = ScoreMLP(2, generator=torch.Generator().manual_seed(0))
    >>> x = torch.randn(5, 2)
    >>> net(x, torch.full((5,), 0.3)).abs().max()   # zero-initialised output layer
    tensor(0., grad_fn=<MaxBackward1>)
    >>> sum(p.numel() for p in net.parameters())
    59266
    >>> cond = ScoreMLP(2, num_classes=3, generator=torch.Generator().manual_seed(0))
    >>> cond(x, 0.3, torch.tensor([0, 1, 2, 3, 1])).shape   # label 3 = cond.null_label
    torch.Size([5, 2])
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        n_blocks: int = 3,
        embed_dim: int = 64,
        time_scale: float = 4.0,
        generator: torch.Generator | None = None,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.dim = check_int("dim", dim)
        self.num_classes = _check_num_classes(num_classes)
        hidden = check_int("hidden", hidden)
        n_blocks = check_int("n_blocks", n_blocks, minimum=0)
        self.embed = GaussianFourierEmbedding(embed_dim, time_scale, generator=generator)
        self.time_proj = nn.Linear(embed_dim, hidden)
        self.inp = nn.Linear(self.dim, hidden)
        self.blocks = nn.ModuleList(_MLPBlock(hidden) for _ in range(n_blocks))
        self.out = nn.Linear(hidden, self.dim)
        _init_uniform(self, generator)
        _zero(self.out)
        self.label_embed = _label_embedding(self.num_classes, hidden, generator)

    @property
    def null_label(self) -> int | None:
        """The label index of "no label" (``num_classes``), None when unconditional."""
        return self.num_classes

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        """Evaluate on ``x`` ``(batch, dim)``, times ``t`` (float or ``(batch,)``) and labels ``y``.

        ``y`` (class-conditional networks only): an int or a ``(batch,)`` integer tensor in
        ``0..num_classes`` (``num_classes`` is the null label); None means the null label.
        """
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}), got {tuple(x.shape)}")
        y = _label_input(y, x, self.num_classes)
        temb = self.time_proj(self.embed(_time_input(t, x)))
        if y is not None:
            temb = temb + self.label_embed(y).to(temb.dtype)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, temb)
        return self.out(nn.functional.silu(h))


# -- images ----------------------------------------------------------------------------------


class _ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, time embedding added, GroupNorm → SiLU → conv, plus a skip."""

    def __init__(self, cin: int, cout: int, temb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb_dim, cout)
        self.norm2 = nn.GroupNorm(_groups(groups, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    r"""A small U-Net ``net(x, t)`` for images ``(batch, C, H, W) -> (batch, C, H, W)``.

    In the style of DDPM's network (Ho et al. 2020; Ronneberger et al. 2015), without attention:
    a 3×3 input convolution; per resolution level ``n_res_blocks`` residual blocks (GroupNorm,
    SiLU, 3×3 convolution, the time embedding added per block) whose outputs are kept as skip
    connections, then a stride-2 convolution down to the next level; one residual block at the
    bottom; on the way up, per level, residual blocks on the concatenation with the matching skip,
    then nearest-neighbour upsampling and a 3×3 convolution; GroupNorm, SiLU and a
    zero-initialised 3×3 output convolution (the initial prediction is 0).

    The time embedding is :class:`GaussianFourierEmbedding` followed by a two-layer MLP of
    width ``4 * base_channels``. ``H`` and ``W`` must be divisible by
    :math:`2^{L-1}`, :math:`L` = ``len(channel_mults)``: the defaults handle 8×8 and 32×32
    (and any even size). At the defaults (``in_channels=1``) it has 386,049 parameters
    (387,203 for RGB).

    Class-conditional (``num_classes=K``): a learned label embedding of width
    ``4 * base_channels`` (``K + 1`` rows, the last the null label) is added to the time
    embedding, as in the class-conditional networks of Dhariwal & Nichol (2021) and
    classifier-free guidance (Ho & Salimans 2021); the network is then ``net(x, t, y)``.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for digits, 3 for RGB).
    base_channels : int
        Channels of the first level.
    channel_mults : sequence of int
        Channel multiplier of each resolution level (one level per entry).
    n_res_blocks : int
        Residual blocks per level, on the way down and (one per skip) on the way up.
    embed_dim : int
        Number of Fourier features of ``t`` (even).
    time_scale : float
        Standard deviation of the Fourier frequencies (for a time input in ``[0, 1]``).
    groups : int
        GroupNorm groups (reduced to the gcd with the channel count where needed).
    generator : torch.Generator, optional
        Source of the initial weights and Fourier frequencies.
    num_classes : int, optional
        Number of classes of a class-conditional network (see :class:`ScoreMLP`); None
        (default): unconditional.

    Examples
    --------
    >>> import torch
    >>> from scoresde.nets import UNet
    >>> net = UNet(in_channels=1, generator=torch.Generator().manual_seed(0))
    >>> net(torch.randn(2, 1, 8, 8), torch.tensor([0.1, 0.9])).shape
    torch.Size([2, 1, 8, 8])
    >>> UNet(num_classes=10)(torch.randn(2, 1, 8, 8), 0.5, torch.tensor([3, 10])).shape
    torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        n_res_blocks: int = 1,
        embed_dim: int = 64,
        time_scale: float = 4.0,
        groups: int = 8,
        generator: torch.Generator | None = None,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels)
        self.num_classes = _check_num_classes(num_classes)
        base = check_int("base_channels", base_channels)
        if isinstance(channel_mults, (str, bytes)) or not isinstance(channel_mults, Sequence):
            raise TypeError(f"channel_mults must be a sequence of ints, got {channel_mults!r}")
        mults = tuple(check_int("channel_mults", m) for m in channel_mults)
        if not mults:
            raise ValueError("channel_mults must have at least one entry")
        n_res = check_int("n_res_blocks", n_res_blocks)
        groups = check_int("groups", groups)
        temb_dim = 4 * base
        self.levels = len(mults)

        self.embed = GaussianFourierEmbedding(embed_dim, time_scale, generator=generator)
        self.time_mlp = nn.Sequential(
            nn.Linear(embed_dim, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim), nn.SiLU()
        )
        self.conv_in = nn.Conv2d(self.in_channels, base, 3, padding=1)

        chans = [base * m for m in mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips: list[int] = []
        ch = base
        for i, c in enumerate(chans):
            blocks = nn.ModuleList()
            for _ in range(n_res):
                blocks.append(_ResBlock(ch, c, temb_dim, groups))
                ch = c
                skips.append(ch)
            self.down.append(blocks)
            last = i == len(chans) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = _ResBlock(ch, ch, temb_dim, groups)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, c in reversed(list(enumerate(chans))):
            blocks = nn.ModuleList()
            for _ in range(n_res):
                blocks.append(_ResBlock(ch + skips.pop(), c, temb_dim, groups))
                ch = c
            self.up.append(blocks)
            self.upsample.append(nn.Identity() if i == 0 else nn.Conv2d(ch, chans[i - 1], 3, padding=1))
            if i > 0:
                ch = chans[i - 1]
        self.norm_out = nn.GroupNorm(_groups(groups, ch), ch)
        self.conv_out = nn.Conv2d(ch, self.in_channels, 3, padding=1)
        _init_uniform(self, generator)
        _zero(self.conv_out)
        self.label_embed = _label_embedding(self.num_classes, temb_dim, generator)

    @property
    def null_label(self) -> int | None:
        """The label index of "no label" (``num_classes``), None when unconditional."""
        return self.num_classes

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        """Evaluate on images ``x`` ``(batch, C, H, W)``, times ``t`` and labels ``y``.

        ``t``: a float or ``(batch,)``; ``y`` (class-conditional networks only): an int or a
        ``(batch,)`` integer tensor in ``0..num_classes`` (the last is the null label), None for
        the null label.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (batch, {self.in_channels}, H, W), got {tuple(x.shape)}")
        f = 2 ** (self.levels - 1)
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"x must have H and W divisible by {f} (2^(len(channel_mults) - 1)), got {tuple(x.shape[2:])}"
            )
        y = _label_input(y, x, self.num_classes)
        temb = self.time_mlp(self.embed(_time_input(t, x)))
        if y is not None:
            temb = temb + self.label_embed(y).to(temb.dtype)
        h = self.conv_in(x)
        hs = []
        for blocks, down in zip(self.down, self.downsample, strict=True):
            for block in blocks:
                h = block(h, temb)
                hs.append(h)
            h = down(h)
        h = self.mid(h, temb)
        for blocks, up in zip(self.up, self.upsample, strict=True):
            for block in blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
            if not isinstance(up, nn.Identity):
                h = up(nn.functional.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


# -- parameterisations -----------------------------------------------------------------------


def _param_dtype(net) -> torch.dtype | None:
    """The floating dtype of a module's first parameter (``None`` for a plain callable)."""
    if isinstance(net, nn.Module):
        for p in net.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


class ScoreModel(nn.Module):
    r"""A network ``net(x, t)`` read as a score function through the SDE's marginals.

    With :math:`x_t = s(t)\,x_0 + \sigma(t)\,\epsilon`
    (:meth:`LinearSDE.scale_std <scoresde.LinearSDE.scale_std>`) Tweedie's formula (Efron 2011;
    Vincent 2011) links score, noise and clean-data predictions,

    .. math:: \nabla\log p_t(x) = -\frac{\hat\epsilon}{\sigma} = \frac{s\,\hat x_0 - x}{\sigma^2},
              \qquad x = s\,\hat x_0 + \sigma\,\hat\epsilon,

    and the network output ``out`` is read according to ``parameterization``:

    ``"eps"`` (default, Ho et al. 2020)
        :math:`\hat\epsilon = \text{out}`, score :math:`= -\text{out}/\sigma`. Well scaled for VP.
    ``"score"`` (Song et al. 2021)
        the score itself; :math:`\hat\epsilon = -\sigma\,\text{out}`.
    ``"x0"`` (denoiser)
        :math:`\hat x_0 = \text{out}`, score :math:`= (s\,\text{out} - x)/\sigma^2`.
    ``"v"`` (Salimans & Ho 2022)
        :math:`v = s\,\epsilon - \sigma x_0`. Together with :math:`x = s x_0 + \sigma\epsilon`
        this is a 2×2 linear system (determinant :math:`s^2 + \sigma^2`), solved for any linear SDE:

        .. math:: \hat x_0 = \frac{s\,x - \sigma\,v}{s^2 + \sigma^2}, \qquad
                  \hat\epsilon = \frac{\sigma\,x + s\,v}{s^2 + \sigma^2}, \qquad
                  \nabla\log p_t = -\frac{\sigma x + s v}{\sigma (s^2 + \sigma^2)}.

        For VP-type SDEs :math:`s^2 + \sigma^2 = 1` and this is the usual
        :math:`x_0 = s x - \sigma v`; for VE (:math:`s = 1`, large :math:`\sigma`) the target is
        not unit-scaled and ``"eps"``/``"x0"`` are the better choices.
    ``"edm"`` (Karras et al. 2022, Table 1, "preconditioning")
        the network :math:`F` is wrapped into a denoiser of the scaled state
        :math:`\tilde x = x/s` at the noise-to-signal ratio :math:`\tilde\sigma = \sigma/s`,

        .. math:: \hat x_0 = D(\tilde x; \tilde\sigma) = c_{\rm skip}\,\tilde x
                  + c_{\rm out}\,F\big(c_{\rm in}\,\tilde x,\ c_{\rm noise}\big), \qquad
                  c_{\rm skip} = \frac{\sigma_d^2}{\tilde\sigma^2 + \sigma_d^2},\;
                  c_{\rm out} = \frac{\tilde\sigma\,\sigma_d}{\sqrt{\tilde\sigma^2 + \sigma_d^2}},\;
                  c_{\rm in} = \frac{1}{\sqrt{\tilde\sigma^2 + \sigma_d^2}},\;
                  c_{\rm noise} = \tfrac14 \log\tilde\sigma,

        with :math:`\sigma_d` = ``sigma_data``, so that the network's input and training target
        have unit variance at every noise level, on any linear SDE (on :class:`~scoresde.EDMSDE`
        :math:`s = 1` and :math:`\tilde\sigma = t`). The network's time input is
        :math:`c_{\rm noise}` (``normalize_time`` is not used). :meth:`predict` returns
        :math:`\hat x_0`; :class:`~scoresde.predict.PredictionAdapter` reads it as an
        x₀-prediction (:data:`~scoresde.predict.NATIVE_ALIASES`). Train it with
        :func:`~scoresde.losses.edm_loss`.

    The score forms divide by :math:`\sigma(t)`, which vanishes at ``t = 0``: evaluate at
    ``t >= eps`` as samplers and losses do. Every conversion is :func:`scoresde.predict.convert`;
    :meth:`predict` returns the raw output, so that a solver that updates with ε̂ or x̂₀ uses it
    directly (:class:`~scoresde.predict.PredictionAdapter`, one network evaluation, no detour
    through the score).

    What the network sees: ``net(x, t / T)`` (time normalised to ``[0, 1]``) when
    ``normalize_time=True`` (default), else ``net(x, t)``. The network runs in the dtype of its
    parameters: float64 states (for an accurate likelihood or sampler) are cast to a float32
    network's dtype for the call, and its output is cast back, so the returned prediction
    always has the dtype of ``x``.

    *Class-conditional models.* When the network has a ``num_classes`` attribute (a
    :class:`ScoreMLP` or :class:`UNet` built with ``num_classes=K``), every method takes an
    optional label ``y`` (an int or a ``(batch,)`` integer tensor) and calls ``net(x, t, y)``:
    ``model(x, t, y)`` is the conditional score :math:`\nabla\log p_t(x \mid y)` and
    ``model(x, t)`` the unconditional one (the null label). :meth:`conditional`,
    :meth:`unconditional` and :meth:`guided` bind the label and return plain score functions
    ``score_fn(x, t)`` for every sampler (:class:`ConditionalScore`).

    Parameters
    ----------
    net : callable
        ``net(x, t) -> tensor shaped like x``, usually an ``nn.Module`` (then registered as a
        sub-module, so ``ScoreModel.parameters()`` are the network's).
    sde : LinearSDE
        The forward process whose :meth:`~scoresde.LinearSDE.scale_std` defines
        :math:`s(t), \sigma(t)`.
    parameterization : {"eps", "score", "x0", "v", "edm"}
        How to read the network output.
    normalize_time : bool
        Feed ``t / T`` instead of ``t`` to the network (not used by ``"edm"``).
    sigma_data : float
        :math:`\sigma_d`, the standard deviation of the data, for ``"edm"`` (default 0.5,
        Karras et al.'s value for images in ``[-1, 1]``).

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> from scoresde.nets import ScoreMLP, ScoreModel
    >>> sde = sd.VPSDE()
    >>> model = ScoreModel(ScoreMLP(2), sde)   # eps-prediction
    >>> x = torch.randn(4, 2)
    >>> model(x, 0.5).shape       # a score function: plugs into sd.sample(sde, model, ...)
    torch.Size([4, 2])
    >>> torch.equal(model.predict_eps(x, 0.5), torch.zeros(4, 2))   # zero-initialised net
    True
    >>> cond = ScoreModel(ScoreMLP(2, num_classes=10), sde)
    >>> cond(x, 0.5, 3).shape, cond.num_classes
    (torch.Size([4, 2]), 10)
    >>> out = sd.sample(sde, cond.guided(3, weight=2.0), (4, 2), steps=10)   # CFG samples of class 3
    """

    def __init__(
        self,
        net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        sde: SDE,
        parameterization: str = "eps",
        normalize_time: bool = True,
        sigma_data: float = 0.5,
    ):
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, t), got {type(net).__name__}")
        if not isinstance(sde, SDE) or not callable(getattr(sde, "scale_std", None)):
            raise TypeError(f"sde must be a scoresde LinearSDE (with scale_std), got {type(sde).__name__}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization must be one of {PREDICTIONS} or 'edm' (Karras et al.'s "
                f"preconditioned denoiser), got {parameterization!r}")
        self.net = net
        self.sde = sde
        self.parameterization = parameterization
        self.normalize_time = bool(normalize_time)
        self.sigma_data = check_positive("sigma_data", sigma_data)

    def extra_repr(self) -> str:
        extra = f", sigma_data={self.sigma_data:g}" if self.parameterization == "edm" else ""
        return f"sde={self.sde!r}, parameterization={self.parameterization!r}{extra}"

    def _edm_denoise(self, x: torch.Tensor, s: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Karras et al.'s preconditioned denoiser :math:`D(x/s; \\sigma/s)`, one network call."""
        s_b, sig_b = bcast(s, x), bcast(sigma, x)
        x_t, sig_t = x / s_b, sig_b / s_b
        sd2 = self.sigma_data**2
        norm = torch.sqrt(sig_t**2 + sd2)
        c_noise = 0.25 * torch.log(sigma / s)
        out = self.net(x_t / norm, c_noise)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"net output must have the shape of x {tuple(x.shape)}, got {got}")
        return (sd2 / norm**2) * x_t + (sig_t * self.sigma_data / norm) * out

    @property
    def num_classes(self) -> int | None:
        """The network's number of classes (None: an unconditional model)."""
        n = getattr(self.net, "num_classes", None)
        return None if n is None else int(n)

    @property
    def null_label(self) -> int | None:
        """The label index of "no label" (``num_classes``), None for an unconditional model."""
        return self.num_classes

    def _check_x(self, x) -> None:
        # light checks only: this runs at every sampler step (the driver checks finiteness)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim < 1:
            raise ValueError(f"x must have shape (batch, *event_shape), got {tuple(x.shape)}")

    def _net(self, x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        t = t / self.sde.T if self.normalize_time else t
        if y is not None and self.num_classes is None:
            raise ValueError("y must be None: this ScoreModel is unconditional (its network has no num_classes)")
        labels = () if y is None else (y,)
        dtype = _param_dtype(self.net)
        if dtype is not None and dtype != x.dtype:  # e.g. float64 states, float32 weights
            out = self.net(x.to(dtype), t.to(dtype), *labels).to(x.dtype)
        else:
            out = self.net(x, t, *labels)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"net output must have the shape of x {tuple(x.shape)}, got {got}")
        return out

    def _as(self, target: str, x: torch.Tensor, t, y=None) -> torch.Tensor:
        """The prediction of kind ``target`` from one network evaluation."""
        self._check_x(x)
        if self.parameterization == "edm":
            t = _time_input(t, x)
            s, sigma = self.sde.scale_std(t)
            x0 = self._edm_denoise(x, s, sigma)
            return x0 if target in ("x0", "edm") else convert(x0, x, s, sigma, source="x0", target=target)
        if target == self.parameterization:
            return self._net(x, as_time(t, x.shape[0], self.sde.T, like=x), y)
        t = _time_input(t, x)
        s, sigma = self.sde.scale_std(t)  # also validates t (one reduction per call)
        out = self._net(x, t.clamp(max=self.sde.T), y)
        return convert(out, x, s, sigma, source=self.parameterization, target=target)

    def predict(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        r"""The raw network output: the prediction of kind :attr:`parameterization`.

        With :meth:`forward` (the score) this makes :class:`ScoreModel` a
        :class:`~scoresde.predict.NativePrediction`: solvers that update with ε̂ or x̂₀ use it
        through :class:`~scoresde.predict.PredictionAdapter` without a detour through the score.
        """
        return self._as(self.parameterization, x, t, y)

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        r"""The score estimate :math:`\nabla_x \log p_t(x)` (given ``y``: :math:`\nabla_x \log p_t(x \mid y)`)."""
        return self._as("score", x, t, y)

    def predict_eps(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        r"""The noise estimate :math:`\hat\epsilon(x, t) = -\sigma(t)\,\nabla\log p_t(x)`."""
        return self._as("eps", x, t, y)

    def predict_x0(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        r"""The denoised estimate :math:`\hat x_0 = \mathbb E[x_0 \mid x_t = x]`.

        Equal to :math:`(x - \sigma\hat\epsilon)/s` (divides by :math:`s(t) > 0`).
        """
        return self._as("x0", x, t, y)

    def conditional(self, y) -> ConditionalScore:
        r"""The conditional score :math:`\nabla_x \log p_t(x \mid y)` as a ``score_fn(x, t)``.

        ``y``: a class label (int in ``0..num_classes-1``) or a ``(batch,)`` tensor of them
        (one per sample). The result plugs into every sampler and into classifier-free
        guidance (:meth:`guided`).

        Raises
        ------
        ValueError
            For an unconditional model, or labels out of range.
        """
        return ConditionalScore(self, y)

    def unconditional(self) -> ConditionalScore:
        r"""The unconditional score :math:`\nabla_x \log p_t(x)` (the null label) as a ``score_fn(x, t)``.

        For an unconditional model this is the model's own score.
        """
        return ConditionalScore(self, None)

    def guided(self, y, weight: float) -> ConditionalScore:
        r"""Classifier-free guidance (Ho & Salimans 2021, equation 6) at label ``y`` and weight ``w``:

        .. math:: \tilde s(x, t) = (1 + w)\,s_\theta(x, t, y) - w\,s_\theta(x, t, \varnothing).

        ``weight=0`` is the conditional score; larger weights trade diversity for samples
        that are more typical of class ``y``. See :class:`ConditionalScore` for the cost.
        """
        return ConditionalScore(self, y, weight)


class ConditionalScore:
    r"""A class-conditional :class:`ScoreModel` with its label bound: a plain ``score_fn(x, t)``.

    With label ``y`` and guidance weight ``w`` (classifier-free guidance, Ho & Salimans 2021,
    equation 6) it evaluates

    .. math:: \tilde s(x, t) = (1 + w)\,s_\theta(x, t, y) - w\,s_\theta(x, t, \varnothing),

    where :math:`\varnothing` is the network's null label; ``w = 0`` is the conditional score
    :math:`s_\theta(x, t, y)` and ``y=None`` the unconditional score
    :math:`s_\theta(x, t, \varnothing)`. Every conversion of :mod:`scoresde.predict` is affine in
    the network output with coefficients that depend on ``(x, t)`` only, so the same
    combination of the raw outputs (ε̂, x̂₀, v̂) gives the same score: the object is a
    :class:`~scoresde.predict.NativePrediction` (``parameterization`` and ``predict``) and
    ε-/x₀-based solvers use the guided ε̂ directly.

    Cost: with ``w != 0`` each call evaluates the network on the conditional and the null
    label at once, one forward pass on ``2 * batch`` rows, i.e. **two network evaluations per
    score call** (``out.nfe`` of :func:`scoresde.sample` counts score calls).

    Parameters
    ----------
    model : ScoreModel
        A class-conditional model (``model.num_classes`` not None); any model when ``y`` is
        None and ``weight == 0``.
    y : int, Tensor or None
        A class in ``0..num_classes-1``, a ``(batch,)`` integer tensor of classes, or None
        (the unconditional score).
    weight : float
        Guidance weight :math:`w \ge 0`.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> from scoresde.nets import ScoreMLP, ScoreModel
    >>> model = ScoreModel(ScoreMLP(2, num_classes=2, generator=torch.Generator().manual_seed(0)),
    ...                    sd.VPSDE())
    >>> x, t = torch.randn(3, 2), torch.full((3,), 0.5)
    >>> g = model.guided(1, weight=2.0)
    >>> torch.allclose(g(x, t), 3 * model(x, t, 1) - 2 * model(x, t))
    True
    """

    def __init__(self, model: ScoreModel, y, weight: float = 0.0):
        if not isinstance(model, ScoreModel):
            raise TypeError(f"model must be a ScoreModel, got {type(model).__name__}")
        weight = check_positive("weight", weight, strict=False)  # finite and >= 0
        k = model.num_classes
        if k is None and (y is not None or weight != 0):
            what = "a label y" if y is not None else "guidance (weight > 0)"
            raise ValueError(f"model must be class-conditional for {what}: its network has no num_classes "
                             "(train it on labelled data, e.g. scoresde train --conditional)")
        if y is not None:
            per_sample = isinstance(y, torch.Tensor) and y.ndim == 1
            labels = _label_input(y, torch.empty(y.shape[0] if per_sample else 1), k)
            if bool((labels == k).any()):
                raise ValueError(f"y must hold class labels in 0..{k - 1}, got the null label {k} "
                                 "(use unconditional() for the unconditional score)")
            y = labels if per_sample else int(labels[0])
        if y is None and weight != 0:
            raise ValueError("y must be a class label when weight > 0 (guidance towards which class?)")
        self.model, self.y, self.weight = model, y, weight

    def __repr__(self) -> str:
        y = self.y if not isinstance(self.y, torch.Tensor) else f"tensor of {self.y.numel()} labels"
        return f"ConditionalScore(y={y}, weight={self.weight:g}, parameterization={self.parameterization!r})"

    @property
    def parameterization(self) -> str:
        """The model's output kind (what :meth:`predict` returns)."""
        return self.model.parameterization

    def _labels(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.y is None:
            return None
        if isinstance(self.y, int):
            return torch.full((x.shape[0],), self.y, dtype=torch.long, device=x.device)
        if self.y.shape != (x.shape[0],):
            raise ValueError(f"x must have a batch of {self.y.shape[0]} (one per label of y), got {tuple(x.shape)}")
        return self.y.to(x.device)

    def _evaluate(self, kind: str, x: torch.Tensor, t) -> torch.Tensor:
        y = self._labels(x)
        if self.weight == 0:
            return self.model._as(kind, x, t, y)
        self.model._check_x(x)
        t = _time_input(t, x)
        null = torch.full_like(y, self.model.null_label)
        both = self.model._as(kind, torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = both.chunk(2)
        return cond + self.weight * (cond - uncond)

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        """The (guided) score at ``(x, t)``, shaped like ``x``."""
        return self._evaluate("score", x, t)

    def predict(self, x: torch.Tensor, t) -> torch.Tensor:
        """The same combination of the raw network outputs (kind :attr:`parameterization`)."""
        return self._evaluate(self.parameterization, x, t)
