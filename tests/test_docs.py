"""The Sphinx documentation: complete API reference and a warning-free build.

(a) every name of ``scoresde.__all__`` has an autosummary entry in ``docs/api/``;
(b) ``sphinx-build -W --keep-going -b html docs <tmp>`` exits with status 0.

(b) is skipped only when Sphinx itself is not installed (``pip install -e ".[docs]"
ipykernel`` provides everything the build needs). It executes the notebooks through
myst-nb's cache in ``docs/_build/.jupyter_cache``: the first build after a notebook changed
runs that notebook (fast mode, ``SCORESDE_FAST=1``); later builds reuse its outputs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import scoresde

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API_DIR = DOCS / "api"

# A cold build (every notebook executed once, the benchmark computed once) takes a few
# minutes on two cores; a warm one well under two. The limit only guards against a hang.
BUILD_TIMEOUT_S = int(os.environ.get("SCORESDE_DOCS_TEST_TIMEOUT", "1200"))


def _autosummary_entries(text: str) -> set[str]:
    """Names listed in the ``.. autosummary::`` directives of a reST source."""
    entries: set[str] = set()
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith(".. autosummary::"):
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("   ")):
                item = lines[i].strip()
                if item and not item.startswith(":") and not item.startswith(".."):
                    entries.add(item.lstrip("~"))
                i += 1
        else:
            i += 1
    return entries


def _documented_names() -> set[str]:
    names: set[str] = set()
    for path in sorted(API_DIR.glob("*.rst")):
        text = path.read_text(encoding="utf-8")
        module = "scoresde" if ".. currentmodule:: scoresde" in text else ""
        for entry in _autosummary_entries(text):
            if entry.startswith("scoresde."):
                names.add(entry[len("scoresde."):])
            elif module:
                names.add(entry)
    return names


def test_api_reference_lists_every_public_name():
    assert API_DIR.is_dir(), "docs/api/ is missing"
    documented = _documented_names()
    missing = sorted(set(scoresde.__all__) - documented)
    assert not missing, f"names of scoresde.__all__ without an entry in docs/api/*.rst: {missing}"


def test_api_reference_has_no_stale_names():
    stale = sorted(n for n in _documented_names() if "." not in n and n not in scoresde.__all__)
    assert not stale, f"docs/api/*.rst lists names that scoresde.__all__ does not export: {stale}"


def test_bibliography_keys_are_defined():
    """Every :cite: key used in docs/ exists in docs/references.bib."""
    bib = (DOCS / "references.bib").read_text(encoding="utf-8")
    defined = set(re.findall(r"@\w+\{([^,\s]+),", bib))
    used: set[str] = set()
    for path in DOCS.rglob("*.rst"):
        if "_build" in path.parts or "generated" in path.parts:
            continue
        for keys in re.findall(r":cite:[a-z]*:`([^`]+)`", path.read_text(encoding="utf-8")):
            used.update(k.strip() for k in keys.split(","))
    assert not used - defined, f"undefined citation keys: {sorted(used - defined)}"


@pytest.mark.skipif(importlib.util.find_spec("sphinx") is None,
                    reason="Sphinx is not installed (pip install -e '.[docs]' ipykernel)")
def test_sphinx_build_is_warning_free(tmp_path):
    out = tmp_path / "html"
    env = dict(os.environ)
    env.setdefault("SCORESDE_FAST", "1")
    env.pop("SCORESDE_DOCS_ONLINE", None)  # never download inventories in tests
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
           str(DOCS), str(out)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:  # pragma: no cover - only on a hang
        pytest.fail(f"sphinx-build did not finish within {BUILD_TIMEOUT_S} s: {exc}")
    report = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"sphinx-build -W failed (exit {proc.returncode}):\n{report}"
    assert (out / "index.html").is_file()
    assert (out / "api" / "index.html").is_file()
    # the stand-alone site works offline: no page loads a script from another host
    remote = _remote_scripts(out)
    assert not remote, f"pages that load remote scripts (first 5): {remote[:5]}"
    assert (out / "_static" / "mathjax" / "tex-chtml.js").is_file()


_SCRIPT_SRC = re.compile(r"""<script\b[^>]*\bsrc\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


def _remote_scripts(site: Path) -> list[tuple[str, str]]:
    """``(page, src)`` for every ``<script src=...>`` of the built site that is not a local file."""
    found = []
    for page in site.rglob("*.html"):
        for src in _SCRIPT_SRC.findall(page.read_text(encoding="utf-8", errors="replace")):
            if re.match(r"^([a-z][a-z0-9+.-]*:)?//", src, re.IGNORECASE):
                found.append((str(page.relative_to(site)), src))
    return found


