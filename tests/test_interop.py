"""Models trained elsewhere: ModelWrapper, from_diffusers, and parity with diffusers' own loops.

diffusers is in the test extra, so these tests run in CI; where it is missing they fail with a
message saying so (set SCORESDE_ALLOW_NO_DIFFUSERS=1 to skip them instead, e.g. in a bare venv).
"""

import json
import math
import os

import pytest
import torch

import scoresde as sd
from scoresde.interop import ModelWrapper, from_diffusers, model_output
from scoresde.samplers import SAMPLERS, names

try:
    import diffusers
except ImportError:  # pragma: no cover - the test extra installs diffusers
    diffusers = None

F64 = torch.float64
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def dif():
    if diffusers is None:
        if os.environ.get("SCORESDE_ALLOW_NO_DIFFUSERS") == "1":
            pytest.skip("diffusers is not installed (SCORESDE_ALLOW_NO_DIFFUSERS=1)")
        pytest.fail("diffusers is part of the test extra: pip install -c constraints.txt -e '.[test]'")
    return diffusers


@pytest.fixture(scope="module")
def unet(dif):
    torch.manual_seed(0)
    net = dif.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                          block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    return net.eval()


X_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _diffusers_loop(unet, scheduler, x, **step_kw):
    x = x.clone()
    with torch.no_grad():
        for tau in scheduler.timesteps:
            x = scheduler.step(unet(x, tau).sample, tau, x, **step_kw).prev_sample
    return x


def _grid_to_zero(sde, scheduler):
    return torch.cat([sde.timestep_to_time(scheduler.timesteps), torch.zeros(1, dtype=F64)])


class _Calls:
    """Counts the network's forward calls through a hook (the honest NFE)."""

    def __init__(self, module):
        self.n = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.n += 1

    def close(self):
        self._handle.remove()


def _rel_err(a, b):
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


# -- parity with diffusers' own loops ------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_reproduces_diffusers_ddim_loop(dif, unet, prediction, spacing):
    sched = dif.DDIMScheduler(clip_sample=False, prediction_type=prediction, timestep_spacing=spacing)
    sched.set_timesteps(10)
    ref = _diffusers_loop(unet, sched, X_T)
    sde, score_fn = sd.interop.from_diffusers(unet, sched)
    times = _grid_to_zero(sde, sched)
    calls = _Calls(unet)
    out = sd.sample(sde, score_fn, X_T.shape, sampler="ddim", grid=times, x_init=X_T)
    calls.close()
    assert out.nfe == calls.n == 10
    # measured 2e-7 .. 3e-7 relative to max|x|: float32 round-off (diffusers: float32 coefficients)
    assert _rel_err(out.samples, ref) < 16 * EPS32 * 10


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_pp_2m_reproduces_diffusers_multistep(dif, unet, prediction, steps):
    # diffusers' defaults: linspace timesteps, final_sigmas_type="zero" (the grid ends at t = 0,
    # where the last step is first order), lower_order_final below 15 steps, midpoint 2M
    sched = dif.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                            prediction_type=prediction)
    sched.set_timesteps(steps)
    ref = _diffusers_loop(unet, sched, X_T)
    sde, score_fn = sd.interop.from_diffusers(unet, sched)
    calls = _Calls(unet)
    out = sd.sample(sde, score_fn, X_T.shape, sampler="dpm_solver_pp", order=2,
                    grid=_grid_to_zero(sde, sched), x_init=X_T)
    calls.close()
    assert out.nfe == calls.n == steps
    assert _rel_err(out.samples, ref) < 16 * EPS32 * steps


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_pp_2m_reproduces_diffusers_ending_at_sigma_min(dif, unet, steps):
    # final_sigmas_type="sigma_min" ends at timestep 0 (t = 1/N, finite log-SNR): both drop the
    # last step to order 1 below 15 steps (lower_order_final) and keep order 2 from 15 on
    sched = dif.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                            final_sigmas_type="sigma_min")
    sched.set_timesteps(steps)
    ref = _diffusers_loop(unet, sched, X_T)
    sde, score_fn = sd.interop.from_diffusers(unet, sched)
    times = torch.cat([sde.timestep_to_time(sched.timesteps), sde.timestep_to_time(torch.tensor([0]))])
    out = sd.sample(sde, score_fn, X_T.shape, sampler="dpm_solver_pp", grid=times, x_init=X_T)
    assert _rel_err(out.samples, ref) < 16 * EPS32 * steps


