"""k-diffusion's samplers fed the exact scores of scoresde's reference targets.

Run by hand; needs the ``k-diffusion`` PyPI release importable (``pip install --no-deps
k-diffusion torchdiffeq`` is enough: only its ``sampling.py`` is used, loaded on its own when
the package's ``__init__`` pulls in dependencies that are not installed). Nothing in the test
suite imports this file. On its own::

    python benchmarks/kdiffusion_baselines.py --target imbalanced_2d --nfe 5,10,20 --n 2000

How the VP SDE is handed to k-diffusion
---------------------------------------
k-diffusion samples :math:`\\tilde x = x/s` at noise level :math:`\\tilde\\sigma = \\sigma/s`
(Karras et al. 2022) through a denoiser :math:`D(\\tilde x, \\tilde\\sigma) = \\hat x_0`. The
exact score of the target gives it by Tweedie's formula at the time
:math:`t(\\tilde\\sigma)` of the VP SDE (``sde.t_from_log_snr(-log σ̃)``),

.. math:: D(\\tilde x, \\tilde\\sigma) = \\frac{x + \\sigma_t^2 \\nabla\\log p_t(x)}{s_t},
          \\qquad x = s_t \\tilde x .

Every sampler runs on k-diffusion's Karras (:math:`\\rho = 7`) and exponential σ grids from
:math:`\\tilde\\sigma(T)` down to :math:`\\tilde\\sigma(\\epsilon)`, then to 0 (``append_zero``,
k-diffusion's convention: the last step lands on the data), starting from the same prior draw
as the scoresde samplers (:math:`\\tilde x_T = x_T / s_T`). Stochastic samplers draw their noise
from torch's global generator (k-diffusion's ``randn_like``, or its Brownian tree seeded from
it), which is seeded from the record's seed before each run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import torch

import scoresde as sd
from scoresde import compare
from scoresde.compare.sweep import _resolve_budgets, _resolve_targets

#: label stem -> (k-diffusion function, score evaluations per step: 1, or 2 with an Euler last step)
SAMPLERS = {
    "Euler": ("sample_euler", 1),
    "Heun": ("sample_heun", 2),
    "LMS": ("sample_lms", 1),
    "DPM-2": ("sample_dpm_2", 2),
    "DPM++2M": ("sample_dpmpp_2m", 1),
    "DPM++2M-SDE": ("sample_dpmpp_2m_sde", 1),
    "DPM++3M-SDE": ("sample_dpmpp_3m_sde", 1),
    "DPM++2S-a": ("sample_dpmpp_2s_ancestral", 2),
    "Euler-a": ("sample_euler_ancestral", 1),
}
GRIDS = ("karras", "exponential")


def available() -> bool:
    """Whether k-diffusion is installed."""
    return importlib.util.find_spec("k_diffusion") is not None


def load_sampling():
    """k-diffusion's ``sampling`` module; loaded on its own if the package import fails."""
    try:
        return importlib.import_module("k_diffusion.sampling")
    except ImportError:
        pass
    spec = importlib.util.find_spec("k_diffusion")
    path = Path(list(spec.submodule_search_locations)[0]) / "sampling.py"
    pkg = types.ModuleType("_kdiffusion")
    pkg.__path__ = []
    utils = types.ModuleType("_kdiffusion.utils")

    def append_dims(x, target_dims):
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims
    pkg.utils = utils
    sys.modules.setdefault("_kdiffusion", pkg)
    sys.modules.setdefault("_kdiffusion.utils", utils)
    mspec = importlib.util.spec_from_file_location("_kdiffusion.sampling", path)
    module = importlib.util.module_from_spec(mspec)
    module.__package__ = "_kdiffusion"
    mspec.loader.exec_module(module)
    return module


class Denoiser:
    """:math:`D(\\tilde x, \\tilde\\sigma)` from an exact score on a linear SDE (counts its calls)."""

    def __init__(self, sde, score_fn):
        self.sde, self.score_fn, self.calls = sde, score_fn, 0

    def __call__(self, x_tilde, sigma):
        self.calls += 1
        sig = sigma.to(torch.float64).reshape(-1)
        t = self.sde.t_from_log_snr(-torch.log(sig)).clamp(0.0, self.sde.T)
        s, std = self.sde.scale_std(t)
        s = s.to(x_tilde.dtype)[:, None]
        std = std.to(x_tilde.dtype)[:, None]
        x = s * x_tilde.flatten(1)
        score = self.score_fn(x.reshape(x_tilde.shape), t.to(x_tilde.dtype)).flatten(1)
        return ((x + std**2 * score) / s).reshape(x_tilde.shape)


def sigmas_for(sampling, grid: str, n: int, sigma_min: float, sigma_max: float):
    if grid == "karras":
        return sampling.get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0)
    return sampling.get_sigmas_exponential(n, sigma_min, sigma_max)


