"""Time to quality: ``bnsweep run`` vs the one-off Optuna script, with and without Hyperband.

Three sides search the same space on the same task (the spec's dataset, model, epochs and trial
budget) with TPE seeded alike, each a separate process timed from its start (the wall clock
just before the process is launched):

- ``a``: ``bench/ttq_optuna_script.py`` — sequential ``study.optimize`` in memory, textbook
  DataLoader loop, no pruning;
- ``h``: the same script with Optuna's ``HyperbandPruner`` (a validation per epoch);
- ``b``: ``bnsweep run SPEC --workers W --storage sqlite:///<fresh file> --device cpu``: the real
  CLI with the spec's defaults (``execution.fuse: auto``) and its pruner (the README's median
  pruner in the bench specs).

Each trial's completion time comes from the side's own record: the JSON lines the script writes
(Optuna's ``datetime_complete``), and ``datetime_complete`` in bnsweep's SQLite file. Reported per
sampler seed and as the median over seeds: seconds to the first complete trial with validation
accuracy >= ``--target``, best validation accuracy at equal wall time (the time the faster of the
two sides compared ended) and at the end, trials complete / pruned, and the process's wall time.
The sides of a seed run one after another, their order rotating with the seed; the load average
is recorded before and after each run. Example (the figures of docs/benchmarks.md):

    PYTHONPATH=. .venv/bin/python bench/bench_time_to_quality.py examples/bench-ttq-mnist1d.yaml \
        --seeds 0,1,2 --target 0.90 --out /tmp/ttq-mnist1d

``--render DIR/results.json`` prints the tables of an earlier run again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "ttq_optuna_script.py"
SIDES = {
    "a": "(a) Optuna script, no pruning",
    "h": "(b) Optuna script + Hyperband",
    "b": "bnsweep run",
}


@dataclass
class Trial:
    t_s: float  # completion, seconds since the side's process was launched
    state: str  # COMPLETE | PRUNED | FAIL
    value: float | None  # final validation accuracy (COMPLETE only)
    fuse_size: int = 1


@dataclass
class Run:
    side: str
    seed: int
    wall_s: float
    load_before: float
    load_after: float
    trials: list[Trial] = field(default_factory=list)

    def best_at(self, t_s: float) -> float | None:
        values = [t.value for t in self.trials if t.value is not None and t.t_s <= t_s]
        return max(values) if values else None

    def time_to(self, target: float) -> float:
        hits = [t.t_s for t in self.trials if t.value is not None and t.value >= target]
        return min(hits) if hits else math.inf

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run_script(spec: Path, seed: int, pruner: str, out: Path) -> tuple[float, list[Trial]]:
    trials_file = out / f"script-{pruner}-seed{seed}.jsonl"
    cmd = [sys.executable, str(SCRIPT), str(spec), "--seed", str(seed), "--pruner", pruner]
    start = time.time()
    with (out / f"script-{pruner}-seed{seed}.log").open("w") as log:
        subprocess.run(
            [*cmd, "--out", str(trials_file)], check=True, stdout=log, stderr=log, env=_env()
        )
    wall = time.time() - start
    trials = []
    for line in trials_file.read_text().splitlines():
        row = json.loads(line)
        trials.append(Trial(row["t_complete"] - start, row["state"], row["value"]))
    return wall, trials


def run_bnsweep(spec: Path, seed: int, workers: int, out: Path) -> tuple[float, list[Trial]]:
    import optuna

    doc = yaml.safe_load(spec.read_text())
    doc["sampler"] = {**doc.get("sampler", {}), "seed": seed}
    seeded = out / f"bnsweep-seed{seed}.yaml"
    seeded.write_text(yaml.safe_dump(doc, sort_keys=False))
    db = out / f"bnsweep-seed{seed}.db"
    db.unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    cmd = [sys.executable, "-m", "service", "run", str(seeded), "--workers", str(workers)]
    start = time.time()
    with (out / f"bnsweep-seed{seed}.log").open("w") as log:
        subprocess.run(
            [*cmd, "--storage", url, "--device", "cpu"],
            check=True,
            stdout=log,
            stderr=log,
            env=_env(),
        )
    wall = time.time() - start
    study = optuna.load_study(study_name=doc["name"], storage=url)
    trials = []
    for t in study.trials:
        if t.datetime_complete is None:
            continue
        value = t.value if t.state.name == "COMPLETE" else None
        fuse = int(t.user_attrs.get("fuse_size", 1))
        trials.append(Trial(t.datetime_complete.timestamp() - start, t.state.name, value, fuse))
    return wall, trials


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def check_same_space(spec: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from bench.ttq_optuna_script import SEARCH_SPACE

    space = yaml.safe_load(spec.read_text())["search_space"]
    if space != SEARCH_SPACE:
        raise SystemExit(f"{spec}: search_space differs from the script's: {SEARCH_SPACE}")


# --- report -------------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "–"
    if math.isinf(x):
        return "not reached"
    return f"{x:.{digits}f}"


def ratio(x: float, y: float) -> float:
    """x / y, with a side that never reached the target (inf) beating neither nor losing to it."""
    if math.isinf(x) and math.isinf(y):
        return math.nan
    return x / y


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def report(
    runs: list[Run], target: float, meta: dict[str, object], others: list[float] = ()
) -> None:
    seeds = sorted({r.seed for r in runs})
    sides = [s for s in SIDES if any(r.side == s for r in runs)]
    by = {(r.side, r.seed): r for r in runs}
    print(f"# {meta.get('command')}")
    print(f"# {meta.get('machine')}")
    print()
    print(
        f"| seed | side | wall s | load 1-min before/after | complete / pruned / failed | "
        f"best val acc | s to val acc >= {target:.2f} | best at the other side's end |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for seed in seeds:
        for side in sides:
            r = by.get((side, seed))
            if r is None:
                continue
            # "at the other side's end": the comparison at equal wall time, against bnsweep
            # (for a and h) or against side a (for bnsweep).
            other = by.get(("a" if side == "b" else "b", seed))
            t_eq = min(r.wall_s, other.wall_s) if other else r.wall_s
            fused = [t.fuse_size for t in r.trials]
            groups = f", mean group {statistics.mean(fused):.1f}" if side == "b" and fused else ""
            print(
                f"| {seed} | {SIDES[side]} | {r.wall_s:.1f} | {r.load_before:.1f} / "
                f"{r.load_after:.1f} | {r.count('COMPLETE')} / {r.count('PRUNED')} / "
                f"{r.count('FAIL')}{groups} | {fmt(r.best_at(math.inf), 4)} | "
                f"{fmt(r.time_to(target))} | {fmt(r.best_at(t_eq), 4)} at {t_eq:.0f} s |"
            )
    print()
    print("Medians over the seeds:")
    print()
    print(f"| side | wall s | s to val acc >= {target:.2f} | best val acc | reached target |")
    print("|---|---|---|---|---|")
    for side in sides:
        rs = [by[(side, s)] for s in seeds if (side, s) in by]
        print(
            f"| {SIDES[side]} | {median([r.wall_s for r in rs]):.1f} | "
            f"{fmt(median([r.time_to(target) for r in rs]))} | "
            f"{fmt(median([r.best_at(math.inf) or 0.0 for r in rs]), 4)} | "
            f"{sum(r.time_to(target) < math.inf for r in rs)} of {len(rs)} |"
        )
    if others:
        print()
        print("Median seconds to other targets (robustness of the headline target):")
        print()
        print("| side | " + " | ".join(f">= {x:.3f}" for x in others) + " |")
        print("|---|" + "---|" * len(others))
        for side in sides:
            rs = [by[(side, s)] for s in seeds if (side, s) in by]
            cells = [
                f"{fmt(median([r.time_to(x) for r in rs]))} "
                f"({sum(r.time_to(x) < math.inf for r in rs)}/{len(rs)})"
                for x in others
            ]
            print(f"| {SIDES[side]} | " + " | ".join(cells) + " |")
    print()
    for ref in ("a", "h"):
        pairs = [(by[(ref, s)], by[("b", s)]) for s in seeds if (ref, s) in by and ("b", s) in by]
        if not pairs:
            continue
        ratios = [ratio(x.time_to(target), y.time_to(target)) for x, y in pairs]
        equal = []
        for x, y in pairs:
            t_eq = min(x.wall_s, y.wall_s)
            equal.append((x.best_at(t_eq) or 0.0, y.best_at(t_eq) or 0.0))
        of_medians = ratio(
            median([x.time_to(target) for x, _ in pairs]),
            median([y.time_to(target) for _, y in pairs]),
        )
        print(
            f"- time to target, {SIDES[ref]} / bnsweep: per seed "
            f"{', '.join(f'{q:.2f}x' for q in ratios)}; median {median(ratios):.2f}x; "
            f"ratio of medians {of_medians:.2f}x"
        )
        print(
            f"- best val acc at equal wall time, {SIDES[ref]} vs bnsweep: "
            f"{', '.join(f'{a:.4f} vs {b:.4f}' for a, b in equal)}; "
            f"bnsweep no worse in {sum(b >= a for a, b in equal)} of {len(equal)}"
        )
    first10 = sorted(
        t.value or 0.0
        for r in runs
        if r.side == "a"
        for t in sorted(r.trials, key=lambda t: t.t_s)[:10]
    )
    if first10:
        deciles = statistics.quantiles(first10, n=10, method="inclusive")
        quarters = statistics.quantiles(first10, n=4, method="inclusive")
        print(
            f"- spread: final val acc of side (a)'s first 10 trials per seed (TPE's random "
            f"start-up, {len(first10)} configs): min {first10[0]:.3f}, 10% {deciles[0]:.3f}, "
            f"25% {quarters[0]:.3f}, median {quarters[1]:.3f}, 75% {quarters[2]:.3f}, "
            f"90% {deciles[-1]:.3f}, max {first10[-1]:.3f}"
        )


def machine() -> str:
    import optuna
    import torch

    model = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (
        f"{model}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads by default), optuna {optuna.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, nargs="?", help="bnsweep spec: the task and budget")
    parser.add_argument("--seeds", default="0,1,2", help="TPE seeds, comma-separated")
    parser.add_argument("--target", type=float, help="validation accuracy (needed to run)")
    parser.add_argument("--also", default="", help="more targets for the medians, e.g. 0.8,0.82")
    parser.add_argument("--sides", default="a,h,b", help="a, h (Hyperband), b (bnsweep)")
    parser.add_argument("--workers", type=int, default=1, help="bnsweep run --workers")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-ttq"))
    parser.add_argument("--render", type=Path, help="print the tables of a results.json")
    args = parser.parse_args()
    others = [float(x) for x in args.also.split(",") if x]

    if args.render:
        saved = json.loads(args.render.read_text())
        runs = [Run(**{**r, "trials": [Trial(**t) for t in r["trials"]]}) for r in saved["runs"]]
        report(runs, args.target or saved["target"], saved["meta"], others)
        return
    if args.spec is None or args.target is None:
        parser.error("a spec and --target are needed (or --render)")
    check_same_space(args.spec)
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    sides = args.sides.split(",")
    meta = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "spec": args.spec.read_text(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "MKL_"))},
    }
    runs: list[Run] = []
    for i, seed in enumerate(seeds):
        order = sides[i % len(sides) :] + sides[: i % len(sides)]  # rotate who goes first
        for side in order:
            before = load1()
            if side == "b":
                wall, trials = run_bnsweep(args.spec, seed, args.workers, args.out)
            else:
                pruner = "hyperband" if side == "h" else "none"
                wall, trials = run_script(args.spec, seed, pruner, args.out)
            runs.append(Run(side, seed, wall, before, load1(), trials))
            best = runs[-1].best_at(math.inf)
            print(
                f"seed {seed} {SIDES[side]}: {wall:.1f} s, best {fmt(best, 4)}, "
                f"to target {fmt(runs[-1].time_to(args.target))} s",
                flush=True,
            )
            saved = {"target": args.target, "meta": meta, "runs": [asdict(r) for r in runs]}
            (args.out / "results.json").write_text(json.dumps(saved, indent=1))
    print()
    report(runs, args.target, meta, others)


if __name__ == "__main__":
    main()
