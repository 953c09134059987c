"""EDM (Karras et al. 2022): the SDE, the preconditioned ScoreModel and the training loss."""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.predict import PredictionAdapter


def test_edm_sde_closed_forms():
    sde = sd.EDMSDE()
    assert sde.T == sde.sigma_max == sde.prior_std == 80.0 and sde.sigma_min == 0.002
    t = torch.tensor([0.0, 0.002, 1.0, 80.0], dtype=torch.float64)
    s, sigma = sde.scale_std(t)
    assert torch.equal(s, torch.ones_like(t)) and torch.equal(sigma, t)
    assert torch.equal(sde.g2(t), 2 * t) and torch.equal(sde.a(t), torch.zeros_like(t))
    x = torch.randn(4, 3, dtype=torch.float64)
    assert torch.equal(sde.drift(x, 0.5), torch.zeros_like(x))
    torch.testing.assert_close(sde.log_snr(t[1:]), -torch.log(t[1:]))
    torch.testing.assert_close(sde.t_from_log_snr(sde.log_snr(t[1:])), t[1:])
    assert math.isinf(float(sde.log_snr(0.0)))
    # g² = dσ²/dt: the variance integral of the SDE is the closed form
    u = torch.linspace(0, 3.0, 3001, dtype=torch.float64)
    assert float(torch.trapezoid(sde.g2(u), u)) == pytest.approx(9.0)
    assert isinstance(sd.make_sde("edm"), sd.EDMSDE) and "edm" in sd.SDE_NAMES
    assert repr(sde) == "EDMSDE(sigma_min=0.002, sigma_max=80)"
    assert sd.EDMSDE(sigma_min=0.01, sigma_max=10.0).T == 10.0
    with pytest.raises(ValueError, match="sigma_min"):
        sd.EDMSDE(sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="sigma_max"):
        sd.EDMSDE(sigma_max=-1.0)


