r"""Training data: toy 2-D sets, the exact-score targets, scikit-learn's digits and user files.

Nothing here downloads anything. Three kinds of data are offered:

- **generated sets**, each a function ``fn(n, generator=None) -> Tensor (n, d)`` (float32):
  the classic 2-D toy sets of the FFJORD / score-SDE literature (:func:`moons`,
  :func:`swissroll`, :func:`eight_gaussians` — name ``"8gaussians"`` —, :func:`checkerboard`,
  :func:`rings`) and every named reference target of :mod:`scoresde.targets` (whose score is
  known exactly, so a trained model can be checked against the truth);
- **digits**: the 8×8 handwritten digits that ship inside scikit-learn (:func:`digits`);
- **files**: a user's ``.npy``, ``.pt`` or ``.csv`` array of shape ``(n, d)`` (:func:`load_file`).

:func:`data_source` is the one place a data specification (a name of :func:`dataset_names`,
a file path, a tensor or a sampling function) is resolved: into a fixed tensor or a sampling
function, which :class:`DataStream` turns into reproducible, checkpointable mini-batches.
:func:`get_dataset` draws a tensor from a name or a path through it.

*Labelled data* (for class-conditional models, :doc:`/guide/training`): with ``labels=True``
the digits come with their digit and the reference targets with the index of the mixture
component each point was drawn from (so the class-conditional truth is exact); a tuple
``(x, y)`` of a data tensor and integer labels is labelled data as it is. Labelled sources are
a tuple of tensors or a sampling function returning ``(x, y)``, and streams yield ``(x, y)``.

Every random function takes a ``generator`` (:class:`torch.Generator`); samples are drawn on
the generator's device. The same seed gives the same data, whatever ran before.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import torch

from ._checks import check_int
from .targets import make_target, target_names

__all__ = [
    "moons",
    "swissroll",
    "eight_gaussians",
    "checkerboard",
    "rings",
    "digits",
    "load_file",
    "get_dataset",
    "data_source",
    "dataset_names",
    "dataset_sampler",
    "labelled_names",
    "DataStream",
]

#: Number of points :func:`get_dataset` draws from a generated set when ``n`` is None.
DEFAULT_N = 10_000
_FILE_SUFFIXES = (".npy", ".pt", ".csv")


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(n: int, generator, *shape) -> torch.Tensor:
    return torch.rand(n, *shape, generator=generator, device=_device(generator))


def _normal(n: int, generator, *shape) -> torch.Tensor:
    return torch.randn(n, *shape, generator=generator, device=_device(generator))


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )


# --------------------------------------------------------------------------------------
# 2-D toy sets (Grathwohl et al. 2019, FFJORD, `lib/toy_data.py`; re-implemented in torch)
# --------------------------------------------------------------------------------------
def moons(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Two interleaving half circles ("moons"), scaled as in FFJORD.

    Each point picks one of the moons with probability ½ and an angle
    :math:`\theta \sim U(0, \pi)`; the upper moon is :math:`(\cos\theta, \sin\theta)`, the lower
    one :math:`(1 - \cos\theta, \tfrac12 - \sin\theta)`; Gaussian noise of std 0.1 is added, then
    the set is mapped by :math:`x \mapsto 2x + (-1, -0.2)` (centred near the origin, spread ≈ 2).

    Parameters
    ----------
    n : int
        Number of points (>= 1).
    generator : torch.Generator, optional
        Source of randomness; the points are drawn on its device.

    Returns
    -------
    Tensor
        Shape ``(n, 2)``, float32.

    Examples
    --------
    >>> import torch
    >>> from scoresde.data import moons
    >>> moons(4, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([4, 2])
    """
    n = check_int("n", n)
    _check_generator(generator)
    theta = math.pi * _uniform(n, generator)
    lower = _uniform(n, generator) < 0.5
    x = torch.where(lower, 1.0 - torch.cos(theta), torch.cos(theta))
    y = torch.where(lower, 0.5 - torch.sin(theta), torch.sin(theta))
    pts = torch.stack([x, y], dim=1) + 0.1 * _normal(n, generator, 2)
    return 2.0 * pts + torch.tensor([-1.0, -0.2], device=pts.device)


