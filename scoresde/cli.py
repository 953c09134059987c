"""The ``scoresde`` command line (also ``python -m scoresde``).

Subcommands are added by functions ``add_<name>_parser(subparsers)`` listed in
:data:`COMMANDS`; each registers its arguments and sets ``func`` to a ``cmd_<name>(args) -> int``
that does the work. Bad input gives a one-line message on stderr and exit status 2; a failure
while running gives a one-line message and status 1; there is never a traceback.

Examples
--------
.. code-block:: bash

    scoresde train --data my_points.csv --out runs/mine
    scoresde sample --checkpoint runs/mine/checkpoint.pt --n 2000 --sampler heun --out samples.png
    scoresde train --data digits --conditional --out runs/digits
    scoresde sample --checkpoint runs/digits/checkpoint.pt --label 3 --guidance 2.0 --out threes.png
    scoresde demo --out demo/
    scoresde compare --quick --out results/
    scoresde compare --target imbalanced_2d ring8 --samplers heun ddim --nfe 10,20,50 --out out/
    scoresde sample --model my_pipeline/ --sampler dpm_solver_pp --steps 20 --n 16 --out grid.png
    scoresde compare --model my_pipeline/ --samplers ddim dpm_solver_pp --nfe 5,10,20 --out ref/
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# the one set of training defaults lives with the recipe (re-exported here for old imports)
from .training.recipes import TRAIN_DEFAULTS, train_config

__all__ = [
    "main",
    "build_parser",
    "COMMANDS",
    "TRAIN_DEFAULTS",
    "train_config",
    "add_train_parser",
    "add_train_arguments",
    "run_train",
    "cmd_train",
    "add_sample_parser",
    "cmd_sample",
    "add_demo_parser",
    "cmd_demo",
    "add_compare_parser",
    "cmd_compare",
]


class UsageError(Exception):
    """Invalid command-line input found after parsing (reported with exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) and exit with status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _nfe_list(text: str) -> tuple[int, ...]:
    """``"5,10,20"`` -> ``(5, 10, 20)``; every entry a positive int."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"must be a comma-separated list of positive integers such as 5,10,20, got {text!r}")
    return values


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"int>={minimum}"
    return parse


def _split_names(values: Sequence[str] | None) -> list[str] | None:
    """Names given as ``a b`` or ``a,b`` (or both), in order, without duplicates."""
    if values is None:
        return None
    out: list[str] = []
    for v in values:
        out.extend(p for p in v.split(",") if p)
    return list(dict.fromkeys(out))


def _check_names(kind: str, given: list[str] | None, valid: Sequence[str]) -> None:
    unknown = [g for g in given or () if g not in valid]
    if unknown:
        raise UsageError(
            f"unknown {kind}{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid names: {', '.join(valid)}")


# --------------------------------------------------------------------------------------
# scoresde train / sample / demo
# --------------------------------------------------------------------------------------
def _set_threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _data_source(spec: str, labels: bool = False):
    """The data of ``--data`` (:func:`scoresde.data.data_source`); an unknown name is a usage error."""
    import os

    from .data import data_source, dataset_names, labelled_names

    if labels and spec not in labelled_names():
        raise UsageError(f"--conditional needs labelled data: --data must be one of {', '.join(labelled_names())} "
                         f"(digits with their digit, a reference target with its mixture component), got {spec!r}")
    try:
        return data_source(spec, labels=labels)
    except (ValueError, FileNotFoundError):
        if os.path.exists(spec):
            raise  # a file that cannot be used: a failure while running (status 1)
        raise UsageError(
            f"unknown dataset {spec!r} (and no such file); valid names: {', '.join(dataset_names())}"
        ) from None


def _check_run_folder(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to train into a folder that holds a run unless ``--resume`` or ``--overwrite`` says how."""
    from .training import CheckpointError, load_checkpoint
    from .training.trainer import run_files

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out must be a directory, {str(out)!r} is a file")
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other (continue the run, or replace it)")
    held = run_files(out)
    if not held or overwrite or (resume and "checkpoint.pt" in held):
        return
    if resume:
        raise UsageError(f"nothing to resume: {out} holds a loss.csv but no checkpoint.pt (the run stopped "
                         "before its first checkpoint); pass --overwrite to start afresh")
    what = list(held)
    if "checkpoint.pt" in held:
        try:
            what[0] = f"checkpoint.pt at step {load_checkpoint(out / 'checkpoint.pt')['step']}"
        except CheckpointError:
            pass
    raise UsageError(f"{out} already holds a run ({', '.join(what)}); pass --resume to continue it, or "
                     f"--overwrite to start afresh (deletes its {' and '.join(held)})")


