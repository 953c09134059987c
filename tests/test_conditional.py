"""Class-conditional networks, label dropout, classifier-free guidance, labelled data and training.

The statistical checks train a tiny conditional MLP on a two-component 2-D mixture whose
components are known, so conditional samples can be judged against the truth.
"""

import math

import pytest
import torch

import scoresde as sd
from scoresde.data import DataStream, data_source, get_dataset, labelled_names
from scoresde.losses import drop_labels, dsm_loss
from scoresde.nets import ConditionalScore, ScoreMLP, ScoreModel, UNet
from scoresde.training import TrainConfig, Trainer, build_model, load_model, model_spec, train_model


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# -- networks --------------------------------------------------------------------------------


def test_label_embedding_shapes_and_null_label():
    mlp = ScoreMLP(2, hidden=16, num_classes=3, generator=gen(0))
    assert mlp.label_embed.weight.shape == (4, 16) and mlp.null_label == 3 == mlp.num_classes
    unet = UNet(base_channels=8, num_classes=10, generator=gen(0))
    assert unet.label_embed.weight.shape == (11, 32) and unet.null_label == 10
    # the unconditional weights of a seed are unchanged; the embedding is the only addition
    plain = ScoreMLP(2, hidden=16, generator=gen(0))
    assert n_params(mlp) == n_params(plain) + 4 * 16
    for name, p in plain.state_dict().items():
        assert torch.equal(p, mlp.state_dict()[name])
    assert plain.null_label is None and plain.label_embed is None
    # make the output depend on the labels (the output layer starts at zero)
    with torch.no_grad():
        mlp.out.weight.normal_(generator=gen(1))
        unet.conv_out.weight.normal_(generator=gen(1))
    x, t = torch.randn(5, 2, generator=gen(2)), torch.full((5,), 0.4)
    by_label = [mlp(x, t, k) for k in range(4)]
    assert all(o.shape == (5, 2) for o in by_label)
    assert not torch.allclose(by_label[0], by_label[1])
    torch.testing.assert_close(mlp(x, t), by_label[3])  # y=None is the null label
    mixed = mlp(x, t, torch.tensor([0, 1, 2, 3, 0]))
    torch.testing.assert_close(mixed[1], by_label[1][1])
    img = torch.randn(2, 1, 8, 8, generator=gen(3))
    torch.testing.assert_close(unet(img, 0.5), unet(img, 0.5, 10))
    assert not torch.allclose(unet(img, 0.5, 0), unet(img, 0.5, 1))
    assert mlp.double()(x.double(), t.double(), 1).dtype == torch.float64


@pytest.mark.parametrize(
    ("y", "err", "match"),
    [
        (torch.tensor([0, 4]), ValueError, r"y must hold labels in 0\.\.2 \(or the null label 3\)"),
        (torch.tensor([-1, 0]), ValueError, "y must hold labels"),
        (torch.tensor([0.0, 1.0]), TypeError, "integer labels"),
        (torch.tensor([0, 1, 2]), ValueError, r"shape \(2,\)"),
        ("a", TypeError, "y must be an int"),
        (True, TypeError, "y must be an int"),
    ],
)
def test_network_label_errors(y, err, match):
    net = ScoreMLP(2, hidden=8, num_classes=3)
    with pytest.raises(err, match=match):
        net(torch.zeros(2, 2), 0.5, y)


def test_unconditional_network_refuses_labels():
    with pytest.raises(ValueError, match="unconditional"):
        ScoreMLP(2, hidden=8)(torch.zeros(2, 2), 0.5, 1)
    with pytest.raises(ValueError, match="unconditional"):
        UNet(base_channels=8)(torch.zeros(1, 1, 8, 8), 0.5, 1)
    with pytest.raises(ValueError, match="num_classes"):
        ScoreMLP(2, num_classes=0)
    model = ScoreModel(ScoreMLP(2, hidden=8), sd.VPSDE())
    with pytest.raises(ValueError, match="y must be None: this ScoreModel is unconditional"):
        model(torch.zeros(2, 2), 0.5, 1)
    for call in (lambda: model.conditional(1), lambda: model.guided(1, 2.0)):
        with pytest.raises(ValueError, match="model must be class-conditional"):
            call()
    assert model.num_classes is None and model.null_label is None
    x = torch.randn(3, 2)
    torch.testing.assert_close(model.unconditional()(x, 0.5), model(x, 0.5))


