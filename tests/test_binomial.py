"""Binomial diffusion (Sohl-Dickstein et al. 2015): closed-form marginals, the simulated chain, the
posterior, the bound K against an exact answer, and a trained reverse model on the heartbeat data."""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.binomial import heartbeat_patterns, heartbeats
from scoresde.nets import ScoreMLP


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_seed_schedule_marginals_are_linear_in_t():
    """x0 ~ Bern(p0): P(x_t = 1) = 1/2 + (p0 - 1/2)(T - t)/T for beta_t = 1/(T - t + 1)."""
    T, p0 = 100, 0.9
    bd = sd.BinomialDiffusion(T=T)
    t = torch.arange(T + 1)
    torch.testing.assert_close(bd.alphas_cumprod, (T - t).double() / T)
    assert float(bd.betas[-1]) == 1.0
    ones, zeros = torch.ones(T + 1, 1), torch.zeros(T + 1, 1)
    mixed = p0 * bd.marginal_prob(ones, t) + (1 - p0) * bd.marginal_prob(zeros, t)
    torch.testing.assert_close(mixed[:, 0], 0.5 + (p0 - 0.5) * (T - t).double() / T)


def test_forward_chain_matches_the_closed_form():
    """The seeds' example: x0 ~ Bern(0.9), T = 100, simulated step by step and in one jump."""
    T, n = 100, 4000
    bd = sd.BinomialDiffusion(T=T)
    g = _gen(0)
    x0 = (torch.rand(n, 1, generator=g) < 0.9).float()
    x, emp = x0, [x0.mean()]
    for t in range(1, T + 1):
        x = bd.forward_step(x, t, generator=g)
        emp.append(x.mean())
    emp = torch.stack(emp).double()
    exact = 0.5 + (0.9 - 0.5) * (T - torch.arange(T + 1)).double() / T
    assert float((emp - exact).abs().max()) < 4.5 * 0.5 / math.sqrt(n)
    jump = bd.forward_sample(x0.expand(n, 8), torch.full((n,), 50), generator=g)
    assert jump.dtype == x0.dtype and abs(float(jump.mean()) - 0.7) < 4 * 0.5 / math.sqrt(8 * n)


def test_posterior_matches_the_simulated_chain():
    bd = sd.BinomialDiffusion(T=25)
    g = _gen(1)
    x0 = heartbeats(20000, generator=g)
    for t in (1, 3, 12, 22):
        x_prev = bd.forward_sample(x0, t - 1, generator=g)
        x_t = bd.forward_step(x_prev, t, generator=g)
        post = bd.posterior_prob(x_t, x0, t)
        for v0 in (0.0, 1.0):
            for vt in (0.0, 1.0):
                mask = (x0 == v0) & (x_t == vt)
                if int(mask.sum()) < 100:
                    continue
                emp = float(x_prev[mask].mean())
                assert abs(emp - float(post[mask][0])) < 4.5 * 0.5 / math.sqrt(int(mask.sum())) + 1e-9, (t, v0, vt)
    torch.testing.assert_close(bd.posterior_prob(x_t, x0, 1), x0.double())


def test_bound_of_the_uniform_model_is_exact():
    """Zero logits: p(x_{0:T}) = 2^{-(T+1)d}, so K = -(T+1) d log 2 + d sum_t h(beta_t/2) exactly in expectation."""
    for bd in (sd.BinomialDiffusion(T=10), sd.BinomialDiffusion(T=6, betas=[0.1, 0.2, 0.3, 0.3, 0.2, 0.4])):
        x0 = heartbeats(64, length=10, generator=_gen(2))
        res = bd.bound(lambda y, tau: torch.zeros_like(y), x0, n_samples=64, generator=_gen(3))
        b = bd.betas / 2
        h = -(b * b.log() + (1 - b) * (1 - b).log())
        d = 10
        exact = -(bd.T + 1) * d * math.log(2) + d * float(h.sum())
        mean, se = res.mean()
        assert abs(mean - exact) < 3 * se + 1e-9
        assert res.nfe == bd.T * 64 and res.dim == d
        # the uniform model's log-likelihood is -d log 2: K is below it
        assert mean < -d * math.log(2)


