"""The prediction adapter: conversions between score, ε, x₀ and v, native predictions, honest NFE.

The conversions are checked against an independent computation of Tweedie's posterior mean
E[x₀ | x_t] for a Gaussian mixture (closed form per component), under every linear SDE.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import scoresde as sd
import scoresde.predict as P
from scoresde._runtime import CountingScore, NonFiniteError
from scoresde.nets import ScoreMLP, ScoreModel
from scoresde.predict import PREDICTIONS, PredictionAdapter, convert, prediction_type, scale_std_values

F64 = torch.float64
SDES = [sd.VPSDE(), sd.VESDE(), sd.SubVPSDE(), sd.OU(alpha=-0.7, sigma=1.3), sd.CosineVPSDE()]
IDS = [type(s).__name__ for s in SDES]


def gen(seed):
    return torch.Generator().manual_seed(seed)


MEANS = torch.tensor([[-1.0, 0.5], [1.0, -0.5], [0.2, 1.5]], dtype=F64)
COVS = torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.2, 0.0], [0.0, 0.4]], [[0.05, 0.0], [0.0, 0.05]]], dtype=F64)
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
TARGET = sd.GaussianMixture(MEANS, COVS, WEIGHTS)


def posterior_mean(x, s, sig):
    """E[x0 | x_t = x] for the mixture, computed component by component (not from the score)."""
    d = x.shape[1]
    eye = torch.eye(d, dtype=F64)
    logr, m = [], []
    for mu, cov, w in zip(MEANS, COVS, WEIGHTS):
        C = s[:, None, None] ** 2 * cov + sig[:, None, None] ** 2 * eye  # (n, d, d)
        diff = x - s[:, None] * mu
        sol = torch.linalg.solve(C, diff.unsqueeze(-1)).squeeze(-1)
        logr.append(torch.log(w) - 0.5 * (diff * sol).sum(-1) - 0.5 * torch.logdet(C))
        m.append(mu + s[:, None] * (sol @ cov))  # μ + s Σ C⁻¹ (x − s μ)  (Σ symmetric)
    r = torch.softmax(torch.stack(logr, -1), -1)
    return (r[:, :, None] * torch.stack(m, 1)).sum(1)


def _points(sde, n=64):
    x = 2.0 * torch.randn(n, 2, generator=gen(0), dtype=F64)
    t = sde.T * (0.02 + 0.96 * torch.rand(n, generator=gen(1), dtype=F64))
    return x, t


# -- the conversions --------------------------------------------------------------------------


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_conversions_match_the_exact_posterior_mean_of_a_mixture(sde):
    x, t = _points(sde)
    s, sig = sde.scale_std(t)
    score = TARGET.score_fn(sde)(x, t)
    x0 = convert(score, x, s, sig, source="score", target="x0")
    torch.testing.assert_close(x0, posterior_mean(x, s, sig), rtol=1e-9, atol=1e-9)
    eps = convert(score, x, s, sig, source="score", target="eps")
    v = convert(score, x, s, sig, source="score", target="v")
    sb, gb = s[:, None], sig[:, None]
    torch.testing.assert_close(sb * x0 + gb * eps, x)  # x = s x0 + σ ε
    torch.testing.assert_close(v, sb * eps - gb * x0)  # v = s ε − σ x0
    torch.testing.assert_close(eps, -gb * score)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_conversions_are_mutually_inverse_and_path_independent(sde):
    x, t = _points(sde)
    s, sig = sde.scale_std(t)
    vals = {"score": TARGET.score_fn(sde)(x, t)}
    for k in ("eps", "x0", "v"):
        vals[k] = convert(vals["score"], x, s, sig, source="score", target=k)
    for a, b in itertools.permutations(PREDICTIONS, 2):
        got = convert(vals[a], x, s, sig, source=a, target=b)
        torch.testing.assert_close(got, vals[b], rtol=1e-9, atol=1e-9, msg=f"{a} -> {b}")
        back = convert(got, x, s, sig, source=b, target=a)
        torch.testing.assert_close(back, vals[a], rtol=1e-9, atol=1e-9, msg=f"{a} -> {b} -> {a}")
    assert convert(vals["eps"], x, s, sig, source="eps", target="eps") is vals["eps"]


def test_convert_accepts_floats_and_broadcast_scales():
    x = torch.randn(5, 3, 4, 4, generator=gen(2), dtype=F64)
    e = torch.randn(5, 3, 4, 4, generator=gen(3), dtype=F64)
    ref = (x - 0.6 * e) / 0.8
    assert torch.equal(convert(e, x, 0.8, 0.6, source="eps", target="x0"), ref)
    s, sig = torch.full((5,), 0.8, dtype=F64), torch.full((5,), 0.6, dtype=F64)
    assert torch.equal(convert(e, x, s, sig, source="eps", target="x0"), ref)
    assert torch.equal(convert(e, x, s[:, None, None, None], sig[:, None, None, None],
                               source="eps", target="x0"), ref)
    assert torch.equal(convert(e, x, torch.tensor(0.8, dtype=F64), torch.tensor(0.6, dtype=F64),
                               source="eps", target="x0"), ref)


@pytest.mark.parametrize(("kwargs", "match"), [({"source": "epsilon", "target": "x0"}, "source"),
                                               ({"source": "eps", "target": "noise"}, "target")])
def test_convert_rejects_unknown_kinds(kwargs, match):
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=rf"{match} must be one of \('eps', 'score', 'x0', 'v'\)"):
        convert(x, x, 1.0, 1.0, **kwargs)


def test_scale_std_values_are_float64_lists_from_scale_std():
    sde = sd.VPSDE()
    times = torch.tensor([1.0, 0.5, 1e-3], dtype=F64)
    s, sig = scale_std_values(sde, times)
    ref_s, ref_sig = sde.scale_std(times)
    assert s == ref_s.tolist() and sig == ref_sig.tolist()
    assert scale_std_values(sde, [1.0, 0.5, 1e-3]) == (s, sig)

    # an SDE with Gaussian transitions known only through the generic interface (no scale_std)
    Plain = type("Plain", (sd.SDE,), {
        "prior_std": 1.0,
        "_drift": lambda self, x, t: -x,
        "_diffusion": lambda self, t: torch.ones_like(t),
        "_marginal": lambda self, x0, t: (x0, torch.ones_like(t)),
    })
    with pytest.raises(TypeError, match="Foo needs a LinearSDE"):
        scale_std_values(Plain(1.0), times, who="Foo")
    with pytest.raises(TypeError, match="DDIM needs a LinearSDE"):
        sd.sample(Plain(1.0), lambda x, t: -x, (4, 2), sampler="ddim", steps=2)
    with pytest.raises(TypeError, match="ReverseDiffusion needs a LinearSDE"):
        sd.sample(Plain(1.0), lambda x, t: -x, (4, 2), sampler="reverse_diffusion", steps=2)
    with pytest.raises(TypeError, match="tweedie_denoise needs a LinearSDE"):
        sd.samplers.tweedie_denoise(Plain(1.0), lambda x, t: -x, torch.zeros(4, 2), 0.5)
    with pytest.raises(TypeError, match="LinearSDE"):
        ScoreModel(ScoreMLP(2), Plain(1.0))


# -- native predictions -----------------------------------------------------------------------


def _model(kind, sde, seed=0):
    """A ScoreModel with non-trivial (non-zero) output: the zero-initialised head is redrawn."""
    net = ScoreMLP(2, hidden=16, n_blocks=1, generator=gen(seed))
    with torch.no_grad():
        net.out.weight.normal_(0.0, 0.3, generator=gen(seed + 1))
        net.out.bias.normal_(0.0, 0.3, generator=gen(seed + 2))
    return ScoreModel(net, sde, parameterization=kind)


class Spy:
    """Counts forward (score) and predict calls of a model; forwards parameterization."""

    def __init__(self, model):
        self.model, self.forward, self.predicted = model, 0, 0
        self.parameterization = model.parameterization

    def __call__(self, x, t):
        self.forward += 1
        return self.model(x, t)

    def predict(self, x, t):
        self.predicted += 1
        return self.model.predict(x, t)


def test_prediction_type():
    sde = sd.VPSDE()
    assert prediction_type(lambda x, t: -x) == "score"
    for kind in PREDICTIONS:
        assert prediction_type(_model(kind, sde)) == kind
        assert CountingScore(_model(kind, sde), "m").parameterization == kind
    assert CountingScore(lambda x, t: -x, "f").parameterization == "score"
    assert prediction_type(sd.samplers.EpsilonScore(lambda x, i: x, sde.discretize(100))) == "score"

    class NoPredict:  # a parameterization attribute without predict is a plain score function
        parameterization = "eps"

        def __call__(self, x, t):
            return -x

    assert prediction_type(NoPredict()) == "score"

    class Bad(NoPredict):
        parameterization = "epsilon"

        def predict(self, x, t):
            return x

    assert isinstance(Bad(), P.NativePrediction)
    with pytest.raises(ValueError, match="parameterization must be one of"):
        prediction_type(Bad())


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE()], ids=["VPSDE", "VESDE"])
@pytest.mark.parametrize("kind", PREDICTIONS)
def test_adapter_returns_the_models_own_quantities_with_one_counted_call(sde, kind):
    model = _model(kind, sde)
    x = torch.randn(16, 2, generator=gen(5))
    t = 0.05 + 0.9 * sde.T * torch.rand(16, generator=gen(6))
    counted = CountingScore(model, "model")
    pred = PredictionAdapter(sde, counted)
    assert pred.prediction == kind and kind in repr(pred)
    with torch.no_grad():
        expected = {"score": model(x, t), "eps": model.predict_eps(x, t), "x0": model.predict_x0(x, t)}
        for q, ref in expected.items():
            before = counted.calls
            got = getattr(pred, q)(x, t)
            assert counted.calls == before + 1, f"{q} from a {kind} model"
            assert torch.equal(got, ref), f"{q} from a {kind} model"
        if kind != "score":
            assert torch.equal(pred.eps(x, t) if kind == "eps" else getattr(pred, kind)(x, t), model.predict(x, t))
        s, sig = sde.scale_std(t)
        torch.testing.assert_close(pred.v(x, t), s[:, None] * expected["eps"] - sig[:, None] * expected["x0"])


def test_eps_model_x0_is_native_and_skips_the_score():
    sde = sd.VPSDE()
    model = _model("eps", sde)
    spy = Spy(model)
    counted = CountingScore(spy, "spy")
    pred = PredictionAdapter(sde, counted)
    x, t = torch.randn(8, 2, generator=gen(7)), torch.full((8,), 0.3)
    with torch.no_grad():
        x0 = pred.x0(x, t)
        eps = pred.eps(x, 0.3)  # a float time is broadcast
    assert (spy.forward, spy.predicted, counted.calls) == (0, 2, 2)
    assert torch.equal(x0, model.predict_x0(x, t))
    assert torch.equal(eps, model.predict(x, t))
    # with the solver's float64 coefficients the conversion is (x − σ ε)/s with those floats
    (s,), (sig,) = scale_std_values(sde, [0.3])
    with torch.no_grad():
        assert torch.equal(pred.x0(x, 0.3, s=s, sigma=sig), (x - sig * model.predict(x, t)) / s)


def test_adapter_argument_checks():
    sde = sd.VPSDE()
    with pytest.raises(TypeError, match="model must be callable"):
        PredictionAdapter(sde, 3)
    with pytest.raises(TypeError, match="PredictionAdapter needs a LinearSDE"):
        PredictionAdapter(object(), lambda x, t: -x)
    pred = PredictionAdapter(sde, lambda x, t: -x)
    with pytest.raises(ValueError, match="both s and sigma"):
        pred.x0(torch.zeros(2, 2), 0.5, s=1.0)


def test_counting_score_checks_native_predictions():
    class Broken:
        parameterization = "eps"

        def __init__(self, out):
            self.out = out

        def __call__(self, x, t):
            return -x

        def predict(self, x, t):
            return self.out(x)

    x = torch.ones(3, 2)
    with pytest.raises(ValueError, match=r"score_fn.predict must return a tensor shaped like x \(3, 2\)"):
        CountingScore(Broken(lambda x: x[:, :1]), "b").predict(x, torch.full((3,), 0.5))
    bad = CountingScore(Broken(lambda x: x * float("nan")), "b")
    with pytest.raises(NonFiniteError, match="non-finite prediction at step 0"):
        bad.predict(x, torch.full((3,), 0.5))
    assert bad.calls == 1
    with pytest.raises(NonFiniteError, match="non-finite prediction"):
        sd.sample(sd.VPSDE(), Broken(lambda x: x * float("nan")), (4, 2), sampler="ddim", steps=3)


# -- samplers use the native quantity: no ε → score → x₀ round trip ------------------------------


@pytest.mark.parametrize(("sampler", "opts", "asked"), [
    ("ddim", {}, None),
    ("ddim", {"eta": 1.0}, None),
    ("dpm_solver", {"order": 3}, None),
    ("dpm_solver_pp", {"order": 3}, ("eps", "x0")),
    ("dpm_solver_pp", {"warmup": "singlestep"}, ("eps", "x0")),
    ("unipc", {}, ("eps", "x0")),
])
def test_eps_model_is_sampled_without_a_round_trip(monkeypatch, sampler, opts, asked):
    sde = sd.VPSDE()
    model = _model("eps", sde)
    spy = Spy(model)
    conversions = []
    real = P.convert

    def counting_convert(value, x, s, sigma, *, source, target):
        conversions.append((source, target))
        return real(value, x, s, sigma, source=source, target=target)

    monkeypatch.setattr(P, "convert", counting_convert)
    with torch.no_grad():
        native = sd.sample(sde, spy, (32, 2), sampler=sampler, steps=6, generator=gen(8), **opts)
        # the same model hidden behind a plain score function: ε → score → (x₀ or ε) again
        detour = sd.sample(sde, lambda x, t: model(x, t), (32, 2), sampler=sampler, steps=6,
                           generator=gen(8), **opts)
    assert spy.forward == 0 and spy.predicted == native.nfe == detour.nfe
    n = native.nfe
    # native run: nothing (ε asked of an ε-model) or one direct ε → x₀ per evaluation
    expected = [] if asked is None else [asked] * n
    want_detour = ("score", "x0") if asked else ("score", "eps")
    assert conversions == expected + [want_detour] * n
    torch.testing.assert_close(native.samples, detour.samples, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver", "dpm_solver_pp", "unipc"])
def test_native_and_score_paths_agree(kind, sampler):
    sde = sd.VESDE() if kind == "x0" else sd.VPSDE()
    model = _model(kind, sde, seed=3)
    with torch.no_grad():
        a = sd.sample(sde, model, (32, 2), sampler=sampler, steps=5, generator=gen(9), dtype=torch.float32)
        b = sd.sample(sde, lambda x, t: model(x, t), (32, 2), sampler=sampler, steps=5, generator=gen(9))
    assert a.nfe == b.nfe
    torch.testing.assert_close(a.samples, b.samples, rtol=1e-4, atol=1e-4 * sde.prior_std)


def test_tweedie_uses_a_native_x0_model_as_it_is():
    sde = sd.VPSDE()
    model = _model("x0", sde)
    spy = Spy(model)
    x = torch.randn(8, 2, generator=gen(10))
    with torch.no_grad():
        out = sd.samplers.tweedie_denoise(sde, spy, x, 0.01)
        assert torch.equal(out, model.predict(x, 0.01))
        half = sd.samplers.tweedie_denoise(sde, spy, x, 0.01, weight=0.5)
        s, sig = (float(v) for v in sde.scale_std(0.01))
        torch.testing.assert_close(half, (x + 0.5 * sig**2 * model(x, 0.01)) / s)
        assert (spy.forward, spy.predicted) == (0, 2)
        # through the driver: the final step is the model's own x₀, one more counted call
        res = sd.sample(sde, spy, (8, 2), sampler="ddim", steps=4, generator=gen(11), denoise=True)
    assert (spy.forward, spy.predicted, res.nfe) == (0, 2 + 5, 5)
