r"""Binomial (bit-flip) diffusion of Sohl-Dickstein et al. (2015) and its 'heartbeat' example.

Binary data :math:`x_0 \in \{0, 1\}^d` are noised by the kernel

.. math:: q(x_t \mid x_{t-1}) = \mathcal B\big(x_t;\ (1 - \beta_t)\,x_{t-1} + \beta_t/2\big),
          \qquad t = 1..T,

bit by bit (:math:`\mathcal B(x; p)` the Bernoulli law with :math:`P(x = 1) = p`): each bit is kept
with probability :math:`1 - \beta_t` and otherwise replaced by a fair coin. Keeping-or-resampling
composes, so with :math:`\bar\alpha_t = \prod_{s \le t}(1 - \beta_s)`

.. math:: q(x_t \mid x_0) = \mathcal B\big(x_t;\ \bar\alpha_t x_0 + (1 - \bar\alpha_t)/2\big).

For the paper's schedule :math:`\beta_t = 1/(T - t + 1)` the product telescopes,
:math:`\bar\alpha_t = (T - t)/T`, and :math:`x_T` is exactly :math:`\mathcal B(1/2)`. The reverse
kernel :math:`p_\theta(x_{t-1} \mid x_t) = \mathcal B(x_{t-1}; \rho_\theta(x_t, t))` has bit
probabilities :math:`\rho_\theta` from a network (independent bits given the whole :math:`x_t`),
trained on the bound :math:`K` of the paper (see :meth:`BinomialDiffusion.bound`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ._checks import check_int, check_tensor
from .elbo import ELBOResult, _estimate

__all__ = ["BinomialDiffusion", "heartbeats", "heartbeat_patterns"]

Net = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _bernoulli_kl(q: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathrm{KL}(\mathcal B(q)\,\|\,\mathcal B(\sigma(\text{logits})))` per entry, in nats
    (:math:`0\log 0 = 0`)."""
    ent = -(torch.xlogy(q, q) + torch.xlogy(1 - q, 1 - q))
    return F.binary_cross_entropy_with_logits(logits, q, reduction="none") - ent


