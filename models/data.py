"""Datasets as tensors, loaded once per process and device.

A dataset builder (registered in ``DATASETS``) has the signature
``build(data_dir: Path, **params) -> Dataset`` and returns CPU tensors, already split and
normalized with ``split_and_normalize``. ``load_dataset`` validates the parameters, calls the
builder once and caches the result per (name, parameters, device, data directory): every training
in a worker process reuses the same device tensors instead of copying data again.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from models.errors import ConfigError
from models.registry import DATASETS

PATH_FIELD = "dataset.params.path"


@dataclass(frozen=True)
class Dataset:
    """Train/validation/test tensors (float32 inputs, int64 labels) of one dataset."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]  # per sample, e.g. (40,) or (3, 32, 32)
    name: str = ""

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device: torch.device | str) -> Dataset:
        """This dataset on ``device`` (self when already there)."""
        device = torch.device(device)
        if _same_device(self.device, device):
            return self
        fields = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        return replace(self, **{f: getattr(self, f).to(device) for f in fields})


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    # "cuda" and "cuda:0" are the same device when 0 is the current one.
    index = torch.cuda.current_device() if a.type == "cuda" else None
    return (a.index if a.index is not None else index) == (
        b.index if b.index is not None else index
    )


# --- loading and caching ------------------------------------------------------------------------

_CACHE: dict[tuple[str, str, str, str], Dataset] = {}
_CACHE_LOCK = threading.Lock()


def default_data_dir() -> Path:
    """``$BNSWEEP_DATA_DIR``, else ``./data``."""
    return Path(os.environ.get("BNSWEEP_DATA_DIR") or "data")


def load_dataset(
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    device: torch.device | str = "cpu",
    data_dir: str | os.PathLike[str] | None = None,
) -> Dataset:
    """The dataset ``name`` with ``params`` on ``device``, built once per process and reused.

    Raises:
        UnknownNameError / ConfigError: unknown name or bad parameters (``dataset.params.*``).
        DatasetError: a local dataset directory that is missing or malformed.
    """
    entry = DATASETS.get(name, "dataset.name")
    resolved = entry.resolve_params(params, "dataset.params")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    device = torch.device(device)
    canonical = json.dumps(resolved, sort_keys=True)
    key = (name, canonical, str(device), str(root.resolve()))
    # One lock: two threads asking for the same dataset must not both build and copy it.
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        cpu_key = (name, canonical, "cpu", key[3])
        cpu = _CACHE.get(cpu_key)
        if cpu is None:
            cpu = entry.builder(root, **resolved)
            cpu = replace(cpu, name=cpu.name or name)
            _CACHE[cpu_key] = cpu
        data = cpu.to(device)
        _CACHE[key] = data
        return data


def is_loaded(
    name: str,
    params: Mapping[str, Any] | None,
    device: torch.device | str,
    data_dir: str | os.PathLike[str] | None = None,
) -> bool:
    """Whether ``load_dataset`` would return a dataset already on ``device`` (nothing to add)."""
    entry = DATASETS.get(name, "dataset.name")
    canonical = json.dumps(entry.resolve_params(params, "dataset.params"), sort_keys=True)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    with _CACHE_LOCK:
        return (name, canonical, str(torch.device(device)), str(root.resolve())) in _CACHE


def train_size(name: str, params: Mapping[str, Any] | None = None) -> int:
    """Number of training samples of a dataset, as its registration declares it from its
    parameters: nothing is built or read, so validating a spec never loads data."""
    entry = DATASETS.get(name, "dataset.name")
    assert entry.train_size is not None  # the registry requires it of every dataset
    return int(entry.train_size(entry.resolve_params(params, "dataset.params")))