def test_ddpm_matches_diffusers_ddpm_pathwise_and_in_distribution(dif, unet):
    N, n = 20, 128
    sched = dif.DDPMScheduler(num_train_timesteps=N, beta_start=1e-3, beta_end=0.5, clip_sample=False,
                              variance_type="fixed_small")
    sched.set_timesteps(N)
    sde, score_fn = sd.interop.from_diffusers(unet, sched)
    # the same generator draws the same noise in the same order: equal paths up to round-off
    ref = _diffusers_loop(unet, sched, X_T, generator=torch.Generator().manual_seed(5))
    out = sd.sample(sde, score_fn, X_T.shape, sampler="ddpm", steps=N, variance="beta_tilde",
                    x_init=X_T, generator=torch.Generator().manual_seed(5))
    assert out.nfe == N and _rel_err(out.samples, ref) < 16 * EPS32 * N
    # in distribution, independent draws: per-pixel means and variances within 4.5 standard
    # errors (64 pixels: a false alarm below 1e-3); SE of a variance from the 4th moment
    x_ref = sched.init_noise_sigma * torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    a = _diffusers_loop(unet, sched, x_ref, generator=torch.Generator().manual_seed(7)).reshape(n, -1)
    b = sd.sample(sde, score_fn, (n, 1, 8, 8), sampler="ddpm", steps=N, variance="beta_tilde",
                  generator=torch.Generator().manual_seed(8)).samples.reshape(n, -1)
    se_mean = torch.sqrt((a.var(0) + b.var(0)) / n)
    assert float(((a.mean(0) - b.mean(0)).abs() / se_mean).max()) < 4.5

    def var_se(z):
        c = z - z.mean(0)
        return torch.sqrt(((c**4).mean(0) - (c**2).mean(0) ** 2) / n)

    se_var = torch.sqrt(var_se(a) ** 2 + var_se(b) ** 2)
    assert float(((a.var(0) - b.var(0)).abs() / se_var).max()) < 4.5


# -- every sampler on the wrapped model ------------------------------------------------------------
_OPTIONS = {"adaptive_ode": {"rtol": 1e-2, "atol": 1e-2}, "ode": {"rtol": 1e-2, "atol": 1e-2},
            "adaptive_sde": {"rtol": 0.2, "atol": 0.1}}


@pytest.mark.parametrize("name", names())
def test_every_sampler_runs_on_the_wrapped_model_with_honest_nfe(dif, unet, name):
    sched = dif.DDPMScheduler(num_train_timesteps=50, beta_start=1e-3, beta_end=0.4)
    sde, score_fn = sd.interop.from_diffusers(unet, sched)
    solver = SAMPLERS[name](**_OPTIONS.get(name, {}))
    steps = 3
    calls = _Calls(unet)
    out = sd.sample(sde, score_fn, (2, 1, 8, 8), sampler=solver, steps=steps, eps=0.02,
                    generator=torch.Generator().manual_seed(0))
    calls.close()
    assert out.samples.shape == (2, 1, 8, 8) and bool(torch.isfinite(out.samples).all())
    assert out.nfe == calls.n, f"{name}: counted {out.nfe}, network calls {calls.n}"
    if not solver.adaptive:  # the steps, plus the sampler's default final (denoising) step
        assert out.nfe == solver.nfe(steps) + (1 if solver.default_denoise else 0)


GRID_TO_0 = torch.tensor([1.0, 0.6, 0.3, 0.1, 0.0], dtype=F64)


@pytest.mark.parametrize("name", names())
def test_a_grid_ending_at_zero_is_accepted_exactly_by_samplers_that_can_end_there(name):
    sde = sd.DiscreteVPSDE.from_schedule("linear", N=50, beta_start=1e-3, beta_end=0.4)
    target = sd.Gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    seen = []

    def score(x, t):
        seen.append(float(t.min()))
        return target.score_fn(sde)(x, t)

    solver = SAMPLERS[name]()
    if solver.owns_grid:
        return  # DDPM's own grid ends at 0 (tests/test_grids.py)
    if solver.evaluates_at_end or (solver.needs_linear_sde and not solver.zero_noise_end):
        with pytest.raises(ValueError, match="t > 0"):
            sd.sample(sde, score, (8, 2), solver, grid=GRID_TO_0, dtype=F64)
        return
    out = sd.sample(sde, score, (8, 2), solver, grid=GRID_TO_0, dtype=F64,
                    generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(out.samples).all()) and min(seen) > 0.0
    assert name not in ("heun", "dpm_solver", "langevin", "annealed_langevin")


