"""The checkpoint format of :class:`~scoresde.training.Trainer`: atomic writes, safe reads, resume checks.

A checkpoint is a plain ``dict`` of tensors and containers (:func:`pack_checkpoint` lays it
out), written atomically by :func:`save_checkpoint` and read back only through
``torch.load(..., weights_only=True)`` (`PyTorch serialization notes
<https://pytorch.org/docs/stable/notes/serialization.html#weights-only>`_) by
:func:`load_checkpoint`, so a file that carries code is refused before anything in it runs.
:func:`check_resumable` decides whether a trainer may continue a checkpoint.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings

import torch

from .config import TrainConfig

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "pack_checkpoint",
    "check_resumable",
]

#: Version of the checkpoint layout written by :class:`~scoresde.training.Trainer`.
FORMAT_VERSION = 1
_FORMAT = "scoresde.trainer"
_REQUIRED_KEYS = (
    "format",
    "format_version",
    "step",
    "model",
    "ema",
    "optimizer",
    "schedule",
    "config",
    "ranks",
    "losses",
    "world_size",
)

# fields that must agree between a checkpoint and the trainer resuming from it
_RUN_IDENTITY = (
    "batch_size", "lr", "weight_decay", "warmup", "decay_steps", "grad_clip", "ema_decay", "seed",
    "label_dropout",
)


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, unsafe or not a scoresde trainer checkpoint."""


def one_line(err: BaseException) -> str:
    """The informative line of an exception's message (for one-line error reports)."""
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:  # weights_only refusals carry the useful detail on a late line
        if ln.startswith("Unsupported") or "GLOBAL" in ln:
            return ln
    return lines[0][:200] if lines else type(err).__name__


def _is_text(path: str) -> bool:
    """Whether the file starts like text (UTF-8, no NUL byte): a CSV or a script, not a torch.save file."""
    with open(path, "rb") as f:
        head = f.read(512)
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:  # a multi-byte character cut at the end of the head is text
        return err.start >= len(head) - 3 and err.reason == "unexpected end of data"
    return True


