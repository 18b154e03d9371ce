"""Scale benchmark: read endpoints and worker overhead on a study of N finished trials.

For each backend (SQLite file, local PostgreSQL) and each N, it writes a study of N finished
trials in bulk (tests/bulk.py: realistic trials, one multi-row INSERT per Optuna table), starts
``bnsweep serve --workers 0`` on it as its own process, waits until the study's analyses are
computed, then measures each read endpoint:

- single client: ``--requests`` sequential requests, p50 / p99;
- at ``--rate`` requests/s for ``--seconds`` (open loop: request i is sent at i / rate whatever
  the answers, so a slow server is charged for the queue it builds; latency is counted from the
  scheduled send time);

and the worker's per-trial overhead (everything a worker does for a trial but train: claim a slot,
load the study, adopt orphans, fail stale trials, ask, heartbeat, write the user attrs, tell,
close the slot), as the mean over ``--worker-trials`` trials, with the random sampler (bnsweep's
own overhead) and with TPE (plus Optuna's sampler, which reads every trial).

    PYTHONPATH=. .venv/bin/python bench/bench_scale.py --sizes 1000 10000 100000

Databases are kept (``bnsweep_bench_<N>`` on PostgreSQL, /tmp/bnsweep_bench_<N>.db) and reused
by later runs unless ``--rebuild``. Results are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import migrations  # noqa: E402
from tests.bulk import build_study  # noqa: E402

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ENDPOINTS = {
    "study": "",
    "best": "/best",
    "trials page": "/trials?limit=50",
    "trials by value": "/trials?sort=value&order=desc&limit=50",
    "trials, complete by value": "/trials?state=complete&sort=value&order=desc&limit=50",
    "trials, last page": "/trials?offset={last}&limit=50",
    "importance": "/importance",
    "report": "/report",
}
UNDER_LOAD = ("study", "best", "trials page", "trials by value", "importance", "report")


# --- databases --------------------------------------------------------------------------------


def database_url(backend: str, n: int, rebuild: bool) -> tuple[str, bool]:
    """The URL of the benchmark database for ``n`` trials, and whether it must be built."""
    if backend == "sqlite":
        path = Path(f"/tmp/bnsweep_bench_{n}.db")
        if rebuild:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}", not path.exists()
    name = f"bnsweep_bench_{n}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        exists = conn.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
        ).first()
        if exists and rebuild:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            exists = None
        if not exists:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.make_url(PG_ADMIN).set(database=name).render_as_string(False), not exists


def prepare(backend: str, n: int, rebuild: bool) -> tuple[str, float | None]:
    """Migrated database with study 1 of ``n`` finished trials; seconds to build it (None if
    reused). The study takes ``n`` + 1,000 trials, so the worker benchmark can add some."""
    url, build = database_url(backend, n, rebuild)
    if not build:
        return url, None
    migrations.upgrade(url)
    started = time.perf_counter()
    build_study(url, "bench", n, budget={"n_trials": n + 1_000, "max_parallel": 4})
    if backend == "postgres":
        with sa.create_engine(url, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    return url, time.perf_counter() - started


# --- the API --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(url: str, api_processes: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = dict(
        os.environ,
        BNSWEEP_DATABASE_URL=url,
        BNSWEEP_AUTH="off",
        BNSWEEP_PORT=str(port),
        PYTHONPATH=str(ROOT),
    )
    cmd = [sys.executable, "-m", "service", "serve", "--workers", "0"]
    if api_processes > 1:
        cmd += ["--api-processes", str(api_processes)]
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("the API did not start")
        time.sleep(0.3)


def stop_api(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def warm_up(base: str, n: int, timeout_s: float) -> dict[str, float]:
    """First reads (the summaries are built by the first); then wait until the analyses are
    computed for the study as it is. Returns seconds to the first answer of each."""
    first: dict[str, float] = {}
    with httpx.Client(base_url=f"{base}/api/v1/studies/1", timeout=600) as http:
        for name, path in ENDPOINTS.items():
            started = time.perf_counter()
            http.get(path.format(last=n - 50))
            first[name] = time.perf_counter() - started
        deadline = time.monotonic() + timeout_s
        for path in ("/importance", "/report"):
            while True:
                response = http.get(path)
                if response.status_code == 200 and not response.json()["stale"]:
                    break
                if response.status_code == 500:  # the analysis failed (recorded): no waiting
                    print(f"  {path}: {response.text[:300]}", file=sys.stderr)
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{path} not computed in {timeout_s:.0f} s")
                time.sleep(2)
    return first


def durations(url: str) -> dict[str, float]:
    """How long each analysis took to compute, as stored."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT kind, duration_s FROM bnsweep_analyses")).all()
    engine.dispose()
    return {kind: seconds for kind, seconds in rows}


