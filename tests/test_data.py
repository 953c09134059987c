"""Tests of scoresde.data: toy sets, targets, digits, files, get_dataset, DataStream."""

from __future__ import annotations

import math
import pathlib
import sys

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde import data as D

TOY = ["moons", "swissroll", "8gaussians", "checkerboard", "rings"]
GENERATED = TOY + sd.target_names()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- generated sets -----------------------------------------------------------------------
@pytest.mark.parametrize("name", GENERATED)
def test_generated_shape_dtype_reproducible(name):
    fn = D.dataset_sampler(name)
    x = fn(257, generator=gen(1))
    d = sd.make_target(name).dim if name in sd.target_names() else 2
    assert x.shape == (257, d) and x.dtype == torch.float32
    assert bool(torch.isfinite(x).all())
    assert torch.equal(x, fn(257, generator=gen(1)))          # same seed -> same data
    assert not torch.equal(x, fn(257, generator=gen(2)))      # other seed -> other data
    assert torch.equal(x, D.get_dataset(name, n=257, generator=gen(1)))


@pytest.mark.parametrize("name", TOY)
def test_toy_independent_of_global_rng(name):
    fn = D.dataset_sampler(name)
    torch.manual_seed(0)
    a = fn(50, generator=gen(3))
    torch.rand(100)  # global RNG use in between does not matter
    assert torch.equal(a, fn(50, generator=gen(3)))
    assert fn(3).shape == (3, 2)  # generator=None uses torch's default


@pytest.mark.parametrize("fn", [D.moons, D.swissroll, D.eight_gaussians, D.checkerboard, D.rings])
def test_toy_argument_errors(fn):
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        fn(0)
    with pytest.raises(TypeError, match="n must be an int"):
        fn(2.5)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        fn(3, generator=0)


def test_eight_gaussians_geometry():
    x = D.eight_gaussians(40_000, generator=gen(0)).double()
    phi = torch.round(torch.atan2(x[:, 1], x[:, 0]) / (math.pi / 4)) * (math.pi / 4)
    u = torch.stack([torch.cos(phi), torch.sin(phi)], 1)
    radial = (x * u).sum(1)
    tangential = x[:, 0] * -u[:, 1] + x[:, 1] * u[:, 0]
    assert abs(float(radial.mean()) - 4 / math.sqrt(2)) < 0.01         # modes at radius 2.83
    assert abs(float(radial.std()) - 0.5 / math.sqrt(2)) < 0.01        # mode std 0.354
    assert abs(float(tangential.std()) - 0.5 / math.sqrt(2)) < 0.01
    k = torch.round(torch.atan2(x[:, 1], x[:, 0]) / (math.pi / 4)).long() % 8
    counts = torch.bincount(k, minlength=8).double() / x.shape[0]
    assert float((counts - 1 / 8).abs().max()) < 4 * math.sqrt(1 / 8 * 7 / 8 / x.shape[0])


def test_moons_two_half_circles():
    n = 20_000
    y = D.moons(n, generator=gen(0)).double() / 2 + torch.tensor([0.5, 0.1], dtype=torch.float64)
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    upper_arc = torch.stack([torch.cos(theta), torch.sin(theta)], 1)
    lower_arc = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], 1)
    d_upper = torch.cdist(y, upper_arc).min(1).values
    d_lower = torch.cdist(y, lower_arc).min(1).values
    frac_upper = float((d_upper < d_lower).double().mean())
    assert abs(frac_upper - 0.5) < 0.02                 # two clusters of equal weight
    d = torch.minimum(d_upper, d_lower)
    # Gaussian noise of std 0.1; the distance to the arc is its normal part, median 0.0674
    assert 0.06 < float(d.median()) < 0.075 and float(d.max()) < 0.6


def test_checkerboard_black_squares_only():
    x = D.checkerboard(20_000, generator=gen(0))
    assert float(x.abs().max()) <= 4.0
    parity = (torch.floor(x[:, 0] / 2) + torch.floor(x[:, 1] / 2)).long() % 2
    assert bool((parity == 0).all())
    cells = (torch.floor(x[:, 0] / 2) + 2) * 4 + (torch.floor(x[:, 1] / 2) + 2)
    counts = torch.bincount(cells.long(), minlength=16)
    assert int((counts > 0).sum()) == 8 and float(counts[counts > 0].min()) > 0.11 * x.shape[0]