# -- ScoreModel with labels, classifier-free guidance ------------------------------------------


def _random_conditional_model(parameterization="eps", num_classes=3):
    net = ScoreMLP(2, hidden=16, num_classes=num_classes, generator=gen(0))
    with torch.no_grad():
        net.out.weight.normal_(0.0, 0.3, generator=gen(1))
    return ScoreModel(net, sd.VPSDE(), parameterization=parameterization)


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v", "score"])
def test_guided_score_is_the_cfg_combination(parameterization):
    model = _random_conditional_model(parameterization)
    x, t = torch.randn(6, 2, generator=gen(2)), torch.rand(6, generator=gen(3)) * 0.9 + 0.05
    cond, uncond = model.conditional(2), model.unconditional()
    torch.testing.assert_close(cond(x, t), model(x, t, 2))
    torch.testing.assert_close(uncond(x, t), model(x, t))
    for w in (0.0, 1.0, 2.5):
        g = model.guided(2, w)
        want = (1 + w) * cond(x, t) - w * uncond(x, t)
        torch.testing.assert_close(g(x, t), want, rtol=1e-5, atol=1e-5)
        # the raw outputs combine the same way: the guided object is a native prediction
        assert g.parameterization == parameterization
        raw = (1 + w) * model.predict(x, t, 2) - w * model.predict(x, t)
        torch.testing.assert_close(g.predict(x, t), raw, rtol=1e-5, atol=1e-5)
        adapter = sd.predict.PredictionAdapter(model.sde, g)
        torch.testing.assert_close(adapter.score(x, t), want, rtol=1e-4, atol=1e-5)
    per_sample = model.conditional(torch.tensor([0, 1, 2, 0, 1, 2]))
    torch.testing.assert_close(per_sample(x, t)[4], model(x, t, 1)[4])
    assert "weight=2.5" in repr(model.guided(2, 2.5)) and "6 labels" in repr(per_sample)


def test_guided_score_matches_sd_guidance_classifier_free():
    """After the merge with part A: the one CFG transform and the fused one agree."""
    guidance = pytest.importorskip("scoresde.guidance")
    model = _random_conditional_model()
    x, t = torch.randn(6, 2, generator=gen(2)), torch.full((6,), 0.3)
    g = guidance.classifier_free(model.conditional(1), model.unconditional(), 2.0)
    torch.testing.assert_close(g(x, t), model.guided(1, 2.0)(x, t), rtol=1e-5, atol=1e-5)


def test_conditional_score_validation():
    model = _random_conditional_model()
    with pytest.raises(ValueError, match=r"class labels in 0\.\.2, got the null label 3"):
        model.conditional(3)
    with pytest.raises(ValueError, match="y must hold labels"):
        model.conditional(7)
    with pytest.raises(ValueError, match="weight"):
        model.guided(1, -1.0)
    with pytest.raises(ValueError, match="weight"):
        model.guided(1, math.inf)
    with pytest.raises(ValueError, match="y must be a class label when weight > 0"):
        ConditionalScore(model, None, 1.0)
    with pytest.raises(TypeError, match="model must be a ScoreModel"):
        ConditionalScore(lambda x, t: x, 1)
    with pytest.raises(ValueError, match="batch of 2"):
        model.conditional(torch.tensor([0, 1]))(torch.zeros(3, 2), 0.5)


def test_guided_score_plugs_into_samplers_and_counts_calls():
    model = _random_conditional_model()
    for sampler in ("euler_maruyama", "ddim", "dpm_solver_pp"):
        out = sd.sample(model.sde, model.guided(1, 2.0), (8, 2), sampler=sampler, steps=6, generator=gen(0))
        assert out.samples.shape == (8, 2) and bool(torch.isfinite(out.samples).all())
        assert out.nfe == sd.samplers.resolve(sampler).nfe(6)