def clear_cache() -> None:
    """Forget every cached dataset (frees their memory once no training holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# --- helpers for builders -----------------------------------------------------------------------


def resolve_data_path(data_dir: Path, relative: str, field: str = PATH_FIELD) -> Path:
    """``data_dir / relative``, refusing absolute paths and escapes (``..``, symlinks)."""
    if "\x00" in relative:  # the OS refuses it; say so as a bad value, not a crash
        raise ConfigError(field, "must not contain a NUL character")
    rel = Path(relative)
    if not relative or rel.is_absolute() or rel.anchor:
        raise ConfigError(
            field, f"must be a relative path inside the data directory, got {relative!r}"
        )
    if ".." in rel.parts:
        raise ConfigError(field, f"must not leave the data directory, got {relative!r}")
    root = data_dir.resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        raise ConfigError(field, f"resolves outside the data directory (symlink?): {relative!r}")
    return target


def split_and_normalize(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    num_classes: int,
    val_fraction: float,
    seed: int,
    normalize: Literal["channel", "feature", "global"],
    name: str = "",
) -> Dataset:
    """Split a validation part off the training data (fixed seed) and normalize every part.

    Normalization statistics come from the remaining training part only, so validation and test
    data never leak into them. ``channel``: one mean/std per channel (axis 1, for images and
    signals); ``feature``: per input feature; ``global``: one mean/std overall.

    Memory: float32 throughout, statistics accumulated in float64 a slice at a time, and the
    parts normalized in place, so the peak is the inputs plus one float32 copy of them (a float64
    temporary of the whole data would be twice that again).
    """
    x_train = np.asarray(x_train, dtype=np.float32)
    test_input = x_test
    x_test = np.asarray(x_test, dtype=np.float32)
    if np.shares_memory(x_test, test_input):  # the caller's array: normalize a copy
        x_test = x_test.copy()
    n = len(x_train)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = round(n * val_fraction)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    xt, xv = x_train[train_idx], x_train[val_idx]
    yt, yv = y_train[train_idx], y_train[val_idx]
    if normalize == "channel" and xt.ndim >= 3:
        axes = (0, *range(2, xt.ndim))
    elif normalize == "feature":
        axes = (0,)
    else:
        axes = tuple(range(xt.ndim))
    mean, std = _moments(xt, axes)
    std = np.where(std > 1e-8, std, 1.0)  # constant features (e.g. image borders) stay at 0
    mean32, std32 = mean.astype(np.float32), std.astype(np.float32)

    def tensor_x(x: np.ndarray) -> torch.Tensor:  # x is ours (an indexed copy): in place
        x -= mean32
        x /= std32
        return torch.from_numpy(x)

    def tensor_y(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(y, dtype=np.int64))

    return Dataset(
        x_train=tensor_x(xt),
        y_train=tensor_y(yt),
        x_val=tensor_x(xv),
        y_val=tensor_y(yv),
        x_test=tensor_x(x_test),
        y_test=tensor_y(y_test),
        num_classes=num_classes,
        input_shape=tuple(int(d) for d in xt.shape[1:]),
        name=name,
    )


_MOMENT_VALUES = 1 << 20  # values per slice of the float64 accumulation


def _moments(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) standard deviation of float32 ``x`` over ``axes`` (which include
    the sample axis 0), in float64, two passes over slices of samples: numpy's ``std`` makes a
    float64 copy of the whole array."""
    rows = max(1, _MOMENT_VALUES // max(1, int(np.prod(x.shape[1:]))))
    count = x.size // int(np.prod([x.shape[a] for a in range(x.ndim) if a not in axes] or [1]))
    total = np.zeros([1 if a in axes else d for a, d in enumerate(x.shape)])
    for start in range(0, len(x), rows):
        total += x[start : start + rows].sum(axis=axes, keepdims=True, dtype=np.float64)
    mean = total / max(1, count)
    squares = np.zeros_like(mean)
    for start in range(0, len(x), rows):
        squares += np.square(x[start : start + rows] - mean).sum(axis=axes, keepdims=True)
    return mean, np.sqrt(squares / max(1, count))