def test_dpm_solver_pp_lands_on_the_data_prediction_at_zero_noise():
    # at >= 15 steps lower_order_final does not apply, yet the step to sigma = 0 is order 1 (as
    # diffusers' final_sigmas_type="zero"): the last state is Tweedie's x0-hat of the one before
    sde = sd.DiscreteVPSDE.from_schedule("linear", N=1000)
    target = sd.Gaussian(torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=F64))
    score = target.score_fn(sde)
    times = torch.cat([torch.linspace(1.0, 0.01, 20, dtype=F64), torch.zeros(1, dtype=F64)])
    x_T = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    for name in ("dpm_solver_pp", "unipc"):
        out = sd.sample(sde, score, (6, 2), sampler=name, grid=times, x_init=x_T, trajectory=True)
        x_prev = out.trajectory[-2]
        assert torch.allclose(out.samples, sd.samplers.tweedie_denoise(sde, score, x_prev, 0.01),
                              rtol=1e-12, atol=1e-12), name
        # the steps before are those of the grid without its last time (no correction of the
        # step into 0.01 for UniPC, whose last step is never corrected)
        if name == "dpm_solver_pp":
            head = sd.sample(sde, score, (6, 2), sampler=name, grid=times[:-1], x_init=x_T,
                             lower_order_final=False)
            assert torch.allclose(head.samples, x_prev, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="warmup='singlestep' needs a first step"):
        sd.sample(sde, target.score_fn(sde), (6, 2), sampler="dpm_solver_pp", warmup="singlestep",
                  grid=torch.tensor([1.0, 0.0], dtype=F64))


# -- from_diffusers: what it reads and what it refuses ------------------------------------------------
@pytest.mark.parametrize("cls", ["DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler"])
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_the_table_is_the_schedulers_own(dif, cls, schedule):
    sched = getattr(dif, cls)(beta_schedule=schedule, num_train_timesteps=200)
    sde, score_fn = from_diffusers(lambda x, tau: x, sched)
    assert torch.equal(sde.alphas_cumprod, sched.alphas_cumprod.double())
    # from the config alone (no table): scoresde's float64 table, equal up to float32 round-off
    sde_cfg, _ = from_diffusers(lambda x, tau: x, dict(sched.config))
    rel = ((sde_cfg.alphas_cumprod - sde.alphas_cumprod) / sde.alphas_cumprod).abs().max()
    assert float(rel) < (2e-5 if schedule == "squaredcos_cap_v2" else 2e-6)


def test_trained_betas_and_prediction_types(dif):
    betas = [0.01, 0.05, 0.1, 0.3]
    sde, _ = from_diffusers(lambda x, tau: x, {"num_train_timesteps": 4, "trained_betas": betas})
    assert torch.allclose(sde.alphas_cumprod, torch.cumprod(1 - torch.tensor(betas, dtype=F64), 0))
    for p, kind in (("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0")):
        _, fn = from_diffusers(lambda x, tau: x, {"prediction_type": p})
        assert fn.parameterization == kind and sd.predict.prediction_type(fn) == kind


def test_a_pipeline_and_saved_directories_load_the_same_model(dif, unet, tmp_path):
    sched = dif.DDIMScheduler(clip_sample=False, prediction_type="v_prediction")
    pipe = dif.DDIMPipeline(unet=unet, scheduler=sched)
    pipe.save_pretrained(tmp_path / "pipe")
    unet.save_pretrained(tmp_path / "model")
    sched.save_pretrained(tmp_path / "model")
    unet.save_pretrained(tmp_path / "bare")
    sched.save_pretrained(tmp_path / "sched")
    x, t = X_T, torch.full((4,), 0.5)
    _, ref = from_diffusers(unet, sched)
    for source, scheduler in ((pipe, None), (str(tmp_path / "pipe"), None), (tmp_path / "model", None),
                              (tmp_path / "bare", tmp_path / "sched"), (tmp_path / "pipe", str(tmp_path / "pipe")),
                              (pipe, tmp_path / "sched")):
        sde, fn = from_diffusers(source, scheduler)
        assert fn.parameterization == "v" and torch.equal(sde.alphas_cumprod, sched.alphas_cumprod.double())
        with torch.no_grad():
            assert torch.allclose(fn.predict(x, t), ref.predict(x, t), rtol=0, atol=1e-6)


