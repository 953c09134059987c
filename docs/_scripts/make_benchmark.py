"""Produce the sampler benchmark shown on the "Choosing a sampler" page.

Runs the quick preset of :func:`scoresde.compare.run_comparison` (the target
``imbalanced_2d`` on the VP SDE, six samplers at 10, 20 and 50 score evaluations,
1000 samples each; about 20-30 s on one CPU core) and writes into ``--out``
(default ``docs/_generated``):

- ``results.json``, ``results.md`` and the PNG figures of :func:`scoresde.compare.save`;
- ``benchmark.csv``, a compact table read by a ``csv-table`` directive in the docs;
- ``noise_floor.csv``, the values a perfect sampler gets at the same sample size.

``docs/conf.py`` runs this script only when ``benchmark.csv`` is missing; delete the
folder (or run the script by hand) to refresh the numbers::

    python docs/_scripts/make_benchmark.py --out docs/_generated
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1]


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def write_csv(records, out_dir: Path) -> tuple[Path, Path]:
    """Write the compact benchmark table and the noise-floor table as CSV files."""
    table = out_dir / "benchmark.csv"
    with table.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["sampler", "budget", "steps / tol", "NFE", "SW2", "MMD", "weight err",
                    "cov err", "error", "status"])
        for r in records:
            status = r["status"] if r["status"] == "ok" else "skipped"
            steps = r.get("steps")
            options = r.get("options") or {}
            if steps is None and "rtol" in options:  # adaptive solver: the tolerance it ran at
                steps = f"rtol={options['rtol']:.2g}"
            w.writerow([r["sampler"], r["budget"], _fmt(steps), _fmt(r.get("nfe")),
                        _fmt(r.get("sw2")), _fmt(r.get("mmd")), _fmt(r.get("weight_error")),
                        _fmt(r.get("cov_error")), _fmt(r.get("error")), status])
    floor = out_dir / "noise_floor.csv"
    with floor.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["target", "n", "SW2", "MMD", "weight err", "cov err", "error"])
        seen = set()
        for r in records:
            nf = r.get("noise_floor")
            if not nf or r["target"] in seen:
                continue
            seen.add(r["target"])
            w.writerow([r["target"], r["n"], _fmt(nf["sw2"]), _fmt(nf["mmd"]),
                        _fmt(nf["weight_error"]), _fmt(nf["cov_error"]), _fmt(nf["error"])])
    return table, floor


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOCS / "_generated", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    args = parser.parse_args(argv)

    import torch

    import scoresde.compare as compare

    torch.set_num_threads(1)  # reproducible timings, and no oversubscription in CI
    records = compare.run_comparison(**compare.quick_preset(), seed=args.seed, keep_samples=True)
    args.out.mkdir(parents=True, exist_ok=True)
    paths = compare.save(records, args.out)
    write_csv(records, args.out)
    print(f"wrote {', '.join(p.name for p in [paths['json'], paths['markdown'], *paths['figures']])}"
          f", benchmark.csv, noise_floor.csv to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
