"""Whole study: bnsweep (run_study, workers, SQLite, median pruner) vs a one-off Optuna script.

Both sides search the same space (batch size, learning rate, momentum, BN momentum, BN placement)
with TPE (seed 0), the same model (cnn1d, 32 channels, depth 3), data (MNIST-1D, 4,000 samples),
trial budget and epochs. Side A is what an ML engineer writes today: an in-memory study, sequential
``study.optimize``, no pruning, a textbook DataLoader loop with 2 torch threads. Side B is
``search.runner.run_study`` on a fresh SQLite file with ``--workers`` processes (1 torch thread
each) and the median pruner. Reported per side: wall time, best val accuracy, time until the first
trial reaching ``--target`` (trial ``datetime_complete`` minus the run start) and trials pruned.
Exact command:

    PYTHONPATH=. .venv/bin/python bench/bench_study.py --trials 20 --epochs 8 --target 0.90 \
        --workers 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import platform
import tempfile
import time
from pathlib import Path

import optuna
import torch
import torch.nn.functional as F
from optuna.samplers import TPESampler
from optuna.trial import FrozenTrial, TrialState
from torch.utils.data import DataLoader, TensorDataset

import migrations
from models.data import load_dataset
from models.layers import NormSpec, Placement
from models.registry import MODELS
from search.runner import run_study
from search.validate import parse_spec

DATASET = ("mnist1d", {"num_samples": 4000})
BATCH_SIZES = [32, 64, 128, 256]
PLACEMENTS = ["before_activation", "after_activation", "none"]


def one_off_objective(epochs: int):
    """The objective of side A: same space as the spec, textbook PyTorch loop, final val acc."""
    data = load_dataset(*DATASET)  # CPU tensors
    val_x, val_y = data.x_val, data.y_val

    def objective(trial: optuna.Trial) -> float:
        bs = trial.suggest_categorical("batch_size", BATCH_SIZES)
        lr = trial.suggest_float("learning_rate", 0.003, 1.0, log=True)
        momentum = trial.suggest_float("momentum", 0.8, 0.95)
        bn_momentum = trial.suggest_float("bn_momentum", 0.01, 0.5, log=True)
        placement = trial.suggest_categorical("bn_placement", PLACEMENTS)
        torch.manual_seed(0)
        norm = NormSpec(placement=Placement(placement), bn_momentum=bn_momentum)
        model = MODELS.get("cnn1d").builder(
            data.input_shape, data.num_classes, norm, channels=32, depth=3, dropout=0.0
        )
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=bs, shuffle=True)
        for _ in range(epochs):
            model.train()
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(val_x).argmax(1) == val_y).float().mean().item()
        return acc if acc == acc else 0.0  # NaN (diverged) -> 0

    return objective


def side_a(trials: int, epochs: int) -> tuple[float, list[FrozenTrial], dt.datetime]:
    torch.set_num_threads(2)
    objective = one_off_objective(epochs)
    start_dt, start = dt.datetime.now(), time.perf_counter()
    study = optuna.create_study(direction="maximize", sampler=TPESampler(seed=0))
    study.optimize(objective, n_trials=trials)
    return time.perf_counter() - start, study.trials, start_dt


def spec_for(trials: int, epochs: int, workers: int, name: str):
    return parse_spec(
        {
            "name": name,
            "dataset": {"name": DATASET[0], "params": DATASET[1]},
            "model": {"name": "cnn1d", "params": {"channels": 32, "depth": 3, "dropout": 0.0}},
            "search_space": {
                "batch_size": {"choices": BATCH_SIZES},
                "learning_rate": {"low": 0.003, "high": 1.0, "log": True},
                "momentum": {"low": 0.8, "high": 0.95},
                "bn_momentum": {"low": 0.01, "high": 0.5, "log": True},
                "bn_placement": {"choices": PLACEMENTS},
            },
            "training": {"epochs": epochs, "schedule": "cosine"},
            "objective": {"metric": "val_accuracy"},
            "sampler": {"name": "tpe", "seed": 0},
            "pruner": {
                "name": "median",
                "options": {"n_startup_trials": 5, "n_warmup_steps": 2},
            },
            "budget": {"n_trials": trials, "max_parallel": workers},
        }
    )


def side_b(trials: int, epochs: int, workers: int) -> tuple[float, list[FrozenTrial], dt.datetime]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        spec = spec_for(trials, epochs, workers, "bench-study")
        start_dt, start = dt.datetime.now(), time.perf_counter()
        migrations.upgrade(url)
        run_study(url, spec, n_workers=workers, device="cpu")
        wall = time.perf_counter() - start
        study = optuna.load_study(study_name=spec.name, storage=url)
        return wall, study.trials, start_dt


def accuracy(t: FrozenTrial) -> float | None:
    if t.state is not TrialState.COMPLETE:
        return None
    return t.user_attrs.get("val_accuracy", t.value)


def summarize(label: str, wall: float, trials: list[FrozenTrial], start: dt.datetime, target):
    done = [t for t in trials if accuracy(t) is not None]
    best = max((accuracy(t) for t in done), default=float("nan"))
    hits = [
        (t.datetime_complete - start).total_seconds()
        for t in done
        if accuracy(t) >= target and t.datetime_complete
    ]
    return {
        "side": label,
        "wall_s": wall,
        "best": best,
        "to_target_s": min(hits) if hits else float("nan"),
        "complete": len(done),
        "pruned": sum(t.state is TrialState.PRUNED for t in trials),
        "failed": sum(t.state is TrialState.FAIL for t in trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)

    info = Path("/proc/cpuinfo").read_text().splitlines()
    models = [ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")]
    cpu = models[0] if models else platform.machine()
    print(f"{cpu}, torch {torch.__version__}, ", end="")
    print(f"optuna {optuna.__version__}; trials={args.trials} epochs={args.epochs}")
    # Back to back, A first (its in-process dataset build is inside neither timer).
    rows = [
        summarize("A one-off script", *side_a(args.trials, args.epochs), args.target),
        summarize("B bnsweep", *side_b(args.trials, args.epochs, args.workers), args.target),
    ]
    head = (
        f"| side | wall s | best val acc | s to val_acc >= {args.target:.2f} | complete | pruned |"
    )
    print(head + " failed |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['side']} | {r['wall_s']:.1f} | {r['best']:.4f} | {r['to_target_s']:.1f} "
            f"| {r['complete']} | {r['pruned']} | {r['failed']} |"
        )
    a, b = rows
    print(f"wall time A/B: {a['wall_s'] / b['wall_s']:.2f}x")
    print(f"time-to-target A/B: {a['to_target_s'] / b['to_target_s']:.2f}x")


if __name__ == "__main__":
    main()
