r"""Predictor–corrector samplers (Song et al. 2021, §4.2 and Appendix G) and annealed Langevin dynamics.

A *predictor* moves the state from one grid time to the next with a solver of the
reverse-time SDE; a *corrector* runs a few steps of Langevin MCMC at a fixed time, pulling the
state back towards the marginal :math:`p_t` whatever error the predictor made. Every update here
is written with the exact one-step transition of the forward chain between grid times
:math:`t > t'`,

.. math:: x_t \mid x_{t'} \sim \mathcal N\big(r\, x_{t'},\ G^2 I\big), \qquad
          r = \frac{s(t)}{s(t')}, \qquad G^2 = \sigma(t)^2 - r^2 \sigma(t')^2,

read off :meth:`~scoresde.LinearSDE.scale_std`, so the same code serves every linear SDE of the package
(VP, sub-VP, VE, OU, cosine VP) without knowing which it was handed.
"""

from __future__ import annotations

import abc
import math

import torch

from .._checks import check_int, check_positive
from .._runtime import gaussian_like, time_vector
from ..predict import scale_std_values
from .base import Sampler

__all__ = ["ReverseDiffusion", "Corrector", "LangevinCorrector", "AnnealedLangevin", "PredictorCorrector"]


class ReverseDiffusion(Sampler):
    r"""Reverse-diffusion predictor (Song et al. 2021, Appendix E, equation 46), for any linear SDE.

    Discretise the forward SDE on the grid by its exact one-step transition,
    :math:`x_i = r\,x_{i+1} + G z` with :math:`r = s(t_i)/s(t_{i+1})` and
    :math:`G^2 = \sigma(t_i)^2 - r^2\sigma(t_{i+1})^2` — a discrete chain with drift
    :math:`f_i(x) = (r - 1)x` and noise :math:`G`. Reversing that chain the way the reverse SDE
    reverses the continuous one gives, with :math:`z \sim \mathcal N(0, I)`,

    .. math:: x_{i+1} = x_i - (r - 1)\,x_i + G^2\,\nabla\log p_{t_i}(x_i) + G\,z .

    For VP, with :math:`\alpha_i = r^2` the step's signal decay,
    :math:`G^2 = 1 - \alpha_i = \beta_i` and this is score_sde's
    ``ReverseDiffusionPredictor``; for VE :math:`r = 1` and
    :math:`G^2 = \sigma_i^2 - \sigma_{i-1}^2` (NCSN's ancestral step without the posterior
    variance). It agrees with DDPM's ancestral step up to :math:`O(\beta_i^2)` per step
    (:math:`2 - \sqrt{\alpha_i}` against :math:`1/\sqrt{\alpha_i}`), so it is a weak order 1
    solver of the reverse SDE (Itô). One score evaluation per step; noise is added at every
    step, including the last.
    """

    name = "reverse_diffusion"
    stochastic = True
    evaluates_at_end = False
    needs_linear_sde = True

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        ts = times.tolist()
        s, sig = scale_std_values(sde, times, who=type(self).__name__)
        for i in range(len(ts) - 1):
            r = s[i] / s[i + 1]
            g2 = max(sig[i] ** 2 - r * r * sig[i + 1] ** 2, 0.0)
            score = score_fn(x, time_vector(ts[i], x))
            x = (2.0 - r) * x + g2 * score + math.sqrt(g2) * gaussian_like(x, generator)
            if callback is not None:
                callback(i, ts[i + 1], x)
        return x


