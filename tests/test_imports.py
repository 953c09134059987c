"""``import scoresde`` stays light: heavy parts load on first use."""

import subprocess
import sys

import pytest

import scoresde as sd

HEAVY = ("matplotlib", "scoresde.compare", "scoresde.plotting", "scoresde.training", "scoresde.cli")

_SCRIPT = """
import sys, torch
import scoresde as sd
sde = sd.VPSDE()
out = sd.sample(sde, sd.imbalanced_2d().score_fn(sde), (8, 2), sampler="heun", steps=4,
                generator=torch.Generator().manual_seed(0))
assert out.nfe == 8
heavy = {heavy!r}
print(",".join(m for m in heavy if m in sys.modules))
"""


def _loaded_after(script: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return [m for m in proc.stdout.strip().split(",") if m]


def test_import_and_sample_load_no_heavy_module():
    # torch itself imports torch.distributed; what scoresde must not load is its trainer
    # (which uses torch.distributed), the harness and matplotlib.
    assert _loaded_after(_SCRIPT.format(heavy=HEAVY)) == []


@pytest.mark.parametrize("name, module", [("compare", "scoresde.compare"), ("plotting", "scoresde.plotting"),
                                          ("Trainer", "scoresde.training"), ("training", "scoresde.training")])
def test_lazy_names_resolve_on_first_use(name, module):
    obj = getattr(sd, name)
    assert obj is getattr(sd, name)
    assert module in sys.modules
    assert name in dir(sd)


def test_unknown_attribute_raises():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sd.nope  # noqa: B018


def test_every_public_name_resolves():
    for name in sd.__all__:
        assert getattr(sd, name) is not None, name


def test_non_finite_error_is_top_level():
    assert sd.NonFiniteError is sd.samplers.NonFiniteError
    assert issubclass(sd.NonFiniteError, FloatingPointError)
