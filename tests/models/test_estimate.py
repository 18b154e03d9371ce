"""Resource estimates (models/estimate.py): what the meta device says equals what a real build
says; datasets hold what they declare; estimates against measured peaks; free memory; and the
trainer refusing, as ``oom``, a run that cannot fit instead of allocating it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from models import estimate
from models.config import Optimizer, Placement, TrainConfig, TrainStatus
from models.data import is_loaded, load_dataset
from models.estimate import (
    ModelSize,
    RunEstimate,
    free_memory_bytes,
    memory_refusal,
    size_on_meta,
)
from models.layers import NormSpec
from models.registry import DATASETS, MODELS, DataShape
from models.train import EVAL_BATCH_SIZE, is_oom, train

BUILTINS = [
    ("mlp", {"width": 64, "depth": 3, "dropout": 0.1}, (1, 8, 8)),
    ("cnn1d", {"channels": 16, "depth": 4}, (40,)),
    ("cnn2d", {"channels": 8, "depth": 3}, (3, 32, 32)),
    ("resnet", {"depth": 2, "width": 8}, (3, 32, 32)),
]


def placements(model: str) -> list[Placement]:
    return [Placement(p) for p in MODELS.get(model).tags["placements"]]


@pytest.mark.parametrize(("model", "params", "shape"), BUILTINS, ids=[b[0] for b in BUILTINS])
def test_meta_sizes_equal_those_of_a_real_build(model, params, shape):
    """Parameters and leaf outputs counted on the meta device are those of the model built for
    real and run on the CPU, at every placement the model supports."""
    data = DataShape(shape, 10, 100)
    for placement in placements(model):
        meta = size_on_meta(model, params, data, placement)
        real = MODELS.get(model).builder(shape, 10, NormSpec(placement), **params)
        total, largest = estimate._leaf_outputs(real, data, "cpu")
        assert meta == ModelSize(sum(p.numel() for p in real.parameters()), total, largest)
        assert meta.params > 0 and meta.largest_per_sample > 0


def test_meta_sizing_is_fast_for_the_builtins():
    """After the process's first meta forward (an import), well under a second of this thread's
    CPU per built-in at its default parameters, the ResNet-20 included. A loose guard, not a
    benchmark: typically 5-15 ms each; a busy CI run once took 0.3 s for one."""
    estimate.warm_up()
    estimate._size_on_meta.cache_clear()
    spent = {}
    for model, params, shape in [
        ("mlp", {}, (3, 32, 32)),
        ("cnn1d", {}, (40,)),
        ("cnn2d", {}, (3, 32, 32)),
        ("resnet", {}, (3, 32, 32)),
        ("resnet", {"depth": 3}, (3, 32, 32)),
    ]:
        started = time.thread_time()
        size_on_meta(model, params, DataShape(shape, 10, 100), Placement.BEFORE_ACTIVATION)
        spent[f"{model} {params}"] = time.thread_time() - started
    assert max(spent.values()) < 1.0, spent


def test_builtin_datasets_hold_what_they_declare():
    for name, params in [
        ("mnist1d", {"num_samples": 1000}),
        ("digits", {}),
        ("synthetic", {"n_samples": 300, "shape": [3, 4, 4], "num_classes": 5}),
    ]:
        entry = DATASETS.get(name)
        declared = entry.data_shape(entry.resolve_params(params, "dataset.params"))
        data = load_dataset(name, params)
        samples = len(data.y_train) + len(data.y_val) + len(data.y_test)
        assert declared == DataShape(data.input_shape, data.num_classes, samples), name
        held = sum(t.numel() * t.element_size() for t in (data.x_train, data.x_val, data.x_test))
        held += sum(t.numel() * t.element_size() for t in (data.y_train, data.y_val, data.y_test))
        assert declared.nbytes == held
        assert data.x_train.dtype == torch.float32


def test_file_datasets_declare_their_standard_shapes():
    for name, shape in [("cifar10", (3, 32, 32)), ("mnist", (1, 28, 28))]:
        entry = DATASETS.get(name)
        full = entry.data_shape(entry.resolve_params({}, "dataset.params"))
        limited = entry.data_shape(entry.resolve_params({"limit": 1000}, "dataset.params"))
        assert (full.input_shape, full.num_classes) == (shape, 10)
        assert full.samples - limited.samples == full.samples - 1000 - 10_000


PEAK = """
import json, sys, torch
torch.set_num_threads(1)
from models.registry import load_plugins
load_plugins()
from models.config import TrainConfig
from models.data import load_dataset
from models.estimate import memory_refusal, RunEstimate, ModelSize, size_on_meta
from models.estimate import _activations_on_cpu, _key
from models.registry import DataShape
from models.train import train
config = TrainConfig(**json.loads(sys.argv[1]))
data = load_dataset(config.dataset, config.dataset_params)
shape = DataShape(data.input_shape, data.num_classes, 0)
params = size_on_meta(config.model, config.model_params, shape, config.bn_placement, False).params
total, largest = _activations_on_cpu(config.model, _key(config.model_params), shape,
                                     config.bn_placement)
