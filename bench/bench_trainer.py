"""Trainer throughput vs a plain PyTorch loop with a DataLoader, same model and config.

Both sides build the same model with the same init and optimizer and train the same epochs; only
the input pipeline and loop differ (device-resident tensors + index slicing vs DataLoader over a
TensorDataset with shuffle). Throughput counts training samples per second of the training phase
(evaluation excluded). Example:

    .venv/bin/python bench/bench_trainer.py --dataset mnist1d --model cnn1d --epochs 5
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from models.config import TrainConfig
from models.data import load_dataset
from models.device import resolve_device
from models.layers import NormSpec, init_weights
from models.registry import MODELS
from models.train import train


def trainer_samples_per_s(config: TrainConfig) -> float:
    """Training samples per second of ``train`` (epochs' training phases only)."""
    epochs = train(config).epochs
    # Every epoch trains the same number of samples, so the overall rate is the harmonic mean.
    return len(epochs) / sum(1 / m.samples_per_s for m in epochs)


def plain_samples_per_s(config: TrainConfig, device: torch.device) -> float:
    """The textbook loop: DataLoader(TensorDataset, shuffle=True), .to(device) per batch."""
    data = load_dataset(config.dataset, config.dataset_params)  # CPU tensors, as a loader needs
    torch.manual_seed(config.seed)
    entry = MODELS.get(config.model)
    params = entry.resolve_params(config.model_params, "model.params")
    model = entry.builder(
        data.input_shape, data.num_classes, NormSpec.from_config(config), **params
    )
    init_weights(model, config.init, config.init_std, seed=config.seed)
    model.to(device).train()
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.effective_learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    loader = DataLoader(
        TensorDataset(data.x_train, data.y_train),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    samples, seconds = 0, 0.0
    for _ in range(config.epochs):
        start = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            samples += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
    return samples / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--model", default="cnn1d")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="best of N for each side")
    args = parser.parse_args()
    device = resolve_device(args.device)
    config = TrainConfig(
        model=args.model,
        dataset=args.dataset,
        batch_size=args.batch_size,
        epochs=args.epochs,
        schedule="constant",
        device=str(device),
    )
    load_dataset(config.dataset, config.dataset_params, device=device)  # not part of the timing
    # Alternate the two sides so that background load hits both alike; keep the best of each.
    trainer = plain = 0.0
    for _ in range(args.repeats):
        trainer = max(trainer, trainer_samples_per_s(config))
        plain = max(plain, plain_samples_per_s(config, device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"torch {torch.__version__}, device {device} ({name}), threads {torch.get_num_threads()}")
    print(f"{args.model} on {args.dataset}, batch {args.batch_size}, {args.epochs} epochs, "
          f"best of {args.repeats}")  # fmt: skip
    print("| loop | samples/s |\n|---|---|")
    print(f"| bnsweep trainer | {trainer:,.0f} |\n| DataLoader loop | {plain:,.0f} |")
    print(f"speedup: {trainer / plain:.2f}x")


if __name__ == "__main__":
    main()
