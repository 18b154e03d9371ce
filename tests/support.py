"""Test helpers shared by the search, service, browser and reliability suites: tiny specs, worker
processes (real ``python -m service worker`` subprocesses) and threads, a live uvicorn server,
polling."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from search.spec import StudySpec
from search.states import TrialCounts
from search.storage import get_engine, get_storage
from search.studies import counts_for, create_study, get_study_row
from search.validate import parse_spec
from search.worker import Worker, WorkerOptions
from service.app import create_app
from service.settings import Settings

PLUGIN_DIR = Path(__file__).parent / "plugins"
HEARTBEAT_S = 1
GRACE_S = 3


def load_test_plugins() -> None:
    """Register the test-only models (sleepy_mlp, oom_mlp) in this process."""
    if str(PLUGIN_DIR) not in sys.path:
        sys.path.insert(0, str(PLUGIN_DIR))
    import bnsweep_testplugins  # noqa: F401


def tiny_spec(name: str, **sections: Any) -> StudySpec:
    """A spec that trains in well under a second per trial on CPU (synthetic data, small MLP).

    One trial per model (``fuse: 1``) unless a test asks for fused groups: the tests of workers,
    retries and faults count trials one by one.
    """
    data: dict[str, Any] = {
        "name": name,
        "dataset": {"name": "synthetic", "params": {"n_samples": 400, "shape": [8]}},
        "model": {"name": "mlp", "params": {"width": 16, "depth": 1}},
        "search_space": {"batch_size": {"choices": [32, 64]}},
        "training": {"epochs": 2},
        "budget": {"n_trials": 4},
        "sampler": {"name": "random", "seed": 0},
        "execution": {"fuse": 1},
    }
    data.update(sections)
    return parse_spec(data)


def make_study(url: str, spec: StudySpec) -> int:
    return create_study(get_engine(url), get_storage(url), spec).id


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGIN_DIR), env.get("PYTHONPATH")]))
    env["BNSWEEP_PLUGINS"] = "bnsweep_testplugins"
    env["BNSWEEP_HEARTBEAT_INTERVAL_S"] = str(HEARTBEAT_S)
    env["BNSWEEP_GRACE_PERIOD_S"] = str(GRACE_S)
    return env


class WorkerPool:
    """Worker processes (``python -m service worker``) started by a test, always cleaned up."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        # Logs go to a file, not a pipe: a full pipe would block a chatty worker mid-trial.
        self.log = tempfile.NamedTemporaryFile(prefix="bnsweep-workers-", suffix=".log")  # noqa: SIM115 (closed in stop)

    def start(
        self, url: str, *args: str, n: int = 1, env: dict[str, str] | None = None
    ) -> list[subprocess.Popen[bytes]]:
        """``n`` workers on ``url`` with ``args``; ``env``: variables for them alone."""
        cmd = [
            sys.executable,
            "-m",
            "service",
            "worker",
            "--storage",
            url,
            "--device",
            "cpu",
            "--poll",
            "0.2",
            *args,
        ]
        new = [
            subprocess.Popen(
                cmd, env=worker_env() | (env or {}), stdout=subprocess.DEVNULL, stderr=self.log
            )
            for _ in range(n)
        ]
        self.procs.extend(new)
        return new

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.log.close()


def wait_for(predicate: Callable[[], bool], timeout: float, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(every)


def study_counts(url: str, name: str) -> TrialCounts:
    row = get_study_row(get_engine(url), name)
    return counts_for(get_engine(url), row.optuna_study_id)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(settings: Settings) -> tuple[uvicorn.Server, threading.Thread, str]:
    """Run the app under uvicorn in a thread; return once it accepts connections."""
    port = _free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


def run_worker(db_url: str, study_name: str) -> threading.Thread:
    """A worker thread that runs ``study_name`` until the study ends."""
    options = WorkerOptions(
        db_url,
        device="cpu",
        study_name=study_name,
        exit_when_done=True,
        poll_s=0.2,
        heartbeat_interval_s=1,
        grace_period_s=5,
    )
    thread = threading.Thread(target=Worker(options).run, daemon=True)
    thread.start()
    return thread
