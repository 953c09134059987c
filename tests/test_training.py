"""Tests of scoresde.training: config, EMA, schedule, clipping, checkpoints, resume, DDP."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import scoresde as sd
from scoresde import training as T
from scoresde.data import DataStream
from scoresde.training import CheckpointError, TrainConfig, Trainer, load_checkpoint

sys.path.insert(0, os.path.dirname(__file__))
from _train_helpers import TinyScore, param_hash, toy_loss  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_trainer(tmp_path=None, data="8gaussians", **cfg) -> Trainer:
    base = dict(steps=20, batch_size=16, lr=1e-2, warmup=3, ema_decay=0.9, log_every=1)
    base.update(cfg)
    out = None if tmp_path is None else tmp_path
    return Trainer(TinyScore(), data, TrainConfig(**base), loss_fn=toy_loss, out_dir=out,
                   progress=False)


def subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return env


# -- config -------------------------------------------------------------------------------
def test_config_roundtrip_and_validation():
    cfg = TrainConfig(steps=5, grad_clip=None, warmup=2)
    d = cfg.to_dict()
    assert isinstance(d, dict) and d["steps"] == 5 and TrainConfig.from_dict(d) == cfg
    for bad, msg in [
        (dict(steps=-1), "steps must be an int >= 0"),
        (dict(batch_size=0), "batch_size"),
        (dict(lr=0.0), "lr must be finite and > 0"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(grad_clip=-1.0), "grad_clip"),
        (dict(ema_decay=1.0), r"ema_decay must lie in \[0, 1\)"),
        (dict(log_every=0), "log_every"),
        (dict(checkpoint_every=-2), "checkpoint_every"),
        (dict(seed=-1), "seed"),
    ]:
        with pytest.raises(ValueError, match=msg):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['foo'\]"):
        TrainConfig.from_dict({"foo": 1})
    with pytest.raises(TypeError, match="d must be a dict"):
        TrainConfig.from_dict([("steps", 1)])


# -- schedule, EMA, clipping ----------------------------------------------------------------
def test_warmup_schedule_values():
    assert [T.warmup_factor(i, 4) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert T.warmup_factor(0, 0) == 1.0
    tr = tiny_trainer(steps=6, lr=0.1, warmup=4)
    seen = []
    for _ in range(6):
        tr.train(1)
        seen.append(tr.optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1], rel=1e-12)
    assert tr.learning_rate(0) == pytest.approx(0.025) and tr.learning_rate() == 0.1


def test_ema_closed_form():
    lin = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        lin.weight.fill_(0.5)
    lin.register_buffer("count", torch.zeros(()))
    d, k = 0.9, 12
    ema = T.EMA(lin, d)
    for j in range(1, k + 1):
        with torch.no_grad():
            lin.weight.fill_(float(j))  # a parameter that changes by a constant each step
            lin.count += 1
        ema.update(lin)
    closed = d**k * 0.5 + (1 - d) * sum(d ** (k - j) * j for j in range(1, k + 1))
    assert float(ema.module.weight) == pytest.approx(closed, rel=1e-12)
    assert float(ema.module.count) == k and ema.num_updates == k   # buffers are copied
    assert not ema.module.weight.requires_grad and not ema.module.training
    state = ema.state_dict()
    other = T.EMA(lin, 0.5)
    other.load_state_dict(state)
    assert other.decay == d and other.num_updates == k
    assert torch.equal(other.module.weight, ema.module.weight)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        T.EMA(lambda x: x)
    with pytest.raises(ValueError, match=r"decay must lie in \[0, 1\)"):
        T.EMA(lin, 1.0)
    with pytest.raises(ValueError, match="model has 2 parameters, the EMA copy 1"):
        ema.update(nn.Linear(1, 1))


def test_trainer_ema_tracks_model():
    tr = tiny_trainer(steps=5, ema_decay=0.0)
    tr.train()
    assert tr.ema.num_updates == 5
    for a, b in zip(tr.ema_model.parameters(), tr.model.parameters(), strict=True):
        assert torch.equal(a, b)
    tr = tiny_trainer(steps=5, ema_decay=0.99)
    before = [p.clone() for p in tr.ema_model.parameters()]
    tr.train()
    moved = [float((a - b).abs().max()) for a, b in zip(tr.ema_model.parameters(), before,
                                                           strict=True)]
    full = [float((a.detach() - b).abs().max()) for a, b in zip(tr.model.parameters(), before,
                                                                  strict=True)]
    assert 0 < max(moved) < 0.1 * max(full)


def test_grad_clipping():
    def big_loss(model, batch, generator):
        return 1e3 * sum(p.square().sum() for p in model.parameters())

    cfg = dict(steps=1, batch_size=4, lr=1e-3, ema_decay=0.5)
    tr = Trainer(TinyScore(), "moons", TrainConfig(grad_clip=0.5, **cfg), loss_fn=big_loss,
                 progress=False)
    tr.train()
    total = torch.stack([p.grad.norm() for p in tr.model.parameters()]).norm()
    assert tr.last_grad_norm > 100 and float(total) == pytest.approx(0.5, rel=1e-5)
    tr = Trainer(TinyScore(), "moons", TrainConfig(grad_clip=None, **cfg), loss_fn=big_loss,
                 progress=False)
    tr.train()
    total = torch.stack([p.grad.norm() for p in tr.model.parameters()]).norm()
    assert float(total) == pytest.approx(tr.last_grad_norm, rel=1e-5) and tr.last_grad_norm > 100


# -- learning ------------------------------------------------------------------------------
def test_loss_decreases_and_samples_approach_data():
    from scoresde.nets import ScoreMLP, ScoreModel

    sde = sd.VPSDE()
    target = sd.ring8()
    model = ScoreModel(ScoreMLP(2, hidden=64, n_blocks=2, generator=gen(0)), sde)
    untrained = ScoreModel(ScoreMLP(2, hidden=64, n_blocks=2, generator=gen(0)), sde)
    cfg = TrainConfig(steps=600, batch_size=256, lr=3e-3, warmup=20, ema_decay=0.98, seed=0)
    tr = Trainer(model, "ring8", cfg, progress=False)   # default loss: DSM under model.sde
    losses = tr.train()
    assert len(losses) == 600 and tr.step == 600
    first, last = sum(losses[:50]) / 50, sum(losses[-50:]) / 50
    assert last < 0.8 * first

    ref = target.sample(2000, generator=gen(1))

    def sw(score_fn):
        with torch.no_grad():
            out = sd.sample(sde, score_fn, (2000, 2), sampler="euler_maruyama", steps=200,
                            generator=gen(2))
        return float(sd.metrics.sliced_wasserstein(out.samples, ref, generator=gen(3)))

    sw_trained, sw_untrained = sw(tr.ema_model), sw(untrained)
    assert sw_trained < 0.35 * sw_untrained, (sw_trained, sw_untrained)
    assert sw_trained < 0.3


def test_nonfinite_and_bad_loss():
    tr = Trainer(TinyScore(), "moons", TrainConfig(steps=3, batch_size=4),
                 loss_fn=lambda m, b, g: m(b, 0.5).sum() * float("nan"), progress=False)
    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        tr.train()
    tr = Trainer(TinyScore(), "moons", TrainConfig(steps=3, batch_size=4),
                 loss_fn=lambda m, b, g: m(b, 0.5), progress=False)
    with pytest.raises(TypeError, match="loss_fn must return a scalar tensor"):
        tr.train()


def test_trainer_argument_errors_and_data_kinds(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=4)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        Trainer(lambda x, t: x, "moons", cfg)
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        Trainer(TinyScore(), "moons", {"steps": 2})
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        Trainer(TinyScore(), "moons", cfg, loss_fn=3)
    frozen = TinyScore().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        Trainer(frozen, "moons", cfg)
    with pytest.raises(TypeError, match="data must be a tensor, a data set name"):
        Trainer(TinyScore(), 3.5, cfg)
    with pytest.raises(ValueError, match="data has batch_size 5"):
        Trainer(TinyScore(), DataStream(torch.zeros(10, 2), 5), cfg)
    with pytest.raises(ValueError, match="unknown data set"):
        Trainer(TinyScore(), "mnist", cfg)
    # every accepted kind of data trains
    torch.save(torch.randn(12, 2, generator=gen(0)), tmp_path / "d.pt")
    for data in [torch.randn(12, 2, generator=gen(0)), str(tmp_path / "d.pt"), tmp_path / "d.pt",
                 sd.ring8().sample, DataStream(torch.randn(12, 2), 4, generator=gen(0)),
                 "correlated_gaussian"]:
        tr = Trainer(TinyScore(), data, cfg, loss_fn=toy_loss, progress=True)
        assert len(tr.train()) == 2
    assert tr.train() == [] and tr.save() is None and tr.is_main and tr.world_size == 1
    assert tr.sde.__class__ is sd.VPSDE   # default when the model has no .sde
    with pytest.raises(ValueError, match="path is required"):
        tr.resume()
    assert Trainer(TinyScore(), "moons").config == TrainConfig()   # config defaults


def test_default_dsm_loss_on_digits():
    pytest.importorskip("sklearn")

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(65, 64)

        def forward(self, x, t):
            t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
            return self.lin(torch.cat([x.flatten(1), t[:, None]], 1)).reshape(x.shape)

    tr = Trainer(Flat(), "digits", TrainConfig(steps=3, batch_size=8), sde=sd.VESDE(),
                 progress=False)
    assert tr.data.kind == "tensor" and len(tr.train()) == 3


def test_loss_csv_rows(tmp_path):
    with tiny_trainer(tmp_path, steps=10, log_every=4) as tr:
        losses = tr.train(progress=True)
    lines = (tmp_path / "loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss"
    rows = [line.split(",") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == [4, 8]
    assert float(rows[0][1]) == pytest.approx(sum(losses[:4]) / 4, rel=1e-12)
    assert float(rows[1][1]) == pytest.approx(sum(losses[4:8]) / 4, rel=1e-12)


# -- resume -------------------------------------------------------------------------------
def _assert_same_state(a: Trainer, b: Trainer) -> None:
    for (n1, p1), (n2, p2) in zip(a.model.state_dict().items(), b.model.state_dict().items(),
                                  strict=True):
        assert n1 == n2 and torch.equal(p1, p2), n1
    for p1, p2 in zip(a.ema_model.state_dict().values(), b.ema_model.state_dict().values(),
                      strict=True):
        assert torch.equal(p1, p2)
    assert a.losses == b.losses and a.step == b.step


@pytest.mark.parametrize("data", ["tensor", "8gaussians"])
def test_resume_is_bit_identical(tmp_path, data):
    if data == "tensor":
        data = torch.randn(50, 2, generator=gen(7))   # 3 batches per epoch: epochs roll over
    n, k = 30, 11
    straight = tiny_trainer(tmp_path / "a", data=data, steps=n, warmup=5, checkpoint_every=7)
    straight.train()
    first = tiny_trainer(tmp_path / "b", data=data, steps=n, warmup=5, checkpoint_every=7)
    first.train(k)
    ckpt = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert ckpt["step"] == k and ckpt["format_version"] == T.FORMAT_VERSION
    assert ckpt["config"] == first.config.to_dict()
    # a crashed run may have logged past its last checkpoint: those rows are dropped on resume
    with open(tmp_path / "b" / "loss.csv", "a") as f:
        f.write("12,99.0\n13,9")
    second = Trainer(TinyScore(seed=5), data, first.config, loss_fn=toy_loss,
                     out_dir=tmp_path / "b", progress=False)
    second.resume()
    assert second.step == k and second.losses == first.losses
    rest = second.train()
    assert len(rest) == n - k
    _assert_same_state(straight, second)
    assert rest == straight.losses[k:]
    # the optimiser state matches too
    s1, s2 = straight.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    for i in s1:
        for key in s1[i]:
            assert torch.equal(s1[i][key], s2[i][key])
    assert (tmp_path / "a" / "loss.csv").read_text() == (tmp_path / "b" / "loss.csv").read_text()


def test_from_checkpoint_extends_run(tmp_path):
    a = tiny_trainer(tmp_path / "a", steps=12)
    a.train()
    b = tiny_trainer(tmp_path / "b", steps=8)
    b.train()
    c = Trainer.from_checkpoint(tmp_path / "b" / "checkpoint.pt", TinyScore(), "8gaussians",
                                loss_fn=toy_loss, out_dir=tmp_path / "b", progress=False, steps=12)
    assert c.config.steps == 12 and c.step == 8
    c.train()
    _assert_same_state(a, c)
    with pytest.raises(CheckpointError, match="invalid config"):
        Trainer.from_checkpoint(tmp_path / "b" / "checkpoint.pt", TinyScore(), "8gaussians",
                                bogus=1)


def test_resume_mismatches(tmp_path):
    tr = tiny_trainer(tmp_path, steps=3)
    tr.train()
    path = tmp_path / "checkpoint.pt"
    other = tiny_trainer(None, steps=3, lr=0.5)
    with pytest.raises(CheckpointError, match=r"config differs .*lr=0.01 vs 0.5"):
        other.resume(path)
    wide = Trainer(TinyScore(hidden=8), "8gaussians", tr.config, loss_fn=toy_loss, progress=False)
    with pytest.raises(CheckpointError, match="does not fit this trainer"):
        wide.resume(path)
    ckpt = load_checkpoint(path)

    def write(mod, name):
        c = dict(ckpt)
        mod(c)
        T.save_checkpoint(c, tmp_path / name)
        return tmp_path / name

    assert tiny_trainer(None, steps=3).resume(path).step == 3   # no out_dir: no loss.csv
    fresh = tiny_trainer(None, steps=3)
    with pytest.raises(CheckpointError, match=r"written by 2 process\(es\), resumed by 1"):
        fresh.resume(write(lambda c: c.update(world_size=2), "ws.pt"))
    with pytest.raises(CheckpointError, match="3 losses for step 2"):
        fresh.resume(write(lambda c: c.update(step=2), "st.pt"))
    with pytest.raises(CheckpointError, match="invalid config"):
        fresh.resume(write(lambda c: c.update(config={"steps": -1}), "cf.pt"))
    with pytest.raises(CheckpointError, match="does not fit"):
        fresh.resume(write(lambda c: c.update(ranks=[{"data": {}}]), "rk.pt"))


# -- checkpoint files -------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_errors(tmp_path):
    tr = tiny_trainer(tmp_path, steps=2)
    tr.train()
    good = tmp_path / "checkpoint.pt"
    raw = good.read_bytes()

    def check(path, pattern):
        with pytest.raises(CheckpointError, match=pattern) as info:
            load_checkpoint(path)
        msg = str(info.value)
        assert "\n" not in msg and str(path) in msg
        assert isinstance(info.value, ValueError)

    check(tmp_path / "nope.pt", "file does not exist")
    check(tmp_path, "not a regular file")
    (tmp_path / "empty.pt").write_bytes(b"")
    check(tmp_path / "empty.pt", "file is empty")
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    check(tmp_path / "trunc.pt", "truncated or corrupt")
    (tmp_path / "trunc2.pt").write_bytes(raw[:-10])
    check(tmp_path / "trunc2.pt", "truncated or corrupt")
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 4)
    check(tmp_path / "noise.pt", "truncated or corrupt|refused by the safe loader")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    check(tmp_path / "foreign.pt", "not a scoresde trainer checkpoint")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    check(tmp_path / "tensor.pt", r"not a scoresde trainer checkpoint \(got Tensor\)")
    ckpt = load_checkpoint(good)
    T.save_checkpoint({**ckpt, "format_version": 99}, tmp_path / "v99.pt")
    check(tmp_path / "v99.pt", "unsupported format_version 99")
    T.save_checkpoint({k: v for k, v in ckpt.items() if k != "optimizer"}, tmp_path / "mk.pt")
    check(tmp_path / "mk.pt", r"missing keys \['optimizer'\]")
    with pytest.raises(TypeError, match="path must be a str"):
        load_checkpoint(None)
    with pytest.raises(CheckpointError, match="does not exist"):
        tr.resume(tmp_path / "nope.pt")


@pytest.mark.parametrize("how", ["torch.save", "pickle2", "pickle4"])
def test_malicious_checkpoint_never_runs_code(tmp_path, how):
    marker = tmp_path / "PWNED"
    payload = {"format": "scoresde.trainer", "format_version": 1, "model": _Evil(marker)}
    path = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(how[-1])))
    with pytest.raises(CheckpointError, match="refused by the safe loader") as info:
        load_checkpoint(path)
    if how == "pickle2":
        assert "GLOBAL" in str(info.value)
    assert not marker.exists()
    tr = tiny_trainer(None, steps=1)
    with pytest.raises(CheckpointError):
        tr.resume(path)
    assert not marker.exists()
    # sanity: the payload really is armed
    pickle.loads(path.read_bytes()) if how != "torch.save" else torch.load(path, weights_only=False)
    assert marker.exists()


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "c.pt"
    T.save_checkpoint({"a": torch.ones(2)}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for a lambda
        T.save_checkpoint({"a": lambda: 0}, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.pt"]   # no temp file left behind


def _train_forever(out: str) -> None:
    """Body of a killed child: train with a checkpoint after every step, never stopping."""
    torch.set_num_threads(1)
    cfg = TrainConfig(steps=10**6, batch_size=32, lr=1e-3, checkpoint_every=1, log_every=1)
    Trainer(TinyScore(big_buffer=BALLAST), "8gaussians", cfg, loss_fn=toy_loss, out_dir=out,
            progress=False).train()


BALLAST = 500_000  # 2 MB of buffer (x2 with the EMA): a kill often lands inside a write


def _start_child(out):
    """A training child process: forked where possible (no re-import), else a new interpreter."""
    import multiprocessing as mp

    if "fork" in mp.get_all_start_methods():
        proc = mp.get_context("fork").Process(target=_train_forever, args=(str(out),))
        proc.start()
        return proc.pid, proc.is_alive, proc.join
    p = subprocess.Popen(  # pragma: no cover - platforms without fork
        [sys.executable, os.path.join(HERE, "_kill_worker.py"), str(out), HERE],
        env=subprocess_env())
    return p.pid, lambda: p.poll() is None, p.wait  # pragma: no cover


def test_checkpoint_survives_sigkill(tmp_path):
    rng = random.Random(0)
    for i in range(4):
        out = tmp_path / f"run{i}"
        pid, alive, join = _start_child(out)
        try:
            deadline = time.monotonic() + 30
            while not (out / "checkpoint.pt").exists():
                assert alive(), "the training child died"
                assert time.monotonic() < deadline, "no checkpoint appeared"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.5))
        finally:
            os.kill(pid, signal.SIGKILL)
            join()
        ckpt = load_checkpoint(out / "checkpoint.pt")   # always loads
        assert ckpt["step"] >= 1
        tr = Trainer(TinyScore(big_buffer=BALLAST), "8gaussians",
                     TrainConfig.from_dict(ckpt["config"]), loss_fn=toy_loss, out_dir=out,
                     progress=False)
        tr.resume()
        tr.train(1)
        assert tr.step == ckpt["step"] + 1


# -- DDP and the entry point ----------------------------------------------------------------
def _torchrun_available() -> bool:
    try:
        import torch.distributed.run  # noqa: F401
    except ImportError:  # pragma: no cover
        return False
    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


@pytest.mark.skipif(not _torchrun_available(), reason="torch.distributed.run / gloo unavailable")
def test_ddp_two_processes(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--standalone", os.path.join(HERE, "_ddp_worker.py"), str(tmp_path)]
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2 and r0["ddp"] == "DistributedDataParallel"
    assert r0["straight"] == r1["straight"] and r0["straight_ema"] == r1["straight_ema"]
    assert r0["data_state"] != r1["data_state"]            # each rank has its own stream
    assert r0["losses"] == r1["losses"]                     # averaged over ranks
    # resume under DDP continues bit-identically
    assert r0["resumed"] == r0["straight"] == r1["resumed"]
    assert r0["resumed_losses"] == r0["losses"]
    ckpt = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2 and ckpt["step"] == 6
    model = TinyScore()
    model.load_state_dict(ckpt["model"])
    assert param_hash(model) == r0["straight"]
    # only rank 0 wrote files: no stray temp files, one log
    assert sorted(os.listdir(tmp_path / "straight")) == ["checkpoint.pt", "loss.csv"]


@pytest.mark.skipif(not _torchrun_available(), reason="torch.distributed.run / gloo unavailable")
def test_entry_point_creates_the_process_group_under_torchrun(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m",
           "scoresde.training", "--data", "moons", "--steps", "4", "--batch-size", "16", "--hidden", "8",
           "--checkpoint-every", "2", "--out", str(out), "--no-progress"]
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("trained 4 steps (now at step 4)") == 1     # rank 0 reports
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2 and ckpt["step"] == 4
    assert sorted(os.listdir(out)) == ["checkpoint.pt"]   # rank 0 alone wrote, no temp files left


def test_main_entry_point(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--data", "8gaussians", "--steps", "4", "--batch-size", "32", "--out", str(out),
            "--hidden", "16", "--no-progress", "--device", "auto", "--checkpoint-every", "2"]
    assert T.main(args) == 0
    assert "step 4" in capsys.readouterr().out
    first = load_checkpoint(out / "checkpoint.pt")
    assert first["step"] == 4
    args[3], args[12] = "6", "cpu"
    assert T.main([*args, "--resume", "--sde", "vp"]) == 0
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 6
    # images get the U-Net of the model spec
    assert T.main(["--data", "digits", "--steps", "1", "--batch-size", "4", "--out", str(tmp_path / "d"),
                   "--device", "cpu", "--no-progress"]) == 0
    assert load_checkpoint(tmp_path / "d" / "checkpoint.pt")["metadata"]["model"]["kind"] == "unet"


def test_cli_module_runs(tmp_path):
    res = subprocess.run([sys.executable, "-m", "scoresde.training", "--data", "moons", "--steps",
                          "3", "--batch-size", "16", "--hidden", "8", "--out", str(tmp_path),
                          "--no-progress"], env=subprocess_env(), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    shutil.rmtree(tmp_path)


# -- the package layout, the process group and the entry point --------------------------------
def test_package_layout_keeps_every_name():
    from scoresde.training import checkpoint, config, ema, launch, recipes, trainer

    for name in T.__all__:
        assert getattr(T, name) is not None
    assert T.Trainer is trainer.Trainer is sd.Trainer and T.TrainConfig is config.TrainConfig
    assert T.EMA is ema.EMA and T.CheckpointError is checkpoint.CheckpointError is sd.CheckpointError
    assert T.load_checkpoint is sd.load_checkpoint and T.main is launch.main
    assert T.train_model is recipes.train_model and T.FORMAT_VERSION == checkpoint.FORMAT_VERSION == 1


def test_one_recipe_for_both_entry_points():
    from scoresde import cli

    # the CLI's names are the recipe's, and both parsers read the same defaults
    assert cli.TRAIN_DEFAULTS is T.TRAIN_DEFAULTS and cli.train_config is T.train_config
    cfg = T.train_config(1000)
    assert (cfg.steps, cfg.batch_size, cfg.lr, cfg.warmup, cfg.decay_steps, cfg.checkpoint_every) == (
        1000, 512, 2e-3, 100, 900, 1000)
    assert T.train_config(50, warmup=0, ema_decay=0.5, batch_size=8, lr=0.1).decay_steps == 50
    parsed = cli.build_parser().parse_args(["train", "--data", "moons", "--out", "x"])
    import argparse

    alone = argparse.ArgumentParser()
    cli.add_train_arguments(alone)
    assert vars(alone.parse_args(["--data", "moons", "--out", "x"])) == {
        k: v for k, v in vars(parsed).items() if k != "command"}
    d = T.TRAIN_DEFAULTS
    assert (parsed.steps, parsed.batch_size, parsed.lr, parsed.warmup, parsed.ema_decay, parsed.hidden,
            parsed.sde, parsed.checkpoint_every) == (d["steps"], d["batch_size"], d["lr"], d["warmup"],
                                                     d["ema_decay"], d["hidden"], d["sde"],
                                                     d["checkpoint_every"])


def test_train_model_saves_once_at_the_end(tmp_path, monkeypatch):
    from scoresde.training import trainer as trainer_module

    written = []
    real = trainer_module.save_checkpoint

    def counting(obj, path):
        written.append(obj["step"])
        real(obj, path)

    monkeypatch.setattr(trainer_module, "save_checkpoint", counting)
    cfg = TrainConfig(steps=5, batch_size=16, checkpoint_every=0)
    tr = T.train_model("moons", tmp_path / "a", config=cfg, hidden=8, progress=False)
    assert written == [5] and tr.step == 5 and tr.resumed_step is None
    written.clear()
    cfg = TrainConfig(steps=6, batch_size=16, checkpoint_every=3)
    T.train_model("moons", tmp_path / "b", config=cfg, hidden=8, progress=False)
    assert written == [3, 6]          # the periodic checkpoint at the last step is the final one
    written.clear()
    tr = T.train_model("moons", tmp_path / "b", config=cfg, hidden=8, progress=False, resume=True)
    assert written == [] and tr.step == 6 and tr.resumed_step == 6   # complete: nothing rewritten
    ckpt = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert ckpt["metadata"]["data"] == "moons" and ckpt["metadata"]["model"]["hidden"] == 8


def test_train_model_accepts_every_data_kind(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=8)
    pts = torch.randn(40, 3, generator=gen(0)) * 5 + 2
    tr = T.train_model(pts, tmp_path / "t", config=cfg, hidden=8, progress=False)
    spec = load_checkpoint(tr.checkpoint_path)["metadata"]["model"]
    assert spec["event_shape"] == [3] and spec["shift"] == pytest.approx(pts.double().mean(0).tolist())
    tr = T.train_model(sd.ring8().sample, tmp_path / "f", config=cfg, hidden=8, progress=False,
                       data_name="ring8 sampler")
    assert load_checkpoint(tr.checkpoint_path)["metadata"]["data"] == "ring8 sampler"


def test_trainer_reads_the_process_group_but_never_creates_it(monkeypatch, tmp_path):
    import torch.distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="WORLD_SIZE is 2 but no torch.distributed process group"):
        tiny_trainer(None)
    assert not dist.is_initialized()
    # an initialised group (here of one process) is what the trainer reads, whatever the env says
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        from scoresde.training.launch import process_group

        with process_group(torch.device("cpu")):   # a group exists: left to its creator
            tr = tiny_trainer(tmp_path / "run", steps=2)
            tr.train()
            tr.close()
        assert dist.is_initialized() and (tr.rank, tr.world_size) == (0, 1)
    finally:
        dist.destroy_process_group()


def test_process_group_is_created_and_destroyed_by_the_entry_point(monkeypatch):
    import torch.distributed as dist

    from scoresde.training.launch import process_group

    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append(("destroy",)))
    with process_group(torch.device("cpu")):       # a single process: nothing to create
        pass
    assert calls == []
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(KeyError), process_group(torch.device("cpu")):
        assert calls == [("init", "gloo")]
        raise KeyError("a failure while training")
    assert calls == [("init", "gloo"), ("destroy",)]   # destroyed even after an error


def test_resolve_device():
    from scoresde.training.launch import resolve_device

    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ["gpu0", 3.5, "xla"]:
        with pytest.raises(ValueError, match="device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda' is not available: .*use device 'cpu'"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="device 'cuda'"):
            T.train_model("moons", "unused", device="cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="device 'mps' is not available"):
            resolve_device("mps")


# -- a run folder is never overwritten unless asked; errors in the user's terms ----------------
def test_trainer_refuses_a_folder_that_holds_a_run(tmp_path):
    first = tiny_trainer(tmp_path, steps=6, log_every=2)
    first.train()
    ckpt_bytes = (tmp_path / "checkpoint.pt").read_bytes()
    log = (tmp_path / "loss.csv").read_text()
    assert T.trainer.run_files(tmp_path) == ["checkpoint.pt", "loss.csv"]
    for act in (lambda tr: tr.train(), lambda tr: tr.save()):
        fresh = tiny_trainer(tmp_path, steps=4, log_every=2)
        with pytest.raises(FileExistsError, match=r"already holds a run \(checkpoint.pt, loss.csv\); "
                                                  r"call resume\(\) to continue it, or pass overwrite=True"):
            act(fresh)
    assert (tmp_path / "checkpoint.pt").read_bytes() == ckpt_bytes
    assert (tmp_path / "loss.csv").read_text() == log
    # resuming another checkpoint into this folder is no licence to write over its run either
    other = tiny_trainer(tmp_path / "o", steps=2)
    other.train()
    moved = tiny_trainer(tmp_path, steps=4).resume(tmp_path / "o" / "checkpoint.pt")
    with pytest.raises(FileExistsError):
        moved.train()
    assert (tmp_path / "loss.csv").read_text() == log
    # overwrite=True starts clean: the old log is gone, not appended to
    clean = Trainer(TinyScore(), "8gaussians", TrainConfig(steps=4, batch_size=16, log_every=2),
                    loss_fn=toy_loss, out_dir=tmp_path, progress=False, overwrite=True)
    clean.train()
    rows = (tmp_path / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss" and [r.split(",")[0] for r in rows[1:]] == ["2", "4"]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4
    # a log without a checkpoint (a run killed before its first checkpoint) is a run too
    (tmp_path / "checkpoint.pt").unlink()
    with pytest.raises(FileExistsError, match=r"\(loss.csv\)"):
        tiny_trainer(tmp_path, steps=2).train()


def test_train_model_refuses_or_overwrites(tmp_path):
    cfg = TrainConfig(steps=3, batch_size=16, log_every=1)
    T.train_model("moons", tmp_path, config=cfg, hidden=8, progress=False)
    with pytest.raises(FileExistsError, match="already holds a run"):
        T.train_model("moons", tmp_path, config=cfg, hidden=8, progress=False)
    tr = T.train_model("moons", tmp_path, config=TrainConfig(steps=2, batch_size=16, log_every=1),
                       hidden=8, progress=False, overwrite=True)
    assert tr.step == 2 and len((tmp_path / "loss.csv").read_text().splitlines()) == 3


def test_zero_steps_are_refused():
    with pytest.raises(ValueError, match=r"steps must be >= 1 \(a run of 0 steps would only write an "
                                         r"untrained model\), got 0"):
        TrainConfig(steps=0)
    with pytest.raises(CheckpointError, match="invalid config"):   # nor resumed into a 0-step run
        T.checkpoint.checkpoint_config({"config": {"steps": 0}}, "x.pt")


def test_resume_mismatches_speak_the_users_language(tmp_path):
    from scoresde.training import train_config

    kw = dict(hidden=8, progress=False)
    T.train_model("moons", tmp_path / "a", config=train_config(30, batch_size=16, warmup=5), **kw)
    with pytest.raises(CheckpointError, match=r"--steps differs \(the run's learning rate decays over its "
                                              r"--steps 30\)"):
        T.train_model("moons", tmp_path / "a", config=train_config(40, batch_size=16, warmup=5), resume=True, **kw)
    with pytest.raises(CheckpointError, match=r"--batch-size differs \(the run used 16\).*--seed differs"):
        T.train_model("moons", tmp_path / "a", config=train_config(30, batch_size=32, seed=1, warmup=5), resume=True,
                      **kw)
    with pytest.raises(CheckpointError, match=r"trained on different data \(the run was trained on 'moons', "
                                              r"this one on '8gaussians'\)"):
        T.train_model("8gaussians", tmp_path / "a", config=train_config(30, batch_size=16, warmup=5), resume=True, **kw)
    with pytest.raises(CheckpointError, match=r"the model differs from the run's \(hidden 8 vs 16; .*--hidden"):
        T.train_model("moons", tmp_path / "a", config=train_config(30, batch_size=16, warmup=5), resume=True,
                      hidden=16, progress=False)
    pts = torch.randn(50, 2, generator=gen(0))
    T.train_model(pts, tmp_path / "t", config=train_config(4, batch_size=16, warmup=5), **kw)
    with pytest.raises(CheckpointError, match="trained on different data .*mean or spread differs"):
        T.train_model(pts * 3, tmp_path / "t", config=train_config(4, batch_size=16, warmup=5), resume=True, **kw)
    # without a model spec: the data stream's kind and size are compared
    tr = tiny_trainer(tmp_path / "s", data=pts, steps=2)
    tr.train()
    with pytest.raises(CheckpointError, match=r"trained on different data \(the run drew from a fixed set "
                                              r"of 50 rows, this one from a fixed set of 60 rows\)"):
        tiny_trainer(None, data=torch.randn(60, 2), steps=2).resume(tr.checkpoint_path)
    with pytest.raises(CheckpointError, match=r"from a fixed set of 50 rows, this one from a generated set"):
        tiny_trainer(None, steps=2).resume(tr.checkpoint_path)


def test_a_text_file_is_not_a_checkpoint(tmp_path):
    csv = tmp_path / "points.csv"
    csv.write_text("x,y\n1.0,2.0\n3.5,-1.25\n")
    with pytest.raises(CheckpointError, match=r"not a scoresde checkpoint \(a text file; checkpoints are") as e:
        load_checkpoint(csv)
    assert "code" not in str(e.value) and str(csv) in str(e.value)
    (tmp_path / "utf8.txt").write_bytes(("é" * 300).encode())   # multi-byte text cut at 512 bytes
    with pytest.raises(CheckpointError, match="a text file"):
        load_checkpoint(tmp_path / "utf8.txt")