def nfe_for(per_step: int, n: int) -> int:
    """Score evaluations over ``n`` σ's plus the final 0 (two-stage samplers: Euler last step)."""
    return n if per_step == 1 else 2 * n - 1


def run_kdiffusion(targets=None, labels=None, nfe=compare.DEFAULT_NFE, n: int = 2000, seed: int = 0,
                   eps: float = 1e-3, progress: bool = False, memory: str = "none",
                   n_projections: int = 256, mmd_n: int | None = None) -> list[dict]:
    """Records of k-diffusion's samplers in the format of ``compare.run_comparison``."""
    sampling = load_sampling()
    target_map = _resolve_targets(targets)
    all_labels = [f"kdiff:{k}/{g}" for k in SAMPLERS for g in GRIDS]
    labels = all_labels if labels is None else list(labels)
    budgets = _resolve_budgets(nfe)
    sde = sd.VPSDE()
    s_T, sig_T = (float(v) for v in sde.scale_std(torch.tensor([sde.T], dtype=torch.float64)))
    s_e, sig_e = (float(v) for v in sde.scale_std(torch.tensor([eps], dtype=torch.float64)))
    sigma_max, sigma_min = sig_T / s_T, sig_e / s_e
    records = []
    for tname, target in target_map.items():
        floor = sd.metrics.noise_floor(
            target, n, n_projections=n_projections, mmd_n=mmd_n,
            generator=torch.Generator().manual_seed(compare.derive_seed(seed, tname, "floor")))
        floor = {k: floor[k] for k in compare.METRICS}
        score_fn = target.score_fn(sde)
        for label in labels:
            stem, grid = label.split(":", 1)[1].split("/")
            fn_name, per_step = SAMPLERS[stem]
            base = dict(dim=target.dim, sde="vp", solver=f"k_diffusion.sampling.{fn_name}({grid})",
                        source="k-diffusion", n=n, seed=seed, device="cpu", noise_floor=floor)
            for budget in budgets:
                steps = budget if per_step == 1 else (budget + 1) // 2
                if steps < 1 or (stem == "LMS" and steps < 1):
                    records.append(compare.new_record(tname, label, budget, **base, status="skipped",
                                                      reason="budget below one step"))
                    continue
                den = Denoiser(sde, score_fn)
                x_T = sde.prior_sample((n, target.dim),
                                       generator=torch.Generator().manual_seed(compare.derive_seed(seed, tname)))
                sigmas = sigmas_for(sampling, grid, steps, sigma_min, sigma_max)

                fn = getattr(sampling, fn_name)
                noise_seed = compare.derive_seed(seed, tname, "kdiff-noise", label, budget)

                def call(fn=fn, den=den, x_T=x_T, sigmas=sigmas, noise_seed=noise_seed):
                    torch.manual_seed(noise_seed)
                    return fn(den, x_T / s_T, sigmas, disable=True)

                try:
                    x, info = compare.timed_call(call, "cpu", memory)
                    if not bool(torch.isfinite(x).all()):
                        raise FloatingPointError("non-finite samples")
                    egen = torch.Generator().manual_seed(compare.derive_seed(seed, tname, "eval", label, budget))
                    reference = target.sample(n, generator=egen, dtype=x.dtype)
                    res = sd.metrics.evaluate(x, target, reference=reference, n_projections=n_projections,
                                              generator=egen, mmd_n=mmd_n)
                except Exception as exc:  # noqa: BLE001 - a failing sampler is a result
                    records.append(compare.new_record(tname, label, budget, **base, status="error",
                                                      steps=steps, reason=f"{type(exc).__name__}: {exc}"))
                    continue
                rec = compare.new_record(tname, label, budget, **base, steps=steps, nfe=den.calls, **info,
                                         **{k: res[k] for k in compare.METRICS})
                if den.calls != nfe_for(per_step, steps):
                    rec["note"] = f"expected {nfe_for(per_step, steps)} calls, made {den.calls}"
                records.append(rec)
                if progress:
                    print(f"{tname} {label} budget={budget} nfe={den.calls} error={rec['error']:.3g}",
                          file=sys.stderr)
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", dest="targets", nargs="+", default=None)
    parser.add_argument("--nfe", default="5,10,20,50")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eps", type=float, default=1e-3, help="sigma_min = sigma~(eps) of the VP SDE")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not available():
        print("k-diffusion is not installed: pip install --no-deps k-diffusion torchdiffeq", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    records = run_kdiffusion(args.targets, None, [int(v) for v in args.nfe.split(",")], args.n, args.seed,
                             eps=args.eps, progress=True)
    print(compare.to_markdown(records))
    print(json.dumps(json.loads(compare.to_json(records))["records"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