_TRAIN_DESCRIPTION = (
    "Train the default score model of a data set (ScoreMLP for vectors, UNet for digits) with "
    "denoising score matching; writes RUN_DIR/checkpoint.pt (latest) and RUN_DIR/loss.csv. "
    "With --conditional the model is class-conditional (digits: their digit; a reference target: "
    "its mixture component) and trained with label dropout for classifier-free guidance. "
    "A RUN_DIR that holds a run is continued with --resume or replaced with --overwrite, never "
    "silently. Under torchrun the processes train one model with DistributedDataParallel."
)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``scoresde train`` (also those of ``python -m scoresde.training``)."""
    from .data import dataset_names
    from .sde import SDE_NAMES
    from .training.config import TrainConfig

    d = TRAIN_DEFAULTS
    p.add_argument("--data", required=True, metavar="NAME|PATH",
                   help=f"a data set name ({', '.join(dataset_names())}) or a .npy/.pt/.csv file of "
                        "shape (n, d)")
    p.add_argument("--out", required=True, type=Path, metavar="RUN_DIR",
                   help="run folder for checkpoint.pt and loss.csv")
    p.add_argument("--sde", choices=SDE_NAMES, default=d["sde"], help=f"forward SDE (default {d['sde']})")
    p.add_argument("--steps", type=_int_at_least(1), default=d["steps"],
                   help=f"optimiser steps of the whole run (default {d['steps']})")
    p.add_argument("--batch-size", type=_int_at_least(1), default=d["batch_size"],
                   help=f"batch size per process (default {d['batch_size']})")
    p.add_argument("--lr", type=float, default=d["lr"], help=f"peak learning rate (default {d['lr']:g})")
    p.add_argument("--warmup", type=_int_at_least(0), default=d["warmup"],
                   help=f"linear learning-rate warm-up in steps, then a cosine decay (default {d['warmup']})")
    p.add_argument("--ema-decay", type=float, default=d["ema_decay"],
                   help=f"decay of the weight average in [0, 1) (default {d['ema_decay']})")
    p.add_argument("--hidden", type=_int_at_least(1), default=d["hidden"],
                   help=f"width of the ScoreMLP for vector data (default {d['hidden']})")
    p.add_argument("--conditional", action="store_true",
                   help="train a class-conditional model on the data's labels (digits, or a reference "
                        "target's components), for scoresde sample --label/--guidance")
    p.add_argument("--label-dropout", type=float, default=TrainConfig.label_dropout, metavar="P",
                   help="with --conditional: probability in [0, 1] of training a batch row on the null label "
                        f"(the unconditional model of classifier-free guidance; default {TrainConfig.label_dropout:g})")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed (default 0)")
    p.add_argument("--checkpoint-every", type=_int_at_least(0), default=d["checkpoint_every"],
                   help=f"checkpoint period in steps (default {d['checkpoint_every']}; 0: only at the end)")
    p.add_argument("--resume", action="store_true",
                   help="continue RUN_DIR/checkpoint.pt (bit-identically) with the run's own settings")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a RUN_DIR that holds a run, deleting its checkpoint.pt and loss.csv")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda, cuda:N, mps or auto (CUDA when available) (default cpu)")
    p.add_argument("--threads", type=_int_at_least(0), default=1,
                   help="torch CPU threads (default 1: fastest for small models; 0 keeps torch's)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bar on stderr (default on)")
    p.set_defaults(func=cmd_train)


def add_train_parser(subparsers) -> None:
    """Register ``scoresde train``."""
    p = subparsers.add_parser("train", help="train a score model on a data set by denoising score matching",
                              description=_TRAIN_DESCRIPTION)
    add_train_arguments(p)


def cmd_train(args: argparse.Namespace) -> int:
    """Train with :func:`scoresde.training.train_model` and report where the checkpoint went.

    Under ``torchrun`` the process group is created here, around the training, and destroyed
    at the end (:func:`scoresde.training.launch.process_group`).
    """
    from .training import train_model
    from .training.launch import process_group, resolve_device

    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    try:
        cfg = train_config(args.steps, seed=args.seed, checkpoint_every=args.checkpoint_every,
                           batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                           ema_decay=args.ema_decay, label_dropout=args.label_dropout)
        device = resolve_device(args.device)
    except ValueError as err:
        raise UsageError(str(err)) from None
    _check_run_folder(args.out, resume=args.resume, overwrite=args.overwrite)
    source = _data_source(args.data, labels=args.conditional)
    _set_threads(args.threads)
    start = time.perf_counter()
    with process_group(device):
        trainer = train_model(source, args.out, sde=args.sde, config=cfg, hidden=args.hidden,
                              resume=args.resume, progress=args.progress, device=device,
                              data_name=args.data, overwrite=args.overwrite,
                              conditional=args.conditional)
    if not trainer.is_main:
        return 0
    if trainer.resumed_step is not None and trainer.step == trainer.resumed_step:
        print(f"nothing to do: {args.out} is complete at step {trainer.step}")
        return 0
    ran = trainer.step - (trainer.resumed_step or 0)
    tail = trainer.losses[-100:]
    print(f"trained {ran} steps (now at step {trainer.step}) in {time.perf_counter() - start:.1f} s; "
          f"final loss {sum(tail) / max(len(tail), 1):.4g}; checkpoint {trainer.checkpoint_path}")
    return 0


_SAMPLE_SUFFIXES = (".npy", ".pt", ".png")


def _scatter_figure(x, reference, title: str):
    """A report-ready scatter of samples (first two coordinates) over the training data, with axes."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = x.detach().cpu().double().numpy()[:, :2]
    ref = None if reference is None else reference.detach().cpu().double().numpy()[:, :2]
    # the frame: the training data's extent (or the samples'), so that stray samples show as a count
    basis = ref if ref is not None else pts
    lo, hi = np.quantile(basis, 0.002, axis=0), np.quantile(basis, 0.998, axis=0)
    pad = 0.25 * np.maximum(hi - lo, 1e-6)
    lo, hi = lo - pad, hi + pad
    outside = int((~((pts >= lo) & (pts <= hi)).all(axis=1)).sum())
    aspect = float((hi[1] - lo[1]) / (hi[0] - lo[0]))
    fig = Figure(figsize=(6.4, min(max(6.4 * aspect, 3.2), 8.0) + 1.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if ref is not None:
        ax.scatter(ref[:, 0], ref[:, 1], s=4, c="0.75", linewidths=0,
                   label=f"training data ({len(ref)} points)")
    label = f"samples ({len(pts)}; {outside} outside the frame)" if outside else f"samples ({len(pts)})"
    ax.scatter(pts[:, 0], pts[:, 1], s=4, c="C0", linewidths=0, alpha=0.8, label=label)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    dim = x.shape[1]
    suffix = f" (first 2 of {dim} coordinates)" if dim > 2 else ""
    ax.set_xlabel("$x_1$" + suffix)
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal", adjustable="box")
    ax.grid(True, linewidth=0.4, alpha=0.5)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, markerscale=3,
              frameon=False)
    ax.set_title(title, fontsize=10)
    return fig


def _write_samples(x, out: Path, reference=None, title: str = "") -> None:
    """Save samples as .npy, .pt or a .png (a scatter over the training data, or an image grid)."""
    import numpy as np
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".npy":
        np.save(out, x.detach().cpu().numpy())
    elif suffix == ".pt":
        torch.save(x.detach().cpu(), out)
    elif x.ndim == 4:
        from .plotting import plot_image_grid

        plot_image_grid(x[:64], title=title or None).savefig(out, dpi=150)
    else:
        _scatter_figure(x, reference, title or "samples").savefig(out, dpi=150)


def _training_data(checkpoint: Path, n: int, seed: int):
    """Up to ``n`` points of the data the checkpoint's run was trained on (None when not recorded/found)."""
    import torch

    from .data import data_source
    from .training import load_checkpoint

    name = (load_checkpoint(checkpoint).get("metadata") or {}).get("data")
    if not isinstance(name, str):
        return None
    try:
        source = data_source(name)
    except (ValueError, OSError):
        print(f"training data {name!r} not found: the figure shows the samples alone", file=sys.stderr)
        return None
    if isinstance(source, torch.Tensor):
        return source[:n] if source.ndim == 2 else None
    return source(n, generator=torch.Generator().manual_seed(seed + 1))


def add_sample_parser(subparsers) -> None:
    """Register ``scoresde sample``."""
    from .samplers import names as sampler_names

    p = subparsers.add_parser(
        "sample",
        help="draw samples from a trained checkpoint",
        description=("Draw samples from the EMA model of a checkpoint written by scoresde train, in the "
                     "data's own coordinates; a .png shows them over the training data. --model PATH "
                     "samples any local model instead (a scoresde checkpoint or a diffusers "
                     "save_pretrained folder); images are written as a grid."),
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", type=Path, metavar="PATH",
                       help="a RUN_DIR/checkpoint.pt written by scoresde train")
    which.add_argument("--model", type=Path, metavar="PATH",
                       help="any local model: a scoresde checkpoint or run folder, or a diffusers "
                            "save_pretrained folder (pipeline or UNet; nothing is downloaded)")
    p.add_argument("--n", type=_int_at_least(1), default=1000, help="number of samples (default 1000)")
    p.add_argument("--sampler", default="heun", metavar="NAME",
                   help=f"sampler (default heun): {', '.join(sampler_names())}")
    p.add_argument("--steps", type=_int_at_least(1), default=100,
                   help="sampler steps (time intervals; default 100)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed (default 0)")
    p.add_argument("--label", type=_int_at_least(0), default=None, metavar="K",
                   help="class to sample, 0..num_classes-1 (a checkpoint of scoresde train --conditional); "
                        "default: unconditional samples")
    p.add_argument("--guidance", type=float, default=0.0, metavar="W",
                   help="classifier-free guidance weight w >= 0 with --label: the score (1+w) s(x,t,K) - w s(x,t); "
                        "each score call then costs two network evaluations (default 0: the conditional score)")
    p.add_argument("--threads", type=_int_at_least(0), default=1, help="torch CPU threads (default 1)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False,
                   help="progress bar on stderr (default off)")
    p.add_argument("--data-overlay", action=argparse.BooleanOptionalAction, default=True,
                   help="draw the training data recorded in the checkpoint behind the samples of a .png "
                        "(default on)")
    p.add_argument("--out", required=True, type=Path, metavar="FILE",
                   help="output file: .npy, .pt, or .png (scatter with axes, or an image grid)")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    """Load the checkpoint's model (weights only), sample, map back to data space, save."""
    import torch

    from .samplers import names as sampler_names
    from .samplers import sample
    from .training import from_model_space, load_model

    _check_names("sampler", [args.sampler], sampler_names())
    if args.out.suffix.lower() not in _SAMPLE_SUFFIXES:
        raise UsageError(f"--out must end in one of {', '.join(_SAMPLE_SUFFIXES)}, got {str(args.out)!r}")
    import math

    if not (math.isfinite(args.guidance) and args.guidance >= 0):
        raise UsageError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    if args.guidance and args.label is None:
        raise UsageError("--guidance needs --label (the class to guide towards)")
    _set_threads(args.threads)
    if args.model is not None:
        return _sample_local_model(args)
    model, spec = load_model(args.checkpoint)
    score_fn, what = _conditioned(model, args)
    shape = (args.n, *spec["event_shape"])
    start = time.perf_counter()
    out = sample(model.sde, score_fn, shape, args.sampler, steps=args.steps,
                 generator=torch.Generator().manual_seed(args.seed), progress=args.progress)
    seconds = time.perf_counter() - start
    x = from_model_space(out.samples, spec)
    reference = None
    if args.out.suffix.lower() == ".png" and args.data_overlay and x.ndim == 2:
        reference = _training_data(args.checkpoint, args.n, args.seed)
    _write_samples(x, args.out, reference=reference,
                   title=f"{args.checkpoint.parent.name or args.checkpoint}: {args.sampler}, "
                         f"{args.steps} steps ({out.nfe} NFE){what}")
    cost = f"{out.nfe} NFE" + (f" = {2 * out.nfe} network evaluations" if args.guidance else "")
    print(f"{args.n} samples{what} with {args.sampler} ({cost}, {seconds:.2f} s) written to {args.out}")
    return 0


def _local_model(path: Path, device=None):
    """:func:`scoresde.interop.training.load_local_model`, a missing path being a usage error."""
    from .interop.training import load_local_model

    if not path.exists():
        raise UsageError(f"--model {str(path)!r} does not exist")
    return load_local_model(path, device=device)


def _sample_local_model(args: argparse.Namespace) -> int:
    """``scoresde sample --model PATH``: any local model, to its own end time, in data space."""
    import torch

    from .samplers import sample

    local = _local_model(args.model)
    if local.kind == "scoresde":  # the checkpoint path, with its data overlay (and --label/--guidance)
        args.checkpoint, args.model = Path(local.path), None
        return cmd_sample(args)
    if getattr(args, "label", None) is not None or getattr(args, "guidance", None):
        raise UsageError("--label and --guidance need a class-conditional scoresde checkpoint, not a diffusers model")
    start = time.perf_counter()
    out = sample(local.sde, local.score_fn, (args.n, *local.event_shape), args.sampler, steps=args.steps,
                 eps=local.eps, generator=torch.Generator().manual_seed(args.seed), progress=args.progress)
    seconds = time.perf_counter() - start
    _write_samples(local.to_data(out.samples), args.out,
                   title=f"{args.model.name or args.model}: {args.sampler}, {args.steps} steps ({out.nfe} NFE)")
    print(f"{args.n} samples with {args.sampler} ({out.nfe} NFE, {seconds:.2f} s) written to {args.out}")
    return 0


def _conditioned(model, args: argparse.Namespace):
    """The score function of ``--label``/``--guidance`` and a description for titles and messages."""
    k = model.num_classes
    if args.label is None:
        return model, ("" if k is None else ", unconditional")
    if k is None:
        raise UsageError(f"--label needs a class-conditional checkpoint (scoresde train --conditional); "
                         f"{args.checkpoint} holds an unconditional model")
    if args.label >= k:
        raise UsageError(f"--label must be in 0..{k - 1} for this checkpoint ({k} classes), got {args.label}")
    score_fn = model.guided(args.label, args.guidance) if args.guidance else model.conditional(args.label)
    return score_fn, f", class {args.label}" + (f", guidance {args.guidance:g}" if args.guidance else "")


def add_demo_parser(subparsers) -> None:
    """Register ``scoresde demo``."""
    from .data import dataset_names

    generated = [n for n in dataset_names() if n != "digits"]
    p = subparsers.add_parser(
        "demo",
        help="train on a generated data set, sample with every sampler, write a figure and a table",
        description=(
            "Train the default model on a generated data set (a toy 2-D set or a reference "
            "target of any dimension), sample it with every sampler, and write OUT/demo.png "
            "(samples per sampler over the data, first two coordinates), OUT/demo.md and "
            "OUT/demo.json (sampler, NFE, wall time, SW2, MMD); the run itself goes to OUT/run."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), metavar="DIR",
                   help="output directory (default demo_out)")
    p.add_argument("--data", default="ring8", metavar="NAME",
                   help=f"a generated data set (default ring8): {', '.join(generated)}")
    p.add_argument("--steps", type=_int_at_least(1), default=TRAIN_DEFAULTS["steps"],
                   help=f"training steps (default {TRAIN_DEFAULTS['steps']})")
    p.add_argument("--n", type=_int_at_least(2), default=2000, help="samples per sampler (default 2000)")
    p.add_argument("--sample-steps", type=_int_at_least(1), default=100,
                   help="steps of every fixed-step sampler (default 100)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed (default 0)")
    p.add_argument("--seeds", type=_int_at_least(1), default=3,
                   help="seeds the metrics are averaged over, each with its own data sample, prior draw "
                        "and sampling noise (default 3; standard errors need >= 2)")
    p.add_argument("--threads", type=_int_at_least(0), default=1, help="torch CPU threads (default 1)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run of an earlier demo in OUT/run (otherwise refused)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bar on stderr (default on)")
    p.set_defaults(func=cmd_demo)


def _demo_table(model, spec: dict, draw, args) -> dict:
    """Every sampler's SW2/MMD against the data over ``args.seeds`` seeds, and the noise floor."""
    import torch

    from . import metrics
    from ._checks import derive_seed
    from .compare import over_seeds, rank
    from .compare.noise import standard_error
    from .samplers import names as sampler_names
    from .samplers import sample
    from .training import from_model_space

    data_of = {}

    def data(seed: int):  # the seed's data sample and a fresh one for its floor
        if seed not in data_of:
            g = torch.Generator().manual_seed(derive_seed(seed, "demo", "data"))
            data_of[seed] = (draw(args.n, generator=g), draw(args.n, generator=g))
        return data_of[seed]

    def scores(x, seed: int) -> dict:
        g = torch.Generator().manual_seed(derive_seed(seed, "demo", "projections"))
        ref = data(seed)[0]
        return {"sw2": float(metrics.sliced_wasserstein(x, ref, generator=g)), "mmd": float(metrics.mmd(x, ref))}

    floor = over_seeds(lambda s: scores(data(s)[1], s), args.seeds, args.seed)
    floor_rec = {"sampler": "data (fresh sample)", "nfe": 0, "seconds": 0.0, "seeds": args.seeds,
                 **floor["mean"], "spread": floor["spread"]}
    records, samples = [], {}
    for name in sampler_names():
        t0, outs = time.perf_counter(), {}

        def run(seed: int, name=name, outs=outs) -> dict:
            out = sample(model.sde, model, (args.n, *spec["event_shape"]), name, steps=args.sample_steps,
                         generator=torch.Generator().manual_seed(derive_seed(seed, "demo", name)))
            outs[seed] = out
            return scores(from_model_space(out.samples, spec), seed)

        try:
            summary = over_seeds(run, args.seeds, args.seed)
        except (ValueError, RuntimeError, FloatingPointError) as err:  # report, keep going
            records.append({"sampler": name, "nfe": None, "seconds": None, "sw2": None, "mmd": None,
                            "error": f"{type(err).__name__}: {err}"})
            continue
        first = outs[args.seed]
        records.append({"sampler": name, "target": args.data, "budget": args.sample_steps, "status": "ok",
                        "nfe": first.nfe, "seconds": (time.perf_counter() - t0) / args.seeds,
                        "seeds": args.seeds, **summary["mean"], "spread": summary["spread"],
                        "noise_floor": floor["mean"], "noise_floor_spread": floor["spread"]})
        samples[name] = from_model_space(first.samples, spec)
    ranked = {r["sampler"]: r for r in rank([r for r in records if r["nfe"] is not None], metrics=("sw2", "mmd"))}
    rows = [floor_rec | {"sw2_se": standard_error(floor_rec, "sw2"), "mmd_se": standard_error(floor_rec, "mmd")}]
    for r in records:
        if r["nfe"] is None:
            rows.append(r)
            continue
        r = ranked[r["sampler"]]
        marks = {m: r["noise_marks"][m]["vs_floor"] for m in ("sw2", "mmd")}
        rows.append({k: r[k] for k in ("sampler", "nfe", "seconds", "seeds", "sw2", "mmd", "spread")}
                    | {"sw2_se": standard_error(r, "sw2"), "mmd_se": standard_error(r, "mmd"), "vs_floor": marks})
    titled = {}
    for r in rows[1:]:
        if r["nfe"] is not None:
            mark = " ≈" if (r.get("vs_floor") or {}).get("sw2") == "≈" else ""
            titled[f"{r['sampler']} ({r['nfe']} NFE){mark}"] = samples[r["sampler"]]
    return {"rows": rows, "samples": titled, "reference": data(args.seed)[0]}


def _demo_markdown(rows: list[dict], seeds: int) -> str:
    def cell(mean, se) -> str:
        return f"{mean:.4f}" if se is None else f"{mean:.4f} ± {se:.4f}"

    lines = ["| sampler | NFE | wall time (s) | SW2 | MMD | vs floor (SW2, MMD) |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["nfe"] is None:
            lines.append(f"| {r['sampler']} | – | – | {r['error']} | | |")
            continue
        marks = r.get("vs_floor")
        vs = "floor" if marks is None else ", ".join(marks[m] or "?" for m in ("sw2", "mmd"))
        lines.append(f"| {r['sampler']} | {r['nfe']} | {r['seconds']:.2f} | {cell(r['sw2'], r['sw2_se'])} | "
                     f"{cell(r['mmd'], r['mmd_se'])} | {vs} |")
    if seeds < 2:
        lines.append("")
        lines.append("(one seed: no standard errors, so no difference can be called within or beyond noise)")
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    """Train, sample with every sampler, score against fresh data, write figure and tables."""
    import json

    from .data import dataset_sampler
    from .plotting import plot_samples
    from .training import load_model, train_model

    try:
        draw = dataset_sampler(args.data)
    except ValueError as err:
        raise UsageError(str(err)) from None
    _check_run_folder(args.out / "run", resume=False, overwrite=args.overwrite)
    _set_threads(args.threads)
    cfg = train_config(args.steps, seed=args.seed)
    start = time.perf_counter()
    trainer = train_model(args.data, args.out / "run", config=cfg, progress=args.progress,
                          overwrite=args.overwrite)
    train_s = time.perf_counter() - start
    print(f"trained {trainer.step} steps on {args.data} in {train_s:.1f} s")
    model, spec = load_model(trainer.checkpoint_path)
    result = _demo_table(model, spec, draw, args)
    rows, samples = result["rows"], result["samples"]
    args.out.mkdir(parents=True, exist_ok=True)
    fig = plot_samples(samples, reference=result["reference"], ncols=4,
                       title=f"{args.data}: samples per sampler (≈: within noise of the data's own floor)")
    fig.savefig(args.out / "demo.png", dpi=90)
    table = _demo_markdown(rows, args.seeds)
    (args.out / "demo.md").write_text(
        f"# scoresde demo: {args.data}, {trainer.step} training steps ({train_s:.0f} s)\n\n"
        f"SW2 and MMD against a sample of the data, mean ± standard error over {args.seeds} seeds "
        "(each seed: its own data sample, prior draw and sampling noise). The first row is the noise "
        "floor: a second, fresh sample of the data scored the same way. 'vs floor' says whether a "
        "sampler's SW2 is within two standard errors of the floor (≈) or above it (>); ranking "
        "samplers whose difference is within noise is not meaningful.\n\n"
        f"{table}\n", encoding="utf-8")
    (args.out / "demo.json").write_text(
        json.dumps({"data": args.data, "train_steps": trainer.step, "train_seconds": train_s,
                    "n": args.n, "seeds": args.seeds, "rows": rows}, indent=2), encoding="utf-8")
    print(table)
    print(f"wrote demo.png, demo.md, demo.json to {args.out} in {time.perf_counter() - start:.0f} s")
    return 0


# --------------------------------------------------------------------------------------
# scoresde compare
# --------------------------------------------------------------------------------------
def add_compare_parser(subparsers) -> None:
    """Register ``scoresde compare``."""
    from .compare import DEFAULT_NFE, SDE_NAMES

    p = subparsers.add_parser(
        "compare",
        help="compare samplers against exact scores (or a model's reference solution) over NFE budgets",
        description=(
            "Sample reference targets with exact scores using every sampler at every NFE "
            "budget, score the samples against exact ones (sliced W2, MMD, mode weights, "
            "covariances, log-density gap) and write results.json, results.md and PNG figures. "
            "With --model PATH (a scoresde checkpoint or a diffusers save_pretrained folder) the "
            "samplers run on that model instead and are scored against a reference solution: "
            "RMSE to a high-accuracy solve of the same probability-flow ODE from the same prior "
            "draws, and SW2/MMD to a many-step SDE sample."
        ),
    )
    p.add_argument("--model", type=Path, metavar="PATH",
                   help="reference-solution mode on a local model (scoresde checkpoint or diffusers "
                        "folder) instead of the exact-score targets")
    p.add_argument("--ode-tol", type=float, default=1e-5,
                   help="with --model: tolerance of the reference ODE solve (default 1e-5; checked "
                        "against a solve at a tenth of it)")
    p.add_argument("--sde-steps", type=_int_at_least(1), default=1000,
                   help="with --model: steps of the Euler-Maruyama SDE reference (default 1000)")
    p.add_argument("--target", dest="targets", nargs="+", action="extend", metavar="NAME",
                   help="target name(s) (default: all; --quick: imbalanced_2d)")
    p.add_argument("--samplers", nargs="+", action="extend", metavar="NAME",
                   help="sampler name(s) (default: all)")
    p.add_argument("--nfe", type=_nfe_list, metavar="LIST",
                   help=f"comma-separated NFE budgets (default {','.join(map(str, DEFAULT_NFE))})")
    p.add_argument("--n", type=_int_at_least(2), help="samples per run (default 2000; 64 with --model)")
    p.add_argument("--sde", choices=SDE_NAMES, default=None, help="forward SDE (default vp)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="master seed (default 0)")
    p.add_argument("--seeds", type=_int_at_least(1), default=None,
                   help="repetitions of every run, each with its own data and sampling seed; "
                        "metrics are mean ± standard error over them and the table marks "
                        "differences within noise (default 3, 1 with --model; 1 is fastest, with "
                        "no spread)")
    p.add_argument("--quick", action="store_true",
                   help="a few samplers, budgets 10,20,50, n=1000 on imbalanced_2d; other "
                        "options override")
    p.add_argument("--device", default=None, help="torch device (default cpu)")
    p.add_argument("--threads", type=_int_at_least(0), default=1,
                   help="torch CPU threads (default 1, for reproducible timings; 0 keeps torch's "
                        "default)")
    p.add_argument("--memory", choices=("rss", "tracemalloc", "none"), default="rss",
                   help="how to measure peak memory on the CPU (default rss)")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="skip the PNGs")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False,
                   help="progress bar on stderr (default off)")
    p.add_argument("--inverse", action="store_true",
                   help="compare posterior samplers (scoresde.posterior_sample methods; "
                        "--samplers picks methods, --target picks inverse problems) against exact "
                        "posteriors over per-sample NFE budgets (default 20,50,100,200, n=1000)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    """Run :func:`scoresde.compare.run_comparison`, print the table, save everything."""
    from . import compare
    from .samplers import names as sampler_names
    from .targets import target_names

    targets = _split_names(args.targets)
    samplers = _split_names(args.samplers)
    if getattr(args, "inverse", False):
        if args.model is not None:
            raise UsageError("--inverse compares posterior samplers on exact posteriors: --model does not apply")
        if args.seeds is None:
            args.seeds = 3
        return _cmd_compare_inverse(args, targets, samplers)
    _check_names("target", targets, target_names())
    _check_names("sampler", samplers, sampler_names())
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out must be a directory, {str(args.out)!r} is a file")
    if args.model is not None:
        return _compare_model(args, samplers)
    if args.seeds is None:
        args.seeds = 3
    config = compare.quick_preset() if args.quick else {}
    for key, value in (("targets", targets), ("samplers", samplers), ("nfe", args.nfe),
                       ("n", args.n), ("sde", args.sde)):
        if value is not None:
            config[key] = value
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    records = compare.run_comparison(**config, seed=args.seed, seeds=args.seeds,
                                     progress=args.progress,
                                     keep_samples=args.figures, device=args.device,
                                     memory=args.memory)
    return _save_and_report(records, args, time.perf_counter() - start, f"over {args.seeds} seed(s)")


def _save_and_report(records, args: argparse.Namespace, elapsed: float, what: str) -> int:
    """Save a comparison to ``--out``, print its table and a one-line summary."""
    from . import compare

    paths = compare.save(records, args.out, figures=args.figures)
    print(compare.to_markdown(records))
    n_ok = sum(r["status"] == "ok" for r in records)
    written = [paths["json"], paths["markdown"], *paths["figures"]]
    print(f"{len(records)} runs ({n_ok} ok) {what} in {elapsed:.1f} s; wrote "
          f"{', '.join(p.name for p in written)} to {args.out}")
    return 0


def _cmd_compare_inverse(args: argparse.Namespace, problems, methods) -> int:
    """``scoresde compare --inverse``: :func:`scoresde.compare.inverse.run_inverse_comparison`."""
    from .compare import inverse as inv
    from .inverse import METHODS, problem_names

    _check_names("target", problems, problem_names())
    _check_names("sampler", methods, list(METHODS))
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out must be a directory, {str(args.out)!r} is a file")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    records = inv.run_inverse_comparison(
        problems=problems or (["bimodal_2d", "mixture_10d"] if args.quick else None),
        methods=methods, nfe=args.nfe or ((20, 100) if args.quick else inv.INVERSE_NFE),
        n=args.n or (500 if args.quick else 1000), sde=args.sde or "vp", seed=args.seed,
        seeds=args.seeds, progress=args.progress, keep_samples=args.figures)
    elapsed = time.perf_counter() - start
    paths = inv.save_inverse(records, args.out, figures=args.figures, seed=args.seed)
    from .compare import to_markdown

    print(to_markdown(records))
    written = [paths["json"], paths["markdown"], *paths["figures"]]
    print(f"{len(records)} runs over {args.seeds} seed(s) in {elapsed:.1f} s; wrote "
          f"{', '.join(p.name for p in written)} to {args.out}")
    return 0


def _compare_model(args: argparse.Namespace, samplers: list[str] | None) -> int:
    """``scoresde compare --model PATH``: :func:`scoresde.compare.reference.run_reference_comparison`."""
    from .compare.reference import DEFAULT_REFERENCE_NFE, run_reference_comparison

    if args.targets or args.quick or args.sde:
        raise UsageError("--model compares samplers on that model: --target, --quick and --sde do not apply")
    if not args.ode_tol > 0:
        raise UsageError(f"--ode-tol must be > 0, got {args.ode_tol}")
    local = _local_model(args.model, args.device)
    seeds = 1 if args.seeds is None else args.seeds
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    records = run_reference_comparison(
        local.sde, local.score_fn, (args.n or 64, *local.event_shape), samplers,
        args.nfe or DEFAULT_REFERENCE_NFE, seed=args.seed, seeds=seeds, eps=local.eps,
        label=args.model.name or str(args.model), ode_tol=args.ode_tol, sde_steps=args.sde_steps,
        to_data=local.to_data, device=args.device, memory=args.memory, progress=args.progress)
    return _save_and_report(records, args, time.perf_counter() - start, f"on {args.model} over {seeds} seed(s)")


#: Functions that register one subcommand each (``add_<name>_parser(subparsers)``).
COMMANDS = (add_train_parser, add_sample_parser, add_demo_parser, add_compare_parser)


def build_parser() -> argparse.ArgumentParser:
    """The ``scoresde`` argument parser with every subcommand of :data:`COMMANDS`."""
    from . import __version__

    parser = _Parser(
        prog="scoresde",
        description="Score-based generative modelling with SDEs, checked against exact scores.",
    )
    parser.add_argument("--version", action="version", version=f"scoresde {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def _exit_status(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # pragma: no cover - argparse exits with ints
    return 1  # pragma: no cover


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` with ``parser`` and run the chosen command; returns the exit status."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return _exit_status(exc.code)
    prog = f"scoresde {args.command}" if getattr(args, "command", None) else parser.prog
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as exc:
        print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scoresde`` console script; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default ``sys.argv[1:]``).
    """
    return _run(build_parser(), argv)


def run_train(argv: Sequence[str] | None = None, *, prog: str = "scoresde train") -> int:
    """``scoresde train`` on its own (the entry point of ``python -m scoresde.training``).

    Parameters
    ----------
    argv : list of str, optional
        The options of ``scoresde train`` (default ``sys.argv[1:]``).
    prog : str
        The program name in help and error messages.
    """
    parser = _Parser(prog=prog, description=_TRAIN_DESCRIPTION)
    add_train_arguments(parser)
    return _run(parser, argv)
