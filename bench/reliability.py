"""Run the reliability suite and write docs/reliability.md from the figures of that run.

Two pytest runs, as ``make test`` does: the scenarios that share the PostgreSQL server in parallel
(``-n 2 -m "not outage"``), then those that need it to themselves, alone (``-m outage``: the
restart, and the 32 workers that hold most of its connections).
Each test writes its figures to ``$BNSWEEP_RELIABILITY_OUT`` (tests/reliability/conftest.py);
this script turns them into one table per scenario. ``--burn N`` runs N CPU-burning processes
(``python -c "while True: pass"``) beside the whole suite, as a busy CI machine would. Example:

    .venv/bin/python bench/reliability.py --burn 2   # writes docs/reliability.md
    .venv/bin/python bench/reliability.py --no-write # run and print only
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"
RUNS = [
    ("parallel", ["-n", "2", "--dist", "loadgroup", "-m", "not outage"]),
    ("outage (alone)", ["-m", "outage"]),
]

SCENARIOS = {
    "1.": "`kill -9` of one of 3 workers while it trains (PostgreSQL, heartbeat 1 s, grace 5 s): "
    "its trial turns FAIL, a retry with the same parameters is queued and completes; exactly "
    "n_trials finish, no trial finishes along with its retry, nothing left RUNNING or WAITING. The "
    "kill-to-FAIL time must lie between grace - heartbeat - timer lateness and heartbeat + grace + "
    "the longest trial + the longest claim gap + poll + 4 x timer lateness, all measured in that "
    "run. Also: a worker killed between `ask` and its first heartbeat (the orphan case).",
    "2.": "SIGTERM to a worker mid-trial: it exits 0 at once, its trial is FAIL (`interrupted`) "
    "and retried by the other worker; nothing left RUNNING.",
    "3.": "PostgreSQL restarted (`pg_ctlcluster ... restart`) under 3 busy workers; every kind of "
    "route is loaded (ours, the dashboard's pages and its API, so the dashboard is built); then "
    "the database is stopped while the API is sampled: every route that needs it answers "
    '503 `{"detail": "database unavailable"}` (the dashboard\'s API and its note writes '
    "included), the static ones keep answering, and the API log holds no stack trace. Then "
    "started: workers back off and come back, the study completes with nothing lost.",
    "4.": "The API process (uvicorn) killed with SIGKILL mid-study and started again: workers go "
    "on meanwhile; every study and trial listed before is listed after, finished trials unchanged.",
    "5.": "8 workers race for one study with `max_parallel` 2 and 3: the most trials whose "
    "recorded [start, end] overlap equals the limit (reached, never exceeded); each worker "
    "process (its own application name) holds at most 4 connections in pg_stat_activity; "
    "exactly n_trials finish.",
    "6.": "32 worker processes against one PostgreSQL database: no connection error in any log, "
    "every trial accounted for; peak connections from pg_stat_activity, in all and per worker "
    "process (grouped by the application name each one is given).",
    "7.": "Schemathesis over `/openapi.json` of the live API (positive and negative data, valid "
    "key): no 5xx, every answer conforms to the schema.",
    "8.": "Hostile bodies: a spec over its own limit (413) while other bodies have the general "
    "one, malformed JSON/YAML, YAML alias bombs and python tags, extreme numbers, import paths and "
    "path escapes (422 naming the field, < 0.5 s of the API's CPU each); no request imports a "
    "module (a canary checked in the same test); a write without a key is refused before its "
    "body is read; a body that never comes is 408 at the body timeout; odd study names stored "
    "verbatim.",
    "9.": "Every write endpoint (ours from the OpenAPI, the dashboard's from its router) without a "
    "key, with an unknown key (401) and with a revoked key (403); no raw key in `pg_dump` or in "
    "the server log.",
    "10.": "Divergent learning rates recorded as `diverged` with their reason (the study "
    "completes); a worker survives an out-of-memory trial and completes another study.",
    "11.": "Resource caps: the specs an audit got accepted (22.6 G and 103 G parameters, 2 G "
    "with AdamW, 20 GiB of activations) are refused with 422 naming the field and the estimate, "
    "sized on the meta device; a worker refuses a ~50 GB trial as `oom` before allocating it "
    "(its peak RSS stays far below one copy of the weights); the generated dataset at its cap, "
    "its real peak; 1 MB YAML specs cost the API well under a second of CPU.",
    "12.": "Ownership: only the owner or an admin key may cancel, pause, resume or delete a "
    "study (403 otherwise); owners shown to callers with a key only; per-key quotas answer 429 "
    "and hold under 12 concurrent submissions to two API processes.",
    "13.": "HEAD answers every GET route as GET does, without a body; every path under `/api/` "
    'answers JSON `{"detail": ...}` 404/405, the dashboard\'s included.',
}


def machine() -> dict[str, str]:
    model = platform.processor() or "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpus": str(os.cpu_count()),
        "cpu_model": model,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


@contextlib.contextmanager
def cpu_burners(n: int) -> Iterator[None]:
    """``n`` processes that keep a core busy each, for as long as the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def run(out: Path, extra: list[str]) -> tuple[list[dict], list[tuple[str, str, float, int]]]:
    env = dict(os.environ, BNSWEEP_RELIABILITY_OUT=str(out))
    runs = []
    for label, args in RUNS:
        cmd = [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider"]
        cmd += args + extra
        shown = "pytest tests/reliability " + " ".join(
            f'"{a}"' if " " in a else a for a in args + extra
        )
        print(f"$ {shown}", flush=True)
        started = time.monotonic()
        rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        runs.append((label, shown, time.monotonic() - started, rc))
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    return records, runs


def cell(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def render(records: list[dict], runs: list[tuple[str, str, float, int]], burn: int) -> str:
    m = machine()
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Reliability and security suite",
        "",
        "Generated by `.venv/bin/python bench/reliability.py` (do not edit by hand): it runs",
        "`tests/reliability/` and writes the figures of that run below. Real components only:",
        "PostgreSQL 127.0.0.1:5432, uvicorn, `python -m service worker` processes, tiny training.",
        "",
        f"- Date: {now}",
        f"- Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['os']}, Python {m['python']}",
        f"- Load beside the suite: {burn} CPU-burning processes "
        f'(`python -c "while True: pass"`, `--burn {burn}`), '
        "besides whatever else the machine ran",
        "",
        "| run | command | wall time | exit code |",
        "|---|---|---|---|",
    ]
    for label, shown, seconds, rc in runs:
        lines.append(f"| {label} | `{shown}` | {seconds:.0f} s | {rc} |")
    lines += [
        "",
        "One test: `.venv/bin/python -m pytest tests/reliability -k <test name>`; the `outage`",
        "tests (PostgreSQL stopped; 32 workers holding ~80 of its 100 connections) run alone.",
        "They stop the shared cluster (`pg_ctlcluster`); to stop a private server instead, give",
        "its data directory and URL: `BNSWEEP_TEST_PG_DATA=/tmp/pg/data",
        "BNSWEEP_TEST_PG_URL=postgresql+psycopg://postgres@127.0.0.1:5439/test`.",
        "",
    ]
    by_scenario: dict[str, list[dict]] = {}
    for record in records:
        by_scenario.setdefault(record["scenario"], []).append(record)

    def order(title: str) -> tuple[int, str]:
        head = title.split(".", 1)[0]
        return (int(head) if head.isdigit() else 99, title)

    for title in sorted(by_scenario, key=order):
        number = title.split(" ", 1)[0]
        lines += [f"## {title}", ""]
        if number in SCENARIOS:
            lines += [SCENARIOS[number], ""]
        for record in by_scenario[title]:
            test = record["test"].split("::", 1)[1]
            lines += [
                f"`{test}`: **{record['outcome']}** in {record['duration_s']} s",
                "",
                "| figure | value |",
                "|---|---|",
            ]
            lines += [f"| {k} | {cell(v)} |" for k, v in record["figures"].items()]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print, do not write the doc")
    parser.add_argument(
        "--burn", type=int, default=0, help="CPU-burning processes to run beside the suite"
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -k racing)")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bnsweep-reliability-") as out,
        cpu_burners(args.burn),
    ):
        records, runs = run(Path(out), args.pytest_args)
    text = render(records, runs, args.burn)
    if args.no_write:
        print(text)
    else:
        DOC.write_text(text)
        print(f"wrote {DOC.relative_to(ROOT)} ({len(records)} tests)")
    return max(rc for *_, rc in runs)


if __name__ == "__main__":
    sys.exit(main())
