"""Posterior samplers against exact posteriors, their cost, and digits inpainting.

Run by hand (not a test)::

    python benchmarks/bench_inverse.py                       # everything, table + JSON
    python benchmarks/bench_inverse.py --part error --seeds 3 --json inverse.json
    python benchmarks/bench_inverse.py --part digits --model runs/digits_unet --figure fig.png

Parts:

``error``
    Error vs NFE of every method of :func:`scoresde.posterior_sample` on the named inverse
    problems (:func:`scoresde.inverse.problem_names`: ``bimodal_2d``, ``mixture_10d`` and the
    25-component grid prior of Cardoso et al. 2023 in d = 8 with m = 1, 2, 4 measurements),
    with the exact prior score, against the exact posterior
    (:func:`scoresde.compare.run_inverse_comparison`), beside the noise floor of exact posterior
    samples. NFE = score evaluations per returned sample (SMC: ``particles = n``).
``cost``
    Wall time per guided call of DPS/ΠGDM (one forward and one backward pass) over a plain score
    call, for the exact mixture score and for a ScoreMLP / UNet network.
``digits``
    Inpainting of the lower half of held-out 8x8 digits with an unconditional UNet trained here:
    the fraction of posterior samples a held-out logistic-regression classifier assigns to the
    true digit, and the posterior spread (per-pixel std over the samples, unknown half).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

import scoresde as sd
from scoresde.compare import run_inverse_comparison, to_markdown
from scoresde.inverse import make_problem


def part_error(args) -> list[dict]:
    recs = run_inverse_comparison(problems=args.problems, methods=None, nfe=args.nfe, n=args.n,
                                  seeds=args.seeds, progress=args.progress)
    print(to_markdown(recs))
    print("\nsummary: error (and SW2) relative to the noise floor")
    print("| problem | method | NFE | error / floor | SW2 / floor | time [s] |\n|---|---|---|---|---|---|")
    for r in recs:
        if r["status"] != "ok":
            continue
        f = r["noise_floor"]
        print(f"| {r['target']} | {r['sampler']} | {r['nfe']} | {r['error'] / f['error']:.2f} | "
              f"{r['sw2'] / f['sw2']:.2f} | {r['wall_time_s']:.2f} |")
    return recs


def _time(fn, x, t, reps):
    fn(x, t)
    start = time.perf_counter()
    for _ in range(reps):
        fn(x, t)
    return (time.perf_counter() - start) / reps


def part_cost(args) -> list[dict]:
    sde = sd.VPSDE()
    rows = []
    pb = make_problem("mixture_10d")
    nets = {
        "exact mixture (10-D)": (pb.prior.score_fn(sde), (1000, 10), pb.A, pb.y),
        "ScoreMLP (10-D)": (sd.ScoreModel(sd.ScoreMLP(10, hidden=256), sde), (1000, 10), pb.A, pb.y),
    }
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :4] = True
    A_img = sd.operators.inpainting(mask)
    nets["UNet (8x8)"] = (sd.ScoreModel(sd.UNet(1), sde), (64, 1, 8, 8), A_img,
                          torch.zeros(A_img.shape[0]))
    for name, (model, shape, A, y) in nets.items():
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        t = torch.full((shape[0],), 0.5)
        with torch.no_grad():
            plain = _time(model, x, t, args.reps)
        row = {"model": name, "batch": shape[0], "plain_ms": 1e3 * plain}
        for label, g in (("dps", sd.guidance.dps(sde, model, A, y, 0.1)),
                         ("pigdm", sd.guidance.pigdm(sde, model, A, y, 0.1))):
            with torch.no_grad():
                row[f"{label}_ms"] = 1e3 * _time(g, x, t, args.reps)
            row[f"{label}_ratio"] = row[f"{label}_ms"] / row["plain_ms"]
        rows.append(row)
    print("\n| model | batch | plain call [ms] | DPS [ms] | ratio | ΠGDM [ms] | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['plain_ms']:.2f} | {r['dps_ms']:.2f} | "
              f"{r['dps_ratio']:.2f} | {r['pigdm_ms']:.2f} | {r['pigdm_ratio']:.2f} |")
    return rows


def digits_model(run_dir: str | None, steps: int, seed: int = 0):
    """An unconditional UNet on the digits' train split (ε-prediction, VP), EMA weights.

    ``run_dir`` with a ``checkpoint.pt`` is loaded (cheap re-runs); otherwise the training recipe
    (:func:`scoresde.training.train_model`, cosine learning rate) trains ``steps`` updates into it
    (a temporary folder when ``run_dir`` is None). Returns ``(sde, model, info)``.
    """
    import os
    import tempfile

    from scoresde.training import load_model, train_config, train_model

    path = None if run_dir is None else os.path.join(run_dir, "checkpoint.pt")
    start = time.perf_counter()
    if path is None or not os.path.exists(path):
        run_dir = run_dir or tempfile.mkdtemp(prefix="digits_unet_")
        config = train_config(steps, seed=seed, batch_size=128, lr=2e-3, warmup=100,
                              ema_decay=0.999, checkpoint_every=500)
        train_model("digits", run_dir, config=config, progress=False)
        path = os.path.join(run_dir, "checkpoint.pt")
    model, _ = load_model(path)
    ckpt = sd.training.load_checkpoint(path)
    info = {"model": path, "train_steps": int(ckpt.get("step", steps)),
            "load_or_train_s": time.perf_counter() - start}
    return model.sde, model, info


def _classifier():
    from sklearn.linear_model import LogisticRegression

    x_train, y_train = sd.data.digits("train")
    return LogisticRegression(max_iter=2000).fit(x_train.reshape(len(x_train), -1).numpy(),
                                                 y_train.numpy())


def inpaint_digits(sde, model, n_digits: int, n_samples: int, methods, steps: int,
                   noise_std: float = 0.05, seed: int = 0, keep: int = 0) -> dict:
    """Inpaint the lower half of held-out digits with every method.

    Per method: the fraction of posterior samples a held-out logistic-regression classifier
    (trained on the full training digits) assigns to the true digit, the posterior spread (per-pixel
    standard deviation over the samples in the unknown half, averaged), NFE per sample and wall time
    per digit; also the classifier's accuracy on the full test digits and on the masked ones (lower
    half set to the background, -1). ``keep`` samples of the first digits are returned (figure).
    """
    clf = _classifier()
    x_test, y_test = sd.data.digits("test")
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :4] = True                    # the upper half is observed
    A = sd.operators.inpainting(mask)
    masked_all = x_test.clone()
    masked_all[:, 0, 4:] = -1.0

    def flat(v):
        return v.reshape(len(v), -1).numpy()

    out = {"held_out_accuracy_full": float(clf.score(flat(x_test), y_test.numpy())),
           "held_out_accuracy_masked": float(clf.score(flat(masked_all), y_test.numpy())),
           "n_digits": n_digits, "n_samples": n_samples, "steps": steps, "noise_std": noise_std,
           "methods": {}, "samples": {}}
    for method in methods:
        agree, spread, nfe, wall, kept = [], [], 0, 0.0, []
        for i in range(n_digits):
            y = A @ x_test[i].reshape(-1).double()
            g = torch.Generator().manual_seed(seed + i)
            start = time.perf_counter()
            try:
                res = sd.posterior_sample(sde, model, A, y, noise_std, (n_samples, 1, 8, 8),
                                          method=method, steps=steps, generator=g)
            except (sd.NonFiniteError, ValueError) as exc:
                out["methods"][method] = {"error": f"{type(exc).__name__}: {exc}"}
                break
            wall += time.perf_counter() - start
            nfe = res.nfe_per_sample
            s = res.samples.detach().clamp(-1, 1)
            pred = clf.predict(s.reshape(n_samples, -1).numpy())
            agree.append(float((pred == int(y_test[i])).mean()))
            spread.append(float(s[:, 0, 4:].std(0).mean()))
            if i < keep:
                kept.append(s[:2])
        if method in out["methods"]:
            continue
        n = len(agree)
        out["methods"][method] = {"agreement": sum(agree) / n,
                                  "agreement_se": float(torch.tensor(agree).std() / math.sqrt(n)),
                                  "spread": sum(spread) / n, "nfe_per_sample": nfe,
                                  "wall_s_per_digit": wall / n}
        if kept:
            out["samples"][method] = torch.stack(kept)          # (keep, 2, 1, 8, 8)
    out["truth"] = x_test[:keep]
    return out


def digits_figure(res: dict, path: str) -> None:
    """Rows: held-out digits; columns: truth, masked input, two posterior samples per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(res["samples"])
    truth = res["truth"]
    cols = 2 + 2 * len(methods)
    fig, axes = plt.subplots(len(truth), cols, figsize=(0.62 * cols, 0.7 * len(truth) + 0.35),
                             squeeze=False)
    for r, x in enumerate(truth):
        masked = x[0].clone()
        masked[4:] = float("nan")
        panels = [x[0], masked] + [res["samples"][m][r, k, 0] for m in methods for k in range(2)]
        for c, img in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
    titles = ["truth", "input"] + [m for m in methods for _ in range(2)]
    for c, title in enumerate(titles):
        if c < 2 or c % 2 == 0:
            axes[0, c].set_title(title, fontsize=7, loc="left")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.01, wspace=0.05, hspace=0.05)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def part_digits(args) -> dict:
    sde, model, info = digits_model(args.model, args.train_steps)
    methods = ("smc", "replacement", "repaint", "dps", "pigdm")
    res = inpaint_digits(sde, model, args.digits, args.samples, methods, args.steps,
                         keep=args.figure_digits if args.figure else 0)
    res.update(info)
    print(f"\ndigits inpainting (lower half unknown, noise_std {res['noise_std']}), {args.digits} "
          f"held-out digits x {args.samples} samples, {args.steps} steps; UNet {info['train_steps']} "
          f"training steps ({info['model']}); held-out classifier accuracy on the full test digits "
          f"{res['held_out_accuracy_full']:.3f}, on the masked test digits "
          f"{res['held_out_accuracy_masked']:.3f}")
    print("| method | NFE/sample | agreement with true digit | posterior spread | s/digit |")
    print("|---|---|---|---|---|")
    for m, r in res["methods"].items():
        if "error" in r:
            print(f"| {m} | — | failed: {r['error'][:90]} | — | — |")
            continue
        print(f"| {m} | {r['nfe_per_sample']:.0f} | {r['agreement']:.3f} ± {r['agreement_se']:.3f} | "
              f"{r['spread']:.3f} | {r['wall_s_per_digit']:.2f} |")
    if args.figure:
        digits_figure(res, args.figure)
        print(f"figure: {args.figure}")
    res.pop("samples")
    res.pop("truth")
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("all", "error", "cost", "digits"), default="all")
    p.add_argument("--problems", nargs="+", default=None)
    p.add_argument("--nfe", type=lambda s: tuple(int(v) for v in s.split(",")),
                   default=(20, 50, 100, 200))
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--model", default=None,
                   help="run folder of the digits UNet: loaded if it holds checkpoint.pt, else trained into it")
    p.add_argument("--figure", default=None, help="PNG of the digits inpainting figure")
    p.add_argument("--figure-digits", type=int, default=4)
    p.add_argument("--digits", type=int, default=20)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    doc = {"torch": torch.__version__, "threads": args.threads}
    if args.part in ("all", "error"):
        doc["error"] = part_error(args)
    if args.part in ("all", "cost"):
        doc["cost"] = part_cost(args)
    if args.part in ("all", "digits"):
        doc["digits"] = part_digits(args)
    from scoresde.compare import to_json

    text = json.dumps({k: (json.loads(to_json(v))["records"] if k == "error" else v)
                       for k, v in doc.items()}, indent=1, default=str)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    else:
        print(text if len(text) < 4000 else text[:4000] + "\n… (use --json FILE for all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
