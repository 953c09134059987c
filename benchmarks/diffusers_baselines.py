"""diffusers' schedulers fed the exact scores of scoresde's reference targets.

Run by hand; needs the optional ``bench`` extra (``pip install -e ".[bench]"``, i.e. diffusers).
Nothing in the test suite imports this file. Typically used through
``benchmarks/compare_samplers.py``; on its own::

    python benchmarks/diffusers_baselines.py --target imbalanced_2d --nfe 10,20,50 --n 1000

How the continuous VP SDE is handed to a discrete scheduler
-----------------------------------------------------------
The scheduler gets DDPM's linear schedule as the VP SDE's own discretisation,
``sd.VPSDE().discretize(1000)`` (``trained_betas``, 1e-4 … 0.02). Discrete timestep ``k``
(0…999) is continuous time :math:`t_k = (k + 1)/1000`, and the ε-prediction of the "model" is
Tweedie's relation applied to the exact score (THEORY §5),

.. math:: \\hat\\epsilon(x, k) = -\\sigma_k\\, \\nabla_x \\log p_{t_k}(x), \\qquad
          \\sigma_k = \\sqrt{1 - \\bar\\alpha_k}.

Schedulers that step at fractional timesteps (Euler and Heun with their default ``linspace``
spacing interpolate sigma between training steps) get :math:`t = (k + 1)/1000` and
:math:`\\sigma_k` linearly interpolated. EulerDiscrete and HeunDiscrete integrate in the
"sigma" (variance-exploding) parameterisation :math:`x_\\sigma = x / \\sqrt{\\bar\\alpha}`,
:math:`\\sigma = \\sqrt{(1 - \\bar\\alpha)/\\bar\\alpha}`: they start from
``randn * init_noise_sigma`` and pass the model ``scale_model_input(x, t)``
:math:`= x_\\sigma / \\sqrt{\\sigma^2 + 1}`, which is the VP-scaled state the ε above expects,
so one adapter serves every scheduler as long as the loop calls ``scale_model_input``.
``clip_sample`` is switched off (DDPM/DDIM clip :math:`\\hat x_0` to [-1, 1] by default, which
would truncate the targets); everything else is each scheduler's default.

Records have the format of :func:`scoresde.compare.run_comparison` (``source="diffusers"``)
and use the same seeds: the same noise floor, the same reference samples for the same
(label, budget) keys and, for the schedulers whose ``init_noise_sigma`` is 1, the same prior
draw :math:`x_T` as the scoresde samplers — so they merge into one table and one figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import math
import sys
import types

import torch

import scoresde as sd
from scoresde import compare
from scoresde.compare.sweep import _resolve_budgets, _resolve_targets

#: label -> (diffusers class name, constructor options)
SCHEDULERS = types.MappingProxyType({
    "diffusers:DDPM": ("DDPMScheduler", {"clip_sample": False}),
    "diffusers:DDIM": ("DDIMScheduler", {"clip_sample": False}),
    "diffusers:DPM++2M": ("DPMSolverMultistepScheduler", {"solver_order": 2}),
    "diffusers:DPM++3M": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    "diffusers:UniPC": ("UniPCMultistepScheduler", {}),
    "diffusers:DEIS": ("DEISMultistepScheduler", {}),
    "diffusers:Euler": ("EulerDiscreteScheduler", {}),
    "diffusers:Heun": ("HeunDiscreteScheduler", {}),
    "diffusers:DPM++2M-SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++",
                                                               "solver_order": 2}),
    "diffusers:SA-Solver": ("SASolverScheduler", {}),
    "diffusers:Euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "diffusers:IPNDM": ("IPNDMScheduler", {}),
    "diffusers:EDMEuler": ("EDMEulerScheduler", {}),
})


N_TRAIN = 1000


def available() -> bool:
    """Whether diffusers can be imported."""
    return importlib.util.find_spec("diffusers") is not None


class EpsilonFromScore:
    """The ε-prediction "model" :math:`\\hat\\epsilon(x, k) = -\\sigma_k \\nabla\\log p_{t_k}(x)`.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(x, t)`` with ``t`` a ``(batch,)`` tensor, e.g. ``target.score_fn(sde)``.
    schedule : scoresde.DiscreteSchedule
        ``sde.discretize(N)``; ``t_k = (k + 1) T / N`` with ``T = schedule.times[-1]``.
    """

    def __init__(self, score_fn, schedule: sd.DiscreteSchedule):
        self.score_fn = score_fn
        self.N = schedule.N
        self.T = float(schedule.times[-1])
        self.sigma = torch.sqrt(1.0 - schedule.alphas_cumprod).tolist()
        self.calls = 0

    def __call__(self, x: torch.Tensor, timestep) -> torch.Tensor:
        k = float(timestep)
        if not 0.0 <= k <= self.N - 1:
            raise ValueError(f"timestep must lie in [0, {self.N - 1}], got {k}")
        lo = min(int(math.floor(k)), self.N - 2)
        frac = k - lo
        sigma = (1.0 - frac) * self.sigma[lo] + frac * self.sigma[lo + 1]
        t = torch.full((x.shape[0],), (k + 1.0) * self.T / self.N, dtype=x.dtype, device=x.device)
        self.calls += 1
        return -sigma * self.score_fn(x, t)


def make_scheduler(label: str, schedule: sd.DiscreteSchedule):
    """A fresh diffusers scheduler (they are stateful) on the given discrete schedule."""
    import diffusers

    if label not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {label!r}; valid: {', '.join(SCHEDULERS)}")
    cls_name, options = SCHEDULERS[label]
    cls = getattr(diffusers, cls_name)
    if cls_name == "IPNDMScheduler":  # its own sin/cos VP schedule in continuous time
        return cls(num_train_timesteps=schedule.N, **options)
    if cls_name == "EDMEulerScheduler":  # sigma range of the VP SDE's discretisation, in sigma~
        abar = schedule.alphas_cumprod.double()
        sig = torch.sqrt((1 - abar) / abar)
        return cls(sigma_min=float(sig[0]), sigma_max=float(sig[-1]),
                   num_train_timesteps=schedule.N, **options)
    return cls(num_train_timesteps=schedule.N, trained_betas=schedule.betas.numpy(), **options)


class EpsilonFromScoreContinuous:
    """ε-"model" for IPNDMScheduler: its timestep τ ∈ (0, 1] has s = cos(πτ/2), σ = sin(πτ/2).

    The VP SDE's time with the same log-SNR, :math:`t = \\lambda^{-1}(\\log\\cot(\\pi\\tau/2))`
    (clamped to ``[0, T]``), and :math:`\\hat\\epsilon = -\\sigma_t \\nabla\\log p_t(x)`; both
    schedules have :math:`s^2 + \\sigma^2 = 1`, so the state needs no rescaling.
    """

    def __init__(self, score_fn, sde):
        self.score_fn, self.sde, self.calls = score_fn, sde, 0

    def __call__(self, x, timestep):
        self.calls += 1
        tau = float(timestep)
        lam = math.log(max(math.cos(math.pi * tau / 2), 1e-300) / math.sin(math.pi * tau / 2))
        t = float(self.sde.t_from_log_snr(torch.tensor([lam], dtype=torch.float64)).clamp(0.0, self.sde.T))
        sigma = float(self.sde.scale_std(torch.tensor([t], dtype=torch.float64))[1])
        return -sigma * self.score_fn(x, torch.full((x.shape[0],), t, dtype=x.dtype))


class EDMOutputFromScore:
    """The network output F that EDMEulerScheduler ("epsilon", σ_data = 0.5) preconditions.

    It passes :math:`c_{in}\\tilde x` and :math:`c_{noise} = \\tfrac14\\log\\tilde\\sigma`; with
    the exact denoiser :math:`D = (x + \\sigma^2 \\nabla\\log p_t(x))/s` at the VP time of
    :math:`\\tilde\\sigma`, :math:`F = (D - c_{skip}\\tilde x)/c_{out}`.
    """

    def __init__(self, score_fn, sde, sigma_data=0.5):
        self.score_fn, self.sde, self.sd, self.calls = score_fn, sde, sigma_data, 0

    def __call__(self, x_in, timestep):
        self.calls += 1
        sig_t = math.exp(4.0 * float(timestep))
        x_tilde = x_in * math.sqrt(sig_t**2 + self.sd**2)
        t = float(self.sde.t_from_log_snr(torch.tensor([-math.log(sig_t)], dtype=torch.float64)).clamp(0.0, self.sde.T))
        s, sigma = (float(v) for v in self.sde.scale_std(torch.tensor([t], dtype=torch.float64)))
        x = s * x_tilde
        denoised = (x + sigma**2 * self.score_fn(x, torch.full((x.shape[0],), t, dtype=x.dtype))) / s
        c_skip = self.sd**2 / (sig_t**2 + self.sd**2)
        c_out = sig_t * self.sd / math.sqrt(sig_t**2 + self.sd**2)
        return (denoised - c_skip * x_tilde) / c_out


def make_model(label: str, score_fn, schedule, sde):
    """The "model" a scheduler expects, built from the exact score."""
    cls_name = SCHEDULERS[label][0]
    if cls_name == "IPNDMScheduler":
        return EpsilonFromScoreContinuous(score_fn, sde)
    if cls_name == "EDMEulerScheduler":
        return EDMOutputFromScore(score_fn, sde)
    return EpsilonFromScore(score_fn, schedule)


def nfe_for_steps(label: str, schedule, steps: int) -> int:
    """Model calls of one sampling loop with ``steps`` inference steps (= its timesteps)."""
    sched = make_scheduler(label, schedule)
    sched.set_timesteps(steps)
    return len(sched.timesteps)


def steps_for_budget(label: str, schedule, budget: int) -> tuple[int, int] | None:
    """Largest ``steps`` whose loop makes at most ``budget`` model calls, with that count."""
    best = None
    lo, hi = 1, min(budget, schedule.N)
    while lo <= hi:  # nfe(steps) is non-decreasing
        mid = (lo + hi) // 2
        try:
            nfe = nfe_for_steps(label, schedule, mid)
        except (ValueError, RuntimeError):
            nfe = math.inf
        if nfe <= budget:
            best, lo = (mid, nfe), mid + 1
        else:
            hi = mid - 1
    return best


def sample_with_scheduler(scheduler, eps_model, shape, steps: int, generator=None,
                          dtype=torch.float32) -> torch.Tensor:
    """diffusers' sampling loop: ``scale_model_input``, model, ``step`` over the timesteps."""
    scheduler.set_timesteps(steps)
    x = torch.randn(shape, generator=generator, dtype=dtype) * scheduler.init_noise_sigma
    takes_gen = "generator" in inspect.signature(scheduler.step).parameters
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        eps = eps_model(model_input, t)
        kwargs = {"generator": generator} if takes_gen else {}
        x = scheduler.step(eps, t, x, **kwargs).prev_sample
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(f"non-finite state after timestep {float(t):g}")
    return x