def test_rings_radii_and_swissroll_extent():
    r = D.rings(20_000, generator=gen(0)).norm(dim=1)
    ring = torch.round(r / 0.75).clamp(1, 4)
    assert float((r - 0.75 * ring).abs().median()) < 0.08
    assert torch.bincount(ring.long(), minlength=5)[1:].min() > 0.22 * 20_000
    s = D.swissroll(20_000, generator=gen(0))
    assert float(s.norm(dim=1).max()) < 4.5 and float(s.norm(dim=1).median()) > 1.0


def test_dataset_names_and_sampler_errors():
    names = D.dataset_names()
    assert names == sorted(names)
    assert set(TOY) | set(sd.target_names()) | {"digits"} == set(names)
    with pytest.raises(ValueError, match="valid names: 8gaussians"):
        D.dataset_sampler("digits")
    with pytest.raises(ValueError, match="generated data set"):
        D.dataset_sampler(3)


def test_target_sampler_matches_target():
    fn = D.dataset_sampler("ring8")
    assert torch.equal(
        fn(100, generator=gen(5)), sd.ring8().sample(100, generator=gen(5), dtype=torch.float32)
    )
    with pytest.raises(TypeError, match="generator"):
        fn(3, generator="seed")


# -- digits -------------------------------------------------------------------------------
def test_digits_splits():
    pytest.importorskip("sklearn")
    xtr, ytr = D.digits("train")
    xte, yte = D.digits("test")
    xall, yall = D.digits("all")
    assert xtr.shape == (1437, 1, 8, 8) and xte.shape == (360, 1, 8, 8)
    assert xall.shape == (1797, 1, 8, 8) and xtr.dtype == torch.float32
    assert ytr.dtype == torch.int64 and set(ytr.tolist()) == set(range(10))
    assert float(xall.min()) == -1.0 and float(xall.max()) == 1.0
    # the split is the fixed permutation: train then test
    assert torch.equal(torch.cat([xtr, xte]), xall) and torch.equal(torch.cat([ytr, yte]), yall)
    assert torch.equal(D.digits("train")[0], xtr)  # deterministic
    # values are k/8 - 1 for the integer pixel values k = 0..16
    assert torch.equal((xall + 1) * 8, torch.round((xall + 1) * 8))
    # shuffled with a generator: labels follow their images
    xs, ys = D.digits("test", generator=gen(0))
    assert not torch.equal(xs, xte)
    order = [int(torch.nonzero((xte == img).flatten(1).all(1))[0]) for img in xs[:20]]
    assert torch.equal(ys[:20], yte[order])
    with pytest.raises(ValueError, match="split must be 'train', 'test' or 'all'"):
        D.digits("validation")


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="needs scikit-learn"):
        D.digits()


def test_get_dataset_digits_subset():
    pytest.importorskip("sklearn")
    x = D.get_dataset("digits")
    assert x.shape == (1437, 1, 8, 8)
    sub = D.get_dataset("digits", n=100, generator=gen(0))
    assert sub.shape == (100, 1, 8, 8)
    assert torch.equal(sub, D.get_dataset("digits", n=100, generator=gen(0)))
    with pytest.raises(ValueError, match="n must be <= 1437"):
        D.get_dataset("digits", n=5000)


# -- files --------------------------------------------------------------------------------
ARR = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]])


def test_load_npy_pt_csv(tmp_path):
    np.save(tmp_path / "a.npy", ARR)
    torch.save(torch.tensor(ARR), tmp_path / "a.pt")
    (tmp_path / "a.csv").write_text("1,2,3\n4,5,6.5\n")
    (tmp_path / "h.csv").write_text("\nx,y,z\n1, 2,3\n\n4,5,6.5\n")
    (tmp_path / "one.csv").write_text("v\n1\n2\n3\n")
    np.save(tmp_path / "int.npy", np.arange(6).reshape(3, 2))
    expected = torch.tensor(ARR, dtype=torch.float32)
    for f in ["a.npy", "a.pt", "a.csv", "h.csv"]:
        x = D.load_file(tmp_path / f)
        assert x.dtype == torch.float32 and torch.equal(x, expected), f
    assert torch.equal(D.load_file(str(tmp_path / "A.npy".lower())), expected)
    assert D.load_file(tmp_path / "one.csv").shape == (3, 1)
    assert torch.equal(D.load_file(tmp_path / "int.npy"), torch.arange(6.0).reshape(3, 2))


