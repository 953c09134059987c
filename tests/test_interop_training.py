"""diffusers networks as scoresde score networks: wrapper, training, checkpoint, rebuild (issue 13 item 5)."""

import json

import diffusers  # the test extra installs it: these tests run (never skip) in CI
import pytest
import torch

import scoresde as sd
from scoresde.interop.training import (
    DiffusersUNet,
    build_diffusers_net,
    diffusers_model_spec,
    diffusers_score_model,
)
from scoresde.predict import convert
from scoresde.training import TrainConfig, Trainer, build_model, load_checkpoint, load_model, train_model


def tiny_unet(channels=1, size=8, out_channels=None, seed=0, **kw):
    torch.manual_seed(seed)  # diffusers initialises from the global stream
    return diffusers.UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=out_channels or channels,
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, add_attention=False,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), **kw)


class CountCalls(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet, self.calls, self.timesteps = unet, 0, []

    def forward(self, x, timestep):
        self.calls += 1
        self.timesteps.append(timestep.detach().clone())
        return self.unet(x, timestep)


def test_time_scaling_is_documented_affine_map():
    probe = CountCalls(tiny_unet())
    net = DiffusersUNet(probe, time_scale=1000.0, time_shift=-1.0)
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([0.001, 0.5, 1.0])
    out = net(x, t)
    assert torch.allclose(probe.timesteps[-1], torch.tensor([0.0, 499.0, 999.0]))
    assert torch.equal(out, probe.unet(x, torch.tensor([0.0, 499.0, 999.0])).sample)
    net(x, 0.25)  # a float is broadcast
    assert torch.allclose(probe.timesteps[-1], torch.full((3,), 249.0))
    assert "1000 * t + -1" in repr(net)


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v", "score"])
def test_score_model_reads_every_parameterization(parameterization):
    unet = tiny_unet()
    model, spec = diffusers_score_model(unet, "vp", parameterization=parameterization)
    assert spec["parameterization"] == parameterization
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    model = model.double()
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    raw = unet.double()(x, 999.0 * t).sample            # ScoreModel feeds t / T, T = 1
    assert torch.equal(model.predict(x, t), raw)
    s, sigma = model.sde.scale_std(t)
    expected = convert(raw, x, s[:, None, None, None], sigma[:, None, None, None],
                       source=parameterization, target="score")
    assert torch.allclose(model(x, t), expected, rtol=1e-12, atol=1e-12)


def test_wrapper_refuses_what_it_cannot_train():
    with pytest.raises(ValueError, match="out_channels == in_channels"):
        DiffusersUNet(tiny_unet(out_channels=2))
    with pytest.raises(ValueError, match="class-conditional"):
        DiffusersUNet(tiny_unet(num_class_embeds=3, class_embed_type=None))
    with pytest.raises(TypeError, match="nn.Module"):
        DiffusersUNet(lambda x, t: x)
    with pytest.raises(ValueError, match="time_scale"):
        DiffusersUNet(tiny_unet(), time_scale=0.0)
    with pytest.raises(ValueError, match="time_shift"):
        DiffusersUNet(tiny_unet(), time_shift=float("nan"))
    with pytest.raises(TypeError, match="with a config"):
        diffusers_model_spec(torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="sde must be one of"):
        diffusers_model_spec(tiny_unet(), "nope")
    with pytest.raises(ValueError, match="parameterization must be one of"):
        diffusers_model_spec(tiny_unet(), parameterization="noise")


def test_spec_is_plain_and_rebuilds_reproducibly_without_touching_global_rng():
    spec = diffusers_model_spec(tiny_unet(size=16), "vp", parameterization="v", time_scale=1000, time_shift=-1)
    assert spec["event_shape"] == [1, 16, 16] and spec["diffusers_class"] == "UNet2DModel"
    assert not any(k.startswith("_") for k in spec["diffusers_config"])
    json.dumps(spec)  # plain values only: survives torch.load(weights_only=True)
    state = torch.random.get_rng_state()
    a = build_diffusers_net(spec, generator=torch.Generator().manual_seed(1))
    b = build_diffusers_net(spec, generator=torch.Generator().manual_seed(1))
    c = build_diffusers_net(spec, generator=torch.Generator().manual_seed(2))
    assert torch.equal(torch.random.get_rng_state(), state)
    wa, wb, wc = (next(m.parameters()) for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert (a.time_scale, a.time_shift) == (1000.0, -1.0)
    model = build_model(spec)
    assert isinstance(model.net, DiffusersUNet) and model.parameterization == "v"
    for bad, match in (({"diffusers_class": "load_image"}, "diffusers model class"),
                       ({"diffusers_class": 3}, "diffusers model class"),
                       ({"diffusers_config": [1]}, "must be a dict")):
        with pytest.raises(ValueError, match=match):
            build_diffusers_net({**spec, **bad})
    with pytest.raises(ValueError, match="not a model spec"):
        build_model({k: v for k, v in spec.items() if k != "time_scale"})


def test_trainer_trains_it_and_the_checkpoint_rebuilds_it(tmp_path):
    model, spec = diffusers_score_model(tiny_unet(), "vp", parameterization="eps")
    before = [p.detach().clone() for p in model.parameters()]
    tr = Trainer(model, "digits", TrainConfig(steps=3, batch_size=8, lr=1e-3, warmup=0), out_dir=tmp_path,
                 progress=False, metadata={"model": spec})
    losses = tr.train()
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")  # torch.load(weights_only=True)
    assert ckpt["metadata"]["model"]["diffusers_config"] == spec["diffusers_config"]
    loaded, loaded_spec = load_model(tmp_path / "checkpoint.pt")
    assert loaded_spec == spec
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(loaded(x, 0.4), tr.ema_model(x, 0.4))
    raw, _ = load_model(tmp_path / "checkpoint.pt", ema=False)
    assert torch.equal(raw(x, 0.4), model.eval()(x, 0.4))


def test_every_network_call_is_one_nfe_when_sampling():
    counter = CountCalls(tiny_unet())
    model = sd.ScoreModel(DiffusersUNet(counter), sd.VPSDE())
    for name, steps in (("ddim", 4), ("dpm_solver_pp", 4), ("heun", 3), ("euler_maruyama", 5)):
        counter.calls = 0
        out = sd.sample(model.sde, model, (2, 1, 8, 8), name, steps=steps,
                        generator=torch.Generator().manual_seed(0))
        assert out.nfe == counter.calls > 0 and out.samples.shape == (2, 1, 8, 8)


def test_train_model_takes_a_diffusers_spec(tmp_path):
    spec = diffusers_model_spec(tiny_unet(), "vp")
    tr = train_model("digits", tmp_path / "run", config=TrainConfig(steps=2, batch_size=4, warmup=0),
                     spec=spec, progress=False)
    assert tr.step == 2
    model, back = load_model(tr.checkpoint_path)
    assert back["kind"] == "diffusers_unet" and isinstance(model.net, DiffusersUNet)
    with pytest.raises(ValueError, match="event_shape"):
        train_model("digits", tmp_path / "other", config=TrainConfig(steps=1, batch_size=4),
                    spec=diffusers_model_spec(tiny_unet(size=16), "vp"), progress=False)


class Configured(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config

    def forward(self, x, timestep):
        return x


def test_spec_refuses_configs_it_cannot_store():
    with pytest.raises(TypeError, match="with a config"):
        diffusers_model_spec(Configured(5))                      # not a mapping
    with pytest.raises(ValueError, match="plain value"):
        diffusers_model_spec(Configured({"in_channels": 1, "sample_size": 8, "w": torch.ones(1)}))
    with pytest.raises(ValueError, match="sample_size"):
        diffusers_model_spec(Configured({"in_channels": 1, "out_channels": 1}))
    spec = diffusers_model_spec(Configured({"in_channels": 3, "sample_size": (4, 6), "extra": {"a": (1, 2)}}))
    assert spec["event_shape"] == [3, 4, 6] and spec["diffusers_config"]["extra"] == {"a": [1, 2]}
    assert spec["diffusers_class"] == "Configured"
    with pytest.raises(ValueError, match="diffusers model class"):
        build_diffusers_net(spec)                                # not a diffusers class
