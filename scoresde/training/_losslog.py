"""``loss.csv``: the training log of a run folder (rows ``step,loss``), appended and trimmed on resume."""

from __future__ import annotations

import csv
import os

__all__: list[str] = []


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