class _Probe(torch.nn.Module):
    """F(x, c) = w * x + c (records its inputs)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
        self.seen = None

    def forward(self, x, c):
        self.seen = (x, c)
        return self.w * x + c[:, None]


@pytest.mark.parametrize("sde", [sd.EDMSDE(), sd.VPSDE(), sd.VESDE()], ids=["edm", "vp", "ve"])
def test_edm_preconditioning_on_any_linear_sde(sde):
    sd_ = 0.5
    net = _Probe()
    model = sd.ScoreModel(net, sde, parameterization="edm", sigma_data=sd_)
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.full((5,), 0.3 * sde.T, dtype=torch.float64)
    s, sigma = sde.scale_std(t)
    xt, st = x / s[:, None], (sigma / s)[:, None]
    c_skip = sd_**2 / (st**2 + sd_**2)
    c_out = st * sd_ / torch.sqrt(st**2 + sd_**2)
    c_in = 1 / torch.sqrt(st**2 + sd_**2)
    c_noise = 0.25 * torch.log(st[:, 0])
    expected = c_skip * xt + c_out * (0.7 * c_in * xt + c_noise[:, None])
    torch.testing.assert_close(model.predict(x, t), expected)
    torch.testing.assert_close(net.seen[0], c_in * xt)
    torch.testing.assert_close(net.seen[1], c_noise)
    torch.testing.assert_close(model.predict_x0(x, t), expected)
    torch.testing.assert_close(model(x, t), (s[:, None] * expected - x) / sigma[:, None] ** 2)
    # the adapter reads it as an x0-prediction, natively (one evaluation, no conversion)
    pred = PredictionAdapter(sde, model)
    assert pred.prediction == "x0"
    torch.testing.assert_close(pred.x0(x, t), expected)
    torch.testing.assert_close(pred.eps(x, t), model.predict_eps(x, t))
    assert "sigma_data=0.5" in repr(model)


def test_edm_model_validation_and_sampling():
    sde = sd.EDMSDE()
    with pytest.raises(ValueError, match="sigma_data"):
        sd.ScoreModel(sd.ScoreMLP(2), sde, parameterization="edm", sigma_data=0.0)
    with pytest.raises(ValueError, match="or 'edm'"):
        sd.ScoreModel(sd.ScoreMLP(2), sde, parameterization="karras")
    with pytest.raises(ValueError, match="net output"):
        sd.ScoreModel(lambda x, c: x[:, :1], sde, parameterization="edm")(torch.randn(3, 2), 1.0)
    model = sd.ScoreModel(sd.ScoreMLP(2), sde, parameterization="edm")
    out = sd.sample(sde, model, (8, 2), sampler="edm", steps=4, eps=sde.sigma_min,
                    generator=torch.Generator().manual_seed(0))
    assert out.nfe == 9 and out.samples.shape == (8, 2)


def _expected_gaussian_loss(var, d, P_mean=-1.2, P_std=1.2, sigma_data=0.5, n=200):
    """E λ(σ) d var σ²/(var + σ²) over log σ ~ N(P_mean, P_std²), by Gauss–Hermite quadrature."""
    import numpy as np

    z, w = np.polynomial.hermite_e.hermegauss(n)
    sig = np.exp(P_mean + P_std * z)
    lam = (sig**2 + sigma_data**2) / (sig * sigma_data) ** 2
    return float((w * lam * d * var * sig**2 / (var + sig**2)).sum() / w.sum())


@pytest.mark.parametrize("var", [0.25, 1.0])
@pytest.mark.parametrize("sde", [sd.EDMSDE(), sd.VPSDE()], ids=["edm", "vp"])
def test_edm_loss_at_the_exact_denoiser_is_its_closed_form_minimum(var, sde):
    d, n = 2, 40_000
    target = sd.Gaussian(torch.zeros(d, dtype=torch.float64), var * torch.eye(d, dtype=torch.float64))
    x0 = target.sample(n, generator=torch.Generator().manual_seed(0))
    per = sd.edm_loss(target.score_fn(sde), sde, x0, reduction="none", generator=torch.Generator().manual_seed(1))
    assert per.shape == (n,)
    expected = _expected_gaussian_loss(var, d)
    if var == 0.25:
        assert expected == pytest.approx(d, rel=1e-9)  # unit loss at every level for var = σ_d²
    # the VP SDE cannot reach σ~ above σ~(T) ≈ 152: P(log σ~ > 5.0) ≈ 1e-6, negligible
    se = float(per.std()) / math.sqrt(n)
    assert abs(float(per.mean()) - expected) < 5 * se
    # any other denoiser does worse (same draws)
    worse = sd.edm_loss(lambda x, t: 1.1 * target.score_fn(sde)(x, t), sde, x0,
                        generator=torch.Generator().manual_seed(1))
    assert float(worse) > float(per.mean())


def test_edm_loss_trains_an_edm_model():
    torch.manual_seed(0)
    sde = sd.EDMSDE()
    target = sd.Gaussian(torch.tensor([1.0, -0.5]), 0.09 * torch.eye(2))
    model = sd.ScoreModel(sd.ScoreMLP(2, hidden=32, n_blocks=1, generator=torch.Generator().manual_seed(0)),
                          sde, parameterization="edm", sigma_data=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    x_eval = target.sample(4096, generator=torch.Generator().manual_seed(2))

    def held_out():
        with torch.no_grad():
            return float(sd.edm_loss(model, sde, x_eval, generator=torch.Generator().manual_seed(3)))

    before = held_out()
    for _ in range(150):
        loss = sd.edm_loss(model, sde, target.sample(256, generator=g), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out()
    minimum = _expected_gaussian_loss(0.09, 2)  # the loss of the exact denoiser
    assert after < before - 0.3 * (before - minimum), (before, after, minimum)


def test_edm_loss_validation():
    sde, x0 = sd.EDMSDE(), torch.randn(8, 2)
    score = sd.Gaussian(torch.zeros(2), torch.eye(2)).score_fn(sde)
    with pytest.raises(ValueError, match="P_std"):
        sd.edm_loss(score, sde, x0, P_std=0.0)
    with pytest.raises(ValueError, match="P_mean"):
        sd.edm_loss(score, sde, x0, P_mean=float("nan"))
    with pytest.raises(TypeError, match="P_mean"):
        sd.edm_loss(score, sde, x0, P_mean="low")
    with pytest.raises(ValueError, match="sigma_data"):
        sd.edm_loss(score, sde, x0, sigma_data=-1.0)
    with pytest.raises(TypeError, match="sde"):
        sd.edm_loss(score, "edm", x0)
    with pytest.raises(TypeError, match="model_or_score_fn"):
        sd.edm_loss(3, sde, x0)
    with pytest.raises(ValueError, match="reduction"):
        sd.edm_loss(score, sde, x0, reduction="sum")
    with pytest.raises(ValueError, match="must return a tensor shaped like x"):
        sd.edm_loss(lambda x, t: x[:, :1], sde, x0)
