r"""A diffusers UNet2DModel under scoresde: wrapper overhead per NFE, and error vs NFE against a reference.

Run by hand (not a test; needs ``pip install -e ".[diffusers]"``)::

    python benchmarks/bench_interop.py                      # CPU, table + JSON on stdout
    python benchmarks/bench_interop.py --device cuda --json interop.json
    python benchmarks/bench_interop.py --quick              # small batch, few steps (a smoke run)

**Overhead.** For a ``UNet2DModel`` with ``block_out_channels=(64, 128, 128)`` (attention at
the middle resolution, diffusers' defaults otherwise; random weights) on batches of 64 images
1×32×32 and 3×32×32, the wall time of a whole :func:`scoresde.sample` call with ``ddim`` and
with ``dpm_solver_pp`` divided by its NFE is compared with one bare ``unet(x, timestep)`` call
(under ``torch.no_grad``, as the driver runs). Target (issue 13): ≤ 1.05×. The bare call is
timed just before and just after every sampling run and the ratio is taken against their mean
(medians over ``--repeats``), so that drifts in machine load cancel. On a GPU the clock is read
after ``torch.cuda.synchronize()`` and sampling runs with ``check_finite=False`` (then only
the final state is checked); images/s are the batch over the wall time of a 20-step run.

**Error vs NFE.** In the reference-solution mode (:mod:`scoresde.compare.reference`): scoresde's
DDIM, DPM-Solver++ 2M and 3M, UniPC and Heun, and diffusers' own ``DDIMScheduler``,
``DPMSolverMultistepScheduler`` (``dpmsolver++``, orders 2 and 3), ``UniPCMultistepScheduler``
and ``HeunDiscreteScheduler`` run on the *same* model from the *same* prior draws
:math:`x_T` and are scored against the same high-accuracy solve of its probability-flow ODE
(RMSE) and a many-step SDE sample (SW2, MMD). The diffusers schedulers start at timestep 999
(``timestep_spacing="trailing"``, which is :math:`t = 1`) and, where they can, end at timestep 0
(:math:`t_0 = 1/N`, the reference's end: ``set_alpha_to_one=False``,
``final_sigmas_type="sigma_min"``). ``HeunDiscreteScheduler`` always ends at :math:`\sigma = 0`;
it is scored against the reference's denoised end point :math:`\hat x_0(x^\star, t_0)` (one
more network call on the reference; this end step itself has an error of order
:math:`\sigma(t_0)^2`).

The error-vs-NFE model has random weights with its output convolution scaled by
``--out-scale`` (0.05): a raw random U-Net predicts an ε̂ of order 1 that is unrelated to
:math:`x_t`; with a small ε̂ the reverse flow just undoes the shrinking,
:math:`x_0 \approx x_T/\sqrt{\bar\alpha_{N-1}} \approx 150\,x_T`. The error-vs-NFE model is
therefore :class:`TameUNet`, :math:`\hat\epsilon(x, \tau) = \sigma_\tau x + 0.05\,
\text{unet}(x, \tau)`: the exact ε of standard normal data (score :math:`-x`) plus a small random
U-Net, so samples are of order 1 and the RMSE reads like that of a model of images in
``[-1, 1]``. Both scoresde and diffusers call this same module.

The model is what :func:`scoresde.interop.from_diffusers` makes of the UNet and a linear
1000-step ``DDPMScheduler``. Where ``from_diffusers`` is not available (issue 13 part A not
merged) the wrapper is ``ScoreModel(DiffusersUNet(unet, time_scale=1000, time_shift=-1),
VPSDE())``: the continuous VP SDE with :math:`\beta \in [0.1, 20]` approximates the discrete
linear table (the two agree to about 1e-3 in :math:`\bar\alpha`), so diffusers' schedulers
then see a slightly different model than scoresde's samplers; the JSON says which was used.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import statistics
import sys
import time

import torch

import scoresde as sd
from scoresde import compare
from scoresde.compare.reference import reference_metrics, reference_solution, run_reference_comparison

N_TRAIN = 1000

#: label -> (diffusers scheduler class, options), each ending at timestep 0 where it can
DIFFUSERS_SCHEDULERS = {
    "diffusers:DDIM": ("DDIMScheduler", {"set_alpha_to_one": False, "timestep_spacing": "trailing",
                                         "clip_sample": False}),
    "diffusers:DPM++2M": ("DPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "dpmsolver++",
                                                          "final_sigmas_type": "sigma_min",
                                                          "timestep_spacing": "trailing"}),
    "diffusers:DPM++3M": ("DPMSolverMultistepScheduler", {"solver_order": 3, "algorithm_type": "dpmsolver++",
                                                          "final_sigmas_type": "sigma_min",
                                                          "timestep_spacing": "trailing"}),
    "diffusers:UniPC": ("UniPCMultistepScheduler", {"final_sigmas_type": "sigma_min",
                                                    "timestep_spacing": "trailing"}),
    "diffusers:Heun": ("HeunDiscreteScheduler", {}),
}
#: schedulers whose last step goes to sigma = 0 (t = 0) whatever the options
ENDS_AT_ZERO = ("diffusers:Heun",)


def make_unet(channels: int, blocks=(64, 128, 128), size: int = 32, seed: int = 0):
    import diffusers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return diffusers.UNet2DModel(
            sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=tuple(blocks),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D")[: len(blocks)],
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")[-len(blocks):],
            norm_num_groups=min(32, blocks[0])).eval()


class TameUNet(torch.nn.Module):
    """``eps(x, tau) = sigma_tau * x + out_scale * unet(x, tau).sample`` on the linear 1000-step table."""

    def __init__(self, unet, out_scale: float = 0.05):
        super().__init__()
        import diffusers

        self.unet, self.out_scale, self.config = unet, out_scale, unet.config
        alphas_cumprod = diffusers.DDPMScheduler(num_train_timesteps=N_TRAIN).alphas_cumprod
        self.register_buffer("sigmas", (1 - alphas_cumprod).sqrt())
        from diffusers.models.unets.unet_2d import UNet2DOutput

        self._out = UNet2DOutput

    def forward(self, x, timestep, return_dict: bool = True):
        tau = torch.as_tensor(timestep, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        lo = tau.floor().clamp(0, N_TRAIN - 2).long()
        frac = (tau - lo).to(x.dtype)
        sigma = (1 - frac) * self.sigmas[lo].to(x.dtype) + frac * self.sigmas[lo + 1].to(x.dtype)
        out = sigma[:, None, None, None] * x + self.out_scale * self.unet(x, timestep).sample
        return self._out(sample=out) if return_dict else (out,)


def wrap(unet):
    """``(sde, score_fn, how)``: from_diffusers when available, else the documented fallback."""
    import diffusers

    scheduler = diffusers.DDPMScheduler(num_train_timesteps=N_TRAIN, beta_schedule="linear")
    interop = sd.interop
    if hasattr(interop, "from_diffusers"):
        sde, score_fn = interop.from_diffusers(unet, scheduler)
        return sde, score_fn, "sd.interop.from_diffusers(unet, DDPMScheduler(linear, 1000))"
    from scoresde.interop.training import DiffusersUNet

    model = sd.ScoreModel(DiffusersUNet(unet, time_scale=N_TRAIN, time_shift=-1.0), sd.VPSDE()).eval()
    return model.sde, model, "fallback ScoreModel(DiffusersUNet(unet, 1000, -1), VPSDE()) (approximate)"


def end_time(sde) -> float:
    if hasattr(sde, "timestep_to_time"):
        return float(torch.as_tensor(sde.timestep_to_time(torch.zeros(1))).reshape(-1)[0])
    return 1.0 / N_TRAIN


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


# -- overhead --------------------------------------------------------------------------------------


def overhead(channels, batch, steps, repeats, bare_calls, device) -> list[dict]:
    unet = make_unet(channels).to(device)
    sde, score_fn, how = wrap(unet)
    if isinstance(score_fn, torch.nn.Module):
        score_fn = score_fn.to(device)
    shape = (batch, channels, 32, 32)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=gen, device=device)
    timestep = torch.full((batch,), 500.0, device=device)
    eps = end_time(sde)

    def bare():
        with torch.no_grad():
            for _ in range(bare_calls):
                unet(x, timestep)
        return None

    rows = []
    for name in ("ddim", "dpm_solver_pp"):
        def run(name=name):
            return sd.sample(sde, score_fn, shape, name, steps=steps, eps=eps, x_init=x,
                             generator=torch.Generator(device=device).manual_seed(1),
                             check_finite=device.type != "cuda")
        run()  # warm-up
        bare()
        ratios, per_nfe, per_call = [], [], []
        for _ in range(repeats):
            before, _ = _clock(bare, device)
            seconds, out = _clock(run, device)
            after, _ = _clock(bare, device)
            call = (before + after) / (2 * bare_calls)
            per_call.append(call)
            per_nfe.append(seconds / out.nfe)
            ratios.append(seconds / out.nfe / call)
        row = {"image": f"{channels}x32x32", "batch": batch, "sampler": name, "steps": steps, "nfe": out.nfe,
               "bare_call_ms": 1e3 * statistics.median(per_call), "per_nfe_ms": 1e3 * statistics.median(per_nfe),
               "ratio": statistics.median(ratios), "wrapper": how, "device": str(device)}
        if steps == 20 or device.type == "cuda":
            row["images_per_s"] = batch / (statistics.median(per_nfe) * out.nfe)
        rows.append(row)
    return rows


# -- error vs NFE ----------------------------------------------------------------------------------


def _scheduler(label):
    import diffusers

    cls_name, options = DIFFUSERS_SCHEDULERS[label]
    return getattr(diffusers, cls_name)(num_train_timesteps=N_TRAIN, beta_schedule="linear", **options)


def diffusers_loop(unet, label, x_init, steps):
    """diffusers' loop from ``x_init`` (VP scale at timestep 999): model calls and the result."""
    scheduler = _scheduler(label)
    scheduler.set_timesteps(steps, device=x_init.device)
    x = x_init * scheduler.init_noise_sigma
    takes_gen = "generator" in inspect.signature(scheduler.step).parameters
    calls = 0
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet(scheduler.scale_model_input(x, t), t).sample
            calls += 1
            kwargs = {"generator": torch.Generator(device=x.device).manual_seed(0)} if takes_gen else {}
            x = scheduler.step(eps, t, x, **kwargs).prev_sample
    return calls, x


