"""Fixed cost of a study: ``bnsweep run`` of one 1-epoch trial vs ``bnsweep train`` of the same
config, each a fresh process timed from start to exit (imports, database, migrations, the worker,
the report at the end), alternated ``--repeats`` times; medians and their difference.

    PYTHONPATH=. .venv/bin/python bench/bench_fixed_cost.py --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SPEC = """
name: fixed-cost
dataset: {name: mnist1d, params: {num_samples: 4000}}
model: {name: cnn1d, params: {channels: 32}}
search_space:
  batch_size: 128
  learning_rate: 0.05
  momentum: 0.9
  bn_momentum: 0.1
  bn_placement: before_activation
training: {epochs: 1}
budget: {n_trials: 1}
execution: {fuse: 1}
"""
TRAIN = [
    "train", "--model", "cnn1d", "--model-param", "channels=32", "--dataset", "mnist1d",
    "--dataset-param", "num_samples=4000", "--batch-size", "128", "--lr", "0.05",
    "--momentum", "0.9", "--bn-momentum", "0.1", "--epochs", "1", "--device", "cpu", "--json",
]  # fmt: skip


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "service", *argv],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {"train": [], "run": []}
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(SPEC)
        for i in range(args.repeats):
            runs["train"].append(timed(TRAIN))
            url = f"sqlite:///{tmp}/run{i}.db"  # a fresh database: the first run migrates it
            runs["run"].append(timed(["run", str(spec), "--storage", url, "--device", "cpu"]))
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}")
    for name, times in runs.items():
        rounded = [round(t, 2) for t in times]
        print(f"bnsweep {name}: median {statistics.median(times):.2f} s  {rounded}")
    extra = statistics.median(runs["run"]) - statistics.median(runs["train"])
    print(f"fixed cost of run over train: {extra:+.2f} s")


if __name__ == "__main__":
    main()
