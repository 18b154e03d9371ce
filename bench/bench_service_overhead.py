"""Service overhead: N short trials through ``bnsweep run`` vs the same trainings in a bare loop.

Side ``run``: ``bnsweep run SPEC --workers 1 --fuse 1 --storage sqlite:///<fresh file>
--device cpu`` (the real CLI: migrations, slot claims, ask/tell, a report and a pruning check per
epoch, heartbeats, the progress bar, the report at the end) on a spec whose trials all cost about
the same: fixed batch size and placement, random search over learning rate, momentum and BN
momentum, no pruner (so both sides do the same work). Side ``loop``: one Python process that
imports the trainer, loads the dataset and calls ``models.train.train`` on each configuration the
``run`` side trained (read back from its trials' ``train_config``), one after another. Both are
separate processes timed from launch to exit; also their CPU time (``os.wait4``). With
``--repeats 2`` the order is run, loop, loop, run (a drift of the load cancels to first order);
the second run must train the same configurations (same seed), which is checked.

    PYTHONPATH=. .venv/bin/python bench/bench_service_overhead.py --trials 200 --epochs 10

Overhead = (run - loop) / loop, by wall and by CPU time, and per trial in ms. From bnsweep's own
record it is split into: before the first trial starts (imports, migrations, study creation,
worker start), between trials (tell, claim, ask), within trials (the trial's duration in Optuna
minus the loop's time for that configuration: per-epoch report and checks, provenance), and after
the last trial (the report and best config printed at the end, shutdown).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def spec_doc(trials: int, epochs: int, seed: int) -> dict[str, object]:
    return {
        "name": "bench-overhead",
        "dataset": {"name": "mnist1d", "params": {"num_samples": 4000}},
        "model": {"name": "cnn1d", "params": {"channels": 32}},
        "search_space": {
            "batch_size": 64,
            "bn_placement": "before_activation",
            # A range where no run diverges: every trial trains all its epochs.
            "learning_rate": {"low": 0.01, "high": 0.2, "log": True},
            "momentum": {"low": 0.8, "high": 0.95},
            "bn_momentum": {"low": 0.01, "high": 0.5, "log": True},
        },
        "training": {"epochs": epochs, "schedule": "cosine"},
        "objective": {"metric": "val_accuracy"},
        "sampler": {"name": "random", "seed": seed},
        "pruner": {"name": "none"},
        "budget": {"n_trials": trials},
        "execution": {"fuse": 1},
    }


def launch(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run ``cmd`` to its end; (wall seconds from launch to exit, CPU seconds of the process)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.time()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]} exited {proc.returncode}; see {log}")
    return wall, usage.ru_utime + usage.ru_stime


def side_run(spec: Path, out: Path, i: int) -> dict[str, object]:
    import optuna

    db = out / f"run{i}.db"
    db.unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    cmd = [sys.executable, "-m", "service", "run", str(spec), "--workers", "1", "--fuse", "1"]
    start = time.time()
    wall, cpu = launch([*cmd, "--storage", url, "--device", "cpu"], out / f"run{i}.log")
    trials = sorted(optuna.load_study(study_name="bench-overhead", storage=url).trials,
                    key=lambda t: t.number)  # fmt: skip
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "configs": [t.user_attrs["train_config"] for t in trials],
        "states": [t.state.name for t in trials],
        "starts": [t.datetime_start.timestamp() - start for t in trials],
        "ends": [t.datetime_complete.timestamp() - start for t in trials],
    }


def side_loop(configs_file: Path, out: Path, i: int) -> dict[str, object]:
    times_file = out / f"loop{i}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--loop", str(configs_file)]
    wall, cpu = launch([*cmd, "--loop-out", str(times_file)], out / f"loop{i}.log")
    return {"wall_s": wall, "cpu_s": cpu, "train_s": json.loads(times_file.read_text())}


def bare_loop(configs_file: Path, times_out: Path) -> None:
    """The bare loop: the trainer on each configuration, one after another, in this process."""
    import torch

    from models.config import TrainConfig
    from models.data import load_dataset
    from models.train import train

    torch.set_num_threads(os.cpu_count() or 1)  # as bnsweep run with one worker sets it
    configs = [TrainConfig.from_dict(c) for c in json.loads(configs_file.read_text())]
    data = load_dataset(configs[0].dataset, configs[0].dataset_params)
    times = []
    for config in configs:
        t0 = time.perf_counter()
        train(config, data)
        times.append(time.perf_counter() - t0)
    times_out.write_text(json.dumps(times))


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=10, help="sets the trial length (~1 s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="1: run, loop; 2: run, loop x2, run")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-overhead"))
    parser.add_argument("--loop", type=Path, help=argparse.SUPPRESS)  # the loop side's own process
    parser.add_argument("--loop-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop:
        bare_loop(args.loop, args.loop_out)
        return

    args.out.mkdir(parents=True, exist_ok=True)
    spec = args.out / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_doc(args.trials, args.epochs, args.seed), sort_keys=False))
    configs_file = args.out / "configs.json"
    order = ["run", "loop"] if args.repeats == 1 else ["run", "loop", "loop", "run"]
    results: dict[str, list[dict[str, object]]] = {"run": [], "loop": []}
    loads = []
    for side in order:
        before = load1()
        i = len(results[side])
        if side == "run":
            r = side_run(spec, args.out, i)
            if not configs_file.exists():
                configs_file.write_text(json.dumps(r["configs"]))
            elif r["configs"] != json.loads(configs_file.read_text()):
                raise SystemExit("the second run trained other configurations than the first")
        else:
            r = side_loop(configs_file, args.out, i)
        loads.append((side, before, load1()))
        results[side].append(r)
        print(f"{side}: wall {r['wall_s']:.1f} s, cpu {r['cpu_s']:.1f} s (load {before:.1f})")
    (args.out / "results.json").write_text(json.dumps({"results": results, "loads": loads}))
    report(results, loads, args)


def report(results: dict[str, list[dict]], loads: list, args: argparse.Namespace) -> None:
    runs, loops = results["run"], results["loop"]
    n = len(runs[0]["configs"])
    wall_run = statistics.mean(r["wall_s"] for r in runs)
    wall_loop = statistics.mean(r["wall_s"] for r in loops)
    cpu_run = statistics.mean(r["cpu_s"] for r in runs)
    cpu_loop = statistics.mean(r["cpu_s"] for r in loops)
    train_s = [statistics.mean(ts) for ts in zip(*(r["train_s"] for r in loops), strict=True)]
    print()
    print(f"{n} trials, mean trial {statistics.mean(train_s):.2f} s in the loop "
          f"(min {min(train_s):.2f}, max {max(train_s):.2f}); load 1-min: "
          + ", ".join(f"{s} {a:.1f}->{b:.1f}" for s, a, b in loads))  # fmt: skip
    print()
    print("| side | wall s (each run) | CPU s (each run) |")
    print("|---|---|---|")
    for name, rs in (("bnsweep run", runs), ("bare loop", loops)):
        walls = " / ".join(f"{r['wall_s']:.1f}" for r in rs)
        cpus = " / ".join(f"{r['cpu_s']:.1f}" for r in rs)
        print(f"| {name} | {walls} | {cpus} |")
    print()
    print(
        f"overhead by wall time: {100 * (wall_run - wall_loop) / wall_loop:+.1f}% "
        f"({1000 * (wall_run - wall_loop) / n:+.0f} ms per trial); by CPU time: "
        f"{100 * (cpu_run - cpu_loop) / cpu_loop:+.1f}% ({1000 * (cpu_run - cpu_loop) / n:+.0f} ms "
        f"per trial)"
    )
    for i, r in enumerate(runs):
        starts, ends = r["starts"], r["ends"]
        before = starts[0]
        between = [s - e for s, e in zip(starts[1:], ends[:-1], strict=True)]
        within = [e - s - t for s, e, t in zip(starts, ends, train_s, strict=True)]
        after = r["wall_s"] - ends[-1]
        print(
            f"run {i}: before the first trial {before:.2f} s; between trials "
            f"{1000 * statistics.mean(between):.0f} ms (median "
            f"{1000 * statistics.median(between):.0f}); within a trial beyond the loop's time "
            f"{1000 * statistics.mean(within):.0f} ms (median "
            f"{1000 * statistics.median(within):.0f}); after the last trial {after:.2f} s; "
            f"states {sorted(set(r['states']))}"
        )


if __name__ == "__main__":
    main()