# -- label dropout, the conditional loss --------------------------------------------------------


def test_drop_labels_rate_and_validation():
    n, p = 20_000, 0.1
    y = torch.randint(0, 5, (n,), generator=gen(0))
    dropped = drop_labels(y, p, 5, generator=gen(1))
    rate = float((dropped == 5).double().mean())
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n)  # binomial standard error, 4 sigma
    kept = dropped != 5
    assert torch.equal(dropped[kept], y[kept])  # the others are untouched
    assert torch.equal(drop_labels(y, p, 5, generator=gen(1)), dropped)  # reproducible
    assert drop_labels(y, 0.0, 5) is y and bool((drop_labels(y, 1.0, 5) == 5).all())
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
        drop_labels(y, 1.5, 5)
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        drop_labels(y.double(), 0.1, 5)
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        drop_labels([0, 1], 0.1, 5)


def test_dsm_loss_with_labels_calls_the_model_with_them():
    seen = {}

    def model(x, t, y=None):
        seen["y"] = y
        return torch.zeros_like(x)

    x0, y = torch.randn(16, 2, generator=gen(0)), torch.arange(16) % 3
    loss = dsm_loss(model, sd.VPSDE(), x0, labels=y, generator=gen(1))
    assert seen["y"] is y
    torch.testing.assert_close(loss, dsm_loss(model, sd.VPSDE(), x0, generator=gen(1)))  # same draws
    with pytest.raises(ValueError, match=r"labels must be an integer tensor of shape \(16,\)"):
        dsm_loss(model, sd.VPSDE(), x0, labels=y[:4])


# -- labelled data ----------------------------------------------------------------------------


