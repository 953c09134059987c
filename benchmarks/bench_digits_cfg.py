"""Classifier-free guidance on the digits: class agreement and diversity against the guidance weight.

Run by hand (not a test); prints a table and JSON::

    python benchmarks/bench_digits_cfg.py --steps 3000 --out runs/digits_cfg      # train, then evaluate
    python benchmarks/bench_digits_cfg.py --checkpoint runs/digits_cfg/checkpoint.pt --weights 0,1,2,4

Training is exactly ``scoresde train --data digits --conditional`` (the recipe
:func:`scoresde.training.train_model` with ``conditional=True``: a class-conditional
:class:`~scoresde.UNet` on the digits training split, label dropout 0.1), except for the number
of steps and the batch size. Evaluation, for each guidance weight ``w``: ``--n`` samples of every
class ``k`` with the guided score ``(1 + w) s(x, t, k) - w s(x, t)`` (``model.guided``), clipped
to the data range ``[-1, 1]``, then

- *agreement*: the fraction that a logistic regression fitted on the training split (its accuracy
  on the held-out test split is printed) assigns to the requested class, averaged over the
  classes (and the worst class);
- *diversity*: the mean pairwise Euclidean distance between the samples of one class, averaged
  over the classes, as a ratio to the same quantity for the held-out test digits of that class
  (1 = as diverse as real digits);
- *SW2*: the sliced Wasserstein-2 distance between the samples of class ``k`` and the held-out
  test digits of class ``k`` (64-d), averaged over the classes, beside its noise floor (the same
  distance for ``--n`` training digits of class ``k`` in place of the samples).

Ho & Salimans (2021), "Classifier-free diffusion guidance", https://arxiv.org/abs/2207.12598.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import scoresde as sd
from scoresde.training import load_model, train_config, train_model


def _mean_pairwise_distance(x: torch.Tensor) -> float:
    d = torch.cdist(x, x)
    n = x.shape[0]
    return float(d.sum() / (n * (n - 1)))


def _per_class(fn, samples, labels, ref_x, ref_y) -> list[float]:
    return [fn(samples[labels == k], ref_x[ref_y == k], k) for k in range(10)]


def evaluate(model, weights, n: int, sampler: str, steps: int, seed: int) -> tuple[dict, list[dict]]:
    from sklearn.linear_model import LogisticRegression

    train_x, train_y = sd.data.digits("train")
    test_x, test_y = sd.data.digits("test")
    flat = lambda v: v.reshape(v.shape[0], -1).double()  # noqa: E731
    clf = LogisticRegression(max_iter=2000).fit(flat(train_x).numpy(), train_y.numpy())
    info = {"classifier_test_accuracy": float(clf.score(flat(test_x).numpy(), test_y.numpy())),
            "test_digits_per_class": torch.bincount(test_y, minlength=10).tolist()}
    real_div = [_mean_pairwise_distance(flat(test_x[test_y == k])) for k in range(10)]
    g = torch.Generator().manual_seed(seed + 7)

    def sw2(a, b, k):
        return float(sd.metrics.sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(seed + k)))

    floor = []
    for k in range(10):
        pool = flat(train_x[train_y == k])
        floor.append(sw2(pool[torch.randperm(pool.shape[0], generator=g)[:n]], flat(test_x[test_y == k]), k))
    info["sw2_floor"] = sum(floor) / 10
    labels = torch.arange(10).repeat_interleave(n)
    rows = []
    for w in weights:
        score_fn = model.guided(labels, w) if w else model.conditional(labels)
        t0 = time.perf_counter()
        out = sd.sample(model.sde, score_fn, (labels.numel(), 1, 8, 8), sampler, steps=steps,
                        generator=torch.Generator().manual_seed(seed))
        seconds = time.perf_counter() - t0
        x = flat(out.samples.clamp(-1.0, 1.0))
        pred = torch.as_tensor(clf.predict(x.numpy()))
        agree = [float((pred[labels == k] == k).double().mean()) for k in range(10)]
        div = [_mean_pairwise_distance(x[labels == k]) / real_div[k] for k in range(10)]
        sws = _per_class(sw2, x, labels, flat(test_x), test_y)
        rows.append({"weight": w, "agreement": sum(agree) / 10, "worst_class_agreement": min(agree),
                     "diversity_ratio": sum(div) / 10, "sw2": sum(sws) / 10, "sw2_floor": info["sw2_floor"],
                     "nfe": out.nfe, "network_evaluations": out.nfe * (2 if w else 1), "seconds": seconds,
                     "per_class_agreement": agree})
    return info, rows


def to_markdown(rows: list[dict]) -> str:
    lines = ["| w | agreement (mean) | worst class | diversity / real | SW2 to held-out | SW2 floor | "
             "NFE (network evals) | time (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['weight']:g} | {r['agreement']:.3f} | {r['worst_class_agreement']:.3f} | "
                     f"{r['diversity_ratio']:.3f} | {r['sw2']:.4f} | {r['sw2_floor']:.4f} | "
                     f"{r['nfe']} ({r['network_evaluations']}) | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="evaluate this checkpoint (skip training)")
    p.add_argument("--out", type=Path, default=Path("runs/digits_cfg"), help="run folder for training")
    p.add_argument("--steps", type=int, default=3000, help="training steps (default 3000)")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size (default 128)")
    p.add_argument("--weights", default="0,1,2,4", help="guidance weights (default 0,1,2,4)")
    p.add_argument("--n", type=int, default=100, help="samples per class (default 100)")
    p.add_argument("--sampler", default="heun", help="sampler (default heun)")
    p.add_argument("--sample-steps", type=int, default=30, help="sampler steps (default 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train_s = None
    if args.checkpoint is None:
        t0 = time.perf_counter()
        trainer = train_model("digits", args.out, config=train_config(args.steps, batch_size=args.batch_size,
                                                                      checkpoint_every=500),
                              conditional=True, progress=False, overwrite=True)
        train_s = time.perf_counter() - t0
        args.checkpoint = Path(trainer.checkpoint_path)
    model, spec = load_model(args.checkpoint)
    steps = sd.load_checkpoint(args.checkpoint)["step"]
    weights = [float(v) for v in args.weights.split(",")]
    info, rows = evaluate(model, weights, args.n, args.sampler, args.sample_steps, args.seed)
    print(f"digits, class-conditional UNet, {steps} training steps"
          + (f" ({train_s:.0f} s)" if train_s is not None else "")
          + f"; {args.n} samples per class with {args.sampler}, {args.sample_steps} steps; "
          f"classifier test accuracy {info['classifier_test_accuracy']:.3f}")
    print(to_markdown(rows))
    text = json.dumps({"checkpoint": str(args.checkpoint), "train_steps": steps, "train_seconds": train_s,
                       "n_per_class": args.n, "sampler": args.sampler, "sample_steps": args.sample_steps,
                       **info, "rows": rows}, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