class Corrector(abc.ABC):
    r"""The corrector role of predictor–corrector sampling (Song et al. 2021, §4.2).

    A corrector moves a state at a *fixed* time :math:`t` towards the marginal :math:`p_t`
    (Langevin MCMC), whatever error the predictor made; it does not advance time. A subclass
    implements :meth:`correct` and declares :attr:`nfe_per_correct`.
    :class:`PredictorCorrector` accepts only correctors as ``corrector``.
    """

    @property
    def nfe_per_correct(self) -> int:
        """Score evaluations of one :meth:`correct` call."""
        return 1

    @abc.abstractmethod
    def correct(self, sde, score_fn, x: torch.Tensor, t: float, t_next: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """The corrected state, still at time ``t`` (``t_next`` is the neighbouring grid time)."""


class LangevinCorrector(Corrector, Sampler):
    r"""Langevin corrector with a signal-to-noise step size (Song et al. 2021, Algorithm 4 and 5).

    At a fixed time :math:`t` it makes ``n_steps`` unadjusted Langevin steps targeting
    :math:`p_t` (the unadjusted Langevin algorithm of Roberts & Tweedie 1996, Bernoulli 2(4)),
    with :math:`z \sim \mathcal N(0, I)` drawn afresh each step,

    .. math:: x \leftarrow x + \epsilon\,\nabla\log p_t(x) + \sqrt{2\epsilon}\,z, \qquad
              \epsilon = 2\alpha \left(\frac{\mathrm{snr}\cdot\overline{\lVert z \rVert}}
              {\overline{\lVert \nabla\log p_t(x) \rVert}}\right)^2,

    where the bars are per-sample Euclidean norms *averaged over the batch* (as in score_sde;
    per-sample norms give a sample near a mode centre, whose score is tiny, a huge step), and
    :math:`\alpha = (s(t)/s(t - h))^2` for the grid step :math:`h` next to :math:`t`. This is
    :math:`1 - \beta_i` for VP and 1 for VE as in the paper, and stays meaningful for sub-VP,
    OU and cosine VP (score_sde's version indexes a VP-only :math:`\alpha_i` table).

    Unadjusted Langevin leaves :math:`p_t` invariant only up to an :math:`O(\epsilon)` bias:
    a mode narrower than the batch-averaged step is widened (on
    :func:`~scoresde.imbalanced_2d` the default ``snr = 0.16`` inflates the tight mode's
    covariance by about 50% near ``t = 0``); lower ``snr`` to reduce it.

    Used inside :class:`PredictorCorrector` through :meth:`correct`. Used on its own (the
    name ``"langevin"`` in :func:`~scoresde.sample`) it runs the annealing loop of
    :class:`AnnealedLangevin` with this step-size rule. That is fragile when the prior is much
    wider than the data (VE): a few samples left in the tails have huge scores, dominate the
    batch-averaged norm and stall the whole batch; :class:`AnnealedLangevin`'s noise-scaled
    step does not have that failure. ``n_steps`` score evaluations per :meth:`correct` call or
    per grid step.

    Parameters
    ----------
    snr : float
        Target signal-to-noise ratio (> 0); 0.16 is the paper's value for VE on CIFAR-10.
    n_steps : int
        Langevin steps per grid time (>= 1).
    """

    name = "langevin"
    order = None
    stochastic = True
    needs_linear_sde = True

    def __init__(self, snr: float = 0.16, n_steps: int = 1):
        self.snr = check_positive("snr", snr)
        self.n_steps = check_int("n_steps", n_steps)

    @property
    def nfe_per_step(self) -> int:
        """One score evaluation per Langevin step."""
        return self.n_steps

    @property
    def nfe_per_correct(self) -> int:
        """``n_steps``: one score evaluation per Langevin step."""
        return self.n_steps

    def _step_size(self, grad, z, alpha: float, sigma: float):
        n = grad.shape[0]
        grad_norm = grad.reshape(n, -1).norm(dim=-1).mean()
        noise_norm = z.reshape(n, -1).norm(dim=-1).mean()
        return 2.0 * alpha * (self.snr * noise_norm / grad_norm) ** 2

    def _langevin(self, score_fn, x, t: float, alpha: float, sigma: float, generator):
        tv = time_vector(t, x)
        for _ in range(self.n_steps):
            grad = score_fn(x, tv)
            z = gaussian_like(x, generator)
            step = torch.as_tensor(self._step_size(grad, z, alpha, sigma), dtype=x.dtype)
            x = x + step * grad + torch.sqrt(2.0 * step) * z
        return x

    def correct(self, sde, score_fn, x, t, t_next, generator=None) -> torch.Tensor:
        r"""``n_steps`` Langevin steps targeting :math:`p_t`; ``t_next`` sets :math:`\alpha`.

        Parameters
        ----------
        sde : SDE
        score_fn : callable
            ``score_fn(x, t)``.
        x : Tensor
            State at time ``t``, shape ``(batch, *event_shape)``.
        t : float
            The time whose marginal is targeted.
        t_next : float
            The neighbouring grid time; :math:`\alpha = (s(t_{\rm hi}) / s(t_{\rm lo}))^2` over
            the step between ``t`` and ``t_next`` (normally ``t_next < t``).
        generator : torch.Generator, optional

        Returns
        -------
        Tensor
            The corrected state, still at time ``t``.
        """
        t, t_next = float(t), float(t_next)
        s, sig = scale_std_values(sde, [t, t_next], who=type(self).__name__)
        alpha = (s[0] / s[1]) ** 2 if t >= t_next else (s[1] / s[0]) ** 2
        return self._langevin(score_fn, x, t, alpha, sig[0], generator)

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        ts = times.tolist()
        s, sig = scale_std_values(sde, times, who=type(self).__name__)
        for i in range(len(ts) - 1):
            alpha = (s[i] / s[i + 1]) ** 2
            x = self._langevin(score_fn, x, ts[i + 1], alpha, sig[i + 1], generator)
            if callback is not None:
                callback(i, ts[i + 1], x)
        return x


class AnnealedLangevin(LangevinCorrector):
    r"""Annealed Langevin dynamics, corrector only (Song & Ermon 2019, Algorithm 1 — NCSN).

    The noise levels are the grid times. The state is carried unchanged from :math:`t_i` to
    :math:`t_{i+1}` and equilibrated there by ``n_steps`` Langevin steps,

    .. math:: x \leftarrow x + \epsilon_{i+1}\nabla\log p_{t_{i+1}}(x) + \sqrt{2\epsilon_{i+1}}\,z,
              \qquad \epsilon_{i+1} = 2\alpha\,(\mathrm{snr}\cdot\sigma(t_{i+1}))^2,
              \qquad \alpha = (s(t_i)/s(t_{i+1}))^2 .

    The step is NCSN's :math:`\epsilon\,\sigma_i^2/\sigma_L^2` — proportional to the noise
    variance of the level and independent of the batch (score_sde's ``AnnealedLangevinDynamics``
    corrector) — so, unlike :class:`LangevinCorrector`'s batch-averaged rule, a few outlying
    samples cannot stall the others. The chain starts from the exact prior draw at :math:`T`
    (no Langevin there) and ends with Langevin at the last time, like NCSN's smallest
    :math:`\sigma_L`.

    For VE (NCSN's setting) carrying the state over is exactly NCSN; for the other SDEs it is
    score_sde's corrector-only sampling. Rescaling by :math:`s(t_{i+1})/s(t_i)` between levels
    (moving the modes :math:`s(t)\mu_k` to their new place) would be right only where the
    signal dominates, where that factor is :math:`1 + O(h)` anyway; where the noise dominates
    (VP, OU at large ``t``: :math:`p_t \approx` the prior at both levels) it inflates the
    variance by :math:`(s_{i+1}/s_i)^2` per level, about 4% per step for VP on a 500-step grid,
    which the Langevin steps then have to undo (with the batch-averaged rule of
    :class:`LangevinCorrector` they cannot, and the chain diverges). For VP-type SDEs a
    ``"log_snr"`` grid spends the levels where :math:`p_t` changes and works much better than
    the uniform one.

    Not a solver of the reverse SDE: it converges only as ``n_steps`` grows and ``snr`` shrinks
    (lag behind the moving :math:`p_t`, and the :math:`O(\epsilon)` bias of unadjusted
    Langevin, which is at most :math:`\mathrm{snr}^2` relative on each mode's variance).
    Usable as a PC corrector too (score_sde's "ald"). ``steps · n_steps`` score evaluations.

    Parameters
    ----------
    snr : float
        :math:`\sqrt{\epsilon/(2\alpha\sigma^2)}` (> 0).
    n_steps : int
        Langevin steps per noise level (>= 1).
    """

    name = "annealed_langevin"
    stochastic = True

    def _step_size(self, grad, z, alpha: float, sigma: float):
        return 2.0 * alpha * (self.snr * sigma) ** 2


def _is_predictor(cls_or_obj) -> bool:
    """Whether a sampler can be PC's predictor: it takes one step between any two grid times."""
    return not (isinstance(cls_or_obj, (Corrector, PredictorCorrector))
                or (isinstance(cls_or_obj, type) and issubclass(cls_or_obj, (Corrector, PredictorCorrector)))
                or cls_or_obj.adaptive or cls_or_obj.owns_grid)


def _registry():
    # The name table lists PredictorCorrector itself, so it is read when a PC is built (by
    # name resolution), not when this module is imported.
    from .registry import SAMPLERS

    return SAMPLERS


def _predictor(predictor) -> Sampler:
    table = _registry()
    valid = sorted(k for k, cls in table.items() if _is_predictor(cls))
    if isinstance(predictor, str):
        if predictor not in table:
            raise ValueError(f"unknown predictor {predictor!r}; valid predictors: {', '.join(valid)}")
        predictor = table[predictor]()
    elif not isinstance(predictor, Sampler):
        raise TypeError(
            f"predictor must be a sampler name or a Sampler instance, got {type(predictor).__name__}")
    if not _is_predictor(predictor):
        label = predictor.name or type(predictor).__name__
        why = ("is a corrector or a predictor-corrector" if isinstance(predictor, (Corrector, PredictorCorrector))
               else "picks its own steps" if predictor.adaptive else "runs on its own time grid")
        raise ValueError(
            f"predictor {label!r} {why} and cannot take single steps between arbitrary grid "
            f"times; valid predictors: {', '.join(valid)}")
    return predictor


def _corrector(corrector, snr: float, n_steps: int):
    if corrector is None or isinstance(corrector, Corrector):
        return corrector
    table = _registry()
    valid = sorted(k for k, cls in table.items() if issubclass(cls, Corrector))
    if isinstance(corrector, str):
        if corrector not in valid:
            raise ValueError(f"unknown corrector {corrector!r}; valid correctors: {', '.join(valid)} (or None)")
        return table[corrector](snr=snr, n_steps=n_steps)
    raise TypeError(
        f"corrector must be a corrector name ({', '.join(valid)}), a Corrector instance or None, "
        f"got {type(corrector).__name__}")


class PredictorCorrector(Sampler):
    r"""Predictor–corrector sampling (Song et al. 2021, Algorithm 1).

    At each grid time :math:`t_i`, first the corrector (Langevin MCMC targeting
    :math:`p_{t_i}`), then one predictor step :math:`t_i \to t_{i+1}` (score_sde's order):

    .. math:: x \leftarrow C_{t_i}(x), \qquad x \leftarrow P_{t_i \to t_{i+1}}(x).

    The predictor is any sampler whose :meth:`~Sampler.run` can integrate a two-point grid
    ``times[i:i+2]`` — the reverse-diffusion predictor by default, Euler–Maruyama for the
    paper's PC with an SDE solver, a probability-flow solver for a deterministic predictor.
    Its order is the predictor's; the corrector does not raise it but reduces the error of the
    marginals. Score evaluations per step: the predictor's (1 for the default) plus the
    corrector's ``n_steps``.

    Parameters
    ----------
    predictor : str or Sampler
        A name from :func:`~scoresde.samplers.names` (built with default options) or a sampler
        object that takes single steps between arbitrary grid times. Refused, with the list of
        valid names: correctors (``"langevin"``, ``"annealed_langevin"``), ``"pc"`` itself,
        adaptive solvers and samplers with their own grid (DDPM).
    corrector : str, Corrector or None
        ``"langevin"`` (the paper's), ``"annealed_langevin"`` (NCSN's noise-scaled step,
        score_sde's "ald"), a :class:`Corrector` instance, or None for predictor only.
    snr : float
        Signal-to-noise ratio of the corrector (> 0), used when ``corrector`` is a name. The
        default 0.16 is the paper's; on targets with modes much narrower than others a smaller
        value avoids the widening bias described in :class:`LangevinCorrector`.
    n_steps : int
        Corrector steps per grid time (>= 1), used when ``corrector`` is a name. With a
        corrector object, set both on the object.

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.zeros(2), torch.eye(2))
    >>> pc = sd.samplers.PredictorCorrector(corrector="langevin", n_steps=2)
    >>> out = sd.sample(sde, target.score_fn(sde), (64, 2), sampler=pc, steps=10,
    ...                 generator=torch.Generator().manual_seed(0))
    >>> out.nfe  # 1 predictor + 2 corrector evaluations per step
    30
    """

    name = "pc"

    def __init__(self, predictor="reverse_diffusion", corrector="langevin", snr: float = 0.16,
                 n_steps: int = 1):
        snr = check_positive("snr", snr)
        n_steps = check_int("n_steps", n_steps)
        self.predictor = _predictor(predictor)
        self.corrector = _corrector(corrector, snr, n_steps)

    @property
    def stochastic(self) -> bool:
        """Whether noise is drawn: by the corrector, or by the predictor."""
        return self.corrector is not None or bool(self.predictor.stochastic)

    @property
    def order(self) -> int | None:
        """The predictor's order."""
        return self.predictor.order

    @property
    def nfe_per_step(self) -> int:
        """The predictor's evaluations plus the corrector's Langevin steps."""
        return self.predictor.nfe_per_step + (self.corrector.nfe_per_correct if self.corrector is not None else 0)

    @property
    def needs_linear_sde(self) -> bool:
        """Whether the predictor or the corrector needs one."""
        return bool(self.predictor.needs_linear_sde) or bool(getattr(self.corrector, "needs_linear_sde", False))

    @property
    def evaluates_at_end(self) -> bool:
        """The predictor's (the corrector runs at the start of each step)."""
        return bool(self.predictor.evaluates_at_end)

    @property
    def zero_noise_end(self) -> bool:
        """The predictor's (the corrector only needs s and σ at the step's start)."""
        return bool(self.predictor.zero_noise_end)

    @property
    def default_grid(self):
        """The predictor's default grid."""
        return self.predictor.default_grid

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        ts = times.tolist()
        for i in range(len(ts) - 1):
            if self.corrector is not None:
                x = self.corrector.correct(sde, score_fn, x, ts[i], ts[i + 1], generator=generator)
            x = self.predictor.run(sde, score_fn, x, times[i : i + 2], generator=generator)
            if callback is not None:
                callback(i, ts[i + 1], x)
        return x
