"""The scoresde command: train → sample end to end with tiny settings, demo, and every bad input."""

import json
import pickle

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde.cli import main
from scoresde.training import TrainConfig, Trainer, load_model, model_spec


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


TINY = ["--steps", "30", "--batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", "ring8", "--out", str(run), *TINY]) == 0
    return run / "checkpoint.pt"


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for f in fragments:
        assert f in err, err
    return err


def test_train_writes_checkpoint_and_loss_log(trained):
    ckpt = torch.load(trained, weights_only=True)
    assert ckpt["step"] == 30
    assert ckpt["metadata"]["model"]["kind"] == "mlp"
    assert (trained.parent / "loss.csv").read_text().startswith("step,loss")
    model, spec = load_model(trained)
    assert isinstance(model, sd.ScoreModel) and spec["event_shape"] == [2]


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".png"])
def test_sample_writes_every_format(trained, tmp_path, suffix, capsys):
    out = tmp_path / f"s{suffix}"
    assert main(["sample", "--checkpoint", str(trained), "--n", "50", "--sampler", "ddim",
                 "--steps", "5", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    assert "50 samples with ddim (5 NFE" in capsys.readouterr().out
    if suffix == ".npy":
        assert np.load(out).shape == (50, 2)
    elif suffix == ".pt":
        assert torch.load(out, weights_only=True).shape == (50, 2)


def test_sample_is_reproducible_and_in_data_space(trained, tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    for f in (a, b):
        main(["sample", "--checkpoint", str(trained), "--n", "400", "--steps", "20", "--seed", "3",
              "--out", str(f)])
    x = np.load(a)
    assert np.array_equal(x, np.load(b))
    # the command samples the EMA model in its standardised space and maps back to data space
    model, spec = load_model(trained)
    out = sd.sample(model.sde, model, (400, 2), "heun", steps=20, generator=torch.Generator().manual_seed(3))
    expected = out.samples * torch.tensor(spec["scale"]) + torch.tensor(spec["shift"])
    np.testing.assert_allclose(x, expected.numpy(), rtol=1e-6)


def test_user_csv_file_trains_and_resumes(tmp_path):
    pts = sd.imbalanced_2d().sample(500, generator=torch.Generator().manual_seed(0)) * 100 + 50
    f = tmp_path / "points.csv"
    np.savetxt(f, pts.numpy(), delimiter=",", header="x,y", comments="")
    run = tmp_path / "run"
    assert main(["train", "--data", str(f), "--out", str(run), "--steps", "10", "--batch-size", "32",
                 "--no-progress"]) == 0
    _, spec = load_model(run / "checkpoint.pt")
    assert spec["shift"][0] == pytest.approx(float(pts[:, 0].mean()), rel=1e-4)  # standardised
    assert main(["train", "--data", str(f), "--out", str(run), "--steps", "25", "--batch-size", "32",
                 "--no-progress", "--resume"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 25


def test_digits_train_and_image_grid(tmp_path):
    pytest.importorskip("sklearn")
    run = tmp_path / "digits"
    assert main(["train", "--data", "digits", "--out", str(run), "--steps", "2", "--batch-size", "8",
                 "--no-progress"]) == 0
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(run / "checkpoint.pt"), "--n", "4", "--steps", "2",
                 "--sampler", "euler_ode", "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_demo_writes_figure_and_tables(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "20", "--n", "100", "--sample-steps", "30",
                 "--no-progress"]) == 0
    report = json.loads((out / "demo.json").read_text())
    rows = {r["sampler"]: r for r in report["rows"]}
    assert set(sd.samplers.names()) <= set(rows)
    assert rows["data (fresh sample)"]["nfe"] == 0
    for name in sd.samplers.names():
        assert rows[name]["nfe"] is None or rows[name]["nfe"] > 0
    assert (out / "demo.png").stat().st_size > 0
    assert "| sampler | NFE | wall time (s) | SW2 | MMD |" in (out / "demo.md").read_text()
    printed = capsys.readouterr().out      # the results are printed once, as the table
    assert printed.count("| heun |") == 1 and "  heun " not in printed and printed.count("NFE") == 1


def test_training_module_entry_point_writes_a_loadable_model(tmp_path):
    from scoresde.training import main as train_main

    assert train_main(["--data", "moons", "--out", str(tmp_path), "--steps", "5", "--batch-size", "16",
                       "--no-progress", "--device", "cpu"]) == 0
    model, spec = load_model(tmp_path / "checkpoint.pt")
    assert spec["event_shape"] == [2]


@pytest.mark.parametrize(
    "argv,fragments",
    [
        (["train", "--data", "nosuchset", "--out", "x"], ["unknown dataset 'nosuchset'", "valid names:", "moons"]),
        (["train", "--data", "ring8", "--out", "x", "--lr", "-1"], ["--lr must be > 0"]),
        (["demo", "--data", "digits"], ["name must be a generated data set"]),
    ],
)
def test_bad_usage_exits_2_with_one_line(argv, fragments, capsys):
    assert main(argv) == 2
    _one_line_error(capsys, *fragments)


def test_unknown_sampler_lists_valid_ones(trained, tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(trained), "--sampler", "leapfrog",
                 "--out", str(tmp_path / "a.npy")]) == 2
    _one_line_error(capsys, "unknown sampler 'leapfrog'", "euler_maruyama")
    assert main(["sample", "--checkpoint", str(trained), "--out", str(tmp_path / "a.txt")]) == 2
    _one_line_error(capsys, "--out must end in one of")


def test_wrong_dimension_file_says_the_expected_shape(tmp_path, capsys):
    f = tmp_path / "cube.npy"
    np.save(f, np.zeros((10, 2, 2)))
    assert main(["train", "--data", str(f), "--out", str(tmp_path / "r"), *TINY]) == 1
    _one_line_error(capsys, "expected shape (n, d)")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bad_checkpoints(tmp_path, trained):
    marker = tmp_path / "pwned"
    code = tmp_path / "code.pt"
    with open(code, "wb") as fh:
        pickle.dump({"format": "scoresde.trainer", "x": _Payload(str(marker))}, fh, protocol=2)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(trained.read_bytes()[:200])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    # a valid trainer checkpoint without a model spec (a custom model's run)
    plain = tmp_path / "plain.pt"
    tr = Trainer(torch.nn.Linear(2, 2), "ring8", TrainConfig(steps=1, batch_size=4),
                 loss_fn=lambda m, b, g: m(b).square().mean(), progress=False)
    tr.train()
    tr.save(plain)
    return marker, {
        "missing": (tmp_path / "nope.pt", "does not exist"),
        "truncated": (truncated, "truncated or corrupt"),
        "foreign": (foreign, "not a scoresde trainer checkpoint"),
        "code": (code, "refused by the safe loader"),
        "no spec": (plain, "no model spec"),
    }


def test_bad_checkpoints_are_refused_in_one_line(trained, tmp_path, capsys):
    marker, cases = _bad_checkpoints(tmp_path, trained)
    for path, fragment in cases.values():
        assert main(["sample", "--checkpoint", str(path), "--out", str(tmp_path / "o.npy")]) == 1
        _one_line_error(capsys, fragment)
    assert not marker.exists()  # the pickle's code never ran


def test_model_spec_validation():
    with pytest.raises(ValueError, match="data must be vectors"):
        model_spec(torch.zeros(5, 2, 2))
    with pytest.raises(ValueError, match="sde must be one of"):
        model_spec(torch.zeros(5, 2), sde="xx")
    with pytest.raises(ValueError, match="spec is not a model spec"):
        sd.training.build_model({"kind": "mlp"})
    with pytest.raises(ValueError, match="unknown model kind"):
        sd.training.build_model({**model_spec(torch.randn(5, 2)), "kind": "transformer"})


def test_train_options_are_checked_before_training(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--data", "ring8", "--out", str(run), "--ema-decay", "1.5", *TINY]) == 2
    _one_line_error(capsys, "ema_decay must lie in [0, 1)")
    if not torch.cuda.is_available():
        assert main(["train", "--data", "ring8", "--out", str(run), "--device", "cuda", *TINY]) == 2
        _one_line_error(capsys, "device 'cuda' is not available")
    assert main(["train", "--data", "nothere.csv", "--out", str(run), *TINY]) == 2
    _one_line_error(capsys, "unknown dataset 'nothere.csv' (and no such file)")
    assert not run.exists()


def test_training_module_is_the_train_command(tmp_path, capsys):
    from scoresde.training import main as train_main

    assert train_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m scoresde.training") and "--checkpoint-every" in out
    assert train_main(["--data", "nosuchset", "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, "python -m scoresde.training: error: unknown dataset 'nosuchset'")


# -- a run folder is never overwritten silently ------------------------------------------------
def test_train_refuses_a_folder_holding_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "ring8", "--out", str(run), "--steps", "20", "--batch-size", "32",
                 "--checkpoint-every", "10", "--no-progress"]) == 0
    ckpt, log = (run / "checkpoint.pt").read_bytes(), (run / "loss.csv").read_text()
    capsys.readouterr()
    assert main(["train", "--data", "moons", "--out", str(run), *TINY]) == 2
    _one_line_error(capsys, "already holds a run (checkpoint.pt at step 20, loss.csv)", "--resume", "--overwrite")
    assert (run / "checkpoint.pt").read_bytes() == ckpt and (run / "loss.csv").read_text() == log
    assert main(["train", "--data", "ring8", "--out", str(run), "--resume", "--overwrite", *TINY]) == 2
    _one_line_error(capsys, "--resume and --overwrite exclude each other")
    # resuming a finished run says so instead of pretending to train
    assert main(["train", "--data", "ring8", "--out", str(run), "--steps", "20", "--batch-size", "32",
                 "--checkpoint-every", "10", "--no-progress", "--resume"]) == 0
    assert capsys.readouterr().out.strip() == f"nothing to do: {run} is complete at step 20"
    assert (run / "loss.csv").read_text() == log
    # --overwrite starts clean: the new run's rows only
    assert main(["train", "--data", "moons", "--out", str(run), "--steps", "30", "--batch-size", "32",
                 "--overwrite", "--no-progress"]) == 0
    assert "trained 30 steps (now at step 30)" in capsys.readouterr().out
    steps = [int(r.split(",")[0]) for r in (run / "loss.csv").read_text().splitlines()[1:]]
    assert steps == [10, 20, 30] and torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 30
    # a log without a checkpoint cannot be resumed
    (run / "checkpoint.pt").unlink()
    assert main(["train", "--data", "moons", "--out", str(run), "--resume", *TINY]) == 2
    _one_line_error(capsys, "nothing to resume", "--overwrite")
    (tmp_path / "file").write_text("x")
    assert main(["train", "--data", "moons", "--out", str(tmp_path / "file"), *TINY]) == 2
    _one_line_error(capsys, "--out must be a directory")


def test_demo_refuses_to_replace_an_earlier_run(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "loss.csv").write_text("step,loss\n10,1.0\n")
    assert main(["demo", "--out", str(tmp_path), "--steps", "2", "--no-progress"]) == 2
    _one_line_error(capsys, "already holds a run (loss.csv)", "--overwrite")


def test_csv_passed_as_checkpoint_is_not_called_code(tmp_path, capsys):
    f = tmp_path / "points.csv"
    f.write_text("x,y\n1,2\n3,4\n")
    assert main(["sample", "--checkpoint", str(f), "--out", str(tmp_path / "o.npy")]) == 1
    err = _one_line_error(capsys, "not a scoresde checkpoint (a text file")
    assert "code" not in err


def test_sample_png_is_a_figure_for_a_report(trained, tmp_path, capsys):
    import struct

    out = tmp_path / "s.png"
    assert main(["sample", "--checkpoint", str(trained), "--n", "300", "--steps", "10", "--out", str(out)]) == 0
    width, height = struct.unpack(">II", out.read_bytes()[16:24])   # the PNG's IHDR chunk
    assert width >= 900 and height >= 500      # was 330 x 330 px
    from scoresde.cli import _scatter_figure, _training_data

    reference = _training_data(trained, 300, 0)
    assert reference.shape == (300, 2)          # the checkpoint records ring8: fresh points of it
    ax = _scatter_figure(torch.randn(50, 3), reference, "t").axes[0]
    assert ax.get_xlabel() == "$x_1$ (first 2 of 3 coordinates)" and ax.get_ylabel() == "$x_2$"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["training data (300 points)", "samples (50)"]
    ax = _scatter_figure(torch.randn(50, 2), None, "t").axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["samples (50)"]
    far = torch.cat([0.02 * torch.randn(48, 2, generator=gen(0)), torch.full((2, 2), 40.0)])
    ax = _scatter_figure(far, 0.1 * torch.randn(300, 2, generator=gen(1)), "t").axes[0]
    assert ax.get_legend().get_texts()[1].get_text() == "samples (50; 2 outside the frame)"
    assert ax.get_xlim()[1] < 1.0          # framed by the training data, not by the stray samples
    assert main(["sample", "--checkpoint", str(trained), "--n", "30", "--steps", "5", "--no-data-overlay",
                 "--out", str(tmp_path / "plain.png")]) == 0


def test_sample_overlay_of_a_moved_file_is_skipped(tmp_path, capsys):
    pts = tmp_path / "pts.npy"
    np.save(pts, np.random.default_rng(0).normal(size=(200, 2)))
    run = tmp_path / "run"
    assert main(["train", "--data", str(pts), "--out", str(run), *TINY]) == 0
    from scoresde.cli import _training_data

    assert _training_data(run / "checkpoint.pt", 50, 0).shape == (50, 2)
    pts.unlink()
    capsys.readouterr()
    assert _training_data(run / "checkpoint.pt", 50, 0) is None
    assert "not found: the figure shows the samples alone" in capsys.readouterr().err


def _help(argv, capsys):
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


def test_help_lists_names_and_describes_every_option(capsys):
    import argparse

    from scoresde.cli import build_parser

    train, sample, demo = (_help([c], capsys) for c in ("train", "sample", "demo"))
    for name in ("moons", "8gaussians", "digits", "ring8"):
        assert name in train
    for name in sd.samplers.names():
        assert name in sample
    assert "ring8" in demo and "2-D data set" not in demo and "any dimension" in demo
    for text in (train, demo):
        assert "--progress, --no-progress" in text
    assert "--overwrite" in train and "--resume" in train
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("train", "sample", "demo"):
        for action in sub.choices[command]._actions:
            assert action.help, (command, action.option_strings)   # every option is described


def test_run_folder_message_without_a_readable_checkpoint(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"")          # torn: the step cannot be read
    assert main(["train", "--data", "moons", "--out", str(tmp_path), *TINY]) == 2
    _one_line_error(capsys, "already holds a run (checkpoint.pt); pass --resume")
    from scoresde.cli import _training_data

    tr = Trainer(torch.nn.Linear(2, 2), "ring8", TrainConfig(steps=1, batch_size=4),
                 loss_fn=lambda m, b, g: m(b).square().mean(), progress=False)
    tr.train()
    tr.save(tmp_path / "custom.pt")                       # a Python run records no data name
    assert _training_data(tmp_path / "custom.pt", 10, 0) is None


def test_every_command_has_one_progress_convention():
    from scoresde.cli import build_parser

    parser = build_parser()
    required = {"train": ["--data", "moons", "--out", "x"], "sample": ["--checkpoint", "c", "--out", "o.png"],
                "demo": [], "compare": ["--out", "d"]}
    for cmd, args in required.items():
        assert parser.parse_args([cmd, *args, "--progress"]).progress is True, cmd
        assert parser.parse_args([cmd, *args, "--no-progress"]).progress is False, cmd


def test_demo_reports_mean_and_standard_error_over_seeds(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "20", "--n", "100", "--sample-steps", "20",
                 "--seeds", "2", "--no-progress"]) == 0
    report = json.loads((out / "demo.json").read_text())
    assert report["seeds"] == 2
    rows = {r["sampler"]: r for r in report["rows"]}
    floor = rows["data (fresh sample)"]
    # the floor is itself an average over seeds, with its standard error
    assert floor["seeds"] == 2 and floor["sw2_se"] is not None and floor["sw2_se"] >= 0
    ok = [r for r in report["rows"][1:] if r["nfe"] is not None]
    assert ok
    for r in ok:
        assert r["seeds"] == 2 and r["sw2_se"] is not None and r["mmd_se"] is not None
        assert r["vs_floor"]["sw2"] in ("≈", ">", "<")
    md = (out / "demo.md").read_text()
    assert " ± " in md and "vs floor" in md and "standard error" in md


def test_demo_seeds_are_reproducible_and_single_seed_says_so(tmp_path):
    runs = []
    for k in range(2):
        out = tmp_path / f"d{k}"
        assert main(["demo", "--out", str(out), "--steps", "10", "--n", "60", "--sample-steps", "10",
                     "--seeds", "1", "--no-progress"]) == 0
        runs.append(json.loads((out / "demo.json").read_text())["rows"])
    heun = [{r["sampler"]: r for r in rows}["heun"] for rows in runs]
    assert heun[0]["sw2"] == heun[1]["sw2"] and heun[0]["sw2_se"] is None
    assert "one seed" in (tmp_path / "d0" / "demo.md").read_text()
