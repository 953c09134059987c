"""The ``scoresde`` command line (also ``python -m scoresde``).

Subcommands are added by functions ``add_<name>_parser(subparsers)`` listed in
:data:`COMMANDS`; each registers its arguments and sets ``func`` to a ``cmd_<name>(args) -> int``
that does the work. Bad input gives a one-line message on stderr and exit status 2; a failure
while running gives a one-line message and status 1; there is never a traceback.

Examples
--------
.. code-block:: bash

    scoresde compare --quick --out results/
    scoresde compare --target imbalanced_2d ring8 --samplers heun ddim --nfe 10,20,50 --out out/
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser", "COMMANDS", "add_compare_parser", "cmd_compare"]


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
# scoresde compare
# --------------------------------------------------------------------------------------
def add_compare_parser(subparsers) -> None:
    """Register ``scoresde compare``."""
    from .compare import DEFAULT_NFE, SDE_NAMES

    p = subparsers.add_parser(
        "compare",
        help="compare samplers against exact scores over a sweep of NFE budgets",
        description=(
            "Sample reference targets with exact scores using every sampler at every NFE "
            "budget, score the samples against exact ones (sliced W2, MMD, mode weights, "
            "covariances, log-density gap) and write results.json, results.md and PNG figures."
        ),
    )
    p.add_argument("--target", dest="targets", nargs="+", action="extend", metavar="NAME",
                   help="target name(s) (default: all; --quick: imbalanced_2d)")
    p.add_argument("--samplers", nargs="+", action="extend", metavar="NAME",
                   help="sampler name(s) (default: all)")
    p.add_argument("--nfe", type=_nfe_list, metavar="LIST",
                   help=f"comma-separated NFE budgets (default {','.join(map(str, DEFAULT_NFE))})")
    p.add_argument("--n", type=_int_at_least(2), help="samples per run (default 2000)")
    p.add_argument("--sde", choices=SDE_NAMES, default=None, help="forward SDE (default vp)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="master seed (default 0)")
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
    p.add_argument("--progress", action="store_true", help="progress bar on stderr")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    """Run :func:`scoresde.compare.run_comparison`, print the table, save everything."""
    from . import compare
    from .samplers import names as sampler_names
    from .targets import target_names

    targets = _split_names(args.targets)
    samplers = _split_names(args.samplers)
    _check_names("target", targets, target_names())
    _check_names("sampler", samplers, sampler_names())
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out must be a directory, {str(args.out)!r} is a file")
    config = compare.quick_preset() if args.quick else {}
    for key, value in (("targets", targets), ("samplers", samplers), ("nfe", args.nfe),
                       ("n", args.n), ("sde", args.sde)):
        if value is not None:
            config[key] = value
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    records = compare.run_comparison(**config, seed=args.seed, progress=args.progress,
                                     keep_samples=args.figures, device=args.device,
                                     memory=args.memory)
    elapsed = time.perf_counter() - start
    paths = compare.save(records, args.out, figures=args.figures)
    print(compare.to_markdown(records))
    n_ok = sum(r["status"] == "ok" for r in records)
    written = [paths["json"], paths["markdown"], *paths["figures"]]
    print(f"{len(records)} runs ({n_ok} ok) in {elapsed:.1f} s; wrote "
          f"{', '.join(p.name for p in written)} to {args.out}")
    return 0


#: Functions that register one subcommand each (``add_<name>_parser(subparsers)``).
COMMANDS = (add_compare_parser,)


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scoresde`` console script; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default ``sys.argv[1:]``).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return _exit_status(exc.code)
    prog = f"scoresde {args.command}"
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
