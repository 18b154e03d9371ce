"""One declaration per training setting: the trainer, the spec, the CLI and /registry agree.

Each test walks every declared setting, so a new setting is covered without editing this file.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from models.config import SETTINGS, Home, Kind, SettingInfo, TrainConfig
from models.errors import ConfigError
from search.errors import SpecError
from search.validate import parse_spec
from service.cli import main

SPEC: dict[str, Any] = {
    "name": "s",
    "dataset": {"name": "synthetic", "params": {"n_samples": 400, "shape": [8]}},
    "model": {"name": "mlp"},
}
SPEC_SETTINGS = [i for i in SETTINGS.values() if i.setting.home is not Home.RUN]
BOUNDED = [i for i in SPEC_SETTINGS if i.bounds[0] is not None or i.bounds[1] is not None]


def _outside(info: SettingInfo) -> list[Any]:
    """Values just outside the declared bounds (the bound itself when it is exclusive)."""
    low, high, low_incl, high_incl = info.bounds
    step = 1 if info.kind is Kind.INT else 1e-9
    values: list[Any] = []
    if low is not None:
        values.append(low - step if low_incl else low)
    if high is not None:
        values.append(high + step if high_incl else high)
    return [int(v) if info.kind is Kind.INT else float(v) for v in values]


def _in_spec(info: SettingInfo, value: Any) -> None:
    section = "search_space" if info.setting.home is Home.SEARCH else "training"
    parse_spec(SPEC | {section: {info.spec_name: value}})


@pytest.mark.parametrize("info", BOUNDED, ids=lambda i: i.name)
def test_trainer_and_spec_refuse_the_same_values_for_the_same_reason(info: SettingInfo) -> None:
    for value in _outside(info):
        with pytest.raises(ConfigError) as trainer:
            TrainConfig(**{info.name: value})
        with pytest.raises(SpecError) as spec:
            _in_spec(info, value)
        assert trainer.value.field == info.name
        assert spec.value.field.endswith(info.spec_name)
        assert trainer.value.reason == spec.value.reason, (trainer.value, spec.value)


@pytest.mark.parametrize("info", BOUNDED, ids=lambda i: i.name)
def test_values_on_an_inclusive_bound_are_accepted_everywhere(info: SettingInfo) -> None:
    low, high, low_incl, high_incl = info.bounds
    for bound, inclusive in ((low, low_incl), (high, high_incl)):
        if bound is None or not inclusive or not math.isfinite(bound):
            continue
        value = int(bound) if info.kind is Kind.INT else float(bound)
        extra = {"bn_placement": "none"} if info.name == "batch_size" else {}
        extra |= {"nesterov": False} if info.name == "momentum" else {}
        TrainConfig(**{info.name: value}, **extra)
        if info.name != "batch_size":  # the spec also bounds it by the training-set size
            _in_spec(info, value)


def test_every_spec_setting_has_a_home_in_the_spec_and_a_train_flag() -> None:
    spec = parse_spec(SPEC)
    for info in SPEC_SETTINGS:
        if info.setting.home is Home.SEARCH:
            assert info.spec_name in spec.search_space.dimensions()
        else:
            assert info.spec_name in spec.training.model_fields_set | set(
                type(spec.training).model_fields
            )
    # The spec's defaults are the trainer's defaults for everything not searched by default.
    sampled = {"learning_rate": 0.05, "momentum": 0.9, "bn_momentum": 0.1, "batch_size": 128}
    config = spec.train_config(sampled | {"bn_placement": "before_activation"})
    default = TrainConfig(model="mlp", dataset="synthetic")
    for info in SPEC_SETTINGS:
        assert getattr(config, info.name) == getattr(default, info.name), info.name


@pytest.mark.parametrize(
    "argv",
    [
        ["--optimizer", "adamw", "--momentum", "1.0"],
        ["--bn-momentum", "0"],
        ["--weight-decay", "2"],
        ["--precise-bn-batches", "-1"],
    ],
)
def test_train_flags_are_checked_by_the_same_declaration(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--device", "cpu", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    flag = argv[-2].removeprefix("--").replace("-", "_")
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {flag}: must be")


def test_every_setting_has_its_flag_with_help_and_unit(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        main(["train", "--help"])
    except SystemExit as exc:
        assert not exc.code
    out = capsys.readouterr().out
    text = " ".join(out.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())  # rich's boxes
    for info in SETTINGS.values():
        if info.kind is Kind.OTHER and info.name.endswith("_params"):
            continue
        assert "--" + info.name.replace("_", "-") in text
        assert info.setting.help.split(" (")[0] in text
        if info.setting.unit:
            assert info.setting.unit in text


def test_registry_settings_schema_states_the_declared_bounds() -> None:
    from service.api.system import registry

    settings = registry().settings
    assert set(settings) == {i.spec_name for i in SETTINGS.values()}
    momentum = settings["momentum"]
    assert momentum["minimum"] == 0 and momentum["exclusiveMaximum"] == 1
    assert settings["precise_bn"]["home"] == "search_space"
    assert settings["bn_momentum"]["unit"] == "PyTorch convention"
