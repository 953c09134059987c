"""DPS and ΠGDM on score networks: finite at the defaults, and what made them diverge.

The guided reverse process is an explicit gradient step on rho ||y - A x0_hat||^2 whose
curvature is rho ||A J||^2, J = d x0_hat / d x = (I - sigma d eps_hat / dx) / s. A network's J is
far larger than the exact one at large t (an untrained ε-network has J = I / s, 152 at t = 1), so
the likelihood weight rho = 1 / sigma_y^2 diverges geometrically until float32 overflows; Chung et
al.'s normalised step and ΠGDM's s s' factor (Algorithm 1 of each paper) keep the step bounded.
"""

from __future__ import annotations

import pytest
import torch

import scoresde as sd

SDE = sd.VPSDE()
F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def inpainting():
    """A float32 UNet after a few training steps on the digits, the upper-half mask, a digit."""
    x_train, _ = sd.data.digits("train")
    torch.manual_seed(0)
    model = sd.ScoreModel(sd.UNet(1, base_channels=8, generator=gen(0)), SDE)
    config = sd.TrainConfig(steps=30, batch_size=64, lr=2e-3, warmup=5, ema_decay=0.9, seed=0)
    trainer = sd.Trainer(model, x_train, config, progress=False)
    trainer.train()
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :4] = True
    A = sd.operators.inpainting(mask).float()
    x_test, _ = sd.data.digits("test")
    return trainer.ema_model.eval(), A, A @ x_test[0].reshape(-1)


@pytest.mark.parametrize("method", ["dps", "pigdm"])
def test_guided_methods_on_a_network_are_finite_at_the_defaults(inpainting, method):
    model, A, y = inpainting
    out = sd.posterior_sample(SDE, model, A, y, 0.05, (6, 1, 8, 8), method=method, steps=20,
                              generator=gen(1))
    assert out.samples.dtype == torch.float32 and bool(torch.isfinite(out.samples).all())
    assert out.nfe == 20 and out.vjp == 20


def test_untrained_unet_is_finite_too():
    """Zero-initialised output: eps_hat = 0, so x0_hat = x / s and J = I / s."""
    model = sd.ScoreModel(sd.UNet(1, base_channels=8, generator=gen(2)), SDE).eval()
    A = sd.operators.inpainting(torch.arange(64).reshape(1, 8, 8) < 32)
    y = torch.linspace(-1, 1, 32)
    for method in ("dps", "pigdm"):
        out = sd.posterior_sample(SDE, model, A, y, 0.05, (4, 1, 8, 8), method=method, steps=10,
                                  generator=gen(3))
        assert bool(torch.isfinite(out.samples).all()), method


def test_the_likelihood_weight_still_diverges_and_says_so(inpainting):
    """rho = 1 / sigma_y^2 (step_size=None): the error names the argument and the time."""
    model, A, y = inpainting
    with pytest.raises(sd.NonFiniteError, match=r"non-finite (guidance gradient|prediction)"):
        sd.posterior_sample(SDE, model, A, y, 0.05, (6, 1, 8, 8), method="dps", steps=20,
                            generator=gen(1), step_size=None)
    direct = sd.guidance.dps(SDE, model, A, y, 0.05)
    x = torch.full((2, 1, 8, 8), 3e37)               # float32 overflow inside the residual
    with pytest.raises(sd.NonFiniteError, match="dps: non-finite guidance gradient at t=0.5"):
        direct(x, 0.5)


def test_normalised_step_in_closed_form():
    """Isotropic Gaussian prior: guided - score = -(2 zeta / (g^2 ||r||)) J A^T r, J = s P / sigma^2."""
    prior = sd.Gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    A, y = torch.tensor([[1.0, 0.5]], dtype=F64), torch.tensor([1.2], dtype=F64)
    score = prior.score_fn(SDE)
    zeta = 7.0
    g = sd.guidance.dps(SDE, score, A, y, 0.3, step_size=zeta, scale=0.5)
    x = torch.randn(16, 2, generator=gen(4), dtype=F64)
    for t in (1e-3, 0.3, 1.0):
        tt = torch.full((16,), t, dtype=F64)
        s, sigma = (float(v) for v in SDE.scale_std(tt[:1]))
        var_post = (sigma / s) ** 2 / (1 + (sigma / s) ** 2)
        jac = s * var_post / sigma**2
        x0 = (x + sigma**2 * score(x, tt)) / s
        r = y - x0 @ A.T
        g2 = float(SDE.diffusion(tt[:1])) ** 2
        expected = 0.5 * 2 * zeta / (g2 * r.norm(dim=1, keepdim=True)) * jac * r @ A
        assert torch.allclose(g(x, t) - score(x, tt), expected, atol=1e-10, rtol=1e-9)
    # a zero residual is a zero step, not 0/0
    zero = sd.guidance.dps(SDE, score, torch.zeros(1, 2), torch.zeros(1), 0.3, step_size=zeta)
    assert torch.allclose(zero(x, 0.4), score(x, 0.4), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="step_size must be finite and > 0"):
        sd.guidance.dps(SDE, score, A, y, 0.3, step_size=0.0)
