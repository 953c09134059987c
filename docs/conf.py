"""Sphinx configuration of the scoresde documentation.

Build (from the repository root)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

Environment variables read here:

``SCORESDE_DOCS_ONLINE=1``
    Enable the intersphinx links to the Python, NumPy, SciPy and PyTorch docs. Their
    inventories are downloaded, so this needs the network; it is off by default so that
    an offline build (CI, the test suite) never tries a download and never warns.
``SCORESDE_DOCS_NB_EXECUTION``
    myst-nb execution mode for the notebooks: ``cache`` (default: execute a notebook only
    when its code changed since the last build), ``off``, ``force`` or ``auto``.
``SCORESDE_DOCS_NB_TIMEOUT``
    Seconds one notebook cell may run (default 600).
``SCORESDE_FAST``
    Set to ``1`` here (unless already set): the notebooks read it and run their fast
    variants (fewer training steps, smaller samples), which keeps a cold build short.

At start-up this file also

* links every ``notebooks/*.ipynb`` of the repository into ``docs/notebooks/`` (git-ignored)
  and writes the index page listing them, so notebooks that do not exist yet cannot break
  the build;
* runs ``docs/_scripts/make_benchmark.py`` once (about 30 s) if the benchmark table and
  figures of the "Choosing a sampler" page are missing from ``docs/_generated/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

# Document the checkout that holds these docs, installed or not.
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SCORESDE_FAST", "1")

import scoresde  # noqa: E402

# -- Project -----------------------------------------------------------------------------
project = "scoresde"
author = "the scoresde developers"
copyright = "2026, the scoresde developers"
release = scoresde.__version__
version = ".".join(release.split(".")[:2])

# -- General -----------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # serves MathJax from the built site (_static/mathjax) instead of a CDN, so that the
    # stand-alone site renders formulas offline; it sets ``mathjax_path``
    "sphinx-mathjax-offline",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "myst_nb",
    "sphinx_copybutton",
    "sphinxcontrib.bibtex",
]

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "_generated",
    "_scripts",
    "_templates",
    "Thumbs.db",
    ".DS_Store",
    "**.ipynb_checkpoints",
    "**/.jupyter_cache",
]
source_suffix = {
    ".rst": "restructuredtext",
    ".ipynb": "myst-nb",
    ".md": "myst-nb",
}
root_doc = "index"
nitpicky = False
pygments_style = "sphinx"
pygments_dark_style = "monokai"

# Warnings that come from notebook *content* (written elsewhere) rather than from these docs:
# skipped heading levels in a notebook and widget outputs (tqdm) that HTML cannot show.
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]

# -- autodoc / autosummary / napoleon ------------------------------------------------------
autosummary_generate = True
autosummary_generate_overwrite = True
autosummary_ignore_module_all = False  # a module's __all__ is its public surface
autosummary_imported_members = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_class_signature = "mixed"


def _aliases_documented_at_top_level() -> list[str]:
    """Sub-module names of classes whose page is the top-level one (``scoresde.X``).

    A class defined in a private module and exported both as ``scoresde.X`` and as
    ``scoresde.<sub>.X`` would be documented twice under the same canonical name; the
    sub-module pages link to the top-level entry instead.
    """
    import importlib
    import inspect

    skip = []
    for sub in ("samplers", "metrics", "compare", "data", "losses", "nets", "plotting", "training"):
        mod = importlib.import_module(f"scoresde.{sub}")
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name, None)
            if (inspect.isclass(obj) and getattr(scoresde, name, None) is obj
                    and obj.__module__ != mod.__name__ and name in scoresde.__all__):
                skip.append(f"scoresde.{sub}.{name}")
    return skip


autosummary_context = {"scoresde_skip": _aliases_documented_at_top_level()}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = True  # "Attributes" sections as fields: no duplicate attribute entries
napoleon_use_rtype = False
napoleon_include_init_with_doc = False

# -- intersphinx (offline by default) ---------------------------------------------------------
if os.environ.get("SCORESDE_DOCS_ONLINE") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "scipy": ("https://docs.scipy.org/doc/scipy", None),
        "torch": ("https://docs.pytorch.org/docs/stable", None),
    }
else:
    intersphinx_mapping = {}
intersphinx_timeout = 10

# -- MathJax -----------------------------------------------------------------------------------
mathjax3_config = {
    "tex": {
        "macros": {
            "R": r"\mathbb{R}",
            "E": r"\mathbb{E}",
            "N": r"\mathcal{N}",
            "dd": r"\mathrm{d}",
            "div": r"\operatorname{div}",
        }
    }
}

# -- myst / myst-nb ------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath"]
nb_execution_mode = os.environ.get("SCORESDE_DOCS_NB_EXECUTION", "cache")
nb_execution_cache_path = str(DOCS / "_build" / ".jupyter_cache")
nb_execution_timeout = int(os.environ.get("SCORESDE_DOCS_NB_TIMEOUT", "600"))
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_in_temp = True  # notebooks write their scratch files to a temporary folder
nb_merge_streams = True

# -- bibliography ---------------------------------------------------------------------------------
bibtex_bibfiles = ["references.bib"]
bibtex_default_style = "plain"
bibtex_reference_style = "author_year"

# -- copybutton: strip prompts from copied code -----------------------------------------------
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

# -- HTML ------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"scoresde {release}"


# -- build-time generated inputs ---------------------------------------------------------------------
NOTEBOOK_INDEX = """\
Example notebooks
=================

