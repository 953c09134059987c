r"""Parity of scoresde's samplers with diffusers' own loops on the same pretrained-style model.

Run by hand (needs diffusers: ``pip install -e ".[diffusers]"``)::

    python benchmarks/bench_diffusers_parity.py
    python benchmarks/bench_diffusers_parity.py --size 32 --channels 3 --steps 10 25 50 --json parity.json

A ``UNet2DModel`` with random weights (seeded) is wrapped by :func:`scoresde.interop.from_diffusers`;
for each prediction type and step count, diffusers' scheduler loop and scoresde's sampler start
from the same ``x_T`` on the same timesteps (the scheduler's ``timesteps`` mapped by
``sde.timestep_to_time``, ending at ``t = 0`` where the scheduler ends at
:math:`\bar\alpha = 1` / :math:`\sigma = 0`):

- ``ddim`` against ``DDIMScheduler`` (η = 0, ``clip_sample=False``, "leading" spacing);
- ``dpm_solver_pp`` (order 2) against ``DPMSolverMultistepScheduler`` (``dpmsolver++``, 2M,
  midpoint, ``final_sigmas_type="zero"``);
- ``ddpm`` (``variance="beta_tilde"``) against ``DDPMScheduler`` (``fixed_small``), both
  drawing their noise from generators with the same seed, so the paths are comparable.

Prints, per sampler, prediction type and steps, the max abs difference of the final samples,
the same relative to max|x| (float32 round-off is ~1e-7 per operation), the NFE (network calls
counted by a forward hook, scoresde's ``out.nfe`` beside them), and all records as JSON.
"""

from __future__ import annotations

import argparse
import json

import torch

import scoresde as sd


def _loop(unet, sched, x, **kw):
    x = x.clone()
    with torch.no_grad():
        for tau in sched.timesteps:
            x = sched.step(unet(x, tau).sample, tau, x, **kw).prev_sample
    return x


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument("--ddpm-timesteps", type=int, default=100)
    p.add_argument("--json", type=str, default=None)
    args = p.parse_args(argv)
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=args.size, in_channels=args.channels, out_channels=args.channels, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()
    calls = [0]
    unet.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    shape = (args.batch, args.channels, args.size, args.size)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    records = []

    def record(sampler, prediction, steps, out, ref, nfe):
        diff = float((out.samples - ref).abs().max())
        records.append({"sampler": sampler, "prediction": prediction, "steps": steps, "max_abs_diff": diff,
                        "max_abs_x": float(ref.abs().max()), "rel_diff": diff / max(1.0, float(ref.abs().max())),
                        "nfe": out.nfe, "network_calls": nfe})

    for prediction in ("epsilon", "v_prediction", "sample"):
        for steps in args.steps:
            for sampler, sched in (
                ("ddim", diffusers.DDIMScheduler(clip_sample=False, prediction_type=prediction)),
                ("dpm_solver_pp", diffusers.DPMSolverMultistepScheduler(
                    algorithm_type="dpmsolver++", solver_order=2, prediction_type=prediction)),
            ):
                sched.set_timesteps(steps)
                ref = _loop(unet, sched, x_T)
                sde, score_fn = sd.interop.from_diffusers(unet, sched)
                times = torch.cat([sde.timestep_to_time(sched.timesteps), torch.zeros(1, dtype=torch.float64)])
                calls[0] = 0
                out = sd.sample(sde, score_fn, shape, sampler=sampler, grid=times, x_init=x_T)
                record(sampler, prediction, steps, out, ref, calls[0])
        N = args.ddpm_timesteps
        sched = diffusers.DDPMScheduler(num_train_timesteps=N, beta_end=0.02 * 1000 / N, clip_sample=False,
                                        prediction_type=prediction)
        sched.set_timesteps(N)
        ref = _loop(unet, sched, x_T, generator=torch.Generator().manual_seed(5))
        sde, score_fn = sd.interop.from_diffusers(unet, sched)
        calls[0] = 0
        out = sd.sample(sde, score_fn, shape, sampler="ddpm", steps=N, variance="beta_tilde", x_init=x_T,
                        generator=torch.Generator().manual_seed(5))
        record("ddpm", prediction, N, out, ref, calls[0])

    print(f"{'sampler':<14} {'prediction':<13} {'steps':>5} {'max|diff|':>10} {'max|x|':>9} {'rel':>9} "
          f"{'nfe':>4} {'calls':>5}")
    for r in records:
        print(f"{r['sampler']:<14} {r['prediction']:<13} {r['steps']:>5} {r['max_abs_diff']:>10.2e} "
              f"{r['max_abs_x']:>9.3g} {r['rel_diff']:>9.2e} {r['nfe']:>4} {r['network_calls']:>5}")
    print(json.dumps(records))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(records, fh, indent=1)
    return records


if __name__ == "__main__":
    main()
