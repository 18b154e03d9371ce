"""``bnsweep train``: one training run from flags and/or a YAML file of TrainConfig fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from models.config import EpochMetrics, TrainConfig, TrainResult
from models.data import load_dataset
from models.device import resolve_device
from models.errors import ConfigError
from models.train import train
from models.validate import check_config, config_from_dict
from service.cli import app

Opt = typer.Option


def _key_values(items: list[str] | None, field: str) -> dict[str, Any]:
    """``key=value`` pairs; values read as YAML (``5``, ``0.1``, ``true``, ``[1,8,8]``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(field, f"expected key=value, got {item!r}")
        try:
            out[key] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("config", f"{path} is not valid YAML: {exc}".splitlines()[0]) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError("config", f"{path} must hold a mapping of TrainConfig fields")
    return loaded


@app.command("train")
def train_command(
    config_file: Annotated[
        Path | None, Opt("--config", help="YAML mapping of TrainConfig fields.")
    ] = None,
    model: Annotated[str | None, Opt(help="Registered model name.")] = None,
    model_param: Annotated[
        list[str] | None, Opt("--model-param", help="Model parameter key=value (repeatable).")
    ] = None,
    dataset: Annotated[str | None, Opt(help="Registered dataset name.")] = None,
    dataset_param: Annotated[
        list[str] | None, Opt("--dataset-param", help="Dataset parameter key=value (repeatable).")
    ] = None,
    batch_size: Annotated[int | None, Opt(help="Batch size.")] = None,
    learning_rate: Annotated[
        float | None, Opt("--lr", "--learning-rate", help="Learning rate (see --lr-scaling).")
    ] = None,
    lr_scaling: Annotated[
        bool | None, Opt("--lr-scaling/--no-lr-scaling", help="lr * batch_size / 256.")
    ] = None,
    optimizer: Annotated[str | None, Opt(help="sgd | adamw.")] = None,
    momentum: Annotated[float | None, Opt(help="Optimizer momentum (AdamW beta1).")] = None,
    nesterov: Annotated[bool | None, Opt("--nesterov/--no-nesterov")] = None,
    weight_decay: Annotated[float | None, Opt(help="Weight decay.")] = None,
    epochs: Annotated[int | None, Opt(help="Epochs.")] = None,
    schedule: Annotated[str | None, Opt(help="constant | cosine | warmup_cosine.")] = None,
    warmup_epochs: Annotated[float | None, Opt(help="Warm-up epochs (warmup_cosine).")] = None,
    bn_placement: Annotated[
        str | None, Opt(help="before_activation | after_activation | none | pre_activation.")
    ] = None,
    bn_momentum: Annotated[float | None, Opt(help="BN momentum, PyTorch convention.")] = None,
    bn_eps: Annotated[float | None, Opt(help="BN epsilon.")] = None,
    ghost_batch_size: Annotated[int | None, Opt(help="Ghost (virtual) batch size.")] = None,
    precise_bn_batches: Annotated[
        int | None, Opt(help="Batches for precise BN statistics (0 = off).")
    ] = None,
    init: Annotated[str | None, Opt(help="kaiming | xavier | normal.")] = None,
    init_std: Annotated[float | None, Opt(help="Std of init=normal.")] = None,
    seed: Annotated[int | None, Opt(help="Seed.")] = None,
    device: Annotated[str | None, Opt(help="auto | cpu | cuda | cuda:N.")] = None,
    bf16: Annotated[bool | None, Opt("--bf16/--no-bf16", help="bf16 autocast (CUDA).")] = None,
    data_dir: Annotated[
        Path | None, Opt(help="Data directory (default $BNSWEEP_DATA_DIR or ./data).")
    ] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train one model and print its per-epoch metrics and test accuracy."""
    values = _read_config_file(config_file) if config_file else {}
    flags = {
        "model": model,
        "dataset": dataset,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "lr_scaling": lr_scaling,
        "optimizer": optimizer,
        "momentum": momentum,
        "nesterov": nesterov,
        "weight_decay": weight_decay,
        "epochs": epochs,
        "schedule": schedule,
        "warmup_epochs": warmup_epochs,
        "bn_placement": bn_placement,
        "bn_momentum": bn_momentum,
        "bn_eps": bn_eps,
        "ghost_batch_size": ghost_batch_size,
        "precise_bn_batches": precise_bn_batches,
        "init": init,
        "init_std": init_std,
        "seed": seed,
        "device": device,
        "bf16": bf16,
    }
    values.update({k: v for k, v in flags.items() if v is not None})  # flags override the file
    for field, items in (("model_params", model_param), ("dataset_params", dataset_param)):
        if items:
            base = values.get(field) or {}
            if not isinstance(base, dict):
                raise ConfigError(field, "must be a mapping")
            values[field] = {**base, **_key_values(items, field)}
    config = config_from_dict(values)
    check_config(config)  # fail before loading any data
    data = load_dataset(
        config.dataset,
        config.dataset_params,
        device=resolve_device(config.device),
        data_dir=data_dir,
    )
    if as_json:
        typer.echo(json.dumps(train(config, data).to_dict(), indent=2))
        return
    _train_with_progress(config, data)


def _train_with_progress(config: TrainConfig, data: Any) -> None:
    console = Console()
    table = Table(title=f"{config.model} on {config.dataset}")
    for column in ("epoch", "train loss", "val loss", "val acc", "s", "samples/s"):
        table.add_column(column, justify="right")
    progress = Progress(
        TextColumn("epoch"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = progress.add_task("train", total=config.epochs)

    def on_epoch(m: EpochMetrics) -> None:
        table.add_row(
            str(m.epoch),
            f"{m.train_loss:.4f}",
            f"{m.val_loss:.4f}",
            f"{m.val_accuracy:.4f}",
            f"{m.epoch_s:.2f}",
            f"{m.samples_per_s:,.0f}",
        )
        progress.advance(task)

    with progress:
        result = train(config, data, on_epoch)
    console.print(table)
    _print_summary(console, result)


def _print_summary(console: Console, result: TrainResult) -> None:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    console.print(
        f"status: {result.status.value}" + (f" ({result.reason})" if result.reason else "")
    )
    console.print(f"device: {result.device}, train time: {result.train_s:.1f} s")
    console.print(f"test accuracy (running stats): {pct(result.test_accuracy)}")
    console.print(f"test accuracy (batch stats):   {pct(result.test_accuracy_batch_stats)}")
