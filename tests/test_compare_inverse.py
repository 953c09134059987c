"""The inverse-problem mode of the comparison harness and ``scoresde compare --inverse``."""

from __future__ import annotations

import json

import pytest

from scoresde.cli import main
from scoresde.compare import run_inverse_comparison, to_markdown
from scoresde.compare.inverse import steps_for_budget
from scoresde.inverse import method_cost


def test_records_against_the_exact_posterior():
    recs = run_inverse_comparison(problems=["bimodal_2d"], methods=["smc", "repaint", "dps"],
                                  nfe=(5, 30), n=400, seeds=2, keep_samples=True)
    by = {(r["sampler"], r["budget"]): r for r in recs}
    assert by["repaint", 30]["steps"] == steps_for_budget("repaint", 30) < 30   # jumps cost
    assert by["repaint", 30]["nfe"] <= 30
    smc = by["smc", 30]
    assert smc["status"] == "ok" and smc["nfe"] == 30 and smc["nfe_calls"] == 30
    assert smc["vjp"] == 0 and by["dps", 30]["vjp"] == 30
    assert smc["spread"] is not None and smc["wall_time_s"] > 0
    assert smc["noise_floor"]["sw2"] > 0 and smc["sw2"] > 0
    assert "samples" in smc and "samples" not in by["smc", 5]
    assert smc["error"] < by["dps", 30]["error"]             # exact beats the approximation
    table = to_markdown(recs)
    assert "bimodal_2d" in table and "smc" in table


def test_budget_to_steps_and_bad_input():
    assert steps_for_budget("repaint", 100, jump_length=5, jump_n_sample=2) == max(
        s for s in range(1, 100) if method_cost("repaint", s, jump_length=5, jump_n_sample=2)[
            "nfe"] <= 100)
    with pytest.raises(ValueError, match="methods must contain names from smc"):
        run_inverse_comparison(methods=["nope"])
    with pytest.raises(ValueError, match="unknown inverse problem"):
        run_inverse_comparison(problems=["ring8"])
    recs = run_inverse_comparison(problems=["bimodal_2d"], methods=["smc"], nfe=(10,), n=20,
                                  options={"smc": {"particles": 5}})
    assert recs[0]["status"] == "error" and "particles must be >= n" in recs[0]["reason"]


def test_cli_compare_inverse(tmp_path, capsys):
    out = tmp_path / "inv"
    rc = main(["compare", "--inverse", "--target", "bimodal_2d", "--samplers", "smc", "pigdm",
               "--nfe", "10", "--n", "200", "--seeds", "1", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| bimodal_2d |" in text and "pigdm" in text
    doc = json.loads((out / "results.json").read_text())
    assert {r["sampler"] for r in doc["records"]} == {"smc", "pigdm"}
    assert (out / "posterior_bimodal_2d.png").exists()
    assert (out / "error_vs_nfe_bimodal_2d.png").exists()
    assert main(["compare", "--inverse", "--target", "ring8", "--out", str(out)]) != 0
    assert "unknown target 'ring8'; valid names: bimodal_2d" in capsys.readouterr().err