def test_directories_and_inputs_that_cannot_be_read_are_refused(dif, unet, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        from_diffusers(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no diffusers model"):
        from_diffusers(tmp_path / "empty")
    unet.save_pretrained(tmp_path / "bare")
    with pytest.raises(TypeError, match="scheduler is required with a bare model"):
        from_diffusers(tmp_path / "bare")
    with pytest.raises(ValueError, match="holds no scheduler_config.json"):
        from_diffusers(tmp_path / "bare", tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "model_index.json").write_text(json.dumps({"_class_name": "X"}))
    with pytest.raises(ValueError, match="has no unet component"):
        from_diffusers(tmp_path / "odd")
    (tmp_path / "odd" / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "NoSuchNet"]}))
    with pytest.raises(ValueError, match="names class 'NoSuchNet'"):
        from_diffusers(tmp_path / "odd")
    (tmp_path / "odd" / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DModel"]}))
    unet.save_pretrained(tmp_path / "odd" / "unet")
    with pytest.raises(ValueError, match="has no scheduler component"):
        from_diffusers(tmp_path / "odd")
    with pytest.raises(TypeError, match="scheduler must be a diffusers scheduler"):
        from_diffusers(unet, 3)
    with pytest.raises(TypeError, match="model must be callable"):
        from_diffusers(3, {})


@pytest.mark.parametrize("config, match", [
    ({"prediction_type": "flow"}, "prediction_type must be one of"),
    ({"beta_schedule": "sigmoid"}, "beta_schedule must be one of"),
    ({"rescale_betas_zero_snr": True}, "zero-terminal-SNR"),
    ({"trained_betas": [0.1, 0.0, 0.2], "num_train_timesteps": 3}, r"betas must lie in \(0, 1\)"),
    ({"trained_betas": [0.1, 0.2], "num_train_timesteps": 3}, "table has 2 entries but num_train_timesteps=3"),
])
def test_configs_that_cannot_be_represented_are_refused(config, match):
    with pytest.raises(ValueError, match=match):
        from_diffusers(lambda x, tau: x, config)


def test_a_non_monotone_or_zero_snr_table_is_refused(dif):
    sched = dif.DDIMScheduler(num_train_timesteps=10)
    sched.alphas_cumprod = torch.tensor([0.9, 0.8, 0.85, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01])
    with pytest.raises(ValueError, match="strictly decreasing"):
        from_diffusers(lambda x, tau: x, sched)
    zero = dif.DDIMScheduler(num_train_timesteps=10, rescale_betas_zero_snr=True)
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        from_diffusers(lambda x, tau: x, zero)


def test_model_shapes_and_conditional_models_are_checked(dif):
    kw = dict(sample_size=8, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
              down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    wide = dif.UNet2DModel(in_channels=1, out_channels=2, **kw).eval()
    with pytest.raises(ValueError, match="out_channels=2 must be in_channels"):
        from_diffusers(wide, {})
    sde, fn = from_diffusers(wide, {"variance_type": "learned_range"})  # guided-diffusion style
    assert fn.learned_variance
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        full = wide(x, torch.full((2,), 500.0)).sample
        assert torch.equal(fn.predict(x, sde.timestep_to_time(torch.tensor([500, 500])).float()), full[:, :1])
    with pytest.raises(ValueError, match="out_channels=1 must be a learned variance"):
        from_diffusers(dif.UNet2DModel(in_channels=1, out_channels=1, **kw), {"variance_type": "learned"})
    cond = dif.UNet2DModel(in_channels=1, out_channels=1, num_class_embeds=3, **kw)
    with pytest.raises(ValueError, match="conditional models are not supported"):
        from_diffusers(cond, {})


# -- ModelWrapper on exact models (no diffusers needed) --------------------------------------------------
TARGET = sd.Gaussian(torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=F64))
SDE = sd.DiscreteVPSDE.from_schedule("linear", N=100, beta_start=1e-3, beta_end=0.2)


def _exact_net(kind, time_input="fractional", calls=None):
    """The exact eps / v / x0 / score network of TARGET under SDE, fed timesteps like a DDPM net."""
    score = TARGET.score_fn(SDE)

    def net(x, tau):
        if calls is not None:
            calls.append(tau)
        t = tau.to(F64) if time_input == "continuous" else SDE.timestep_to_time(tau.to(F64))
        s, sigma = SDE.scale_std(t)
        return sd.predict.convert(score(x, t), x, s, sigma, source="score", target=kind)

    return net


@pytest.mark.parametrize("prediction, kind", [("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0"),
                                              ("score", "score")])
@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver_pp", "euler_ode"])
def test_the_wrapper_of_an_exact_network_samples_like_the_exact_score(prediction, kind, sampler):
    calls = []
    model = ModelWrapper(_exact_net(kind, calls=calls), SDE, prediction=prediction)
    assert model.parameterization == kind
    tau = torch.tensor([99, 70, 40, 20, 5, 0])
    times = SDE.timestep_to_time(tau)
    x_T = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    out = sd.sample(SDE, model, (5, 2), sampler=sampler, grid=times, x_init=x_T)
    ref = sd.sample(SDE, TARGET.score_fn(SDE), (5, 2), sampler=sampler, grid=times, x_init=x_T)
    assert out.nfe == len(calls) == 5
    assert torch.allclose(out.samples, ref.samples, rtol=1e-10, atol=1e-10)
    assert torch.equal(torch.stack(calls)[:, 0], tau[:-1].float())  # whole timesteps exactly


def test_time_inputs_fractional_integer_continuous():
    x = torch.zeros(3, 2, dtype=F64)
    t = torch.tensor([0.0, 0.5049, 1.0], dtype=F64)
    seen = {}
    for mode in ("fractional", "integer", "continuous"):
        def net(x, tau, mode=mode):
            seen[mode] = tau
            return torch.zeros_like(x)

        ModelWrapper(net, SDE, time_input=mode).predict(x, t)
    assert seen["fractional"].dtype == torch.float32
    assert torch.allclose(seen["fractional"].double(), torch.tensor([0.0, 49.49, 99.0], dtype=F64), atol=1e-4)
    assert seen["integer"].dtype == torch.int64 and seen["integer"].tolist() == [0, 49, 99]
    assert torch.equal(seen["continuous"], t)
    # a float32 time that is a table time up to round-off feeds the exact integer
    t32 = SDE.timestep_to_time(torch.tensor([37, 81])).float()
    ModelWrapper(lambda x, tau: seen.update(snap=tau) or torch.zeros_like(x), SDE).predict(torch.zeros(2, 2), t32)
    assert seen["snap"].tolist() == [37.0, 81.0]
    # a continuous-time network works on any linear SDE; floats and 0-d times broadcast
    vp = sd.VPSDE()
    model = ModelWrapper(lambda x, t: -x, vp, prediction="score", time_input="continuous")
    assert torch.equal(model(torch.ones(2, 2), 0.5), -torch.ones(2, 2))
    assert torch.equal(model.predict(torch.ones(2, 2), torch.tensor(0.5)), -torch.ones(2, 2))
    eps_model = ModelWrapper(lambda x, t: torch.ones_like(x), vp, prediction="eps", time_input="continuous")
    _, sigma = vp.scale_std(torch.tensor([0.5]))
    assert torch.allclose(eps_model(torch.ones(2, 2), 0.5), -torch.ones(2, 2) / sigma)


def test_outputs_of_every_form_and_their_errors():
    x = torch.ones(2, 3)
    assert torch.equal(model_output((x, None)), x)

    class Out:
        sample = x

    assert model_output(Out()) is x
    with pytest.raises(TypeError, match="the network must return a tensor"):
        model_output({"sample": x})
    wide = ModelWrapper(lambda x, tau: torch.cat([x, x], 1), SDE)
    with pytest.raises(ValueError, match="pass learned_variance=True"):
        wide.predict(x, 0.5)
    assert torch.equal(ModelWrapper(lambda x, tau: torch.cat([x, 2 * x], 1), SDE,
                                    learned_variance=True).predict(x, 0.5), x)
    with pytest.raises(ValueError, match="must return 2 x 3 channels"):
        ModelWrapper(lambda x, tau: x, SDE, learned_variance=True).predict(x, 0.5)
    with pytest.raises(ValueError, match="must have the shape of its input"):
        ModelWrapper(lambda x, tau: x[:, :2], SDE).predict(x, 0.5)


@pytest.mark.parametrize("kw, exc, match", [
    ({"net": 3}, TypeError, "net must be callable"),
    ({"sde": object()}, TypeError, "sde must be a scoresde LinearSDE"),
    ({"prediction": "noise"}, ValueError, "prediction must be one of"),
    ({"time_input": "seconds"}, ValueError, "time_input must be one of"),
    ({"sde": sd.VPSDE()}, TypeError, "needs a DiscreteVPSDE"),
    ({"learned_variance": 1}, TypeError, "learned_variance must be a bool"),
])
def test_bad_wrapper_arguments_are_refused(kw, exc, match):
    args = {"net": lambda x, tau: x, "sde": SDE, **kw}
    with pytest.raises(exc, match=match):
        ModelWrapper(args.pop("net"), args.pop("sde"), **args)


def test_repr_and_module_registration(dif, unet):
    _, fn = from_diffusers(unet, dif.DDPMScheduler())
    assert "prediction='epsilon'" in repr(fn) and "time_input='fractional'" in repr(fn)
    assert sum(p.numel() for p in fn.parameters()) == sum(p.numel() for p in unet.parameters())
    with torch.no_grad():
        assert math.isfinite(float(fn(X_T, 0.5).abs().max()))