def test_trained_reverse_model_generates_heartbeats():
    """Train on K for a few hundred steps: samples have the period-5 structure; -K stays above the entropy."""
    torch.manual_seed(0)
    bd = sd.BinomialDiffusion(T=25)
    net = ScoreMLP(20, hidden=64, n_blocks=2, generator=_gen(4))
    steps = 800
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = _gen(5)
    for _ in range(steps):
        loss = bd.loss(net, heartbeats(256, generator=g), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    gen = bd.sample(net, (500, 20), generator=_gen(6))
    assert set(gen.unique().tolist()) <= {0.0, 1.0}
    valid = (gen[:, None, :] == heartbeat_patterns()[None]).all(-1).any(-1).float().mean()
    agree5 = float((gen[:, 5:] == gen[:, :-5]).float().mean())
    print(f"valid heartbeats: {float(valid):.1%}, agreement of bits 5 apart: {agree5:.3f}")
    assert float(valid) > 0.3          # measured 54 %; random bits: 5 * 2^-20
    assert agree5 > 0.85               # random bits: 0.5
    res = bd.bound(net, heartbeats(200, generator=_gen(7)), generator=_gen(8))
    mean, se = res.mean()
    assert -mean > math.log(5) - 3 * se          # cross-entropy >= entropy of the 5 patterns
    assert float(res.bits_per_dim.mean()) < 0.5   # far below the 1 bit per bin of noise


def test_heartbeats():
    x = heartbeats(50, generator=_gen(9))
    assert x.shape == (50, 20)
    assert bool((x.sum(1) == 4).all())
    assert len(x.unique(dim=0)) == 5
    assert heartbeat_patterns(7, 3).shape == (3, 7)
    with pytest.raises(ValueError, match="period"):
        heartbeat_patterns(3, 5)


def test_bad_input_is_rejected():
    bd = sd.BinomialDiffusion(T=10)
    x0 = torch.tensor([[0.0, 1.0]])
    with pytest.raises(ValueError, match="x0 must contain only 0 and 1"):
        bd.marginal_prob(torch.tensor([[0.5, 1.0]]), 3)
    with pytest.raises(ValueError, match="x0 contains non-finite"):
        bd.forward_sample(torch.tensor([[float("nan")]]), 3)
    with pytest.raises(ValueError, match=r"t must lie in 0..T = 0..10"):
        bd.marginal_prob(x0, 11)
    with pytest.raises(ValueError, match=r"t must lie in 1..T"):
        bd.posterior_prob(x0, x0, 0)
    with pytest.raises(ValueError, match="integer"):
        bd.marginal_prob(x0, torch.tensor([0.5]))
    with pytest.raises(TypeError, match="t must be an int"):
        bd.marginal_prob(x0, 2.0)
    with pytest.raises(ValueError, match="match the batch"):
        bd.marginal_prob(x0, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="same shape"):
        bd.posterior_prob(x0, torch.zeros(1, 3), 2)
    with pytest.raises(ValueError, match="betas must have shape"):
        sd.BinomialDiffusion(T=3, betas=[0.1, 0.2])
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\]"):
        sd.BinomialDiffusion(T=2, betas=[0.0, 0.5])
    with pytest.raises(TypeError, match="betas"):
        sd.BinomialDiffusion(T=2, betas="flat")
    with pytest.raises(ValueError, match="T must be an int >= 1"):
        sd.BinomialDiffusion(T=0)
    with pytest.raises(ValueError, match="logits shaped like x_t"):
        bd.loss(lambda y, tau: y[:, :1], x0)
    with pytest.raises(TypeError, match="net must be callable"):
        bd.sample(None, (2, 2))
    with pytest.raises(ValueError, match="shape"):
        bd.sample(lambda y, tau: y, 5)
    assert repr(bd) == "BinomialDiffusion(T=10)"
