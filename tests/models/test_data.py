"""Datasets: local file formats, path safety, splits, normalization, the per-process cache."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from models.data import clear_cache, load_dataset, train_size
from models.errors import ConfigError, DatasetError, UnknownNameError


def write_cifar(root: Path, per_batch: int = 6) -> None:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, size=per_batch)],
        }
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    return header + struct.pack(f">{array.ndim}i", *array.shape) + array.astype(np.uint8).tobytes()


def write_idx(root: Path, gz: bool, n_train: int = 20, n_test: int = 6) -> None:
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, size=n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, size=n_test),
    }
    for name, array in arrays.items():
        raw = idx_bytes(array)
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (root / name).write_bytes(raw)


def test_cifar10_python_batches_are_read_split_and_normalized(data_dir: Path) -> None:
    write_cifar(data_dir / "cifar-10-batches-py")
    data = load_dataset("cifar10", {"val_fraction": 0.2}, data_dir=data_dir)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert len(data.y_train) + len(data.y_val) == 30 and len(data.y_test) == 6
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    channel_means = data.x_train.mean(dim=(0, 2, 3))
    torch.testing.assert_close(channel_means, torch.zeros(3), atol=1e-4, rtol=0)


def test_cifar10_limit_caps_the_training_samples(data_dir: Path) -> None:
    write_cifar(data_dir / "c10")
    data = load_dataset(
        "cifar10", {"path": "c10", "limit": 10, "val_fraction": 0.1}, data_dir=data_dir
    )
    assert len(data.y_train) + len(data.y_val) == 10


def test_cifar10_pickle_may_not_run_code(data_dir: Path) -> None:
    write_cifar(data_dir / "evil")
    # Any global besides numpy's array machinery is refused (here: a reference to os.getcwd).
    (data_dir / "evil" / "data_batch_3").write_bytes(pickle.dumps(os.getcwd))
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", {"path": "evil"}, data_dir=data_dir)
    assert "data_batch_3" in err.value.path


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_files_plain_or_gzipped_are_read(data_dir: Path, name: str, gz: bool) -> None:
    write_idx(data_dir / name, gz=gz)
    data = load_dataset(name, {"val_fraction": 0.25}, data_dir=data_dir)
    assert data.input_shape == (1, 28, 28)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (15, 5, 6)


def test_idx_with_bad_magic_number_is_a_dataset_error(data_dir: Path) -> None:
    write_idx(data_dir / "mnist", gz=False)
    path = data_dir / "mnist" / "t10k-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x03" + path.read_bytes()[4:])
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", data_dir=data_dir)
    assert err.value.path.endswith("t10k-images-idx3-ubyte") and "magic" in str(err.value)


def test_idx_truncated_data_is_a_dataset_error(data_dir: Path) -> None:
    write_idx(data_dir / "mnist", gz=False)
    path = data_dir / "mnist" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", data_dir=data_dir)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("cifar10", "data_batch_1..5 and test_batch"), ("mnist", "train-images-idx3-ubyte")],
)
def test_missing_directory_is_a_dataset_error_naming_path_and_expectation(
    data_dir: Path, name: str, expected: str
) -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset(name, {"path": "nowhere"}, data_dir=data_dir)
    assert err.value.path == str(data_dir.resolve() / "nowhere")
    assert expected in err.value.expected
    assert err.value.field == "dataset.params.path"


def test_missing_file_in_cifar_directory_names_that_file(data_dir: Path) -> None:
    write_cifar(data_dir / "cifar-10-batches-py")
    (data_dir / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", data_dir=data_dir)
    assert err.value.path.endswith("test_batch")


@pytest.mark.parametrize("path", ["/etc", "../outside", "a/../../outside", "link"])
def test_dataset_paths_must_stay_inside_the_data_directory(data_dir: Path, path: str) -> None:
    outside = data_dir.parent / "outside"
    write_cifar(outside)
    (data_dir / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ConfigError) as err:
        load_dataset("cifar10", {"path": path}, data_dir=data_dir)
    assert err.value.field == "dataset.params.path"
    assert not isinstance(err.value, DatasetError)


def test_data_dir_defaults_to_the_environment_variable(data_dir: Path) -> None:
    write_idx(data_dir / "mnist", gz=True)
    assert load_dataset("mnist", {"val_fraction": 0.5}).x_train.shape[0] == 10


def test_dataset_is_cached_per_process_and_moved_once() -> None:
    params = {"n_samples": 100, "shape": [4]}
    first = load_dataset("synthetic", params)
    assert load_dataset("synthetic", dict(params)) is first
    assert load_dataset("synthetic", {**params, "seed": 0}) is first  # defaults are canonical
    assert load_dataset("synthetic", {**params, "seed": 1}) is not first
    clear_cache()
    assert load_dataset("synthetic", params) is not first


def test_split_is_fixed_and_normalization_uses_the_training_part_only() -> None:
    a = load_dataset("digits")
    clear_cache()
    b = load_dataset("digits")
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_train, b.y_train)
    assert abs(a.x_train.mean().item()) < 1e-4 and abs(a.x_train.std().item() - 1) < 1e-2
    assert abs(a.x_test.mean().item()) > 1e-4  # test statistics were not used


def test_mnist1d_uses_its_own_test_split_and_leaves_global_rngs_alone() -> None:
    state = np.random.get_state()[1].copy()
    data = load_dataset("mnist1d", {"num_samples": 1000})
    assert np.array_equal(np.random.get_state()[1], state)
    assert data.input_shape == (40,) and len(data.y_test) == 200
    assert len(data.y_train) + len(data.y_val) == 800


def test_synthetic_accepts_any_shape() -> None:
    data = load_dataset("synthetic", {"n_samples": 50, "shape": [3, 4, 4], "num_classes": 5})
    assert data.input_shape == (3, 4, 4) and data.num_classes == 5


def test_unknown_dataset_lists_known_names_and_bad_params_name_the_field() -> None:
    with pytest.raises(UnknownNameError) as err:
        load_dataset("imagenet")
    assert "mnist1d" in str(err.value) and "cifar10" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_dataset("synthetic", {"colour": 1})
    assert err.value.field == "dataset.params.colour"
    with pytest.raises(ConfigError) as err:
        load_dataset("synthetic", {"shape": [4, True]})
    assert err.value.field == "dataset.params.shape.1"
    with pytest.raises(ConfigError) as err:
        load_dataset("mnist1d", {"num_samples": "many"})
    assert err.value.field == "dataset.params.num_samples"


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("mnist1d", {}),
        ("mnist1d", {"num_samples": 777, "val_fraction": 0.13}),
        ("digits", {"test_fraction": 0.33, "val_fraction": 0.2}),
        ("synthetic", {"n_samples": 401, "shape": [3], "val_fraction": 0.17}),
    ],
)
def test_declared_train_size_matches_the_built_dataset(name, params) -> None:
    assert train_size(name, params) == load_dataset(name, params).x_train.shape[0]


@pytest.mark.parametrize(
    ("name", "params", "size"),
    [
        ("cifar10", {}, 45_000),
        ("cifar10", {"limit": 1000, "val_fraction": 0.2}, 800),
        ("mnist", {}, 54_000),
        ("fashion_mnist", {"limit": 100_000}, 54_000),
    ],
)
def test_file_datasets_declare_their_standard_size_without_any_file(
    data_dir: Path, name: str, params: dict, size: int
) -> None:
    assert not any(data_dir.iterdir())
    assert train_size(name, params) == size


def test_oversized_synthetic_data_is_refused_before_anything_is_built() -> None:
    with pytest.raises(ConfigError) as info:
        train_size("synthetic", {"n_samples": 100_000, "shape": [100_000, 100_000]})
    assert info.value.field == "dataset.params.shape"
