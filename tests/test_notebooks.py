"""The example notebooks: each one runs top to bottom in fast mode, and none is stored with outputs.

Every ``notebooks/*.ipynb`` is executed with nbclient in a fresh ``python3`` kernel, in the
``notebooks/`` folder, with ``SCORESDE_FAST=1`` (small sample sizes and few training steps). The
notebooks carry their own ``assert`` checks against exact ground truth, so a notebook that
runs but computes something wrong fails here too. The execution tests are skipped, with the
reason, when nbclient or ipykernel is not installed (``pip install scoresde[notebooks]`` or
``pip install nbclient ipykernel``). The stripped-outputs check needs only the standard library.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300  # per cell; in fast mode a whole notebook takes well under a minute

_MISSING = [m for m in ("nbclient", "nbformat", "ipykernel") if importlib.util.find_spec(m) is None]


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {NB_DIR}"


@pytest.mark.skipif(bool(_MISSING), reason=f"notebook execution needs {', '.join(_MISSING)} "
                    "(pip install nbclient ipykernel)")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path, monkeypatch, record_property):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("SCORESDE_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NB_DIR)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError with the failing cell and its traceback
    elapsed = time.perf_counter() - start
    record_property("fast_mode_seconds", round(elapsed, 1))
    print(f"{path.name}: {elapsed:.1f} s in fast mode")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    dirty = [
        i for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (f"{path.name}: cells {dirty} have outputs or execution counts; clear them "
                       "before committing (e.g. jupyter nbconvert --clear-output --inplace)")