def swissroll(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""A 2-D Swiss roll (the ``(x, z)`` plane of scikit-learn's ``make_swiss_roll``) scaled by ⅕.

    :math:`t = \tfrac{3\pi}{2}(1 + 2u)`, :math:`u \sim U(0, 1)`, point
    :math:`(t\cos t, t\sin t) + \mathcal N(0, I)`, divided by 5 (FFJORD's scaling): a spiral of
    radius up to ≈ 2.8.

    Parameters and return value as for :func:`moons`.
    """
    n = check_int("n", n)
    _check_generator(generator)
    t = 1.5 * math.pi * (1.0 + 2.0 * _uniform(n, generator))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) + _normal(n, generator, 2)
    return pts / 5.0


def eight_gaussians(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Eight equally weighted Gaussian modes on a circle of radius :math:`4/\sqrt 2 \approx 2.83`.

    Mode centres :math:`4(\cos\phi_k, \sin\phi_k)/\sqrt2`, :math:`\phi_k = k\pi/4`, each with std
    :math:`0.5/\sqrt 2 \approx 0.354` (FFJORD's ``8gaussians``). For the same shape with an
    exact score under every SDE, use the target ``"ring8"``.

    Parameters and return value as for :func:`moons`.

    Examples
    --------
    >>> import math, torch
    >>> from scoresde.data import eight_gaussians
    >>> x = eight_gaussians(20000, generator=torch.Generator().manual_seed(0))
    >>> phi = torch.round(torch.atan2(x[:, 1], x[:, 0]) / (math.pi / 4)) * (math.pi / 4)
    >>> radial = x[:, 0] * torch.cos(phi) + x[:, 1] * torch.sin(phi)   # along the mode direction
    >>> round(float(radial.mean()), 2)
    2.83
    """
    n = check_int("n", n)
    _check_generator(generator)
    k = torch.randint(0, 8, (n,), generator=generator, device=_device(generator))
    phi = k.to(torch.float32) * (math.pi / 4)
    centres = 4.0 * torch.stack([torch.cos(phi), torch.sin(phi)], dim=1)
    return (centres + 0.5 * _normal(n, generator, 2)) / math.sqrt(2.0)


def checkerboard(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Uniform density on the 8 black squares of a 4×4 checkerboard covering :math:`[-4, 4]^2`.

    Each square has side 2; a point lies in a black square iff
    :math:`\lfloor x/2 \rfloor + \lfloor y/2 \rfloor` is even (FFJORD's ``checkerboard``).

    Parameters and return value as for :func:`moons`.
    """
    n = check_int("n", n)
    _check_generator(generator)
    x1 = 4.0 * _uniform(n, generator) - 2.0
    row = torch.randint(0, 2, (n,), generator=generator, device=_device(generator))
    x2 = _uniform(n, generator) - 2.0 * row.to(torch.float32) + torch.remainder(torch.floor(x1), 2)
    return 2.0 * torch.stack([x1, x2], dim=1)


def rings(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Four concentric rings of radii 0.75, 1.5, 2.25 and 3, with Gaussian noise of std 0.08.

    Each point picks a ring uniformly and an angle uniformly (FFJORD's ``rings``, which spaces
    equal numbers of points evenly on each ring, randomised).

    Parameters and return value as for :func:`moons`.
    """
    n = check_int("n", n)
    _check_generator(generator)
    ring = torch.randint(1, 5, (n,), generator=generator, device=_device(generator))
    radius = 0.75 * ring.to(torch.float32)
    phi = 2 * math.pi * _uniform(n, generator)
    pts = radius[:, None] * torch.stack([torch.cos(phi), torch.sin(phi)], dim=1)
    return pts + 0.08 * _normal(n, generator, 2)


_TOY: dict[str, Callable[..., torch.Tensor]] = {
    "moons": moons,
    "swissroll": swissroll,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "rings": rings,
}


def _target_sampler(name: str) -> Callable[..., torch.Tensor]:
    target = make_target(name)

    def sample_target(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_generator(generator)
        return target.sample(check_int("n", n), generator=generator, dtype=torch.float32)

    sample_target.__name__ = sample_target.__qualname__ = f"sample_{name}"
    sample_target.__doc__ = f"Draw ``n`` points of the reference target ``{name!r}`` (float32)."
    return sample_target


def _labelled_target_sampler(name: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    target = make_target(name)
    chol = torch.linalg.cholesky(target.covariances)

    def sample_target_labelled(n: int, generator: torch.Generator | None = None):
        _check_generator(generator)
        n = check_int("n", n)
        device = _device(generator)
        k = torch.multinomial(target.weights.to(device), n, replacement=True, generator=generator)
        z = torch.randn(n, target.dim, generator=generator, device=device, dtype=torch.float64)
        kc = k.cpu()
        x = target.means[kc] + torch.einsum("nij,nj->ni", chol[kc], z.cpu())
        return x.to(device=device, dtype=torch.float32), k

    sample_target_labelled.__name__ = sample_target_labelled.__qualname__ = f"sample_{name}_labelled"
    sample_target_labelled.__doc__ = (f"Draw ``n`` points of the reference target ``{name!r}`` (float32) "
                                      "and the index of the component each comes from (int64).")
    sample_target_labelled.num_classes = target.n_components
    return sample_target_labelled


# --------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------
def dataset_names() -> list[str]:
    """Names accepted by :func:`get_dataset`: the toy sets, the reference targets and ``"digits"``.

    Examples
    --------
    >>> from scoresde.data import dataset_names
    >>> dataset_names()[:3]
    ['8gaussians', 'anisotropic_64d', 'checkerboard']
    """
    return sorted([*_TOY, *target_names(), "digits"])


def labelled_names() -> list[str]:
    """Names that :func:`data_source` resolves with ``labels=True``: ``"digits"`` and the targets.

    The labels of ``"digits"`` are the digits ``0..9``; those of a reference target
    (:func:`scoresde.target_names`) are the mixture component each point was drawn from,
    ``0..K-1``.

    Examples
    --------
    >>> from scoresde.data import labelled_names
    >>> "digits" in labelled_names(), "moons" in labelled_names()
    (True, False)
    """
    return sorted([*target_names(), "digits"])


def dataset_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampling function ``fn(n, generator=None) -> Tensor (n, d)`` of a generated set.

    Parameters
    ----------
    name : str
        A toy set (``"moons"``, ``"swissroll"``, ``"8gaussians"``, ``"checkerboard"``,
        ``"rings"``) or a reference target (:func:`scoresde.target_names`).

    Raises
    ------
    ValueError
        For any other name (``"digits"`` is a fixed data set, not a generator).
    """
    if isinstance(name, str):
        if name in _TOY:
            return _TOY[name]
        if name in target_names():
            return _target_sampler(name)
    valid = sorted([*_TOY, *target_names()])
    raise ValueError(
        f"name must be a generated data set; got {name!r}; valid names: {', '.join(valid)}"
    )


# --------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------
_DIGITS_TRAIN_FRACTION = 0.8
_DIGITS_SPLIT_SEED = 0


def digits(
    split: str = "train", generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The 8×8 handwritten digits bundled with scikit-learn, scaled to :math:`[-1, 1]`.

    1797 images with pixel values ``0..16`` (``sklearn.datasets.load_digits``, read from the
    scikit-learn installation, never downloaded) mapped by :math:`v \mapsto v/8 - 1`. The split
    is fixed: a permutation drawn once by ``numpy.random.RandomState(0)`` sends the first 80 %
    (1437 images) to ``"train"`` and the other 360 to ``"test"``.

    Parameters
    ----------
    split : {"train", "test", "all"}
        Which part to return.
    generator : torch.Generator, optional
        If given, the returned images (and labels alike) are shuffled with it; otherwise they
        come in the fixed split order.

    Returns
    -------
    images : Tensor
        Shape ``(n, 1, 8, 8)``, float32, values in ``[-1, 1]``.
    labels : Tensor
        Shape ``(n,)``, int64, digits ``0..9``.

    Raises
    ------
    ImportError
        If scikit-learn (an optional dependency, extra ``notebooks``) is not installed.

    Examples
    --------
    >>> from scoresde.data import digits
    >>> x, y = digits("test")
    >>> x.shape, y.shape, float(x.min()), float(x.max())
    (torch.Size([360, 1, 8, 8]), torch.Size([360]), -1.0, 1.0)
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    _check_generator(generator)
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            "scoresde.data.digits needs scikit-learn (an optional dependency); install it with "
            "`pip install scikit-learn` or `pip install scoresde[notebooks]`"
        ) from err
    bunch = load_digits()
    images = torch.as_tensor(np.asarray(bunch.data, dtype=np.float32)).reshape(-1, 1, 8, 8)
    images = images / 8.0 - 1.0
    labels = torch.as_tensor(np.asarray(bunch.target, dtype=np.int64))
    n = images.shape[0]
    perm = torch.as_tensor(np.random.RandomState(_DIGITS_SPLIT_SEED).permutation(n))
    n_train = int(_DIGITS_TRAIN_FRACTION * n)
    if split == "train":
        idx = perm[:n_train]
    elif split == "test":
        idx = perm[n_train:]
    else:
        idx = perm
    if generator is not None:
        idx = idx[torch.randperm(idx.numel(), generator=generator, device=generator.device).cpu()]
    return images[idx].contiguous(), labels[idx].contiguous()


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------
def _is_numeric_row(line: str) -> bool:
    try:
        [float(v) for v in line.split(",")]
    except ValueError:
        return False
    return True


_FORMATS = ".npy (a NumPy array), .pt (a tensor saved with torch.save) or .csv (comma-separated numbers)"


def _read_csv(path: str) -> np.ndarray:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not a text CSV file (byte {err.start} is not UTF-8 text: a binary file?); "
            f"data files must be {_FORMATS}"
        ) from None
    if lines and not _is_numeric_row(lines[0]):
        lines = lines[1:]  # a header line
    if not lines:
        return np.zeros((0, 0))
    try:
        return np.loadtxt(lines, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"{path}: could not parse the CSV as numbers: {err}") from None


def load_file(path: str | os.PathLike) -> torch.Tensor:
    """Load a user's data file holding an array of shape ``(n, d)`` as a float32 tensor.

    Supported formats: ``.npy`` (NumPy, loaded without pickle), ``.pt`` (one tensor, loaded
    with ``torch.load(..., weights_only=True)`` so no code in the file can run) and ``.csv``
    (comma-separated numbers, one sample per row, an optional header line).

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    Tensor
        Shape ``(n, d)``, float32, on the CPU.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        For an unsupported extension, an unreadable file, an array that is not ``(n, d)``,
        an empty array or non-finite values.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _FILE_SUFFIXES:
        raise ValueError(
            f"path {path!r} has unsupported extension {suffix or '(none)'!r}; supported: "
            f"{', '.join(_FILE_SUFFIXES)}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r} does not exist")
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as err:  # object arrays, bad magic
            raise ValueError(f"{path}: not a numeric .npy array ({err})") from None
        if not isinstance(arr, np.ndarray) or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
        ) or np.iscomplexobj(arr):
            raise ValueError(f"{path}: expected a real numeric array, got dtype {arr.dtype}")
        data = torch.as_tensor(arr.astype(np.float32, copy=False))
    elif suffix == ".pt":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure means: not a plain tensor file
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{path}: could not load as a tensor file ({msg})") from None
        if not isinstance(obj, torch.Tensor):
            raise ValueError(f"{path}: expected a tensor of shape (n, d), got {type(obj).__name__}")
        if obj.is_complex():
            raise ValueError(f"{path}: expected a real tensor, got dtype {obj.dtype}")
        data = obj.detach().to(torch.float32)
    else:
        data = torch.as_tensor(_read_csv(path).astype(np.float32))
    if data.ndim != 2:
        raise ValueError(f"{path}: expected shape (n, d), got {tuple(data.shape)}")
    if data.numel() == 0:
        raise ValueError(f"{path}: the data set is empty (shape {tuple(data.shape)})")
    if not bool(torch.isfinite(data).all()):
        raise ValueError(f"{path}: the data contain non-finite values (NaN or inf)")
    return data.contiguous()


# --------------------------------------------------------------------------------------
# the single entry point
# --------------------------------------------------------------------------------------
def _rows(data, idx: torch.Tensor):
    """Rows ``idx`` of a tensor or of each tensor of a labelled tuple ``(x, y)``."""
    if isinstance(data, tuple):
        return tuple(v[idx.to(v.device)] for v in data)
    return data[idx.to(data.device)]


def _subset(data, n: int | None, generator, what: str):
    if n is None:
        return data
    n = check_int("n", n)
    size = _length(data)
    if n > size:
        raise ValueError(f"n must be <= {size} (the size of {what}), got {n}")
    idx = torch.randperm(size, generator=generator, device=_device(generator))[:n]
    return _rows(data, idx)


def _length(data) -> int:
    return int((data[0] if isinstance(data, tuple) else data).shape[0])


def _is_path(spec) -> bool:
    """A path-like, or a string that names a file (existing, or with a data-file extension)."""
    if isinstance(spec, os.PathLike):
        return True
    return os.path.splitext(spec)[1].lower() in _FILE_SUFFIXES or os.path.exists(spec)


def _check_labelled(data: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    if len(data) != 2 or not all(isinstance(v, torch.Tensor) for v in data):
        raise TypeError("data given as a tuple must be (x, y): a data tensor and a tensor of integer labels")
    x, y = data
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.ndim != 1:
        raise ValueError(f"labels y must be an integer tensor of shape (n,), got dtype {y.dtype}, "
                         f"shape {tuple(y.shape)}")
    if x.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and labels y must have the same length, got {tuple(x.shape)} and {tuple(y.shape)}")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"labels y must be >= 0, got {int(y.min())}")
    return x, y


def data_source(data, labels: bool = False):
    """Resolve a data specification into what a :class:`DataStream` draws from.

    This is the one place where data are dispatched on their kind: the trainer, the training
    recipe, :func:`get_dataset` and the command line all go through it.

    Parameters
    ----------
    data : str, os.PathLike, Tensor or callable
        A generated set's name (toy 2-D sets and reference targets, see :func:`dataset_names`),
        ``"digits"``, the path of a ``.npy``/``.pt``/``.csv`` file (see :func:`load_file`), a
        tensor ``(n, *event_shape)``, a tuple ``(x, y)`` of a tensor and its integer labels
        ``(n,)``, or a sampling function ``fn(n, generator=None)``.
    labels : bool
        Resolve a name of :func:`labelled_names` into labelled data: ``"digits"`` gives the
        tuple ``(images, digits)`` of the training split, a reference target a sampling
        function returning ``(x, component)`` (with attribute ``num_classes``, the number of
        components). Files, tensors and the toy sets carry no labels (a ``ValueError``); a
        tuple or a callable is returned as it is.

    Returns
    -------
    Tensor, tuple or callable
        A fixed data set (``"digits"``: the training split of :func:`digits`; a file; the tensor
        itself; a labelled tuple ``(x, y)``), or the sampling function of a generated set
        (:func:`dataset_sampler`; a callable itself).

    Raises
    ------
    ValueError
        For a string that is neither a data-set name nor a file, or a file that cannot be read.
    FileNotFoundError
        For a path (or a name with a data-file extension) that does not exist.
    TypeError
        For anything else.

    Examples
    --------
    >>> import torch
    >>> from scoresde.data import data_source
    >>> data_source("moons").__name__, data_source(torch.zeros(3, 2)).shape
    ('moons', torch.Size([3, 2]))
    >>> x, y = data_source("digits", labels=True); x.shape, y.shape
    (torch.Size([1437, 1, 8, 8]), torch.Size([1437]))
    >>> data_source("imbalanced_2d", labels=True).num_classes   # its three components
    3
    """
    if isinstance(data, tuple):
        return _check_labelled(data)
    if labels and not callable(data):
        if isinstance(data, str) and data in labelled_names():
            return digits("train") if data == "digits" else _labelled_target_sampler(data)
        what = repr(os.fspath(data)) if isinstance(data, (str, os.PathLike)) else "a tensor"
        raise ValueError(
            f"labels=True: {what} carries no labels; labelled data: {', '.join(labelled_names())}, "
            "or a tuple (x, y) of a tensor and integer labels"
        )
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, str) and data in dataset_names():
        return digits("train")[0] if data == "digits" else dataset_sampler(data)
    if isinstance(data, (str, os.PathLike)):
        if _is_path(data):
            return load_file(data)
        raise ValueError(
            f"unknown data set {data!r}; valid names: {', '.join(dataset_names())} "
            f"(or the path of a {'/'.join(_FILE_SUFFIXES)} file)"
        )
    if callable(data):
        return data
    raise TypeError(
        "data must be a tensor, a data set name or path, or a sampling function fn(n, generator) "
        f"(or a labelled tuple (x, y)), got {type(data).__name__}"
    )


def get_dataset(
    name_or_path: str | os.PathLike,
    n: int | None = None,
    generator: torch.Generator | None = None,
    labels: bool = False,
):
    """A data set as a tensor, from a name of :func:`dataset_names` or a file path.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A generated set (toy 2-D sets and reference targets), ``"digits"`` (the training
        split of :func:`digits`, shape ``(1437, 1, 8, 8)``), or the path of a ``.npy``,
        ``.pt`` or ``.csv`` file (see :func:`load_file`); resolved by :func:`data_source`.
    n : int, optional
        Number of points. Generated sets draw ``n`` (default ``DEFAULT_N = 10000``); fixed sets
        (digits, files) return a random subset of ``n`` rows, or everything when ``n`` is None.
    generator : torch.Generator, optional
        Source of randomness for the draw or the subset.
    labels : bool
        Also return the labels (names of :func:`labelled_names` only; see
        :func:`data_source`).

    Returns
    -------
    Tensor, or tuple of Tensor
        Shape ``(n, *event_shape)``, float32; with ``labels=True`` the tuple ``(x, y)`` with
        int64 labels ``y`` of shape ``(n,)``.

    Examples
    --------
    >>> import torch
    >>> from scoresde.data import get_dataset
    >>> get_dataset("ring8", n=5, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([5, 2])
    """
    _check_generator(generator)
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"name_or_path must be a str or os.PathLike, got {type(name_or_path).__name__}"
        )
    source = data_source(name_or_path, labels=labels)
    if callable(source):
        return source(DEFAULT_N if n is None else n, generator=generator)
    what = "the digits training split" if name_or_path == "digits" else repr(os.fspath(name_or_path))
    return _subset(source, n, generator, what)


# --------------------------------------------------------------------------------------
# mini-batches
# --------------------------------------------------------------------------------------
class DataStream:
    """An endless, reproducible stream of mini-batches whose position can be checkpointed.

    - From a **tensor** ``(n, *event)``: each epoch is a fresh permutation drawn with the
      generator; batches are consecutive slices of it; a remainder smaller than
      ``batch_size`` is dropped (every batch has exactly ``batch_size`` distinct rows).
    - From a **sampling function** ``fn(n, generator=None)`` (e.g. :func:`moons` or
      :func:`dataset_sampler`): every batch is a fresh draw of ``batch_size`` points.
    - From **labelled data**, a tuple ``(x, y)`` of tensors with the same first dimension:
      as from a tensor, each batch the tuple ``(x[idx], y[idx])`` of the same rows (a labelled
      sampling function's batches are its ``(x, y)`` draws).

    :meth:`state_dict` captures the generator state and the position (plain tensors and ints,
    loadable with ``torch.load(..., weights_only=True)``); after :meth:`load_state_dict` the
    stream continues bit-identically.

    Parameters
    ----------
    data : Tensor, tuple of Tensor or callable
        The data set, a labelled data set ``(x, y)``, or the sampling function.
    batch_size : int
        Rows per batch (<= ``n`` for a tensor).
    generator : torch.Generator, optional
        Source of the shuffles / draws. When None a private generator with a random seed is
        created (the stream is then not reproducible, but still checkpointable).

    Examples
    --------
    >>> import torch
    >>> from scoresde.data import DataStream
    >>> s = DataStream(torch.arange(10.0)[:, None], 4, generator=torch.Generator().manual_seed(0))
    >>> a = next(s); state = s.state_dict(); b = next(s)
    >>> s.load_state_dict(state); torch.equal(next(s), b)
    True
    >>> s.epoch, s.batches_drawn
    (0, 2)
    """

    def __init__(self, data, batch_size: int, generator: torch.Generator | None = None):
        self.batch_size = check_int("batch_size", batch_size)
        _check_generator(generator)
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        self.generator = generator
        if isinstance(data, tuple):
            if len(data) != 2 or not all(isinstance(v, torch.Tensor) for v in data):
                raise TypeError("data given as a tuple must be (x, y), two tensors")
            if data[0].ndim < 1 or data[1].ndim < 1 or data[0].shape[0] != data[1].shape[0]:
                raise ValueError(f"data (x, y) must have the same number of rows, got {tuple(data[0].shape)} "
                                 f"and {tuple(data[1].shape)}")
        if isinstance(data, (torch.Tensor, tuple)):
            first = data[0] if isinstance(data, tuple) else data
            if first.ndim < 1 or first.shape[0] == 0:
                raise ValueError(
                    f"data must have shape (n, *event_shape) with n >= 1, got {tuple(first.shape)}"
                )
            size = _length(data)
            if self.batch_size > size:
                raise ValueError(
                    f"batch_size must be <= the number of samples ({size}), got "
                    f"{self.batch_size}"
                )
            self.data: torch.Tensor | tuple | None = data
            self.sampler: Callable | None = None
        elif callable(data):
            self.data, self.sampler = None, data
        else:
            raise TypeError(
                f"data must be a tensor (n, *event_shape), a tuple (x, y) or a function fn(n, generator), "
                f"got {type(data).__name__}"
            )
        self.epoch = 0
        self.batches_drawn = 0
        self._pos = 0
        self._perm: torch.Tensor | None = None

    @property
    def kind(self) -> str:
        """``"tensor"`` or ``"sampler"``."""
        return "tensor" if self.data is not None else "sampler"

    def __iter__(self) -> DataStream:
        return self

    def __next__(self):
        self.batches_drawn += 1
        if self.data is None:
            return self.sampler(self.batch_size, generator=self.generator)
        n = _length(self.data)
        if self._perm is None:
            self._perm = torch.randperm(n, generator=self.generator, device=self.generator.device)
            self._pos = 0
        elif self._pos + self.batch_size > n:
            self._perm = torch.randperm(n, generator=self.generator, device=self.generator.device)
            self._pos = 0
            self.epoch += 1
        idx = self._perm[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return _rows(self.data, idx)

    def state_dict(self) -> dict:
        """The stream's position and generator state (tensors and ints only)."""
        return {
            "kind": self.kind,
            "batch_size": self.batch_size,
            "n": -1 if self.data is None else _length(self.data),
            "epoch": self.epoch,
            "batches_drawn": self.batches_drawn,
            "pos": self._pos,
            "perm": self._perm.cpu().clone() if self._perm is not None else None,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a position saved by :meth:`state_dict`.

        Raises
        ------
        ValueError
            If the state belongs to a different kind of stream, batch size or data size.
        """
        if not isinstance(state, dict):
            raise ValueError(
                f"state must be a dict from DataStream.state_dict, got {type(state).__name__}"
            )
        keys = {"kind", "batch_size", "n", "epoch", "batches_drawn", "pos", "perm", "generator"}
        missing = keys - set(state)
        if missing:
            raise ValueError(f"state is missing the keys {sorted(missing)}")
        n = -1 if self.data is None else _length(self.data)
        ours = (self.kind, self.batch_size, n)
        theirs = (state["kind"], state["batch_size"], state["n"])
        if ours != theirs:
            raise ValueError(
                f"state does not match this stream: (kind, batch_size, n) is {theirs} in the "
                f"state, {ours} here"
            )
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])
        self.batches_drawn = int(state["batches_drawn"])
        self._pos = int(state["pos"])
        perm = state["perm"]
        self._perm = None if perm is None else perm.to(self.generator.device)