run = RunEstimate(ModelSize(params, total, largest), config.batch_size, config.optimizer)
def status(key):
    line = next(l for l in open("/proc/self/status") if l.startswith(key))
    return int(line.split()[1]) * 1024
# The runtime's own first-training overhead paid on a tiny model first; then the high-water
# mark reset (Linux: "5" to /proc/self/clear_refs), so the peak is the run's.
train(TrainConfig(**{**json.loads(sys.argv[1]), "model": "mlp",
                     "model_params": {"width": 4, "depth": 1}, "epochs": 1}), data)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
assert train(config, data).status.value == "ok"
peak = status("VmHWM") - before
print(json.dumps({"estimate": run.total_bytes, "peak": peak}))
"""


@pytest.mark.parametrize(
    "config",
    [
        {  # parameters dominate
            "model": "mlp",
            "model_params": {"width": 1536, "depth": 4},
            "dataset": "synthetic",
            "dataset_params": {"n_samples": 600, "shape": [256]},
            "batch_size": 128,
            "optimizer": "adamw",
        },
        {  # activations dominate
            "model": "cnn2d",
            "model_params": {"channels": 32, "depth": 3},
            "dataset": "synthetic",
            "dataset_params": {"n_samples": 600, "shape": [3, 32, 32]},
            "batch_size": 256,
        },
    ],
    ids=["mlp-adamw", "cnn2d"],
)
def test_the_estimate_is_close_to_the_measured_peak_and_rather_above(config):
    """A real CPU training run (one epoch, its own process) against the estimate: between 0.8x
    and 2.5x the measured growth of memory."""
    run = subprocess.run(
        [sys.executable, "-c", PEAK, json.dumps({**config, "epochs": 1, "device": "cpu"})],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    ratio = measured["estimate"] / measured["peak"]
    assert 0.8 <= ratio <= 2.5, measured


def test_evaluation_batch_matches_the_trainer():
    assert estimate.EVAL_BATCH_SIZE == EVAL_BATCH_SIZE


def test_run_estimate_scales_with_members_and_batch():
    size = ModelSize(params=1000, activations_per_sample=50, largest_per_sample=10)
    one = RunEstimate(size, 4096, Optimizer.SGD)
    assert RunEstimate(size, 4096, Optimizer.SGD, members=3).total_bytes == 3 * one.total_bytes
    assert RunEstimate(size, 8192, Optimizer.SGD).activation_bytes > one.activation_bytes
    assert "1.0 k parameters" in one.describe() and "batch size 4096" in one.describe()


# --- free memory ------------------------------------------------------------------------------


def test_free_memory_of_the_cpu_is_known_and_bounded_by_the_cgroup(tmp_path: Path):
    assert free_memory_bytes(torch.device("cpu")) > 0
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemAvailable:    2048 kB\n")
    assert estimate._meminfo_available(str(meminfo)) == 2048 * 1024
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("1000000\n")
    (v2 / "memory.current").write_text("400000\n")
    assert estimate._cgroup_headroom(str(v2)) == 600_000
    (v2 / "memory.max").write_text("max\n")
    assert estimate._cgroup_headroom(str(v2)) is None
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("5000\n")
    (v1 / "memory.usage_in_bytes").write_text("1000\n")
    assert estimate._cgroup_headroom(str(tmp_path / "v1")) == 4000
    assert estimate._cgroup_headroom(str(tmp_path / "none")) is None


# --- the trainer's check ------------------------------------------------------------------------


def huge_config(**overrides: object) -> TrainConfig:
    """2.1 G parameters: ~50 GB to train, more than this machine (or a laptop) has."""
    values: dict[str, object] = {
        "model": "mlp",
        "model_params": {"width": 8192, "depth": 32},
        "dataset": "synthetic",
        "dataset_params": {"n_samples": 200, "shape": [16]},
        "batch_size": 32,
        "epochs": 1,
        "device": "cpu",
    }
    return TrainConfig(**{**values, **overrides})  # type: ignore[arg-type]


def _rss() -> int:
    line = next(x for x in open("/proc/self/status") if x.startswith("VmRSS"))  # noqa: SIM115
    return int(line.split()[1]) * 1024


def test_a_run_that_cannot_fit_is_oom_before_anything_is_allocated():
    before = _rss()
    started = time.monotonic()
    result = train(huge_config())
    assert result.status is TrainStatus.OOM and result.epochs == ()
    assert "2.1 G parameters" in result.reason and "nothing was allocated" in result.reason
    assert result.reason.startswith("out of memory at batch size 32")
    assert _rss() - before < 256 * 2**20  # one copy of the weights alone is 8.3 GB
    assert time.monotonic() - started < 60


def test_the_check_uses_the_free_memory_it_is_given(monkeypatch):
    """A run that fits the machine is refused when its device has less free memory than its
    estimate, and the dataset's declared bytes count until it is loaded on the device."""
    config = huge_config(  # 1.1 M params, ~30 MB; data of its own, so never loaded elsewhere
        model_params={"width": 1024, "depth": 2},
        dataset_params={"n_samples": 200, "shape": [16], "seed": 7},
    )
    assert memory_refusal(config, torch.device("cpu")) is None
    monkeypatch.setattr(estimate, "free_memory_bytes", lambda _: 10 * 2**20)
    reason = memory_refusal(config, torch.device("cpu"))
    assert reason is not None and "10.0 MiB free" in reason
    result = train(config)
    assert result.status is TrainStatus.OOM and result.epochs == ()
    assert not is_loaded(config.dataset, config.dataset_params, "cpu")  # not even the data
    monkeypatch.setattr(estimate, "free_memory_bytes", lambda _: None)  # unknown: no check
    assert memory_refusal(config, torch.device("cpu")) is None