def test_labelled_data_sources():
    pytest.importorskip("sklearn")
    x, y = data_source("digits", labels=True)
    assert x.shape == (1437, 1, 8, 8) and y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    assert torch.equal(x, data_source("digits"))  # the same images, now with their digits
    xs, ys = get_dataset("digits", n=50, generator=gen(0), labels=True)
    assert xs.shape == (50, 1, 8, 8) and ys.shape == (50,)
    assert labelled_names() == sorted([*sd.target_names(), "digits"])
    with pytest.raises(ValueError, match="'moons' carries no labels"):
        data_source("moons", labels=True)
    with pytest.raises(ValueError, match="a tensor carries no labels"):
        data_source(torch.zeros(3, 2), labels=True)
    with pytest.raises(ValueError, match="same length"):
        data_source((torch.zeros(3, 2), torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="integer tensor"):
        data_source((torch.zeros(3, 2), torch.zeros(3)))
    with pytest.raises(ValueError, match=">= 0"):
        data_source((torch.zeros(2, 2), torch.tensor([0, -1])))
    with pytest.raises(TypeError, match=r"\(x, y\)"):
        data_source((torch.zeros(2, 2),))


def test_target_labels_are_its_components():
    target = sd.make_target("imbalanced_2d")
    draw = data_source("imbalanced_2d", labels=True)
    assert draw.num_classes == target.n_components == 3
    n = 20_000
    x, k = draw(n, generator=gen(0))
    assert x.shape == (n, 2) and x.dtype == torch.float32 and k.dtype == torch.int64
    freq = torch.bincount(k, minlength=3).double() / n
    tol = 4 * torch.sqrt(target.weights * (1 - target.weights) / n)
    assert bool(((freq - target.weights).abs() < tol).all())
    for j in range(3):  # each label's points follow its component: mean within 4 standard errors
        xj = x[k == j].double()
        se = torch.sqrt(torch.diagonal(target.covariances[j]) / xj.shape[0])
        assert bool(((xj.mean(0) - target.means[j]).abs() < 4 * se).all())
    assert torch.equal(draw(5, generator=gen(3))[0], draw(5, generator=gen(3))[0])


def test_stream_of_labelled_data_keeps_rows_together_and_resumes():
    x = torch.arange(10.0)[:, None]
    y = torch.arange(10)
    s = DataStream((x, y), 4, generator=gen(0))
    xb, yb = next(s)
    assert torch.equal(xb[:, 0].long(), yb)
    state = s.state_dict()
    b = next(s)
    s.load_state_dict(state)
    again = next(s)
    assert torch.equal(again[0], b[0]) and torch.equal(again[1], b[1])
    with pytest.raises(ValueError, match="same number of rows"):
        DataStream((x, y[:3]), 2)
    with pytest.raises(TypeError, match=r"\(x, y\)"):
        DataStream((x,), 2)
    with pytest.raises(ValueError, match="n >= 1"):
        DataStream((x[:0], y[:0]), 2)


# -- training ---------------------------------------------------------------------------------


def test_trainer_checks_model_against_data():
    cond = ScoreModel(ScoreMLP(2, hidden=8, num_classes=2), sd.VPSDE())
    plain = ScoreModel(ScoreMLP(2, hidden=8), sd.VPSDE())
    xy = (torch.randn(32, 2, generator=gen(0)), torch.arange(32) % 2)
    cfg = TrainConfig(steps=2, batch_size=8)
    with pytest.raises(ValueError, match="data carry labels but model is unconditional"):
        Trainer(plain, xy, cfg, progress=False)
    with pytest.raises(ValueError, match="model is class-conditional"):
        Trainer(cond, xy[0], cfg, progress=False)
    with pytest.raises(ValueError, match="data carry labels but model is unconditional"):
        Trainer(plain, data_source("ring8", labels=True), cfg, progress=False)
    # a sampling function says what it returns only when called: the first update refuses
    with pytest.raises(ValueError, match="model is class-conditional"):
        Trainer(cond, "ring8", cfg, progress=False).train()
    with pytest.raises(ValueError, match="data carry labels but model is unconditional"):
        Trainer(plain, lambda n, generator=None: (torch.randn(n, 2), torch.zeros(n, dtype=torch.long)), cfg,
                progress=False).train()


def test_default_loss_drops_labels_at_the_configured_rate():
    seen = []

    class Spy(torch.nn.Module):
        null_label = 4

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, y=None):
            seen.append(y.clone())
            return self.w * x

    xy = (torch.randn(512, 2, generator=gen(0)), torch.arange(512) % 4)
    Trainer(Spy(), xy, TrainConfig(steps=20, batch_size=256, label_dropout=0.25), progress=False).train()
    y = torch.cat(seen)
    p, n = 0.25, y.numel()
    assert abs(float((y == 4).double().mean()) - p) < 4 * math.sqrt(p * (1 - p) / n)
    seen.clear()
    Trainer(Spy(), xy, TrainConfig(steps=2, batch_size=256, label_dropout=0.0), progress=False).train()
    assert not bool((torch.cat(seen) == 4).any())
    with pytest.raises(ValueError, match=r"label_dropout must lie in \[0, 1\]"):
        TrainConfig(label_dropout=1.5)


@pytest.fixture(scope="module")
def mixture_model():
    """A tiny conditional MLP trained 300 steps on two labelled Gaussians N(±1.5 e1, 0.4² I)."""
    means, std = torch.tensor([[-1.5, 0.0], [1.5, 0.0]]), 0.4
    y = torch.randint(0, 2, (4096,), generator=gen(0))
    x = means[y] + std * torch.randn(4096, 2, generator=gen(1))
    net = ScoreMLP(2, hidden=32, n_blocks=2, num_classes=2, generator=gen(2))
    cfg = TrainConfig(steps=300, batch_size=256, lr=3e-3, warmup=20, ema_decay=0.9)
    trainer = Trainer(ScoreModel(net, sd.VPSDE()), (x, y), cfg, progress=False)
    trainer.train()
    truth = sd.GaussianMixture(means, torch.eye(2).expand(2, 2, 2) * std**2)
    return trainer.ema_model, truth, means, std


def _component_of(truth, x):
    return truth.responsibilities(x.double()).argmax(1)


