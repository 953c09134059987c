r"""Linear multistep solvers of the probability-flow ODE in the noise-to-signal ratio :math:`\tilde\sigma`.

For a linear SDE with transition :math:`\mathcal N(s(t)\,x_0, \sigma(t)^2 I)` write
:math:`\tilde x = x/s` and :math:`\tilde\sigma = \sigma/s = e^{-\lambda}` (Karras et al. 2022,
§4; DEIS's :math:`\rho`). The probability-flow ODE then reads

.. math:: \frac{\mathrm d\tilde x}{\mathrm d\tilde\sigma} = \hat\epsilon(x, t), \qquad
          \hat\epsilon = -\sigma\,\nabla_x\log p_t(x),

so its exact solution between grid times :math:`t_i > t_{i+1}` is the exponential-integrator
form of Zhang & Chen (2023, eq. 12) and Lu et al. (2022, Prop. 3.1),

.. math:: x_{i+1} = \frac{s_{i+1}}{s_i}\,x_i + s_{i+1}\int_{\tilde\sigma_i}^{\tilde\sigma_{i+1}}
          \hat\epsilon\,\mathrm d\tilde\sigma .

Every solver here replaces :math:`\hat\epsilon` on the step by the polynomial through the
:math:`k` most recent evaluations :math:`\hat\epsilon_i, \hat\epsilon_{i-1}, \dots` (Adams–Bashforth)
and integrates it, so that
:math:`x_{i+1} = \frac{s_{i+1}}{s_i} x_i + s_{i+1} \sum_{j<k} w_{ij}\,\hat\epsilon_{i-j}`; they
differ in the variable the polynomial is written in, which fixes the weights :math:`w_{ij}`:

- :class:`IPNDM` — fixed Adams–Bashforth weights times :math:`\tilde\sigma_{i+1} - \tilde\sigma_i`
  (Zhang & Chen 2023, iPNDM; exact order on grids uniform in :math:`\tilde\sigma`);
- :class:`LMS` — the polynomial in :math:`\tilde\sigma`, integrated exactly (Karras et al.
  2022; k-diffusion's ``sample_lms``; DEIS's :math:`\rho`-AB);
- :class:`DEIS` — the polynomial in :math:`t`, integrated by Gauss–Legendre quadrature in
  :math:`\tilde\sigma` (Zhang & Chen 2023, tAB-DEIS).

Each makes one evaluation per step (none at the last grid time); the first steps, which lack
history, use the lower orders. :math:`\hat\epsilon` comes from
:class:`~scoresde.predict.PredictionAdapter` (an ε-predicting model's own output). Because the
update never divides by :math:`\tilde\sigma`, a grid may end at :math:`t = 0`
(:math:`\tilde\sigma = 0`): the last step then extrapolates :math:`\hat\epsilon` to the data,
as k-diffusion's samplers do, at no extra evaluation.

Default grid: ``"log_snr"`` (equal steps in :math:`\lambda`) down to the driver's
``eps = 1e-3``. On the stiff targets ``imbalanced_2d`` and ``anisotropic_64d`` it was the
most robust of the fixed grids tried for these solvers (``edm`` with :math:`\rho` = 3, 5, 7,
with or without a final step to :math:`\tilde\sigma = 0`, and ``log_snr`` ending at 0): the
:math:`\rho`-grids put too few steps where the modes separate and collapse at 5–10
evaluations, and a last step to :math:`\tilde\sigma = 0` costs accuracy on the narrow mode at
5–10 evaluations (see "Choosing a sampler" for the numbers).

Analytical first step (``afs=True``; Dockhorn et al. 2022, GENIE; Zhou et al. 2024, AMED's
AFS): at :math:`t_0 = T` the marginal is almost the prior, and :math:`\hat\epsilon_0` is replaced
by its value for Gaussian data :math:`\mathcal N(0, \sigma_d^2 I)`,

.. math:: \hat\epsilon_0 \approx \frac{\sigma_0\, x_0}{s_0^2\sigma_d^2 + \sigma_0^2},

which saves one evaluation: **NFE = steps − 1** instead of ``steps``. The error it makes is
:math:`O(s_0^2)` times the data's departure from that Gaussian, negligible for the VP SDE
(:math:`s(1) \approx 0.0066`) and any SDE whose prior is close to its marginal at ``T``.
"""

