"""The run folder: which files make a run, who may write over one, and its log ``loss.csv``."""

from __future__ import annotations

import csv
import os

from ._distributed import barrier

__all__: list[str] = []

_RUN_FILES = ("checkpoint.pt", "loss.csv")


def run_files(out_dir: str | os.PathLike | None) -> list[str]:
    """The files of a run that ``out_dir`` already holds (``checkpoint.pt``, ``loss.csv``), if any.

    Examples
    --------
    >>> from scoresde.training.trainer import run_files
    >>> run_files("no/such/folder")
    []
    """
    if out_dir is None:
        return []
    return [f for f in _RUN_FILES if os.path.exists(os.path.join(os.fspath(out_dir), f))]


def claim_run_folder(out_dir: str, *, overwrite: bool, world_size: int, is_main: bool) -> None:
    """Before a fresh run first writes to ``out_dir``: refuse it if it holds a run, or clear it.

    Raises
    ------
    FileExistsError
        If ``out_dir`` holds a run (:func:`run_files`) and ``overwrite`` is False. With
        ``overwrite`` its files are deleted (by rank 0, after every rank has looked).
    """
    held = run_files(out_dir)
    if held and not overwrite:
        raise FileExistsError(
            f"out_dir {out_dir!r} already holds a run ({', '.join(held)}); call resume() to continue "
            "it, or pass overwrite=True to start afresh (deletes them)")
    barrier(world_size)  # every rank has looked before rank 0 deletes anything
    if held and is_main:
        for name in held:
            os.unlink(os.path.join(out_dir, name))
    barrier(world_size)


class LossLog:
    """Append-only ``step,loss`` rows in ``folder/loss.csv``, opened on the first row.

    Parameters
    ----------
    folder : str or os.PathLike or None
        The run folder; None logs nothing.
    """

    def __init__(self, folder: str | os.PathLike | None):
        self.path = None if folder is None else os.path.join(os.fspath(folder), "loss.csv")
        self._file = None

    def write(self, step: int, loss: float) -> None:
        """Append one row (the header first when the file is new or empty)."""
        if self.path is None:
            return
        if self._file is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
            self._file = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115
            if new:
                self._file.write("step,loss\n")
        self._file.write(f"{step},{loss!r}\n")

    def flush(self) -> None:
        """Push the rows written so far to the file (before a checkpoint refers to them)."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Close the file (the next :meth:`write` reopens it)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def truncate(self, step: int) -> None:
        """Keep only the rows up to ``step`` (those of the checkpoint being resumed).

        Rows written after the checkpoint by a run that crashed, and a last line torn by the
        crash, are dropped; the file is rewritten atomically.
        """
        if self.path is None or not os.path.exists(self.path):
            return
        self.close()
        keep = []
        with open(self.path, encoding="utf-8", newline="") as f:
            for row in csv.reader(f):
                try:
                    if len(row) == 2 and int(row[0]) <= step:
                        float(row[1])
                        keep.append(row)
                except ValueError:
                    continue  # header, or a line torn by a crash
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write("step,loss\n")
            for s, v in keep:
                f.write(f"{s},{v}\n")
        os.replace(tmp, self.path)
