"""Training benchmarks: speed, quality of the ``scoresde train`` defaults, digits.

Run by hand (not a test); prints a table and JSON::

    python benchmarks/bench_training.py speed                 # steps/s, 2-D ScoreMLP and digits UNet
    python benchmarks/bench_training.py quality               # CLI defaults on 8gaussians, imbalanced_2d
    python benchmarks/bench_training.py digits --minutes 10   # UNet on digits, judged by a classifier
    python benchmarks/bench_training.py all --json out.json

quality: trains exactly what ``scoresde train --data NAME`` trains (same defaults), then samples
4000 points with ``heun`` (100 steps) and ``euler_maruyama`` (500 steps) and compares them with
the exact target — ``8gaussians`` is ``ring8(radius=2√2, std=0.5/√2)`` exactly — by SW2 (with the
noise floor of two exact samples), the largest mode-weight error and the gap in mean
log-density under the target. Issue bar: weights within 0.04, log-density within 0.15 nats,
training under 2 minutes on 2 cores.

digits: trains ``ScoreModel(UNet(1), VPSDE())`` on the digits training split for a wall-time
budget, samples 500 images, and classifies them with a logistic regression fitted on the
training split (its accuracy on the held-out test split is reported). Reported: fraction of
samples classified with probability > 0.9, and the class balance (largest deviation of a class
frequency from 1/10).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

import scoresde as sd
from scoresde.training import (
    TRAIN_DEFAULTS,
    TrainConfig,
    Trainer,
    from_model_space,
    load_model,
    model_spec,
    train_config,
    train_model,
)


def bench_speed(threads: int) -> list[dict]:
    rows = []
    for name, data, steps, batch in [("2-D ScoreMLP (default)", "8gaussians", 600, TRAIN_DEFAULTS["batch_size"]),
                                     ("digits UNet", "digits", 40, 128)]:
        probe = sd.data.get_dataset(data, n=None if data == "digits" else 10_000,
                                    generator=torch.Generator().manual_seed(0))
        spec = model_spec(probe)
        model = sd.training.build_model(spec, generator=torch.Generator().manual_seed(0))
        cfg = TrainConfig(steps=steps, batch_size=batch, lr=1e-3)
        tr = Trainer(model, sd.training.to_model_space(probe, spec), cfg, progress=False)
        tr.train(5)  # warm-up
        t0 = time.perf_counter()
        tr.train(steps)
        dt = time.perf_counter() - t0
        rows.append({"what": "speed", "model": name, "batch": batch, "threads": threads,
                     "steps_per_s": steps / dt,
                     "params": sum(p.numel() for p in model.parameters())})
    return rows


def bench_quality(steps: int) -> list[dict]:
    targets = {"8gaussians": sd.ring8(radius=4 / math.sqrt(2), std=0.5 / math.sqrt(2)),
               "imbalanced_2d": sd.imbalanced_2d()}
    rows = []
    for name, target in targets.items():
        t0 = time.perf_counter()
        tr = train_model(name, f"/tmp/scoresde_bench_{name}", config=train_config(steps), progress=False,
                         overwrite=True)  # a scratch folder, replaced on every run
        train_s = time.perf_counter() - t0
        model, spec = load_model(tr.checkpoint_path)
        n = 4000
        floor = sd.metrics.noise_floor(target, n, generator=torch.Generator().manual_seed(7))
        for sampler, sampler_steps in [("heun", 100), ("euler_maruyama", 500)]:
            out = sd.sample(model.sde, model, (n, 2), sampler, steps=sampler_steps,
                            generator=torch.Generator().manual_seed(1))
            x = from_model_space(out.samples, spec)
            ev = sd.metrics.evaluate(x, target, generator=torch.Generator().manual_seed(2))
            rows.append({"what": "quality", "data": name, "train_steps": steps, "train_s": train_s,
                         "sampler": sampler, "nfe": out.nfe, "sw2": ev["sw2"], "sw2_floor": floor["sw2"],
                         "weight_error": ev["weight_error"], "log_density_gap": ev["log_density_gap"],
                         "ok": ev["weight_error"] <= 0.04 and ev["log_density_gap"] <= 0.15})
    return rows


def bench_digits(minutes: float) -> list[dict]:
    from sklearn.linear_model import LogisticRegression

    train_x, train_y = sd.data.digits("train")
    test_x, test_y = sd.data.digits("test")
    clf = LogisticRegression(max_iter=2000).fit(train_x.reshape(len(train_x), -1).numpy(), train_y.numpy())
    test_acc = clf.score(test_x.reshape(len(test_x), -1).numpy(), test_y.numpy())
    spec = model_spec(train_x)
    model = sd.training.build_model(spec, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(steps=10**6, batch_size=128, lr=2e-3, warmup=100, ema_decay=0.999)
    tr = Trainer(model, train_x, cfg, progress=False)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 60 * minutes:
        tr.train(50)
    train_s = time.perf_counter() - t0
    ema = tr.ema_model
    out = sd.sample(ema.sde, ema, (500, 1, 8, 8), "heun", steps=50, generator=torch.Generator().manual_seed(1))
    x = out.samples.clamp(-1, 1).reshape(500, -1).numpy()
    proba = clf.predict_proba(x)
    counts = torch.bincount(torch.as_tensor(proba.argmax(1)), minlength=10).double() / 500
    return [{"what": "digits", "train_steps": tr.step, "train_s": train_s, "classifier_test_acc": test_acc,
             "confident_fraction": float((proba.max(1) > 0.9).mean()),
             "class_balance_max_dev": float((counts - 0.1).abs().max())}]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("speed", "quality", "digits", "all"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=TRAIN_DEFAULTS["steps"], help="training steps for quality")
    p.add_argument("--minutes", type=float, default=10.0, help="digits training budget")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    if args.what in ("speed", "all"):
        rows += bench_speed(args.threads)
    if args.what in ("quality", "all"):
        rows += bench_quality(args.steps)
    if args.what in ("digits", "all"):
        rows += bench_digits(args.minutes)
    for r in rows:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    text = json.dumps(rows, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