def test_remote_script_finder(tmp_path):
    (tmp_path / "a.html").write_text('<script src="_static/x.js"></script>'
                                     '<script defer src="https://cdn.example/mj.js"></script>'
                                     "<script src='//cdn.example/y.js'></script>", encoding="utf-8")
    assert [src for _, src in _remote_scripts(tmp_path)] == ["https://cdn.example/mj.js", "//cdn.example/y.js"]


def _requirement_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "%")):
            names.add(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def _notebook_imports() -> dict[str, set[str]]:
    """Top-level modules imported by the code cells of ``notebooks/*.ipynb``, with the notebooks."""
    import json

    found: dict[str, set[str]] = {}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        for cell in cells:
            if cell["cell_type"] != "code":
                continue
            for line in "".join(cell["source"]).splitlines():
                m = re.match(r"\s*(?:from\s+([\w.]+)\s+import|import\s+([\w., ]+))", line)
                if not m:
                    continue
                mods = [m.group(1)] if m.group(1) else [p.split(" as ")[0] for p in m.group(2).split(",")]
                for mod in mods:
                    found.setdefault(mod.strip().split(".")[0], set()).add(nb.name)
    return found


def test_docs_extra_installs_what_the_notebooks_import():
    """``pip install -e ".[docs]"`` alone must be enough to execute every notebook in the build."""
    import configparser
    from importlib.metadata import packages_distributions

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    provided = _requirement_names(cfg["options"]["install_requires"])
    provided |= _requirement_names(cfg["options.extras_require"]["docs"])
    provided = _with_dependencies(provided)
    dists = packages_distributions()
    imports = _notebook_imports()
    # optional dependencies that scoresde imports on the notebooks' behalf
    for marker, module in _OPTIONAL_IMPORTS.items():
        users = {nb.name for nb in (ROOT / "notebooks").glob("*.ipynb") if marker in nb.read_text(encoding="utf-8")}
        if users:
            imports.setdefault(module, set()).update(users)
    missing = {}
    for module, notebooks in imports.items():
        if module in sys.stdlib_module_names or module == "scoresde":
            continue
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & provided:
            missing[module] = sorted(notebooks)
    assert not missing, f"notebook imports not installed by the docs extra (module: notebooks): {missing}"


# a notebook that uses the marker needs the module, imported lazily inside scoresde
_OPTIONAL_IMPORTS = {"digits": "sklearn"}


def _with_dependencies(names: set[str]) -> set[str]:
    """``names`` and everything they require when installed here (extras' markers ignored)."""
    from importlib.metadata import PackageNotFoundError, requires

    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        todo.extend(sorted(_requirement_names("\n".join(r for r in reqs if "extra ==" not in r))))
    return seen


def _public_objects():
    import importlib
    import inspect

    seen = {}
    for name in scoresde.__all__:
        obj = getattr(scoresde, name)
        if inspect.ismodule(obj):
            for sub in getattr(obj, "__all__", ()):
                seen[f"{obj.__name__}.{sub}"] = getattr(obj, sub)
        else:
            seen[f"scoresde.{name}"] = obj
    importlib.import_module("scoresde")
    return seen


@pytest.mark.skipif(importlib.util.find_spec("sphinx") is None, reason="Sphinx is not installed")
def test_autosummary_one_line_summaries_are_whole_sentences():
    """The API tables show the first sentence of each docstring, cut at a period and a space:
    an abbreviation such as "eq." or "App." there cuts it short, and a constant without a
    docstring shows the docstring of its type ("Built-in immutable sequence")."""
    import inspect

    from docutils.frontend import OptionParser
    from docutils.parsers.rst import Parser
    from sphinx.ext.autosummary import extract_summary

    settings = OptionParser(components=(Parser,)).get_default_values()
    settings.language_code = "en"
    bad = {}
    for qualname, obj in _public_objects().items():
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        doc = inspect.getdoc(obj)
        if not doc:
            bad[qualname] = "(no docstring)"
            continue
        summary = extract_summary(doc.splitlines(), settings)
        if re.search(r"\b(eq|eqs|App|Alg|Sec|Thm|Fig|Ch|Prop|Def|cf|vs|resp|No)\.$", summary):
            bad[qualname] = summary
    assert not bad, f"one-line summaries cut short: {bad}"


def test_public_constants_have_doc_comments():
    """A constant exported at the top level needs a ``#:`` comment there, or its API entry
    shows the docstring of its type (e.g. "Built-in immutable sequence" for a tuple)."""
    import inspect

    sphinx_pycode = pytest.importorskip("sphinx.pycode")
    documented = {name for (_, name) in sphinx_pycode.ModuleAnalyzer.for_module("scoresde").find_attr_docs()}
    constants = [n for n in scoresde.__all__ if not (inspect.ismodule(getattr(scoresde, n))
                                                     or callable(getattr(scoresde, n)))]
    assert constants, "expected at least SDE_NAMES"
    assert not [n for n in constants if n not in documented]