class BinomialDiffusion:
    r"""The binomial diffusion chain on :math:`\{0, 1\}^d` of Sohl-Dickstein et al. (2015).

    Their section 2.4 and appendix B; the kernel, marginals and posterior are in the module
    docstring.

    Parameters
    ----------
    T : int
        Number of steps (>= 1).
    betas : array_like, optional
        :math:`\beta_1..\beta_T` in ``(0, 1]``; default the paper's :math:`\beta_t = 1/(T - t + 1)`,
        for which :math:`\bar\alpha_t = (T - t)/T` and :math:`\beta_T = 1`.

    Attributes
    ----------
    betas : Tensor, shape (T,)
        float64.
    alphas_cumprod : Tensor, shape (T + 1,)
        :math:`\bar\alpha_0 = 1, \bar\alpha_1, \dots, \bar\alpha_T` (indexed by ``t``).

    Notes
    -----
    The reverse model is a network ``net(y, tau) -> logits`` shaped like ``y``, which sees the
    state as :math:`y = 2x_t - 1 \in \{-1, 1\}^d` and the time as :math:`\tau = t/T \in (0, 1]`
    and returns the logits of :math:`P(x_{t-1} = 1 \mid x_t)`: any score network of the package
    fits, e.g. :class:`~scoresde.nets.ScoreMLP` (zero-initialised output: every bit starts at
    :math:`1/2`).

    References
    ----------
    Sohl-Dickstein, Weiss, Maheswaranathan & Ganguli (2015), *Deep unsupervised learning using
    nonequilibrium thermodynamics*, ICML.

    Examples
    --------
    For :math:`x_0 \sim \mathcal B(p_0)` the seeds' schedule gives
    :math:`P(x_t = 1) = 1/2 + (p_0 - 1/2)(T - t)/T`:

    >>> import torch, scoresde as sd
    >>> bd = sd.BinomialDiffusion(T=100)
    >>> x0 = torch.tensor([[1.0, 0.0]])
    >>> bd.marginal_prob(x0, 50)
    tensor([[0.7500, 0.2500]], dtype=torch.float64)
    """

    def __init__(self, T: int = 100, betas=None):
        self.T = check_int("T", T)
        if betas is None:
            t = torch.arange(1, self.T + 1, dtype=torch.float64)
            betas = 1.0 / (self.T - t + 1)
        else:
            try:
                betas = torch.as_tensor(betas, dtype=torch.float64).detach().clone()
            except (TypeError, ValueError, RuntimeError):
                raise TypeError("betas must be a tensor or sequence of numbers") from None
            if betas.shape != (self.T,):
                raise ValueError(f"betas must have shape (T,) = ({self.T},), got {tuple(betas.shape)}")
            if not bool(((betas > 0) & (betas <= 1)).all()):
                raise ValueError("betas must lie in (0, 1]")
        self.betas = betas
        self.alphas_cumprod = torch.cat([betas.new_ones(1), torch.cumprod(1 - betas, 0)])

    def __repr__(self) -> str:
        return f"BinomialDiffusion(T={self.T})"

    # -- validation -------------------------------------------------------------------------
    def _binary(self, name: str, x) -> torch.Tensor:
        check_tensor(name, x)
        if not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(f"{name} must contain only 0 and 1 (binary data), got other values")
        return x

    def _steps(self, t, x: torch.Tensor, lo: int) -> torch.Tensor:
        """``t`` as a float64 tensor broadcastable against ``x`` (a ``(batch,)`` tensor along dim 0)."""
        if isinstance(t, bool) or not isinstance(t, (int, torch.Tensor)):
            raise TypeError(f"t must be an int or an integer tensor, got {type(t).__name__}")
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.ndim > 1:
            raise ValueError(
                f"t must be an int or a (batch,) integer tensor, got dtype {t.dtype}, shape {tuple(t.shape)}"
            )
        if t.ndim == 1 and t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape ({x.shape[0]},) to match the batch, got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < lo or int(t.max()) > self.T):
            raise ValueError(f"t must lie in {lo}..T = {lo}..{self.T}, got values in {int(t.min())}..{int(t.max())}")
        return t.reshape(t.shape + (1,) * (x.ndim - t.ndim)) if t.ndim else t

    # -- forward process --------------------------------------------------------------------
    def marginal_prob(self, x0: torch.Tensor, t) -> torch.Tensor:
        r""":math:`P(x_t = 1 \mid x_0) = \bar\alpha_t x_0 + (1 - \bar\alpha_t)/2`, elementwise (float64).

        ``x0`` holds 0/1 values, ``t`` is an int or a ``(batch,)`` integer tensor in ``0..T``.
        """
        x0 = self._binary("x0", x0)
        t = self._steps(t, x0, 0)
        ab = self.alphas_cumprod[t]
        return ab * x0.to(torch.float64) + (1 - ab) / 2

    def forward_sample(self, x0: torch.Tensor, t, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Draw :math:`x_t \sim q(x_t \mid x_0)`, shaped and typed like ``x0``."""
        p = self.marginal_prob(x0, t)
        return self._bernoulli(p, generator).to(x0.dtype)

    def step_prob(self, x_prev: torch.Tensor, t) -> torch.Tensor:
        r""":math:`P(x_t = 1 \mid x_{t-1}) = (1 - \beta_t)\,x_{t-1} + \beta_t/2`, ``t`` in ``1..T``."""
        x_prev = self._binary("x_prev", x_prev)
        beta = self.betas[self._steps(t, x_prev, 1) - 1]
        return (1 - beta) * x_prev.to(torch.float64) + beta / 2

    def forward_step(self, x_prev: torch.Tensor, t, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""One step of the chain, :math:`x_t \sim q(x_t \mid x_{t-1})`."""
        return self._bernoulli(self.step_prob(x_prev, t), generator).to(x_prev.dtype)

    def posterior_prob(self, x_t: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
        r""":math:`q(x_{t-1} = 1 \mid x_t, x_0)` by Bayes' rule, elementwise, ``t`` in ``1..T``.

        With :math:`\pi = P(x_{t-1} = 1 \mid x_0)`, :math:`a = q(x_t \mid x_{t-1} = 1)` and
        :math:`b = q(x_t \mid x_{t-1} = 0)`: :math:`a\pi / (a\pi + b(1 - \pi))`. At ``t = 1`` it is
        :math:`x_0` itself.
        """
        x_t = self._binary("x_t", x_t)
        x0 = self._binary("x0", x0)
        if x_t.shape != x0.shape:
            raise ValueError(f"x_t and x0 must have the same shape, got {tuple(x_t.shape)} and {tuple(x0.shape)}")
        tt = self._steps(t, x0, 1)
        beta, ab = self.betas[tt - 1], self.alphas_cumprod[tt - 1]
        xt, x0 = x_t.to(torch.float64), x0.to(torch.float64)
        prior = ab * x0 + (1 - ab) / 2
        a = xt * (1 - beta / 2) + (1 - xt) * beta / 2
        b = xt * beta / 2 + (1 - xt) * (1 - beta / 2)
        return a * prior / (a * prior + b * (1 - prior))

    @staticmethod
    def _bernoulli(p: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        device = generator.device if generator is not None else p.device
        u = torch.rand(p.shape, generator=generator, device=device, dtype=torch.float64).to(p.device)
        return (u < p).to(torch.float64)

    # -- reverse model ----------------------------------------------------------------------
    def logits(self, net: Net, x_t: torch.Tensor, t) -> torch.Tensor:
        r"""Logits of :math:`p_\theta(x_{t-1} = 1 \mid x_t)`: ``net(2 x_t - 1, t / T)`` (float32 in, as given out)."""
        if not callable(net):
            raise TypeError(f"net must be callable as net(y, tau), got {type(net).__name__}")
        tt = torch.as_tensor(t)
        tt = tt.expand(x_t.shape[0]) if tt.ndim == 0 else tt
        y = 2 * x_t.to(torch.get_default_dtype()) - 1
        out = net(y, tt.to(y.dtype) / self.T)
        if not isinstance(out, torch.Tensor) or out.shape != x_t.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"net must return logits shaped like x_t {tuple(x_t.shape)}, got {got}")
        return out

    def _prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        r""":math:`\mathrm{KL}(q(x_T\mid x_0)\,\|\,\mathcal B(1/2))` per sample (0 when :math:`\bar\alpha_T = 0`)."""
        p = self.alphas_cumprod[-1] * x0.to(torch.float64) + (1 - self.alphas_cumprod[-1]) / 2
        kl = torch.xlogy(p, 2 * p) + torch.xlogy(1 - p, 2 * (1 - p))
        return kl.reshape(x0.shape[0], -1).sum(-1)

    def _step_kl(self, net: Net, x0: torch.Tensor, t: torch.Tensor, generator) -> torch.Tensor:
        r""":math:`\mathrm{KL}(q(x_{t-1}\mid x_t, x_0)\,\|\,p_\theta(x_{t-1}\mid x_t))` per sample, one
        :math:`x_t \sim q(x_t\mid x_0)`; at ``t = 1`` it is :math:`-\log p_\theta(x_0 \mid x_1)`."""
        x_t = self.forward_sample(x0, t, generator)
        target = self.posterior_prob(x_t, x0, t)
        logits = self.logits(net, x_t, t)
        kl = _bernoulli_kl(target.to(logits.dtype), logits)
        return kl.reshape(x0.shape[0], -1).sum(-1)

    def loss(self, net: Net, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Training loss: an unbiased, differentiable estimate of :math:`-K` (nats per sample, batch mean).

        :math:`-K = \mathrm{KL}(q(x_T\mid x_0)\,\|\,\pi) + T\,\mathbb E_{t \sim \mathcal U\{1..T\}}
        \mathbb E_{x_t}\,\mathrm{KL}(q(x_{t-1}\mid x_t, x_0)\,\|\,p_\theta(x_{t-1}\mid x_t))`
        with one ``t`` and one :math:`x_t` per sample; the KL between Bernoulli laws is exact
        (Rao–Blackwellised over :math:`x_{t-1}`), and at :math:`t = 1` the posterior is the point
        mass on :math:`x_0`, so that term is the reconstruction :math:`-\log p_\theta(x_0\mid x_1)`.
        ``generator`` draws ``t`` (``randint``), then the bits of :math:`x_t`.
        """
        x0 = self._binary("x0", x0)
        device = generator.device if generator is not None else x0.device
        t = torch.randint(1, self.T + 1, (x0.shape[0],), generator=generator, device=device).to(x0.device)
        per = self.T * self._step_kl(net, x0, t, generator) + self._prior_kl(x0).to(torch.get_default_dtype())
        return per.mean()

    @torch.no_grad()
    def bound(self, net: Net, x0: torch.Tensor, n_samples: int = 4,
              generator: torch.Generator | None = None) -> ELBOResult:
        r"""The lower bound :math:`K \le \log p_\theta(x_0)` of Sohl-Dickstein et al. (eq. 14), nats per sample.

        .. math:: K = -\mathrm{KL}(q(x_T\mid x_0)\,\|\,\pi)
                  - \sum_{t=2}^T \mathbb E_{x_t}\,\mathrm{KL}\big(q(x_{t-1}\mid x_t, x_0)\,\|\,
                  p_\theta(x_{t-1}\mid x_t)\big) + \mathbb E_{x_1}\log p_\theta(x_0 \mid x_1),

        summed exactly over ``t`` in each of ``n_samples`` (>= 2) independent draws of the
        :math:`x_t`; ``stderr`` is their standard error. :attr:`ELBOResult.bits_per_dim` gives bits
        per binary digit. ``nfe = T n_samples`` network calls per sample.
        """
        x0 = self._binary("x0", x0)
        n_samples = check_int("n_samples", n_samples, minimum=2)
        B = x0.shape[0]
        xr = x0.repeat_interleave(n_samples, 0)
        total = -self._prior_kl(xr)
        for t in range(1, self.T + 1):
            total = total - self._step_kl(net, xr, torch.full((xr.shape[0],), t), generator).to(torch.float64)
        mean, se = _estimate(total.reshape(B, n_samples), stratified=False)
        return ELBOResult(elbo=mean, stderr=se, nfe=self.T * n_samples, dim=x0[0].numel())

    @torch.no_grad()
    def sample(self, net: Net, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Ancestral sampling: :math:`x_T \sim \mathcal B(1/2)^d`, then :math:`x_{t-1} \sim
        p_\theta(x_{t-1} \mid x_t)` for :math:`t = T..1`. Returns 0/1 floats of ``shape``."""
        if isinstance(shape, int) or not all(isinstance(s, int) and s > 0 for s in shape) or len(shape) < 2:
            raise ValueError(f"shape must be a tuple of positive ints (batch, *event), got {shape!r}")
        x = self._bernoulli(torch.full(tuple(shape), 0.5, dtype=torch.float64), generator)
        for t in range(self.T, 0, -1):
            p = torch.sigmoid(self.logits(net, x, t).to(torch.float64))
            x = self._bernoulli(p, generator)
        return x.to(torch.get_default_dtype())


# -- the heartbeat example ---------------------------------------------------------------------


def heartbeat_patterns(length: int = 20, period: int = 5) -> torch.Tensor:
    """The ``period`` distinct heartbeats, shape ``(period, length)``.

    Row ``k`` pulses at bins ``k, k + period, ...``.
    """
    length = check_int("length", length)
    period = check_int("period", period)
    if period > length:
        raise ValueError(f"period must be <= length, got period={period}, length={length}")
    phase = torch.arange(period)[:, None]
    return ((torch.arange(length)[None, :] - phase) % period == 0).to(torch.get_default_dtype())


def heartbeats(n: int, length: int = 20, period: int = 5, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` binary 'heartbeat' sequences, the example of Sohl-Dickstein et al. (2015, figure 2).

    A pulse every ``period`` bins, the phase uniform over ``0..period-1``. Shape ``(n, length)``,
    0/1 floats.

    Examples
    --------
    >>> import torch
    >>> from scoresde.binomial import heartbeats
    >>> heartbeats(2, length=10, generator=torch.Generator().manual_seed(0))
    tensor([[0., 0., 0., 0., 1., 0., 0., 0., 0., 1.],
            [0., 0., 0., 1., 0., 0., 0., 0., 1., 0.]])
    """
    n = check_int("n", n)
    patterns = heartbeat_patterns(length, period)
    device = generator.device if generator is not None else None
    phase = torch.randint(0, period, (n,), generator=generator, device=device).cpu()
    return patterns[phase]