class _AllocatesTooMuch(nn.Module):
    """Asks the CPU allocator for 4 EB in training: its real failure, nothing allocated."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            torch.empty(2**62, dtype=torch.uint8)
        return self.inner(x)


@MODELS.register("cpu_alloc_failure_mlp", placements=("before_activation", "none"))
def _cpu_alloc_failure_mlp(shape: tuple[int, ...], classes: int, norm: NormSpec) -> nn.Module:
    return _AllocatesTooMuch(MODELS.get("mlp").builder(shape, classes, norm, width=8, depth=1))


def test_a_cpu_allocator_failure_is_oom(tiny_config):
    with pytest.raises(RuntimeError) as raised:
        torch.empty(2**62, dtype=torch.uint8)
    assert is_oom(raised.value) and is_oom(MemoryError())
    assert not is_oom(RuntimeError("shape mismatch"))
    config = dataclasses.replace(tiny_config, model="cpu_alloc_failure_mlp", model_params={})
    result = train(config)
    assert result.status is TrainStatus.OOM
    assert "DefaultCPUAllocator" in result.reason


def test_a_fused_group_that_cannot_fit_is_split_before_it_is_built(monkeypatch, tiny_config):
    """Free memory for one member and a half: the group of four is never built fused; its
    members train alone, each as train() would."""
    from models import fused

    configs = [dataclasses.replace(tiny_config, seed=i, epochs=1) for i in range(4)]
    data = load_dataset(tiny_config.dataset, tiny_config.dataset_params)
    shape = DataShape(data.input_shape, data.num_classes, 0)
    total, largest = estimate._activations_on_cpu(
        "mlp", estimate._key(tiny_config.model_params), shape, tiny_config.bn_placement
    )
    params = size_on_meta("mlp", tiny_config.model_params, shape, tiny_config.bn_placement).params
    one = RunEstimate(ModelSize(params, total, largest), tiny_config.batch_size, Optimizer.SGD)
    free = int(one.total_bytes / estimate.FREE_MEMORY_FRACTION * 1.5)
    monkeypatch.setattr(estimate, "free_memory_bytes", lambda _: free)

    def never(*_: object) -> None:
        raise AssertionError("a group that cannot fit was built")

    monkeypatch.setattr(fused, "_FusedRun", never)
    results = fused.train_fused(configs, data)
    alone = [train(c, data) for c in configs]
    assert [r.status for r in results] == [TrainStatus.OK] * 4
    assert [r.test_accuracy for r in results] == [r.test_accuracy for r in alone]