def run_diffusers(targets=None, schedulers=None, nfe=compare.DEFAULT_NFE, n: int = 2000,
                  seed: int = 0, progress: bool = False, memory: str = "rss",
                  keep_samples: bool = False, n_projections: int = 256, mmd_n: int | None = None) -> list[dict]:
    """Records of diffusers' schedulers in the format of ``compare.run_comparison``."""
    target_map = _resolve_targets(targets)
    labels = list(SCHEDULERS) if schedulers is None else list(schedulers)
    for label in labels:
        if label not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {label!r}; valid: {', '.join(SCHEDULERS)}")
    budgets = _resolve_budgets(nfe)
    sde = sd.VPSDE()
    schedule = sde.discretize(N_TRAIN)
    records = []
    for tname, target in target_map.items():
        floor = sd.metrics.noise_floor(
            target, n, n_projections=n_projections, mmd_n=mmd_n,
            generator=torch.Generator().manual_seed(compare.derive_seed(seed, tname, "floor")))
        floor = {k: floor[k] for k in compare.METRICS}
        score_fn = target.score_fn(sde)
        for label in labels:
            cls_name, options = SCHEDULERS[label]
            base = dict(dim=target.dim, sde="vp", solver=f"{cls_name}({options})",
                        source="diffusers", n=n, seed=seed, device="cpu", noise_floor=floor)
            last_ok = None
            for budget in budgets:
                fit = steps_for_budget(label, schedule, budget)
                if fit is None:
                    records.append(compare.new_record(
                        tname, label, budget, **base, status="skipped",
                        reason=f"budget {budget} is below the cost of one inference step"))
                    continue
                steps, planned = fit
                model = make_model(label, score_fn, schedule, sde)
                gen = torch.Generator().manual_seed(compare.derive_seed(seed, tname))

                def call(label=label, model=model, steps=steps, gen=gen, dim=target.dim):
                    return sample_with_scheduler(make_scheduler(label, schedule), model,
                                                 (n, dim), steps, gen)

                try:
                    x, info = compare.timed_call(call, "cpu", memory)
                    egen = torch.Generator().manual_seed(
                        compare.derive_seed(seed, tname, "eval", label, budget))
                    reference = target.sample(n, generator=egen, dtype=x.dtype)
                    res = sd.metrics.evaluate(x, target, reference=reference,
                                              n_projections=n_projections, generator=egen, mmd_n=mmd_n)
                except Exception as exc:  # noqa: BLE001 - a failing scheduler is a result
                    records.append(compare.new_record(
                        tname, label, budget, **base, status="error", steps=steps,
                        reason=f"{type(exc).__name__}: {exc}"))
                    continue
                rec = compare.new_record(tname, label, budget, **base, steps=steps,
                                         nfe=model.calls, **info,
                                         **{k: res[k] for k in compare.METRICS})
                if model.calls != planned:
                    rec["note"] = f"planned {planned} model calls, made {model.calls}"
                records.append(rec)
                last_ok = (rec, x)
                if progress:
                    print(f"{tname} {label} budget={budget} nfe={model.calls} "
                          f"error={rec['error']:.3g}", file=sys.stderr)
            if keep_samples and last_ok is not None:
                last_ok[0]["samples"] = last_ok[1].detach().cpu()
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", dest="targets", nargs="+", default=None)
    parser.add_argument("--schedulers", nargs="+", default=None, choices=list(SCHEDULERS))
    parser.add_argument("--nfe", default="10,20,50,100,200")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not available():
        print("diffusers is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    records = run_diffusers(args.targets, args.schedulers,
                            [int(v) for v in args.nfe.split(",")], args.n, args.seed,
                            progress=True)
    print(compare.to_markdown(records))
    print(json.dumps(json.loads(compare.to_json(records))["records"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
