"""The CUDA paths, checked on a real GPU in one short run (run by hand on a GPU machine):

1. ``train`` on CUDA with bf16 autocast and channels_last (cnn2d) ends ``ok``;
2. a fused group of 4 on CUDA matches its members trained alone (TF32 / bf16 tolerance);
3. a real CUDA out-of-memory error (a capped memory fraction) splits a fused group in halves
   and is recorded as ``oom`` only for members that do not fit alone;
4. a worker with ``fuse: auto`` runs a study on CUDA end to end (SQLite), the chosen group size and
   the wall time reported.

    PYTHONPATH=. python bench/gpu_check.py --device cuda --out result.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from models.config import TrainConfig, TrainStatus
from models.fused import train_fused
from models.train import train

SYNTH = {"n_samples": 2048, "shape": [3, 16, 16], "num_classes": 10}


def check_bf16(device: str) -> dict[str, Any]:
    config = TrainConfig(
        model="cnn2d", model_params={"channels": 16, "depth": 2}, dataset="synthetic",
        dataset_params=SYNTH, batch_size=128, epochs=2, bf16=True, device=device,
    )  # fmt: skip
    result = train(config)
    return {"status": result.status.value, "test_accuracy": result.test_accuracy}


def check_fused_equals_alone(device: str) -> dict[str, Any]:
    base = TrainConfig(
        model="cnn2d", model_params={"channels": 16, "depth": 2}, dataset="synthetic",
        dataset_params=SYNTH, batch_size=64, epochs=2, device=device,
    )  # fmt: skip
    configs = [
        replace(base, learning_rate=lr, bn_momentum=m) for lr in (0.02, 0.1) for m in (0.05, 0.3)
    ]
    fused = train_fused(configs)
    alone = [train(c) for c in configs]
    gaps = [
        abs(f.epochs[-1].train_loss - a.epochs[-1].train_loss) / abs(a.epochs[-1].train_loss)
        for f, a in zip(fused, alone, strict=True)
    ]
    return {
        "statuses": [r.status.value for r in fused],
        "max_relative_train_loss_gap": max(gaps),
        "test_accuracy_gaps": [
            abs((f.test_accuracy or 0) - (a.test_accuracy or 0))
            for f, a in zip(fused, alone, strict=True)
        ],
    }


def check_cuda_oom_splits(device: str) -> dict[str, Any]:
    if not device.startswith("cuda"):
        return {"skipped": "needs CUDA"}
    _free, total = torch.cuda.mem_get_info()
    torch.cuda.empty_cache()
    # Leave room for about one member: a group of 8 of this MLP must run out of memory.
    torch.cuda.set_per_process_memory_fraction(1.5e9 / total)
    base = TrainConfig(
        model="mlp", model_params={"width": 4096, "depth": 4}, dataset="synthetic",
        dataset_params={"n_samples": 4096, "shape": [1024], "num_classes": 10},
        batch_size=1024, epochs=1, device=device, optimizer="adamw", learning_rate=1e-3,
    )  # fmt: skip
    configs = [replace(base, seed=i) for i in range(8)]
    start = time.perf_counter()
    try:
        results = train_fused(configs)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    return {
        "statuses": [r.status.value for r in results],
        "reasons": sorted({r.reason for r in results if r.status is TrainStatus.OOM}),
        "seconds": time.perf_counter() - start,
    }


def check_worker(device: str) -> dict[str, Any]:
    import migrations
    from search.storage import get_storage
    from search.studies import create_study
    from search.validate import parse_spec
    from search.worker import Worker, WorkerOptions

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'gpu.db'}"
        migrations.upgrade(url)
        spec = parse_spec(
            {
                "name": "gpu-fused",
                "dataset": {"name": "synthetic", "params": SYNTH},
                "model": {"name": "cnn2d", "params": {"channels": 16, "depth": 2}},
                "search_space": {"batch_size": 32, "bn_placement": "before_activation"},
                "training": {"epochs": 2},
                "budget": {"n_trials": 32},
                "execution": {"fuse": "auto"},
                "sampler": {"name": "random", "seed": 0},
            }
        )
        from search.storage import get_engine

        create_study(get_engine(url), get_storage(url), spec)
        start = time.perf_counter()
        ran = Worker(
            WorkerOptions(url, device=device, study_name=spec.name, exit_when_done=True, poll_s=0.1)
        ).run()
        seconds = time.perf_counter() - start
        import optuna

        trials = optuna.load_study(study_name=spec.name, storage=get_storage(url)).get_trials()
        return {
            "trials_run": ran,
            "states": sorted({t.state.name for t in trials}),
            "fuse_sizes": sorted({int(t.user_attrs.get("fuse_size", 0)) for t in trials}),
            "seconds": seconds,
            "device": trials[0].user_attrs.get("device") if trials else None,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report: dict[str, Any] = {"torch": torch.__version__}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name()
    for name, check in (
        ("bf16_channels_last", check_bf16),
        ("fused_equals_alone", check_fused_equals_alone),
        ("cuda_oom_splits", check_cuda_oom_splits),
        ("worker_fuse_auto", check_worker),
    ):
        start = time.perf_counter()
        try:
            report[name] = check(args.device)
        except Exception as exc:  # report every check, whatever one of them does
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        report[name]["check_seconds"] = round(time.perf_counter() - start, 2)
        print(name, json.dumps(report[name]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