def test_conditional_samples_land_in_their_component(mixture_model):
    model, truth, means, std = mixture_model
    n = 500
    spread = {}
    for k in (0, 1):
        for w in (0.0, 1.0):
            fn = model.conditional(k) if w == 0 else model.guided(k, w)
            x = sd.sample(model.sde, fn, (n, 2), "heun", steps=30, generator=gen(10 + k)).samples
            hit = float((_component_of(truth, x) == k).double().mean())
            # the truth puts mass 1 - Phi(-3.75) > 0.9999 in its own half-plane; allow model error
            assert hit > 0.95, (k, w, hit)
            q1, q3 = torch.quantile(x[:, 0], torch.tensor([0.25, 0.75]))
            spread[k, w] = float(q3 - q1) / 1.349  # the std of a Gaussian from its quartiles, robust
            if w == 0:  # the conditional law, up to the error of a 300-step model (sampling se ~0.02)
                assert float((x.median(0).values - means[k]).norm()) < 0.2
                assert abs(spread[k, w] - std) < 0.12
        assert spread[k, 1.0] < spread[k, 0.0]  # guidance sharpens (less diversity)
    x = sd.sample(model.sde, model.unconditional(), (1000, 2), "heun", steps=30, generator=gen(5)).samples
    frac = float((_component_of(truth, x) == 0).double().mean())
    assert abs(frac - 0.5) < 4 * math.sqrt(0.25 / 1000) + 0.05  # the null label: both components


def test_checkpoint_round_trip_rebuilds_the_conditional_model(tmp_path):
    cfg = TrainConfig(steps=3, batch_size=16, checkpoint_every=0)
    trainer = train_model("ring8", tmp_path / "run", config=cfg, hidden=16, progress=False, conditional=True)
    model, spec = load_model(trainer.checkpoint_path)
    assert spec["num_classes"] == 8 and model.num_classes == 8
    x, t = torch.randn(4, 2, generator=gen(0)), torch.full((4,), 0.5)
    torch.testing.assert_close(model(x, t, 5), trainer.ema_model(x, t, 5))
    # resuming continues the conditional run; an unconditional spec is a different model
    more = train_model("ring8", tmp_path / "run", config=TrainConfig(steps=5, batch_size=16), hidden=16,
                       progress=False, conditional=True, resume=True)
    assert more.step == 5
    with pytest.raises(sd.CheckpointError, match="num_classes 8 vs None"):
        train_model("ring8", tmp_path / "run", config=TrainConfig(steps=6, batch_size=16), hidden=16,
                    progress=False, resume=True)
    spec_plain = model_spec(torch.randn(5, 2))
    assert spec_plain["num_classes"] is None
    old = {k: v for k, v in spec_plain.items() if k != "num_classes"}  # a spec from before this field
    assert build_model(old).num_classes is None


def test_train_model_conditional_needs_labels(tmp_path):
    with pytest.raises(ValueError, match="conditional=True needs labelled data"):
        train_model(lambda n, generator=None: torch.randn(n, 2, generator=generator), tmp_path / "a",
                    config=TrainConfig(steps=1, batch_size=4), progress=False, conditional=True)
    xy = (torch.randn(8, 2, generator=gen(0)), torch.arange(8) % 2)
    with pytest.raises(ValueError, match="pass conditional=True"):
        train_model(xy, tmp_path / "b", config=TrainConfig(steps=1, batch_size=4), progress=False)
    trainer = train_model(xy, tmp_path / "c", config=TrainConfig(steps=1, batch_size=4), hidden=8,
                          progress=False, conditional=True)
    assert trainer.metadata["model"]["num_classes"] == 2  # the largest label + 1


# -- command line -------------------------------------------------------------------------------


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for f in fragments:
        assert f in err, err


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    from scoresde.cli import main

    root = tmp_path_factory.mktemp("cond")
    tiny = ["--steps", "4", "--batch-size", "16", "--hidden", "16", "--no-progress"]
    assert main(["train", "--data", "ring8", "--conditional", "--label-dropout", "0.2",
                 "--out", str(root / "cond"), *tiny]) == 0
    assert main(["train", "--data", "ring8", "--out", str(root / "plain"), *tiny]) == 0
    return root


