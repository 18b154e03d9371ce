"""Built-in datasets: ``mnist1d``, ``digits``, ``synthetic`` (generated) and the local-file
datasets ``cifar10``, ``mnist``, ``fashion_mnist`` (read from the data directory, never downloaded).
"""

from __future__ import annotations

import gzip
import math
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np

from models.data import (
    PATH_FIELD,
    Dataset,
    default_data_dir,
    resolve_data_path,
    split_and_normalize,
)
from models.errors import ConfigError, DatasetError
from models.registry import DATASETS, DataShape, Param

_VAL = Param("val_fraction", "float", 0.1, "part of the training data held out", low=0.01, high=0.5)
_SPLIT_SEED = Param("split_seed", "int", 0, "seed of the train/validation split", low=0)
_LIMIT = Param("limit", "int", None, "use at most this many training samples", low=1, nullable=True)


def _limit(x: np.ndarray, y: np.ndarray, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    return (x, y) if limit is None else (x[:limit], y[:limit])


def _minus_val(n: int, params: dict[str, Any]) -> int:
    """Training samples left after ``split_and_normalize`` holds out the validation part."""
    return n - round(n * float(params["val_fraction"]))


def _file_train_size(standard: int) -> Any:
    """The declared training size of a file dataset: its standard size (or ``limit``) minus the
    validation part. Declared, not read: validating a spec must not need the data directory, so a
    smaller local copy (a subset, a test fixture) only makes the batch-size bound looser. Its path
    is checked here all the same (inside the data directory, no escape, nothing read), so that a
    spec naming ``../../etc`` is refused where it enters, not by the worker."""

    def size(p: dict[str, Any]) -> int:
        resolve_data_path(default_data_dir(), p["path"])
        return _minus_val(min(standard, p["limit"] or standard), p)

    return size


def _file_shape(input_shape: tuple[int, ...], standard: int, test: int) -> Any:
    """The declared contents of a file dataset: its standard sizes (or ``limit``), as above."""
    return lambda p: DataShape(input_shape, 10, min(standard, p["limit"] or standard) + test)


# Generated data is built in memory: bound it so a request cannot exhaust the worker's memory.
# float32 throughout: 200 MB of data at the bound; building it peaks at about twice that (measured
# in tests/reliability/test_resource_caps.py and docs/reliability.md).
MAX_SYNTHETIC_VALUES = 50_000_000  # n_samples x values per sample


# --- generated and bundled ----------------------------------------------------------------------


@DATASETS.register(
    "mnist1d",
    params=(
        Param(
            "num_samples",
            "int",
            5000,
            "samples generated (80% train, 20% test)",
            low=100,
            high=100_000,
        ),
        Param("seed", "int", 42, "generator seed (mnist1d's default is 42)", low=0),
        _VAL,
        _SPLIT_SEED,
    ),
    description="MNIST-1D (Greydanus 2020): 40-point signals, 10 classes, generated locally.",
    # make_dataset makes num_samples // 10 per class and keeps int(80%) of them for training.
    train_size=lambda p: _minus_val(int(p["num_samples"] // 10 * 10 * 0.8), p),
    data_shape=lambda p: DataShape((40,), 10, p["num_samples"] // 10 * 10),
)
def build_mnist1d(
    data_dir: Path, num_samples: int, seed: int, val_fraction: float, split_seed: int
) -> Dataset:
    """MNIST-1D from ``mnist1d.data.make_dataset``; validation is split off its training part."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    # make_dataset reseeds the global `random` and numpy RNGs: keep the process's state intact.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        raw = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    # The signals are already centred and scaled globally; one global mean/std keeps them so.
    return split_and_normalize(
        raw["x"], raw["y"], raw["x_test"], raw["y_test"], num_classes=10,
        val_fraction=val_fraction, seed=split_seed, normalize="global", name="mnist1d",
    )  # fmt: skip


DIGITS_SAMPLES = 1797


@DATASETS.register(
    "digits",
    params=(
        Param("test_fraction", "float", 0.2, "part held out for testing", low=0.05, high=0.5),
        _VAL,
        _SPLIT_SEED,
    ),
    description="scikit-learn's 8x8 handwritten digits (1797 images, as 1x8x8).",
    train_size=lambda p: _minus_val(DIGITS_SAMPLES - round(DIGITS_SAMPLES * p["test_fraction"]), p),
    data_shape=lambda _: DataShape((1, 8, 8), 10, DIGITS_SAMPLES),
)
def build_digits(
    data_dir: Path, test_fraction: float, val_fraction: float, split_seed: int
) -> Dataset:
    """sklearn ``load_digits`` with a fixed-seed test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None]  # (N, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    perm = np.random.default_rng(split_seed + 1).permutation(len(y))
    n_test = round(len(y) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    return split_and_normalize(
        x[train], y[train], x[test], y[test], num_classes=10,
        val_fraction=val_fraction, seed=split_seed, normalize="channel", name="digits",
    )  # fmt: skip


_CHUNK = 4096  # samples per step of in-place work on generated data


def _check_synthetic_size(n_samples: int, shape: list[int], num_classes: int) -> None:
    values = max(n_samples, num_classes) * math.prod(shape)
    if values > MAX_SYNTHETIC_VALUES:
        raise ConfigError(
            "dataset.params.shape",
            f"max(n_samples, num_classes) x prod(shape) must be <= {MAX_SYNTHETIC_VALUES:,}, "
            f"got {values:,}",
        )


def _synthetic_train_size(
    n_samples: int, shape: list[int], num_classes: int, val_fraction: float, **_: Any
) -> int:
    _check_synthetic_size(n_samples, shape, num_classes)
    return _minus_val(n_samples - max(1, n_samples // 5), {"val_fraction": val_fraction})


@DATASETS.register(
    "synthetic",
    params=(
        Param(
            "n_samples",
            "int",
            2048,
            "samples generated (80% train, 20% test)",
            low=20,
            high=1_000_000,
        ),
        Param("shape", "list[int]", [16], "shape of one sample, e.g. [16] or [1, 8, 8]", low=1),
        Param("num_classes", "int", 4, "classes", low=2, high=1000),
        Param("noise", "float", 1.0, "within-class standard deviation", low=0.0),
        Param("seed", "int", 0, "generator seed", low=0),
        _VAL,
    ),
    description="Gaussian class clusters of any shape: learnable, instant, no files.",
    train_size=lambda p: _synthetic_train_size(**p),
    data_shape=lambda p: DataShape(tuple(p["shape"]), p["num_classes"], p["n_samples"]),
)
def build_synthetic(
    data_dir: Path,
    n_samples: int,
    shape: list[int],
    num_classes: int,
    noise: float,
    seed: int,
    val_fraction: float,
) -> Dataset:
    """Class ``c`` samples are ``mu_c + noise * N(0, 1)`` with random centres ``mu_c ~ N(0, 1)``.

    Generated in float32 and in place: the data is built once, not once per float64 temporary.
    """
    _check_synthetic_size(n_samples, shape, num_classes)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal(size=(num_classes, *shape), dtype=np.float32)
    y = np.arange(n_samples) % num_classes  # balanced classes
    rng.shuffle(y)
    x = rng.standard_normal(size=(n_samples, *shape), dtype=np.float32)
    x *= np.float32(noise)
    for start in range(0, n_samples, _CHUNK):  # centres[y] whole would be another copy of x
        x[start : start + _CHUNK] += centres[y[start : start + _CHUNK]]
    n_test = max(1, n_samples // 5)
    return split_and_normalize(
        x[n_test:], y[n_test:], x[:n_test], y[:n_test], num_classes=num_classes,
        val_fraction=val_fraction, seed=seed, normalize="feature", name="synthetic",
    )  # fmt: skip


# --- CIFAR-10 (python pickle batches) -----------------------------------------------------------


def _unit(pixels: np.ndarray) -> np.ndarray:
    """Bytes as float32 in [0, 1] (``/ 255.0`` would make a float64 copy, twice the size)."""
    unit: np.ndarray = np.divide(pixels, 255, dtype=np.float32)
    return unit


CIFAR_EXPECTED = "CIFAR-10 python batches data_batch_1..5 and test_batch"


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a data file must not run code."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # bytes pickled by Python 3 with protocol < 3
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a data file")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except FileNotFoundError:
        raise DatasetError(str(path), CIFAR_EXPECTED, PATH_FIELD) from None
    except (OSError, pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as exc:
        raise DatasetError(str(path), f"{CIFAR_EXPECTED} ({exc})", PATH_FIELD) from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DatasetError(
            str(path), "a dict with b'data' uint8 (N, 3072) and N b'labels'", PATH_FIELD
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(str(path), "labels in 0..9", PATH_FIELD)
    return data.reshape(-1, 3, 32, 32), labels


@DATASETS.register(
    "cifar10",
    params=(
        Param("path", "str", "cifar-10-batches-py", "directory inside the data directory"),
        _LIMIT,
        _VAL,
        _SPLIT_SEED,
    ),
    description="CIFAR-10 from a local copy of the python version (3x32x32, 10 classes).",
    train_size=_file_train_size(50_000),
    data_shape=_file_shape((3, 32, 32), 50_000, 10_000),
)
def build_cifar10(
    data_dir: Path, path: str, limit: int | None, val_fraction: float, split_seed: int
) -> Dataset:
    """CIFAR-10 read from ``data_dir/path`` (``data_batch_1..5``, ``test_batch``)."""
    root = resolve_data_path(data_dir, path)
    if not root.is_dir():
        raise DatasetError(str(root), f"a directory with {CIFAR_EXPECTED}", PATH_FIELD)
    parts = [_read_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_cifar_batch(root / "test_batch")
    x_train, y_train = _limit(x_train, y_train, limit)
    return split_and_normalize(
        _unit(x_train), y_train, _unit(x_test), y_test, num_classes=10,
        val_fraction=val_fraction, seed=split_seed, normalize="channel", name="cifar10",
    )  # fmt: skip


# --- MNIST / Fashion-MNIST (IDX files) ----------------------------------------------------------

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array of ``ndim`` dimensions (``path`` or ``path.gz``).

    The header is two zero bytes, the type code 0x08 (unsigned byte), the number of dimensions,
    then each dimension as a big-endian int32; the data must fill exactly that shape.
    """
    expected = f"an IDX file of unsigned bytes with {ndim} dimension(s)"
    gz = path.with_name(path.name + ".gz")
    if path.is_file():
        raw = path.read_bytes()
    elif gz.is_file():
        try:
            raw = gzip.decompress(gz.read_bytes())
        except (OSError, EOFError) as exc:
            raise DatasetError(
                str(gz), f"{expected}, gzip-compressed ({exc})", PATH_FIELD
            ) from None
        path = gz
    else:
        raise DatasetError(str(path), f"{expected} (plain or .gz)", PATH_FIELD)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise DatasetError(str(path), f"{expected} (bad magic number)", PATH_FIELD)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(str(path), f"{expected} (truncated header)", PATH_FIELD)
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(dims)):
        raise DatasetError(
            str(path), f"{expected}: {int(np.prod(dims))} data bytes for shape {dims}", PATH_FIELD
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _build_idx(
    data_dir: Path, path: str, limit: int | None, val_fraction: float, split_seed: int, name: str
) -> Dataset:
    root = resolve_data_path(data_dir, path)
    if not root.is_dir():
        files = ", ".join(IDX_FILES.values())
        raise DatasetError(str(root), f"a directory with IDX files {files} (or .gz)", PATH_FIELD)
    arrays = {
        key: read_idx(root / file, 3 if key.endswith("images") else 1)
        for key, file in IDX_FILES.items()
    }
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise DatasetError(
                str(root / IDX_FILES[f"{split}_labels"]),
                f"as many labels as images ({len(images)}), got {len(labels)}",
                PATH_FIELD,
            )
        if labels.size and labels.max() > 9:
            raise DatasetError(
                str(root / IDX_FILES[f"{split}_labels"]), "labels in 0..9", PATH_FIELD
            )
    x_train, y_train = _limit(arrays["train_images"], arrays["train_labels"], limit)
    return split_and_normalize(
        _unit(x_train[:, None]), y_train, _unit(arrays["test_images"][:, None]),
        arrays["test_labels"], num_classes=10, val_fraction=val_fraction, seed=split_seed,
        normalize="channel", name=name,
    )  # fmt: skip


def _register_idx(name: str, default_path: str, title: str) -> None:
    @DATASETS.register(
        name,
        params=(
            Param("path", "str", default_path, "directory inside the data directory"),
            _LIMIT,
            _VAL,
            _SPLIT_SEED,
        ),
        description=f"{title} from local IDX files (1x28x28, 10 classes).",
        train_size=_file_train_size(60_000),
        data_shape=_file_shape((1, 28, 28), 60_000, 10_000),
    )
    def build(
        data_dir: Path, path: str, limit: int | None, val_fraction: float, split_seed: int
    ) -> Dataset:
        return _build_idx(data_dir, path, limit, val_fraction, split_seed, name)


_register_idx("mnist", "mnist", "MNIST")
_register_idx("fashion_mnist", "fashion_mnist", "Fashion-MNIST")