# --- measuring ------------------------------------------------------------------------------------


def quantiles(latencies_s: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    ms = sorted(x * 1000 for x in latencies_s)
    return statistics.median(ms), ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def single_client(base: str, path: str, requests: int, pid: int) -> tuple[float, float, int, float]:
    """p50 and p99 ms, the body's size, and the API process's CPU ms per request: a figure that
    a machine shared with other work disturbs much less than latencies."""
    latencies, size = [], 0
    cpu = cpu_seconds(pid)
    with httpx.Client(base_url=base, timeout=60) as http:
        for _ in range(requests):
            started = time.perf_counter()
            response = http.get(path)
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text[:200]
            size = len(response.content)
    cpu_ms = (cpu_seconds(pid) - cpu) * 1000 / requests
    return (*quantiles(latencies), size, cpu_ms)


async def _open_loop(base: str, path: str, rate: float, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.1

        async def one(at: float) -> None:
            nonlocal errors
            await asyncio.sleep(max(0.0, at - loop.time()))
            try:
                response = await http.get(path)
                if response.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            latencies.append(loop.time() - at)  # from the scheduled send: queueing counts

        await asyncio.gather(*(one(start + i / rate) for i in range(int(rate * seconds))))
    return latencies, errors


WARM_UP_S = 1.0  # at the same rate, not counted: the API's pool and threads grow to the load


def under_load(base: str, path: str, rate: float, seconds: float) -> tuple[float, float, float]:
    asyncio.run(_open_loop(base, path, rate, WARM_UP_S))
    started = time.perf_counter()
    latencies, errors = asyncio.run(_open_loop(base, path, rate, seconds))
    achieved = len(latencies) / (time.perf_counter() - started)
    p50, p99 = quantiles(latencies)
    if errors:
        print(f"  {errors} errors on {path}", file=sys.stderr)
    return p50, p99, achieved


# --- worker overhead ------------------------------------------------------------------------------


def worker_overhead(url: str, trials: int, sampler: str) -> float:
    """Mean seconds per trial of a worker's database and Optuna work, training excluded: the
    steps of ``search.worker.Worker`` for one claim, in its order, with its storages."""
    import optuna
    from optuna.trial import TrialState

    from search.optuna_map import distributions, make_pruner, make_sampler
    from search.spec import StudySpec
    from search.storage import get_engine, get_storage, study_id_of, trial_id_of, worker_storage
    from search.studies import (
        adopt_orphaned_trials,
        claim_slot,
        finish_slot,
        get_study_row,
        set_slot_trial,
    )
    from tests.bulk import _trial

    engine, backend = get_engine(url), get_storage(url)
    row = get_study_row(engine, 1)
    spec = StudySpec.model_validate(
        {**row.spec, "sampler": {"name": sampler, "seed": 0}, "pruner": {"name": "none"}}
    )
    cached = worker_storage(backend)
    import random

    rng = random.Random(0)
    dists = distributions(spec)
    elapsed = []
    for i in range(trials + 1):
        started = time.perf_counter()
        claim = claim_slot(engine, "bench-worker", [row.id], 30)
        assert claim is not None, "no slot: the study's budget is spent (--rebuild)"
        study = optuna.load_study(
            study_name=row.name,
            storage=cached,
            sampler=make_sampler(spec, slot_id=claim.slot_id),
            pruner=make_pruner(spec),
        )
        adopt_orphaned_trials(engine, row.id, study_id_of(study), claim.slot_id)
        optuna.storages.fail_stale_trials(study)
        trial = study.ask(fixed_distributions=distributions(spec))
        backend.record_heartbeat(trial_id_of(trial))
        set_slot_trial(engine, claim.slot_id, trial.number)
        attrs = _trial(rng, spec, dists, trial.number, trial.datetime_start)["attrs"]
        for key, value in attrs.items():
            cached.set_trial_user_attr(trial_id_of(trial), key, value)
        study.tell(trial, [attrs["val_accuracy"] or 0.0], state=TrialState.COMPLETE)
        finish_slot(engine, claim.slot_id, TrialState.COMPLETE.name)
        if i:  # the first trial fills the worker's cache: a one-off, reported apart
            elapsed.append(time.perf_counter() - started)
    return statistics.mean(elapsed)


# --- main -----------------------------------------------------------------------------------------


@dataclass
class Row:
    backend: str
    n: int
    endpoint: str
    single_p50: float
    single_p99: float
    size: int
    cpu_ms: float
    load_p50: float | None = None
    load_p99: float | None = None
    achieved: float | None = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["postgres", "sqlite"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1_000, 10_000, 100_000])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--worker-trials", type=int, default=30)
    parser.add_argument("--tpe-max", type=int, default=10_000, help="largest N to run TPE on")
    parser.add_argument("--api-processes", type=int, default=1)
    parser.add_argument("--analysis-timeout", type=float, default=3_600.0)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--skip-worker", action="store_true")
    args = parser.parse_args()

    rows: list[Row] = []
    notes: list[str] = []
    before_load = os.getloadavg()
    for backend in args.backends:
        for n in args.sizes:
            url, built_s = prepare(backend, n, args.rebuild)
            if built_s is not None:
                notes.append(f"{backend} N={n}: study written in {built_s:.0f} s")
            proc, base = start_api(url, args.api_processes)
            try:
                first = warm_up(base, n, args.analysis_timeout)
                notes.append(
                    f"{backend} N={n}: first read (summary sync) {first['study']:.2f} s; "
                    + ", ".join(f"{k} computed in {v:.1f} s" for k, v in durations(url).items())
                )
                for name, path in ENDPOINTS.items():
                    full = f"{base}/api/v1/studies/1{path.format(last=n - 50)}"
                    status = httpx.get(full, timeout=60).status_code
                    if status != 200:
                        notes.append(f"{backend} N={n}: {name} answers {status}; not measured")
                        continue
                    row = Row(backend, n, name, *single_client(base, full, args.requests, proc.pid))
                    if name in UNDER_LOAD:
                        row.load_p50, row.load_p99, row.achieved = under_load(
                            base, full, args.rate, args.seconds
                        )
                    rows.append(row)
                    print(row, file=sys.stderr, flush=True)
            finally:
                stop_api(proc)
            if not args.skip_worker:
                samplers = ["random"] + (["tpe"] if n <= args.tpe_max else [])
                for sampler in samplers:
                    mean = worker_overhead(url, args.worker_trials, sampler)
                    per_trial = f"worker overhead per trial ({sampler}) {mean * 1000:.0f} ms"
                    notes.append(f"{backend} N={n}: {per_trial}")
                    print(notes[-1], file=sys.stderr, flush=True)

    print(f"\nMachine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or ''}")
    print(f"\nLoad average before/after: {before_load} / {os.getloadavg()}")
    print(
        "\n| backend | N | endpoint | body | p50 ms | p99 ms | API CPU ms/request "
        f"| p50 ms @ {args.rate:.0f}/s | p99 ms @ {args.rate:.0f}/s | achieved/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        load = (
            f"{r.load_p50:.0f} | {r.load_p99:.0f} | {r.achieved:.0f}"
            if r.load_p50 is not None and r.load_p99 is not None and r.achieved is not None
            else "– | – | –"
        )
        print(
            f"| {r.backend} | {r.n:,} | {r.endpoint} | {r.size / 1000:.1f} kB "
            f"| {r.single_p50:.1f} | {r.single_p99:.1f} | {r.cpu_ms:.1f} | {load} |"
        )
    print()
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
