"""The README's set-up commands and CI stay in step."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.rst").read_text(encoding="utf-8")
    return re.findall(r"\.\. code-block:: bash\n\n   (.+)\n", text)


def test_readme_has_exactly_two_setup_commands():
    cmds = _readme_commands()
    assert len(cmds) == 2
    assert all("-c constraints.txt" in c for c in cmds)


def test_ci_runs_the_readme_test_command():
    test_cmd = _readme_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_cmd in ci


def test_constraints_pin_torch_and_library_keeps_a_range():
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text(encoding="utf-8").split()
    assert "torch>=2.1" in (ROOT / "setup.cfg").read_text(encoding="utf-8")
