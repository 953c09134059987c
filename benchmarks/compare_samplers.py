"""Sample quality against NFE for every scoresde sampler (and diffusers' schedulers, if installed).

Run by hand (not a test)::

    python benchmarks/compare_samplers.py --quick                       # seconds
    python benchmarks/compare_samplers.py --out bench_out/              # full sweep, all targets
    python benchmarks/compare_samplers.py --target imbalanced_2d --nfe 10,20,50,100 \\
        --samplers heun ddim ode --diffusers yes --json results.json

Runs :func:`scoresde.compare.run_comparison` on the reference targets with exact scores, then,
when diffusers can be imported (the optional ``bench`` extra) and the SDE is VP, the diffusers
schedulers of ``benchmarks/diffusers_baselines.py`` fed the same exact scores, with the same
seeds. Prints the merged markdown table, then the records as strict JSON (or writes them to
``--json``); ``--out DIR`` also writes results.json, results.md and the figures there.
Timings use one torch thread unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from scoresde import compare

sys.path.insert(0, str(Path(__file__).resolve().parent))
import diffusers_baselines  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", dest="targets", nargs="+", default=None)
    p.add_argument("--samplers", nargs="+", default=None)
    p.add_argument("--nfe", default=None, help="comma-separated budgets")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--sde", default=None, choices=compare.SDE_NAMES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3,
                   help="repetitions of every scoresde run (mean ± standard error; default 3)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--diffusers", choices=("auto", "yes", "no"), default="auto",
                   help="also run diffusers' schedulers (auto: when importable and sde is vp)")
    p.add_argument("--schedulers", nargs="+", default=None,
                   choices=list(diffusers_baselines.SCHEDULERS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory", choices=compare.MEMORY_MODES, default="rss")
    p.add_argument("--out", type=Path, default=None, help="also save results and figures here")
    p.add_argument("--json", type=Path, default=None, help="write the JSON here, not to stdout")
    p.add_argument("--progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = compare.quick_preset() if args.quick else {}
    for key, value in (("targets", args.targets), ("samplers", args.samplers),
                       ("n", args.n), ("sde", args.sde)):
        if value is not None:
            config[key] = value
    if args.nfe is not None:
        config["nfe"] = [int(v) for v in args.nfe.split(",") if v.strip()]
    keep = args.out is not None

    start = time.perf_counter()
    records = compare.run_comparison(**config, seed=args.seed, seeds=args.seeds,
                                     progress=args.progress,
                                     keep_samples=keep, memory=args.memory)
    t_scoresde = time.perf_counter() - start

    use_diffusers = args.diffusers == "yes" or (
        args.diffusers == "auto" and diffusers_baselines.available())
    if use_diffusers and config.get("sde", "vp") != "vp":
        print("diffusers schedulers need the VP SDE; skipped", file=sys.stderr)
        use_diffusers = False
    if use_diffusers and not diffusers_baselines.available():
        print("diffusers is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return 1
    t_diffusers = 0.0
    if use_diffusers:
        start = time.perf_counter()
        records += diffusers_baselines.run_diffusers(
            config.get("targets"), args.schedulers, config.get("nfe", compare.DEFAULT_NFE),
            config.get("n", 2000), args.seed, progress=args.progress, memory=args.memory,
            keep_samples=keep)
        t_diffusers = time.perf_counter() - start

    print(compare.to_markdown(records))
    print(f"scoresde: {t_scoresde:.1f} s; diffusers: "
          f"{f'{t_diffusers:.1f} s' if use_diffusers else 'not run'}", file=sys.stderr)
    text = compare.to_json(records)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    if args.out is not None:
        paths = compare.save(records, args.out)
        print(f"wrote {paths['json']}, {paths['markdown']} and {len(paths['figures'])} figures",
              file=sys.stderr)
    json.loads(text)  # strict JSON, by construction
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