from __future__ import annotations

import abc

import numpy as np
import torch

from .._checks import check_int, check_linear, check_positive
from ..predict import PredictionAdapter, scale_std_values
from .base import Sampler

__all__ = ["IPNDM", "DEIS", "LMS"]

#: Adams–Bashforth weights for equal steps, newest evaluation first (orders 1-4).
_AB = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12),
       4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}

_GAUSS = np.polynomial.legendre.leggauss(24)


def _lagrange_integrals(nodes: np.ndarray, a: float, b: float) -> np.ndarray:
    r""":math:`\int_a^b \ell_j(u)\,\mathrm du` for the Lagrange basis on ``nodes``, in closed form.

    Computed in the variable :math:`v = (u - a)/(b - a)` (well conditioned however small the
    step); returns one weight per node.
    """
    h = b - a
    if len(nodes) == 1:
        return np.asarray([h])
    v = (np.asarray(nodes, dtype=np.float64) - a) / h
    out = np.empty(len(v))
    for j in range(len(v)):
        others = np.delete(v, j)
        poly = np.polynomial.Polynomial.fromroots(others) / np.prod(v[j] - others)
        integ = poly.integ()
        out[j] = h * (integ(1.0) - integ(0.0))
    return out


def _lagrange_eval(nodes: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Values of the Lagrange basis on ``nodes`` at the points ``u``: shape (len(nodes), len(u))."""
    nodes = np.asarray(nodes, dtype=np.float64)
    scale = max(np.ptp(nodes), 1e-300)
    v, w = (nodes - nodes[0]) / scale, (u - nodes[0]) / scale
    out = np.ones((len(v), len(w)))
    for j in range(len(v)):
        for m in range(len(v)):
            if m != j:
                out[j] *= (w - v[m]) / (v[j] - v[m])
    return out


class _SigmaMultistep(Sampler):
    """What the σ̃ multistep solvers share: options, declarations, NFE and the update loop."""

    stochastic = False
    needs_linear_sde = True
    evaluates_at_end = False
    default_grid = "log_snr"
    max_order = 4

    def __init__(self, order: int = 3, afs: bool = False, sigma_data: float = 1.0):
        order = check_int("order", order)
        if not 1 <= order <= self.max_order:
            raise ValueError(f"order must be an integer in [1, {self.max_order}], got {order}")
        if not isinstance(afs, bool):
            raise TypeError(f"afs must be a bool, got {type(afs).__name__}")
        self.order = order
        self.afs = afs
        self.sigma_data = check_positive("sigma_data", sigma_data)

    def nfe(self, steps: int) -> int:
        """``steps`` evaluations, one fewer with the analytical first step."""
        return steps - 1 if self.afs else steps

    def step_orders(self, steps: int) -> list[int]:
        """The order of each step: lower orders while the history fills up."""
        return [min(self.order, i + 1) for i in range(steps)]

    @abc.abstractmethod
    def weights(self, sde, sig_tilde: list[float], times: list[float], i: int, k: int) -> np.ndarray:
        r"""Weights :math:`w_{ij}`, :math:`j < k`, of step ``i`` (newest evaluation first)."""

    def run(self, sde, score_fn, x, times, *, generator=None, callback=None):
        who = type(self).__name__
        check_linear(sde, who)
        ts = times.detach().cpu().double().tolist()
        s, sig = scale_std_values(sde, ts, who=who)
        st = [g / a for g, a in zip(sig, s)]
        pred = PredictionAdapter(sde, score_fn, who=who)
        hist: list[torch.Tensor] = []  # noise predictions, newest last
        for i, k in enumerate(self.step_orders(len(ts) - 1)):
            if i == 0 and self.afs:
                e = (sig[0] / (s[0] ** 2 * self.sigma_data**2 + sig[0] ** 2)) * x
            else:
                e = pred.eps(x, ts[i], s=s[i], sigma=sig[i])
            hist.append(e)
            del hist[:-self.order]
            w = self.weights(sde, st, ts, i, k)
            update = sum(float(w[j]) * hist[-1 - j] for j in range(k))
            x = (s[i + 1] / s[i]) * x + s[i + 1] * update
            if callback is not None:
                callback(i, ts[i + 1], x)
        return x


class IPNDM(_SigmaMultistep):
    r"""Improved pseudo numerical methods (iPNDM; Zhang & Chen 2023; Liu et al. 2022, PNDM).

    PNDM's linear multistep part with lower-order warm-up instead of Runge–Kutta: with
    :math:`\Delta_i = \tilde\sigma_{i+1} - \tilde\sigma_i` and the Adams–Bashforth weights for
    equal steps,

    .. math::
        x_{i+1} = \frac{s_{i+1}}{s_i} x_i + s_{i+1}\Delta_i \times
        \begin{cases} \hat\epsilon_i & k = 1 \\
        \tfrac12(3\hat\epsilon_i - \hat\epsilon_{i-1}) & k = 2 \\
        \tfrac1{12}(23\hat\epsilon_i - 16\hat\epsilon_{i-1} + 5\hat\epsilon_{i-2}) & k = 3 \\
        \tfrac1{24}(55\hat\epsilon_i - 59\hat\epsilon_{i-1} + 37\hat\epsilon_{i-2}
        - 9\hat\epsilon_{i-3}) & k = 4, \end{cases}

    :math:`k = \min(\text{order}, i + 1)`. The weights ignore how the step sizes vary, which is
    what makes iPNDM robust at very few steps (diff-sampler's CIFAR-10 table: FID 13.6 at 5
    NFE); its order is ``order`` on grids uniform in :math:`\tilde\sigma` and lower on others
    (:class:`LMS` is the variable-step version). One evaluation per step (see the module notes
    for ``afs``).

    Parameters
    ----------
    order : {1, 2, 3, 4}
        Maximal order (default 4, the paper's); order 1 is DDIM.
    afs : bool
        Analytical first step (saves one evaluation; default False).
    sigma_data : float
        Data scale :math:`\sigma_d` of the analytical first step (default 1).

    References
    ----------
    Zhang & Chen (2023), *Fast sampling of diffusion models with exponential integrator*, ICLR.
    Liu, Ren, Lin & Zhao (2022), *Pseudo numerical methods for diffusion models on manifolds*,
    ICLR. Zhou, Chen, Wang, Shen & Lyu (2024), *Fast ODE-based sampling for diffusion models in
    around 5 steps*, CVPR (diff-sampler).

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.zeros(2), torch.eye(2))
    >>> out = sd.sample(sde, target.score_fn(sde), (64, 2), sampler="ipndm", steps=10,
    ...                 generator=torch.Generator().manual_seed(0))
    >>> out.nfe
    10
    >>> sd.sample(sde, target.score_fn(sde), (64, 2), sampler="ipndm", steps=10, afs=True).nfe
    9
    """

    name = "ipndm"

    def __init__(self, order: int = 4, afs: bool = False, sigma_data: float = 1.0):
        super().__init__(order=order, afs=afs, sigma_data=sigma_data)

    def weights(self, sde, sig_tilde, times, i, k):
        return (sig_tilde[i + 1] - sig_tilde[i]) * np.asarray(_AB[k])


class LMS(_SigmaMultistep):
    r"""Linear multistep in :math:`\tilde\sigma` with exactly integrated weights (Karras et al. 2022; k-diffusion).

    The polynomial through :math:`(\tilde\sigma_{i-j}, \hat\epsilon_{i-j})`, :math:`j < k`,
    integrated over the step in closed form:

    .. math:: x_{i+1} = \frac{s_{i+1}}{s_i} x_i + s_{i+1} \sum_{j<k} \hat\epsilon_{i-j}
              \int_{\tilde\sigma_i}^{\tilde\sigma_{i+1}} \ell_j(\tilde\sigma)\,\mathrm d\tilde\sigma,
              \qquad \ell_j(u) = \prod_{m \ne j} \frac{u - \tilde\sigma_{i-m}}{\tilde\sigma_{i-j} - \tilde\sigma_{i-m}},

    :math:`k = \min(\text{order}, i + 1)`: the variable-step Adams–Bashforth method in
    :math:`\tilde\sigma` (DEIS's :math:`\rho`-AB; k-diffusion integrates the same basis with
    ``scipy.integrate.quad``). Global order ``order`` on any smooth grid; one evaluation per
    step.

    Its default grid is ``"quadratic"`` (:math:`t_i = \epsilon + (T - \epsilon)(1 - i/N)^2`):
    on both stiff reference targets (``imbalanced_2d``, ``anisotropic_64d``) it beat the
    ``log_snr`` grid at 10 and 20 evaluations (see "Choosing a sampler" in the docs).

    Parameters
    ----------
    order : {1, 2, 3, 4}
        Maximal order (default 4, k-diffusion's); order 1 is DDIM.
    afs, sigma_data
        Analytical first step, as for :class:`IPNDM`.

    References
    ----------
    Karras, Aittala, Aila & Laine (2022), *Elucidating the design space of diffusion-based
    generative models*, NeurIPS. Zhang & Chen (2023), *Fast sampling of diffusion models with
    exponential integrator*, ICLR (:math:`\rho`-AB-DEIS).

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.zeros(2), torch.eye(2))
    >>> sd.sample(sde, target.score_fn(sde), (64, 2), sampler="lms", steps=8).nfe
    8
    """

    name = "lms"
    default_grid = "quadratic"

    def __init__(self, order: int = 4, afs: bool = False, sigma_data: float = 1.0):
        super().__init__(order=order, afs=afs, sigma_data=sigma_data)

    def weights(self, sde, sig_tilde, times, i, k):
        nodes = [sig_tilde[i - j] for j in range(k)]
        return _lagrange_integrals(np.asarray(nodes), sig_tilde[i], sig_tilde[i + 1])


class DEIS(_SigmaMultistep):
    r"""tAB-DEIS: Adams–Bashforth in :math:`t` inside the exponential integrator (Zhang & Chen 2023).

    The polynomial through :math:`(t_{i-j}, \hat\epsilon_{i-j})`, :math:`j < k`, in the exact
    solution of the flow ODE:

    .. math:: x_{i+1} = \frac{s_{i+1}}{s_i} x_i + s_{i+1} \sum_{j<k} \hat\epsilon_{i-j}
              \int_{\tilde\sigma_i}^{\tilde\sigma_{i+1}} \ell_j\big(t(\tilde\sigma)\big)\,\mathrm d\tilde\sigma,

    :math:`\ell_j` the Lagrange basis on :math:`t_i, \dots, t_{i-k+1}` and :math:`t(\tilde\sigma)`
    the inverse of :math:`\tilde\sigma(t)` (``sde.t_from_log_snr``). The integrals are computed
    once per run by 24-point Gauss–Legendre quadrature in :math:`\tilde\sigma` on each step
    (exact to round-off for these smooth integrands). Global order ``order``; one evaluation per
    step.

    Its default grid is ``"quadratic"`` (:math:`t_i = \epsilon + (T - \epsilon)(1 - i/N)^2`):
    on both stiff reference targets (``imbalanced_2d``, ``anisotropic_64d``) it beat the
    ``log_snr`` grid at 10 and 20 evaluations (see "Choosing a sampler" in the docs).

    Parameters
    ----------
    order : {1, 2, 3}
        Maximal order (default 3, the paper's tAB3); order 1 is DDIM.
    afs, sigma_data
        Analytical first step, as for :class:`IPNDM`.

    References
    ----------
    Zhang & Chen (2023), *Fast sampling of diffusion models with exponential integrator*, ICLR,
    eq. 14 (tAB-DEIS).

    Examples
    --------
    >>> import torch, scoresde as sd
    >>> sde = sd.VPSDE()
    >>> target = sd.Gaussian(torch.zeros(2), torch.eye(2))
    >>> sd.sample(sde, target.score_fn(sde), (64, 2), sampler="deis", steps=8, order=2).nfe
    8
    """

    name = "deis"
    default_grid = "quadratic"
    max_order = 3

    def __init__(self, order: int = 3, afs: bool = False, sigma_data: float = 1.0):
        super().__init__(order=order, afs=afs, sigma_data=sigma_data)

    def weights(self, sde, sig_tilde, times, i, k):
        a, b = sig_tilde[i], sig_tilde[i + 1]
        if k == 1:
            return np.asarray([b - a])
        nodes, w = _GAUSS
        u = a + (b - a) * (nodes + 1.0) / 2.0
        lam = torch.from_numpy(-np.log(u))
        t_u = sde.t_from_log_snr(lam).numpy()
        basis = _lagrange_eval(np.asarray([times[i - j] for j in range(k)]), t_u)
        return (b - a) / 2.0 * basis @ w