def test_cli_train_conditional_records_classes_and_dropout(cli_runs):
    model, spec = load_model(cli_runs / "cond" / "checkpoint.pt")
    assert spec["num_classes"] == 8 and model.num_classes == 8
    ckpt = sd.load_checkpoint(cli_runs / "cond" / "checkpoint.pt")
    assert ckpt["config"]["label_dropout"] == 0.2
    assert load_model(cli_runs / "plain" / "checkpoint.pt")[1]["num_classes"] is None


def test_cli_sample_label_and_guidance(cli_runs, tmp_path, capsys):
    from scoresde.cli import main

    ckpt = str(cli_runs / "cond" / "checkpoint.pt")
    base = ["sample", "--checkpoint", ckpt, "--n", "32", "--steps", "5", "--sampler", "ddim"]
    assert main([*base, "--label", "3", "--guidance", "2.0", "--out", str(tmp_path / "g.npy")]) == 0
    out = capsys.readouterr().out
    assert "class 3, guidance 2" in out and "5 NFE = 10 network evaluations" in out
    assert main([*base, "--label", "3", "--out", str(tmp_path / "c.npy")]) == 0
    assert "class 3 with ddim (5 NFE," in capsys.readouterr().out
    assert main([*base, "--out", str(tmp_path / "u.npy")]) == 0
    assert "unconditional" in capsys.readouterr().out
    # the files hold what the model's score functions give, mapped to data space
    import numpy as np

    from scoresde.training import from_model_space

    model, spec = load_model(ckpt)
    want = sd.sample(model.sde, model.guided(3, 2.0), (32, 2), "ddim", steps=5, generator=gen(0)).samples
    got = torch.from_numpy(np.load(tmp_path / "g.npy"))
    torch.testing.assert_close(got, from_model_space(want, spec))
    want = sd.sample(model.sde, model.conditional(3), (32, 2), "ddim", steps=5, generator=gen(0)).samples
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "c.npy")), from_model_space(want, spec))


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--label", "8"], ["--label must be in 0..7 for this checkpoint (8 classes), got 8"]),
        (["--guidance", "1.0"], ["--guidance needs --label"]),
        (["--label", "1", "--guidance", "-1"], ["--guidance must be a finite number >= 0"]),
        (["--label", "-1"], ["--label", "integer >= 0"]),
    ],
)
def test_cli_sample_label_errors(cli_runs, tmp_path, capsys, args, fragments):
    from scoresde.cli import main

    argv = ["sample", "--checkpoint", str(cli_runs / "cond" / "checkpoint.pt"), "--out", str(tmp_path / "x.npy")]
    assert main([*argv, *args]) == 2
    _one_line_error(capsys, *fragments)


def test_cli_label_needs_a_conditional_model_and_labelled_data(cli_runs, tmp_path, capsys):
    from scoresde.cli import main

    plain = str(cli_runs / "plain" / "checkpoint.pt")
    assert main(["sample", "--checkpoint", plain, "--label", "1", "--out", str(tmp_path / "x.npy")]) == 2
    _one_line_error(capsys, "--label needs a class-conditional checkpoint (scoresde train --conditional)")
    assert main(["train", "--data", "moons", "--conditional", "--out", str(tmp_path / "m")]) == 2
    _one_line_error(capsys, "--conditional needs labelled data", "digits")
    assert main(["train", "--data", "ring8", "--conditional", "--label-dropout", "1.5",
                 "--out", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, "label_dropout must lie in [0, 1]")
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--conditional" in text and "--label-dropout" in text
    assert main(["sample", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--label" in text and "--guidance" in text and "classifier-free guidance" in text


def test_cli_digits_conditional_image_grid(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from scoresde.cli import main

    run = tmp_path / "digits"
    assert main(["train", "--data", "digits", "--conditional", "--steps", "2", "--batch-size", "8",
                 "--no-progress", "--out", str(run)]) == 0
    assert load_model(run / "checkpoint.pt")[1]["num_classes"] == 10
    png = tmp_path / "threes.png"
    assert main(["sample", "--checkpoint", str(run / "checkpoint.pt"), "--label", "3", "--guidance", "2",
                 "--n", "4", "--steps", "2", "--sampler", "ddim", "--out", str(png)]) == 0
    assert png.stat().st_size > 0 and "class 3, guidance 2" in capsys.readouterr().out
