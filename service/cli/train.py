"""``bnsweep train``: one training run from flags and/or a YAML file of TrainConfig fields.

The setting flags are derived from TrainConfig's declaration (models/config.py): one flag per
setting (``--batch-size``; extra names such as ``--lr`` where declared), typed and with the
setting's help and unit. Values are checked by TrainConfig itself, like everywhere else.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from models.config import SETTINGS, Kind, SettingInfo

if TYPE_CHECKING:
    from models.config import TrainConfig
    from models.data import Dataset

app = typer.Typer()
Opt = typer.Option
_MAPPINGS = ("model_params", "dataset_params")  # given as repeated --model-param key=value


def _key_values(items: list[str] | None, field: str) -> dict[str, Any]:
    """``key=value`` pairs; values read as YAML (``5``, ``0.1``, ``true``, ``[1,8,8]``)."""
    import yaml

    from models.errors import ConfigError

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
    import yaml

    from models.errors import ConfigError

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


def _flag(info: SettingInfo) -> inspect.Parameter:
    """The typer option of one setting, from its declaration."""
    name = "--" + info.name.replace("_", "-")
    help_text = info.setting.help + (f" [{info.setting.unit}]" if info.setting.unit else "")
    if info.kind is Kind.CATEGORICAL and info.choices == (False, True):
        py_type: Any = bool | None
        names: tuple[str, ...] = (f"{name}/--no-{name[2:]}",)
    else:
        py_type = {Kind.INT: int, Kind.FLOAT: float}.get(info.kind, str) | None
        names = (*info.setting.flags, name)
        if info.choices:
            help_text += f" ({' | '.join(info.choices)})"
    return inspect.Parameter(
        info.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[py_type, Opt(*names, help=help_text)],
    )


def train_command(
    config_file: Path | None = None,
    model_param: list[str] | None = None,
    dataset_param: list[str] | None = None,
    data_dir: Path | None = None,
    as_json: bool = False,
    **settings: Any,
) -> None:
    """Train one model and print its per-epoch metrics and test accuracy."""
    from models.config import TrainConfig
    from models.data import load_dataset
    from models.device import resolve_device
    from models.errors import ConfigError
    from models.validate import check_config

    values = _read_config_file(config_file) if config_file else {}
    values.update({k: v for k, v in settings.items() if v is not None})  # flags override the file
    for field, items in (("model_params", model_param), ("dataset_params", dataset_param)):
        if items:
            base = values.get(field) or {}
            if not isinstance(base, dict):
                raise ConfigError(field, "must be a mapping")
            values[field] = {**base, **_key_values(items, field)}
    config = TrainConfig.from_dict(values)
    check_config(config)  # fail before loading any data
    data = load_dataset(
        config.dataset,
        config.dataset_params,
        device=resolve_device(config.device),
        data_dir=data_dir,
    )
    if as_json:
        import json

        from models.train import train

        typer.echo(json.dumps(train(config, data).to_dict(), indent=2))
        return
    _train_with_progress(config, data)


_FIXED_OPTIONS = [
    inspect.Parameter(
        "config_file",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            Path | None,
            Opt("--config", help="YAML mapping of TrainConfig fields (`bnsweep best --yaml`)."),
        ],
    ),
    *(_flag(info) for info in SETTINGS.values() if info.name not in _MAPPINGS),
    inspect.Parameter(
        "model_param",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            list[str] | None, Opt("--model-param", help="Model parameter key=value (repeatable).")
        ],
    ),
    inspect.Parameter(
        "dataset_param",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            list[str] | None,
            Opt("--dataset-param", help="Dataset parameter key=value (repeatable)."),
        ],
    ),
    inspect.Parameter(
        "data_dir",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            Path | None, Opt(help="Data directory (default $BNSWEEP_DATA_DIR or ./data).")
        ],
    ),
    inspect.Parameter(
        "as_json",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[bool, Opt("--json", help="Print the result as JSON.")],
    ),
]
train_command.__signature__ = inspect.Signature(_FIXED_OPTIONS)  # type: ignore[attr-defined]
app.command("train")(train_command)


def _train_with_progress(config: TrainConfig, data: Dataset) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from models.config import EpochMetrics
    from models.train import train

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

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    console.print(
        f"status: {result.status.value}" + (f" ({result.reason})" if result.reason else "")
    )
    console.print(f"device: {result.device}, train time: {result.train_s:.1f} s")
    console.print(f"test accuracy (running stats): {pct(result.test_accuracy)}")
    console.print(f"test accuracy (batch stats):   {pct(result.test_accuracy_batch_stats)}")
