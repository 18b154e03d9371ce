"""The API validates specs without data: posting a spec for every built-in dataset builds no
tensor and leaves the server's memory flat, even when the data files are right there."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from models import data as data_module
from models.registry import DATASETS

# Big enough that building it would show: 300k x 64 values (~150 MB while generated as float64).
BIG_SYNTHETIC = {"n_samples": 300_000, "shape": [64]}
PARAMS = {"synthetic": BIG_SYNTHETIC, "mnist1d": {"num_samples": 20_000}}


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _write_files(root: Path) -> None:
    """Small but real copies of the file datasets, so a loader would find them."""
    rng = np.random.default_rng(0)
    cifar = root / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {b"data": rng.integers(0, 256, (500, 3072), dtype=np.uint8), b"labels": [1] * 500}
        (cifar / name).write_bytes(pickle.dumps(batch, protocol=2))
    for folder in ("mnist", "fashion_mnist"):
        (root / folder).mkdir()
        for name, shape in (
            ("train-images-idx3-ubyte", (2000, 28, 28)),
            ("train-labels-idx1-ubyte", (2000,)),
            ("t10k-images-idx3-ubyte", (500, 28, 28)),
            ("t10k-labels-idx1-ubyte", (500,)),
        ):
            array = rng.integers(0, 10, shape, dtype=np.uint8)
            header = struct.pack(">BBBB", 0, 0, 8, len(shape)) + struct.pack(
                f">{len(shape)}i", *shape
            )
            (root / folder / f"{name}.gz").write_bytes(gzip.compress(header + array.tobytes()))


def test_posting_a_spec_for_every_builtin_dataset_builds_nothing(
    server, spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_files(tmp_path)
    monkeypatch.setenv("BNSWEEP_DATA_DIR", str(tmp_path))
    data_module.clear_cache()
    builtins = ["cifar10", "digits", "fashion_mnist", "mnist", "mnist1d", "synthetic"]
    assert set(builtins) <= set(DATASETS.names())
    before = _rss_bytes()
    with server.client() as http:
        for name in builtins:
            body = spec(f"nodata-{name}", dataset={"name": name, "params": PARAMS.get(name, {})})
            body["model"] = (
                {"name": "cnn2d"} if name not in ("synthetic", "mnist1d") else {"name": "mlp"}
            )
            response = http.post("/api/v1/studies", json=body)
            assert response.status_code == 201, response.text
    assert data_module._CACHE == {}  # nothing loaded or generated in the API process
    assert _rss_bytes() - before < 40 * 2**20