def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """Write ``obj`` with :func:`torch.save` atomically.

    The bytes go to a temporary file in the same folder, which is flushed and ``fsync``-ed and
    then renamed over ``path`` with :func:`os.replace` (atomic on POSIX and Windows); the
    folder is ``fsync``-ed too where the platform allows. A crash at any moment leaves either
    the old file or the new one, never a torn one.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - folders cannot be opened on Windows
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(dfd)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load and validate a :class:`~scoresde.training.Trainer` checkpoint with ``torch.load(weights_only=True)``.

    Only tensors and plain containers are unpickled: a file that carries code (a pickle with
    ``GLOBAL``/``REDUCE`` of an arbitrary callable) is refused before anything in it runs.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.
    map_location : optional
        Passed to :func:`torch.load` (default ``"cpu"``).

    Returns
    -------
    dict
        The checkpoint (keys ``step``, ``model``, ``ema``, ``optimizer``, ``schedule``,
        ``config``, ``ranks``, ``losses``, ``world_size``, ``format``, ``format_version``).

    Raises
    ------
    ~scoresde.CheckpointError
        With a one-line message naming the file and the problem: missing, empty, truncated or
        corrupt, refused by the safe loader, not a scoresde checkpoint, missing keys, or an
        unsupported ``format_version``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r}: file does not exist")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r}: not a regular file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path!r}: file is empty")
    if _is_text(path):
        raise CheckpointError(
            f"checkpoint {path!r}: not a scoresde checkpoint (a text file; checkpoints are the "
            "checkpoint.pt files written by scoresde train and Trainer.save)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path!r}: refused by the safe loader (torch.load weights_only=True; the "
            f"file holds code or objects other than tensors and containers): {one_line(err)}"
        ) from None
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError/EOFError/... for torn files
        raise CheckpointError(
            f"checkpoint {path!r}: truncated or corrupt ({type(err).__name__}: {one_line(err)})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != _FORMAT:
        what = f"a dict without format={_FORMAT!r}" if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"checkpoint {path!r}: not a scoresde trainer checkpoint (got {what})"
        )
    if obj.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path!r}: unsupported format_version {obj.get('format_version')!r} "
            f"(this scoresde reads version {FORMAT_VERSION})"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint {path!r}: missing keys {missing}")
    return obj


def pack_checkpoint(
    *,
    step: int,
    model: dict,
    ema: dict,
    optimizer: dict,
    config: TrainConfig,
    ranks: list,
    losses: list[float],
    world_size: int,
    metadata: dict,
) -> dict:
    """Lay out a checkpoint of version :data:`FORMAT_VERSION` from the trainer's states.

    ``model``, ``ema`` and ``optimizer`` are ``state_dict()`` outputs, ``ranks`` the per-rank
    data-stream and loss-generator states, ``losses`` one loss per update so far.
    """
    return {
        "format": _FORMAT,
        "format_version": FORMAT_VERSION,
        "step": step,
        "model": model,
        "ema": ema,
        "optimizer": optimizer,
        "schedule": {
            "kind": "linear_warmup_cosine" if config.decay_steps else "linear_warmup",
            "warmup": config.warmup,
            "decay_steps": config.decay_steps,
            "lr": config.lr,
        },
        "config": config.to_dict(),
        "ranks": ranks,
        "losses": torch.tensor(losses, dtype=torch.float64),
        "world_size": world_size,
        "torch_version": str(torch.__version__),
        "metadata": metadata,
    }


def checkpoint_config(ckpt: dict, path: str, **overrides) -> TrainConfig:
    """The :class:`TrainConfig` stored in ``ckpt`` (with ``overrides``); a ``CheckpointError`` if invalid."""
    try:
        return TrainConfig.from_dict({**ckpt["config"], **overrides})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path!r}: invalid config ({err})") from None


# the command-line option of each run-defining field (``decay_steps`` follows ``--steps``)
_OPTION = {"batch_size": "--batch-size", "lr": "--lr", "warmup": "--warmup", "decay_steps": "--steps",
           "ema_decay": "--ema-decay", "seed": "--seed", "label_dropout": "--label-dropout"}


def _describe_stream(state) -> str:
    if state.get("kind") == "sampler":
        return "a generated set (fresh samples every batch)"
    return f"a fixed set of {state.get('n')} rows"


def _metadata(ckpt: dict) -> dict:
    meta = ckpt.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _data_differs(ckpt: dict, data_state: dict | None, metadata: dict | None) -> str | None:
    """Why the checkpoint's run was trained on other data than this trainer's, or None."""
    name, ours_name = _metadata(ckpt).get("data"), (metadata or {}).get("data")
    if name is not None and ours_name is not None and name != ours_name:
        return f"the run was trained on {name!r}, this one on {ours_name!r}"
    spec, ours_spec = _metadata(ckpt).get("model"), (metadata or {}).get("model")
    if isinstance(spec, dict) and isinstance(ours_spec, dict) and spec.get("kind") == ours_spec.get("kind"):
        if spec.get("shift") != ours_spec.get("shift") or spec.get("scale") != ours_spec.get("scale"):
            return "the data's mean or spread differs from the run's"
    try:
        theirs = ckpt["ranks"][0]["data"]
        same = (theirs["kind"], theirs["n"]) == (data_state["kind"], data_state["n"])
    except (KeyError, IndexError, TypeError):  # malformed: left to the state loaders to report
        return None
    if not same:
        return f"the run drew from {_describe_stream(theirs)}, this one from {_describe_stream(data_state)}"
    return None


def _model_differs(ckpt: dict, metadata: dict | None) -> str | None:
    spec, ours = _metadata(ckpt).get("model"), (metadata or {}).get("model")
    if not isinstance(spec, dict) or not isinstance(ours, dict):
        return None
    keys = [k for k in spec if k not in ("shift", "scale") and spec.get(k) != ours.get(k)]
    if not keys:
        return None
    return ", ".join(f"{k} {spec.get(k)!r} vs {ours.get(k)!r}" for k in keys)


def check_resumable(ckpt: dict, config: TrainConfig, world_size: int, path: str, *,
                    data_state: dict | None = None, metadata: dict | None = None) -> None:
    """Raise a ``CheckpointError`` unless a trainer with ``config`` may continue ``ckpt``.

    The run-defining fields of the config (``batch_size``, ``lr``, ``weight_decay``,
    ``warmup``, ``decay_steps``, ``grad_clip``, ``ema_decay``, ``seed``, ``label_dropout``) and the number of
    processes must agree; ``steps``, ``checkpoint_every`` and ``log_every`` may differ. With
    the trainer's data-stream state (``data_state``, see
    :meth:`~scoresde.data.DataStream.state_dict`) and ``metadata``, the data (their name,
    kind, size and standardisation) and the model spec must agree too. The messages say
    what differs in the words of the command line (``--steps differs``, ``trained on
    different data``) as well as in the config's.
    """
    cfg = checkpoint_config(ckpt, path)
    diff = [k for k in _RUN_IDENTITY if getattr(cfg, k) != getattr(config, k)]
    if diff:
        pairs = ", ".join(f"{k}={getattr(cfg, k)!r} vs {getattr(config, k)!r}" for k in diff)
        options = []
        for k in diff:
            if k == "decay_steps":  # the recipe decays over the run's steps
                options.append(f"--steps differs (the run's learning rate decays over its --steps {cfg.steps})")
            elif k in _OPTION:
                options.append(f"{_OPTION[k]} differs (the run used {getattr(cfg, k)!r})")
        said = "; ".join(options) or "the run was started with other settings"
        raise CheckpointError(
            f"checkpoint {path!r}: config differs from this trainer's ({pairs}): {said}; resume "
            "with the settings the run was started with, or start a new run"
        )
    if ckpt["world_size"] != world_size or len(ckpt["ranks"]) != world_size:
        raise CheckpointError(
            f"checkpoint {path!r}: written by {ckpt['world_size']} process(es), resumed by "
            f"{world_size}"
        )
    why = _data_differs(ckpt, data_state, metadata)
    if why is not None:
        raise CheckpointError(f"checkpoint {path!r}: trained on different data ({why}); resume with "
                              "the run's own --data, or start a new run")
    what = _model_differs(ckpt, metadata)
    if what is not None:
        raise CheckpointError(f"checkpoint {path!r}: the model differs from the run's ({what}; from the "
                              "command line: --sde, --hidden or --conditional differs); resume with the run's "
                              "own settings")