def test_load_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.load_file(tmp_path / "missing.npy")
    (tmp_path / "d.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"unsupported extension '\.txt'; supported: \.npy"):
        D.load_file(tmp_path / "d.txt")
    with pytest.raises(ValueError, match=r"unsupported extension '\(none\)'"):
        D.load_file(tmp_path / "noext")
    with pytest.raises(TypeError, match="path must be a str"):
        D.load_file(3)
    np.save(tmp_path / "v.npy", np.arange(4.0))
    with pytest.raises(ValueError, match=r"expected shape \(n, d\), got \(4,\)"):
        D.load_file(tmp_path / "v.npy")
    torch.save(torch.zeros(2, 3, 4), tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"expected shape \(n, d\), got \(2, 3, 4\)"):
        D.load_file(tmp_path / "c.pt")
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="non-finite"):
        D.load_file(tmp_path / "nan.npy")
    (tmp_path / "inf.csv").write_text("1,inf\n")
    with pytest.raises(ValueError, match="non-finite"):
        D.load_file(tmp_path / "inf.csv")
    np.save(tmp_path / "e.npy", np.zeros((0, 2)))
    with pytest.raises(ValueError, match="empty"):
        D.load_file(tmp_path / "e.npy")
    for text in ["", "x,y\n", "\n\n"]:
        (tmp_path / "e.csv").write_text(text)
        with pytest.raises(ValueError, match="empty"):
            D.load_file(tmp_path / "e.csv")
    np.save(tmp_path / "o.npy", np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a numeric .npy array"):
        D.load_file(tmp_path / "o.npy")
    np.save(tmp_path / "s.npy", np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="expected a real numeric array"):
        D.load_file(tmp_path / "s.npy")
    np.save(tmp_path / "cx.npy", np.ones((2, 2), dtype=complex))
    with pytest.raises(ValueError, match="expected a real numeric array"):
        D.load_file(tmp_path / "cx.npy")
    torch.save({"x": torch.zeros(2, 2)}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match="expected a tensor of shape"):
        D.load_file(tmp_path / "dict.pt")
    torch.save(torch.ones(2, 2, dtype=torch.complex64), tmp_path / "cx.pt")
    with pytest.raises(ValueError, match="expected a real tensor"):
        D.load_file(tmp_path / "cx.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="could not load as a tensor file"):
        D.load_file(tmp_path / "bad.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"could not load as a tensor file \(EOFError\)"):
        D.load_file(tmp_path / "empty.pt")
    (tmp_path / "t.csv").write_text("a,b\n1,2\nx,3\n")
    with pytest.raises(ValueError, match="could not parse the CSV"):
        D.load_file(tmp_path / "t.csv")


# -- get_dataset --------------------------------------------------------------------------
def test_get_dataset_names_paths_and_errors(tmp_path):
    assert D.get_dataset("moons").shape == (D.DEFAULT_N, 2)
    np.save(tmp_path / "a.npy", np.arange(20.0).reshape(10, 2))
    assert D.get_dataset(tmp_path / "a.npy").shape == (10, 2)
    assert D.get_dataset(str(tmp_path / "a.npy"), n=4, generator=gen(0)).shape == (4, 2)
    with pytest.raises(ValueError) as info:
        D.get_dataset("mnist")
    msg = str(info.value)
    assert "unknown data set 'mnist'" in msg
    for name in D.dataset_names():
        assert name in msg
    with pytest.raises(FileNotFoundError):
        D.get_dataset("nothere.csv")
    with pytest.raises(TypeError, match="name_or_path must be a str"):
        D.get_dataset(42)
    with pytest.raises(TypeError, match="generator must be"):
        D.get_dataset("moons", generator=1)
    with pytest.raises(ValueError, match="n must be <= 10"):
        D.get_dataset(pathlib.Path(tmp_path / "a.npy"), n=11)


# -- DataStream ---------------------------------------------------------------------------
def test_stream_epochs_cover_each_row_once():
    data = torch.arange(10.0)[:, None]
    s = D.DataStream(data, 3, generator=gen(0))
    assert s.kind == "tensor" and iter(s) is s
    first = torch.cat([next(s) for _ in range(3)]).flatten()
    assert len(set(first.tolist())) == 9 and s.epoch == 0   # 3 batches of 3 distinct rows
    second = torch.cat([next(s) for _ in range(3)]).flatten()
    assert s.epoch == 1 and len(set(second.tolist())) == 9
    assert not torch.equal(first, second)                   # reshuffled
    s2 = D.DataStream(data, 3, generator=gen(0))
    assert torch.equal(torch.cat([next(s2) for _ in range(3)]).flatten(), first)


def test_stream_state_roundtrip_bit_identical(tmp_path):
    for data in (torch.randn(23, 2, generator=gen(1)), D.moons):
        s = D.DataStream(data, 5, generator=gen(0))
        for _ in range(7):
            next(s)
        torch.save(s.state_dict(), tmp_path / "s.pt")
        expected = [next(s) for _ in range(9)]
        fresh = D.DataStream(data, 5, generator=gen(123))
        fresh.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
        assert fresh.batches_drawn == 7
        for e in expected:
            assert torch.equal(next(fresh), e)
    # a fresh stream's state (no permutation yet) round-trips too
    s = D.DataStream(torch.zeros(4, 1), 2, generator=gen(0))
    t = D.DataStream(torch.zeros(4, 1), 2)
    t.load_state_dict(s.state_dict())
    assert torch.equal(t.generator.get_state(), s.generator.get_state())


def test_stream_sampler_fresh_batches():
    s = D.DataStream(D.dataset_sampler("ring8"), 64, generator=gen(0))
    a, b = next(s), next(s)
    assert s.kind == "sampler" and a.shape == (64, 2) and not torch.equal(a, b)
    assert D.DataStream(D.moons, 8).generator is not None   # private generator, random seed


def test_stream_errors():
    with pytest.raises(ValueError, match="batch_size must be <= the number of samples"):
        D.DataStream(torch.zeros(3, 2), 4)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        D.DataStream(torch.zeros(3, 2), 0)
    with pytest.raises(ValueError, match="n >= 1"):
        D.DataStream(torch.zeros(0, 2), 1)
    with pytest.raises(TypeError, match="data must be a tensor"):
        D.DataStream([1, 2, 3], 1)
    with pytest.raises(TypeError, match="generator"):
        D.DataStream(torch.zeros(3, 2), 1, generator=0)
    s = D.DataStream(torch.zeros(6, 2), 2, generator=gen(0))
    with pytest.raises(ValueError, match="state must be a dict"):
        s.load_state_dict([1])
    with pytest.raises(ValueError, match="missing the keys"):
        s.load_state_dict({"kind": "tensor"})
    other = D.DataStream(torch.zeros(6, 2), 3, generator=gen(0)).state_dict()
    with pytest.raises(ValueError, match="does not match this stream"):
        s.load_state_dict(other)
    with pytest.raises(ValueError, match="does not match this stream"):
        s.load_state_dict(D.DataStream(D.moons, 2).state_dict())


def test_binary_file_named_csv_is_refused_in_scoresdes_words(tmp_path):
    f = tmp_path / "image.csv"
    f.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    for load in (D.load_file, D.get_dataset, D.data_source):
        with pytest.raises(ValueError) as info:
            load(f)
        assert type(info.value) is ValueError      # not a bare UnicodeDecodeError
        msg = str(info.value)
        assert str(f) in msg and "not a text CSV file" in msg
        assert ".npy (a NumPy array), .pt (a tensor saved with torch.save) or .csv" in msg


def test_data_source_is_the_one_dispatch(tmp_path):
    x = torch.randn(6, 2, generator=gen(0))
    assert D.data_source(x) is x and D.data_source(D.moons) is D.moons
    assert D.data_source("ring8")(3, generator=gen(0)).shape == (3, 2)
    np.save(tmp_path / "a.npy", np.ones((4, 3)))
    assert D.data_source(tmp_path / "a.npy").shape == (4, 3) == D.data_source(str(tmp_path / "a.npy")).shape
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        D.data_source("mnist")
    with pytest.raises(FileNotFoundError):
        D.data_source("missing.npy")
    with pytest.raises(TypeError, match="data must be a tensor, a data set name or path, or a sampling"):
        D.data_source(3.5)