def steps_for_budget(label, budget):
    """Largest number of inference steps whose loop makes at most ``budget`` model calls."""
    best = None
    for steps in range(1, budget + 1):
        scheduler = _scheduler(label)
        scheduler.set_timesteps(steps)
        if len(scheduler.timesteps) <= budget:
            best = (steps, len(scheduler.timesteps))
    return best


def error_vs_nfe(channels, blocks, n, budgets, sde_steps, ode_tol, device, seed=0, out_scale=0.05) -> list[dict]:
    unet = TameUNet(make_unet(channels, blocks), out_scale).to(device)
    sde, score_fn, how = wrap(unet)
    if isinstance(score_fn, torch.nn.Module):
        score_fn = score_fn.to(device)
    shape = (n, channels, 32, 32)
    eps = end_time(sde)
    with torch.no_grad():
        ref = reference_solution(sde, score_fn, shape, seed=seed, eps=eps, ode_tol=ode_tol, sde_steps=sde_steps,
                                 device=device)
    samplers = {"ddim": "ddim", "dpm_solver_pp_2m": sd.samplers.DPMSolverPlusPlus(order=2),
                "dpm_solver_pp_3m": sd.samplers.DPMSolverPlusPlus(order=3), "unipc": "unipc", "heun": "heun"}
    with torch.no_grad():
        records = run_reference_comparison(sde, score_fn, shape, samplers, budgets, seed=seed, eps=eps,
                                           label=f"unet{channels}x32", references=[ref], device=device,
                                           memory="none")
        x0 = sd.predict.PredictionAdapter(sde, score_fn, who="bench_interop").x0(
            ref.ode.to(ref.x_init), torch.full((n,), eps, dtype=ref.x_init.dtype, device=device))
    at_zero = dataclasses.replace(ref, ode=x0.detach())
    for label in DIFFUSERS_SCHEDULERS:
        for budget in budgets:
            found = steps_for_budget(label, budget)
            base = dict(mode="reference", source="diffusers", n=n, seed=seed, dim=channels * 1024,
                        sde=type(sde).__name__, noise_floor=ref.floor, reference=ref.info, device=str(device))
            if found is None:
                records.append(compare.new_record(f"unet{channels}x32", label, budget, status="skipped",
                                                  reason="budget below one step", **base))
                continue
            steps, _ = found
            seconds, (calls, x) = _clock(lambda label=label, steps=steps: diffusers_loop(unet, label, ref.x_init,
                                                                                         steps), device)
            target = at_zero if label in ENDS_AT_ZERO else ref
            note = "ends at sigma = 0: scored against the reference's x0-hat at t0" if label in ENDS_AT_ZERO else None
            values = reference_metrics(x, target, generator=torch.Generator(device=ref.ode.device).manual_seed(1))
            records.append(compare.new_record(f"unet{channels}x32", label, budget, steps=steps, nfe=calls,
                                              wall_time_s=seconds, note=note, **values, **base))
    for r in records:
        r["wrapper"] = how
    return compare.rank(records, ("error", "sw2", "mmd"))


