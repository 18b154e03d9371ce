"""Fused trials vs the same trials one after another: trials per hour by group size and batch size.

For each batch size and K, K configurations that differ as a search's trials do (learning rate,
BN momentum; one seed, as a study sets it) train twice in one process: one after another with
``train`` and together with ``train_fused``. The sides alternate (sequential first on odd
repeats); each is timed as a whole (build, epochs, validation, test), so trials per hour =
K / wall seconds * 3600 (best of the repeats). The ratio is also given by the process's CPU time
(best of the repeats), which other jobs on a shared CPU disturb far less than wall time. On CUDA a
thread samples GPU utilization during each side. The best K
that ``best_group_size`` picks (a few timed steps) is printed beside the table. Examples:

    PYTHONPATH=. .venv/bin/python bench/bench_fused.py --model cnn1d --batch-sizes 32,128
    PYTHONPATH=. python bench/bench_fused.py --device cuda --max-k 64
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import torch

from models.config import TrainConfig, TrainResult
from models.data import Dataset, load_dataset
from models.device import resolve_device
from models.fused import train_fused
from models.fused_sizing import best_group_size
from models.train import train

MODEL_PARAMS = {"cnn1d": {"channels": 32, "depth": 3}, "mlp": {"width": 256, "depth": 2}}


class GpuUtilization:
    """Mean GPU utilization (%) while the context is open, sampled every 50 ms (CUDA only)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _read(self) -> float | None:
        try:
            return float(torch.cuda.utilization(self.device))
        except Exception:  # no pynvml: ask nvidia-smi
            index = self.device.index or 0
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            return float(out[index]) if len(out) > index else None

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            value = self._read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> GpuUtilization:
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def group(base: TrainConfig, k: int) -> list[TrainConfig]:
    """K trials of one fusion key: learning rates log-spaced in [0.01, 0.2], BN momenta varied."""
    configs = []
    for i in range(k):
        t = i / max(1, k - 1)
        configs.append(
            dataclasses.replace(
                base,
                learning_rate=0.01 * 20**t,
                bn_momentum=[0.1, 0.03, 0.3, 0.05][i % 4],
            )
        )
    return configs


@dataclasses.dataclass(frozen=True)
class Side:
    """One timed run of a side: wall and process CPU seconds, GPU utilization, results."""

    wall_s: float
    cpu_s: float
    gpu_util: float | None
    results: list[TrainResult]


def timed(run: Callable[[], list[TrainResult]], device: torch.device) -> Side:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    with GpuUtilization(device) as gpu:
        wall, cpu = time.perf_counter(), time.process_time()
        results = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Side(wall, cpu, gpu.mean, results)


def measure(
    base: TrainConfig, data: Dataset, k: int, repeats: int, device: torch.device
) -> dict[str, list[Side]]:
    """Each side ``repeats`` times, alternating which goes first."""
    configs = group(base, k)
    sides: dict[str, Callable[[], list[TrainResult]]] = {
        "sequential": lambda: [train(c, data) for c in configs],
        "fused": lambda: train_fused(configs, data),
    }
    runs: dict[str, list[Side]] = {"sequential": [], "fused": []}
    for repeat in range(repeats):
        order = ["sequential", "fused"] if repeat % 2 == 0 else ["fused", "sequential"]
        for side in order:
            runs[side].append(timed(sides[side], device))
    return runs


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    model = platform.processor() or "unknown CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line
        )
    except (OSError, StopIteration):
        pass
    cores = torch.get_num_threads()
    return f"{model}, {cores} torch threads, torch {torch.__version__}"


def fmt_util(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn1d", choices=sorted(MODEL_PARAMS))
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--dataset-params", default='{"num_samples": 4000}', help="JSON")
    parser.add_argument("--batch-sizes", default="32,128")
    parser.add_argument("--ks", default="1,2,4,8,16", help="group sizes (capped by --max-k)")
    parser.add_argument("--max-k", type=int, default=16, help="largest K; on CUDA also 32, 64")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="best of N per side")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    ks = [int(k) for k in args.ks.split(",")]
    ks += [2**i for i in range(5, int(math.log2(args.max_k)) + 1)]  # 32, 64, ... for GPUs
    ks = sorted({k for k in ks if k <= args.max_k})
    dataset_params = json.loads(args.dataset_params)
    data = load_dataset(args.dataset, dataset_params, device=device)
    print(f"# command: {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    print(f"# machine: {machine(device)}; device {device}")
    print(
        f"# {args.model} {MODEL_PARAMS[args.model]} on {args.dataset} {dataset_params} "
        f"({len(data.y_train)} training samples), {args.epochs} epochs, best of {args.repeats}\n"
    )
    print(
        "| batch | K | sequential s | fused s | trials/h sequential | trials/h fused | "
        "fused / sequential | same, by process CPU time | GPU util seq / fused | "
        "max test-acc gap |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    choices = {}
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        base = TrainConfig(
            model=args.model,
            model_params=MODEL_PARAMS[args.model],
            dataset=args.dataset,
            dataset_params=dataset_params,
            batch_size=batch_size,
            epochs=args.epochs,
            device=str(device),
        )
        train(base, data)  # warm-up: lazy initialization, cuDNN, allocator
        for k in ks:
            runs = measure(base, data, k, args.repeats, device)
            seq = min(runs["sequential"], key=lambda r: r.wall_s)
            fused = min(runs["fused"], key=lambda r: r.wall_s)
            cpu_ratio = min(r.cpu_s for r in runs["sequential"]) / min(
                r.cpu_s for r in runs["fused"]
            )
            gap = max(
                abs((a.test_accuracy or 0.0) - (b.test_accuracy or 0.0))
                for a, b in zip(seq.results, fused.results, strict=True)
            )
            seq_rate, fused_rate = 3600 * k / seq.wall_s, 3600 * k / fused.wall_s
            print(
                f"| {batch_size} | {k} | {seq.wall_s:.2f} | {fused.wall_s:.2f} | "
                f"{seq_rate:,.0f} | {fused_rate:,.0f} | {fused_rate / seq_rate:.2f}x | "
                f"{cpu_ratio:.2f}x | {fmt_util(seq.gpu_util)} / {fmt_util(fused.gpu_util)} | "
                f"{gap:.4f} |",
                flush=True,
            )
        start = time.perf_counter()
        choices[batch_size] = (
            best_group_size(base, data, max_k=max(ks)),
            time.perf_counter() - start,
        )
    print()
    for batch_size, (k, seconds) in choices.items():
        print(
            f"best_group_size(batch {batch_size}, max_k={max(ks)}) = {k} "
            f"(measured in {seconds:.2f} s)"
        )


if __name__ == "__main__":
    main()