The notebooks live in the ``notebooks/`` folder of the repository. They are executed when
the documentation is built, in their fast mode (``SCORESDE_FAST=1``), and their outputs are
cached, so a notebook only runs again after its code changed. To run one yourself, start
Jupyter from the repository root and open it from ``notebooks/``.
"""


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _link_notebooks() -> None:
    """Mirror ``../notebooks/*.ipynb`` into ``docs/notebooks/`` as symlinks, plus an index."""
    src = ROOT / "notebooks"
    dst = DOCS / "notebooks"
    dst.mkdir(exist_ok=True)
    found = sorted(src.glob("*.ipynb")) if src.is_dir() else []
    names = {p.name for p in found}
    for entry in dst.iterdir():  # drop links to notebooks that no longer exist
        if entry.is_symlink() and entry.name not in names:
            entry.unlink()
    for nb in found:
        link = dst / nb.name
        target = os.path.relpath(nb, dst)
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    text = NOTEBOOK_INDEX
    if found:
        text += "\n.. toctree::\n   :maxdepth: 1\n\n"
        text += "".join(f"   {nb.stem}\n" for nb in found)
    else:
        text += "\nNo notebook has been added to the repository yet.\n"
    _write_if_changed(dst / "index.rst", text)


def _make_benchmark() -> None:
    """Run the sampler benchmark once if its outputs are missing."""
    out = DOCS / "_generated"
    needed = [out / "benchmark.csv", out / "noise_floor.csv", out / "error_vs_nfe_imbalanced_2d.png",
              out / "samples_imbalanced_2d.png"]
    if all(p.exists() for p in needed):
        return
    print("scoresde docs: running docs/_scripts/make_benchmark.py (about 30 s)", flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    subprocess.run([sys.executable, str(DOCS / "_scripts" / "make_benchmark.py"), "--out", str(out)],
                   check=True, cwd=str(ROOT), env=env)


def _write_cli_help() -> None:
    """Capture ``scoresde <command> --help`` for the CLI page (cheap; done on every build)."""
    import argparse

    from scoresde.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "92"
    try:
        parser = build_parser()
        parts = [("scoresde", parser.format_help())]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parts += [(f"scoresde {name}", sub.format_help()) for name, sub in action.choices.items()]
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    text = ""
    for title, body in parts:
        heading = f"``{title}``"
        text += f"{heading}\n{'-' * len(heading)}\n\n.. code-block:: text\n\n"
        text += "".join(f"   {line}".rstrip() + "\n" for line in body.strip().splitlines()) + "\n"
    out = DOCS / "_generated"
    out.mkdir(exist_ok=True)
    _write_if_changed(out / "cli_help.rst", text)


_link_notebooks()
_write_cli_help()
_make_benchmark()