# -- main ------------------------------------------------------------------------------------------


def _table(rows, keys):
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k)
            cells.append(f"{v:.4g}" if isinstance(v, float) else ("—" if v is None else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    p.add_argument("--batch", type=int, default=64, help="batch of the overhead runs (default 64)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps of the overhead runs (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each overhead run (default 3)")
    p.add_argument("--bare-calls", type=int, default=3, help="bare calls timed around each run (default 3)")
    p.add_argument("--n", type=int, default=32, help="samples of the error-vs-NFE runs (default 32)")
    p.add_argument("--nfe", default="5,10,20,50", help="budgets of the error-vs-NFE table (default 5,10,20,50)")
    p.add_argument("--ref-channels", type=int, default=1, help="image channels of the error-vs-NFE model")
    p.add_argument("--ref-blocks", default="32,64,64", help="block_out_channels of the error-vs-NFE model")
    p.add_argument("--out-scale", type=float, default=0.05,
                   help="scale of the error-vs-NFE model's output convolution (default 0.05)")
    p.add_argument("--sde-steps", type=int, default=500, help="steps of the SDE reference (default 500)")
    p.add_argument("--ode-tol", type=float, default=1e-5, help="reference ODE tolerance (default 1e-5)")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--skip-error", action="store_true")
    p.add_argument("--quick", action="store_true", help="batch 8, 5 steps, n 8, budgets 5,10, SDE 50 steps")
    p.add_argument("--json", help="also write the JSON to this file")
    args = p.parse_args(argv)
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print("diffusers is not installed: pip install -e '.[diffusers]'", file=sys.stderr)
        return 1
    if args.quick:
        args.batch, args.steps, args.repeats, args.n, args.nfe, args.sde_steps = 8, 5, 1, 8, "5,10", 50
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    doc = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if not args.skip_overhead:
        rows = []
        for channels in (1, 3):
            rows += overhead(channels, args.batch, args.steps, args.repeats, args.bare_calls, device)
        doc["overhead"] = rows
        print(f"## Per-NFE wall time on the wrapped model vs a bare unet(x, timestep) call ({device}, "
              "target <= 1.05x)\n")
        print(_table(rows, ["image", "batch", "sampler", "steps", "nfe", "bare_call_ms", "per_nfe_ms", "ratio",
                            "images_per_s"]))
        print(f"\nwrapper: {rows[0]['wrapper']}\n")
    if not args.skip_error:
        budgets = tuple(int(b) for b in args.nfe.split(","))
        blocks = tuple(int(b) for b in args.ref_blocks.split(","))
        records = error_vs_nfe(args.ref_channels, blocks, args.n, budgets, args.sde_steps, args.ode_tol, device,
                               out_scale=args.out_scale)
        doc["error_vs_nfe"] = json.loads(compare.to_json(records))["records"]
        print("## Reference mode: error vs NFE, scoresde samplers and diffusers' schedulers on the same model\n")
        print(compare.to_markdown(records))
        print(f"reference: {records[0]['reference']}; wrapper: {records[0]['wrapper']}\n")
    text = json.dumps(doc, indent=2, default=str)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
