"""The worker: a long-running process that claims slots and runs one trial per slot.

It needs only the database URL: the spec travels with the study. Many workers on many machines
against one PostgreSQL is Optuna's own distributed mode; exact budgets come from atomic slot claims
(search/studies.py). Faults are data: a trial that diverges, runs out of memory or raises is told to
Optuna with its reason and the worker goes on; a database blip is retried with back-off.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import platform
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.context import SpawnProcess
from typing import Any, Literal, TypeVar

import optuna
import sqlalchemy as sa
import torch
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from models.config import setting_by_spec_name
from models.data import load_dataset
from models.device import resolve_device
from models.errors import first_line
from models.fused import fusion_key
from models.fused_sizing import best_group_size
from search.db import WorkerRow
from search.objective import TrialOutcome, run_trials
from search.optuna_map import distributions, make_pruner, make_sampler
from search.retry import RetryFromSpec
from search.spec import Metric, StudySpec
from search.states import StudyStatus, TrialStatus, WorkerStatus
from search.storage import (
    DEFAULT_GRACE_PERIOD_S,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    ask_with_fixed_params,
    get_engine,
    get_storage,
    pop_waiting_trial,
    set_trial_user_attrs,
    storage_of,
    study_id_of,
    trial_id_of,
    worker_storage,
)
from search.studies import (
    Claim,
    active_study_ids,
    adopt_orphaned_trials,
    claim_more_slots,
    claim_slot,
    fail_study,
    finish_slot,
    heartbeat_slot,
    set_slot_trial,
    study_status,
)

log = logging.getLogger("bnsweep.worker")
# Largest fused group ``fuse: auto`` tries (the measurement picks the fastest size up to it).
AUTO_MAX_FUSE_CPU = 16
AUTO_MAX_FUSE_CUDA = 64
# A model-based sampler learns from finished trials; a group's members are all asked before any
# of them finishes. ``fuse: auto`` keeps at least this many rounds of feedback in such a study:
# groups of at most n_trials / AUTO_MIN_ROUNDS (a 40-trial TPE study: 4; 160 trials: 16).
MODEL_BASED_SAMPLERS = frozenset({"tpe", "gp"})
AUTO_MIN_ROUNDS = 10
TIMING_METRICS = frozenset({Metric.TRAIN_SECONDS, Metric.SAMPLES_PER_SECOND})
STUDY_CACHES = 2  # studies whose trials a worker keeps cached (see Worker._study_storage)
T = TypeVar("T")
# Errors that mean "the database is unreachable for now": back off and try again.
TRANSIENT_ERRORS = (SQLAlchemyError, optuna.exceptions.StorageInternalError, OSError)


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs."""

    storage_url: str
    device: str = "auto"
    study_name: str | None = None  # only this study
    idle_exit_s: float | None = None  # exit after this long with nothing to claim
    exit_when_done: bool = False  # with study_name: exit once that study is no longer active
    poll_s: float = 2.0  # wait between claim attempts when there is nothing to do
    heartbeat_interval_s: int = DEFAULT_HEARTBEAT_INTERVAL_S
    grace_period_s: int = DEFAULT_GRACE_PERIOD_S
    max_backoff_s: float = 30.0
    cpu_threads: int | None = None  # torch threads on a CPU device (None: torch's default)
    fuse: int | Literal["auto"] | None = None  # trials per fused group; None: the spec's own


class WorkerStopped(BaseException):
    """Raised in the training thread by SIGTERM/SIGINT, so the trial is told FAIL and retried.

    ``optimize`` and a handler calling ``sys.exit()`` would leave the trial RUNNING. A
    BaseException, like KeyboardInterrupt: raised inside a database call, SQLAlchemy would wrap an
    ordinary Exception in a StatementError, which the blip handling would then swallow.
    """


# --- heartbeats ---------------------------------------------------------------------------------


class Heartbeat(threading.Thread):
    """Records heartbeats for the worker row, its slot and its Optuna trial.

    Our own thread rather than Optuna's: Optuna's dies on the first database error while training
    goes on, and the trial is then failed as stale under a live worker. This one logs and retries.
    """

    def __init__(self, worker: Worker) -> None:
        super().__init__(name="bnsweep-heartbeat", daemon=True)
        self.worker = worker
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.worker.options.heartbeat_interval_s):
            self.beat()

    def beat(self) -> None:
        w = self.worker
        try:
            w.update_worker_row(heartbeat_at=sa.func.now())
            # Trials before their slots: a dead worker's trial must go stale no later than its
            # slot, or the claimer that frees the slot may run fail_stale_trials a moment too
            # early, ask a new trial, and leave the dead one RUNNING in a study that then ends.
            for trial_id in list(w.current_trial_ids):
                w.storage.record_heartbeat(trial_id)
            for slot_id in list(w.current_slot_ids):
                heartbeat_slot(w.engine, slot_id)
        except TRANSIENT_ERRORS as exc:
            log.warning("heartbeat failed (will retry): %s", first_line(exc))


# --- the worker ---------------------------------------------------------------------------------


@dataclass
class _Member:
    """A claimed slot, its trial once asked, and the state told for it."""

    slot_id: int
    trial: optuna.Trial | None = None
    state: str | None = None


class Worker:
    """One device: claims a trial (and, where the study fuses, more trials sharing its shaping
    settings), trains them as one model, tells Optuna about each, repeats."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.device = str(resolve_device(options.device))
        self.worker_id = f"{platform.node()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.engine = get_engine(options.storage_url)
        self.storage = get_storage(
            options.storage_url,
            heartbeat_interval_s=options.heartbeat_interval_s,
            grace_period_s=options.grace_period_s,
        )
        self.stop_requested: str | bool = False  # the reason, once a stop is requested
        self.in_training = False
        # Slots and trials being heartbeated: several while a fused group trains.
        self.current_slot_ids: set[int] = set()
        self.current_trial_ids: set[int] = set()
        self.trials_run = 0
        # Optuna's cache of each study's finished trials, kept across this worker's trials of it:
        # a new cache per trial re-read the whole study (see search.storage.worker_storage).
        self._study_storages: dict[int, optuna.storages.BaseStorage] = {}

    # --- lifecycle

    def run(self) -> int:
        """Work until stopped, idle for ``idle_exit_s``, or (``exit_when_done``) the study ends.

        Returns the number of trials this worker ran.
        """
        if self.device == "cpu" and self.options.cpu_threads:
            torch.set_num_threads(self.options.cpu_threads)
        previous = self._install_signal_handlers()
        self._retry(self._register, "register worker")
        heartbeat = Heartbeat(self)
        heartbeat.start()
        try:
            self._work()
        except WorkerStopped as exc:  # stopped while the database was away: gave up waiting
            log.warning("%s; leaving the rest to the reaper", exc)
        finally:
            heartbeat.stop_event.set()
            heartbeat.join(timeout=5)
            with contextlib.suppress(*TRANSIENT_ERRORS):
                self.update_worker_row(
                    status=WorkerStatus.STOPPED.value,
                    current_study_id=None,
                    current_trial_number=None,
                )
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.trials_run

    def _work(self) -> None:
        """Claim and run trials until stopped, idle for long enough, or the study ended."""
        idle_since = time.monotonic()
        backoff = self.options.poll_s
        while not self.stop_requested:
            try:
                claim = self._claim()
            except TRANSIENT_ERRORS as exc:
                log.warning("database unavailable (retry in %.0fs): %s", backoff, first_line(exc))
                self._sleep(backoff)
                backoff = min(backoff * 2, self.options.max_backoff_s)
                continue
            backoff = self.options.poll_s
            if claim is not None:
                self._run_claim(claim)
                idle_since = time.monotonic()
                continue
            if self._should_exit(idle_since):
                break
            self._sleep(self.options.poll_s)

    def _install_signal_handlers(self) -> dict[int, Any]:
        """Make SIGTERM/SIGINT stop the worker cleanly; return the handlers they replace."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handle(signum: int, _: Any) -> None:
            self.stop_requested = f"worker stopped by {signal.Signals(signum).name}"
            if self.in_training:
                self.in_training = False  # a second signal must not interrupt the clean-up
                raise WorkerStopped(self.stop_requested)

        return {signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)}

    def _should_exit(self, idle_since: float) -> bool:
        o = self.options
        if o.exit_when_done and o.study_name and not self._still_active(o.study_name):
            return True
        return o.idle_exit_s is not None and time.monotonic() - idle_since >= o.idle_exit_s

    def _still_active(self, study_name: str) -> bool:
        return bool(active_study_ids(self.engine, study_name, claimable_only=False))

    def _sleep(self, seconds: float, even_when_stopping: bool = False) -> None:
        """Sleep in small steps; return early once a stop is requested, unless told not to."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and (even_when_stopping or not self.stop_requested):
            time.sleep(min(0.1, seconds))

    # --- database bookkeeping

    def _register(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(WorkerRow).values(
                    id=self.worker_id,
                    host=platform.node(),
                    pid=os.getpid(),
                    device=self.device,
                    status=WorkerStatus.IDLE.value,
                )
            )

    def update_worker_row(self, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(WorkerRow).where(WorkerRow.id == self.worker_id).values(**values)
            )

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        """Run an idempotent database step until it succeeds (a blip or a restart is normal).

        Once a stop is requested, waiting is bounded by the grace period: then WorkerStopped, and
        what is left (a RUNNING trial, an active slot) goes stale and is retried elsewhere.
        """
        delay = min(1.0, self.options.poll_s)
        give_up_at: float | None = None
        while True:
            try:
                return fn()
            except TRANSIENT_ERRORS as exc:
                if self.stop_requested:
                    give_up_at = give_up_at or time.monotonic() + self.options.grace_period_s
                    if time.monotonic() >= give_up_at:
                        raise WorkerStopped(f"{self.stop_requested} during an outage") from exc
                log.warning("%s failed (retry in %.1fs): %s", what, delay, first_line(exc))
                self._sleep(delay, even_when_stopping=True)
                delay = min(delay * 2, self.options.max_backoff_s)

    def _claim(self) -> Claim | None:
        ids = active_study_ids(self.engine, self.options.study_name)
        return claim_slot(self.engine, self.worker_id, ids, self.options.grace_period_s)

    # --- one trial

    def _run_claim(self, claim: Claim) -> None:
        """Run the claimed slot's trial — fused with more members when the study and this device
        gain from it — and close every slot afterwards, whatever happens."""
        spec = claim.spec
        members = [_Member(claim.slot_id)]
        self.current_slot_ids = {claim.slot_id}
        try:
            try:
                study = self._retry(lambda: self._load_study(claim), f"load {claim.study_name!r}")
                first = self._start(claim, members[0], lambda: self._ask(study, spec))
                assert first is not None  # ask() always gives a trial
                extra = self._group_size(spec, first) - 1
                slots = self._retry(
                    lambda: claim_more_slots(
                        self.engine, self.worker_id, claim, extra, self.options.grace_period_s
                    ),
                    "claim group",
                )
                for slot_id in slots:
                    members.append(_Member(slot_id))
                    self.current_slot_ids.add(slot_id)
                shaping = _shaping_params(spec, first)
                dists = distributions(spec)

                def ask_member() -> optuna.Trial | None:
                    return self._ask_member(study, shaping, dists)

                for member in members[1:]:
                    if self._start(claim, member, ask_member) is None:
                        break
                # Slots no member came for go back at once: the group trains smaller.
                for member in [m for m in members if m.trial is None]:
                    self._close_slot(member)
                    self.current_slot_ids.discard(member.slot_id)
                members = [m for m in members if m.trial is not None]
            except Exception as exc:  # e.g. a sampler option that only fails when sampling
                # Every worker would fail the same way: end the study, keep the worker.
                log.exception("study %r cannot start a trial", claim.study_name)
                reason = f"cannot start a trial: {type(exc).__name__}: {first_line(exc)}"
                self._retry(lambda: fail_study(self.engine, claim.study_id, reason), "fail study")
                return
            trials = [m.trial for m in members if m.trial is not None]
            self._retry(
                lambda: self.update_worker_row(
                    status=WorkerStatus.BUSY.value,
                    current_study_id=claim.study_id,
                    current_trial_number=trials[0].number,
                ),
                "worker row",
            )
            outcomes, retry = self._train(claim, trials)
            for member, outcome in zip(members, outcomes, strict=True):
                member.state = self._finish(study, member, outcome, retry)
        finally:
            self.current_trial_ids = set()
            for member in members:
                self._close_slot(member)
            self.current_slot_ids = set()
            self._retry(
                lambda: self.update_worker_row(
                    status=WorkerStatus.IDLE.value,
                    current_study_id=None,
                    current_trial_number=None,
                ),
                "worker row",
            )

    def _close_slot(self, member: _Member) -> None:
        self._retry(lambda: finish_slot(self.engine, member.slot_id, member.state), "close slot")

    def _start(
        self, claim: Claim, member: _Member, ask: Callable[[], optuna.Trial | None]
    ) -> optuna.Trial | None:
        """Ask a member's trial, heartbeat it and link it to its slot (None: no trial to run)."""
        trial = self._retry(ask, "ask")
        if trial is None:
            return None
        member.trial = trial
        # Retried on its own: retrying the ask would leave the first trial orphaned.
        self._retry(lambda: self.storage.record_heartbeat(trial_id_of(trial)), "heartbeat")
        self.current_trial_ids.add(trial_id_of(trial))
        self._retry(lambda: set_slot_trial(self.engine, member.slot_id, trial.number), "slot")
        return trial

    def _finish(
        self, study: optuna.Study, member: _Member, outcome: TrialOutcome, retry: bool
    ) -> str:
        """Tell a member's outcome (queueing its retry if due); return the state told."""
        trial = member.trial
        assert trial is not None
        told = self._retry(lambda: self._tell(study, trial, outcome), "tell")
        if retry and told:
            frozen = self._retry(lambda: storage_of(study).get_trial(trial_id_of(trial)), "read")
            self._retry(lambda: RetryFromSpec()(study, frozen), "queue retry")
        self.trials_run += 1
        # Not told: another worker failed the trial as stale (and queued its retry).
        return outcome.state.name if told else TrialState.FAIL.name

    def _ask_member(
        self, study: optuna.Study, shaping: dict[str, Any], dists: dict[str, BaseDistribution]
    ) -> optuna.Trial | None:
        """A further member of a fused group: a waiting trial (enqueued, a retry) that fits the
        group's shape first; else, if no trial at all is waiting, a new trial with that shape
        whose other values the sampler chooses; else None.

        Waiting trials of other shapes come before a sampler's new trial: they were asked for
        (a confirmation study's budget is exactly its planned points), and a new trial would take
        their budget. The group trains smaller instead.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            waiting = pop_waiting_trial(study, shaping, dists)
            if waiting is not None:
                return waiting
            if storage_of(study).get_all_trials(
                study_id_of(study), deepcopy=False, states=(TrialState.WAITING,)
            ):
                return None
            return ask_with_fixed_params(study, shaping, dists)

    def _group_size(self, spec: StudySpec, trial: optuna.Trial) -> int:
        """How many trials to train as one model with ``trial``: 1 unless the spec (or this
        worker's ``fuse``) allows more and the model can fuse; ``auto`` measures, on this device,
        which group size trains fastest for this shape (cached per shape in this process), up to
        a bound that leaves a model-based sampler ``AUTO_MIN_ROUNDS`` rounds of feedback."""
        fuse = self.options.fuse if self.options.fuse is not None else spec.execution.fuse
        if fuse == 1 or any(t.metric in TIMING_METRICS for t in spec.objective.targets):
            return 1  # a fused member's time is its group's: not a time of its own to optimise
        config = spec.train_config(trial.params, self.device)
        if fusion_key(config) is None:
            return 1
        if fuse != "auto":
            return int(fuse)
        max_k = AUTO_MAX_FUSE_CUDA if self.device.startswith("cuda") else AUTO_MAX_FUSE_CPU
        if spec.sampler.name in MODEL_BASED_SAMPLERS:
            max_k = max(1, min(max_k, spec.budget.n_trials // AUTO_MIN_ROUNDS))
        if max_k == 1:
            return 1
        data = load_dataset(config.dataset, config.dataset_params, device=self.device)
        return best_group_size(config, data, max_k=max_k)

    def _load_study(self, claim: Claim) -> optuna.Study:
        study = optuna.load_study(
            study_name=claim.study_name,
            storage=self._study_storage(claim.study_id),
            sampler=make_sampler(claim.spec, slot_id=claim.slot_id),
            pruner=make_pruner(claim.spec),
        )
        # Optuna only fails stale trials inside optimize(); with ask/tell we do it here.
        adopt_orphaned_trials(self.engine, claim.study_id, study_id_of(study), claim.slot_id)
        optuna.storages.fail_stale_trials(study)
        return study

    def _study_storage(self, study_id: int) -> optuna.storages.BaseStorage:
        """This worker's cached storage of a study; the least recently used of more than
        ``STUDY_CACHES`` is dropped (a cache holds the study's finished trials in memory)."""
        storage = self._study_storages.pop(study_id, None) or worker_storage(self.storage)
        self._study_storages[study_id] = storage  # most recently used last
        while len(self._study_storages) > STUDY_CACHES:
            del self._study_storages[next(iter(self._study_storages))]
        return storage

    def _ask(self, study: optuna.Study, spec: StudySpec) -> optuna.Trial:
        with warnings.catch_warnings():
            # We run heartbeats ourselves (see Heartbeat), so ask/tell is intended here.
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            return study.ask(fixed_distributions=distributions(spec))

    def _train(self, claim: Claim, trials: list[optuna.Trial]) -> tuple[list[TrialOutcome], bool]:
        """Train; returns each trial's outcome and whether they should be retried (a fault of the
        worker or the database, not of the configurations)."""

        def cancelled() -> bool:
            if self.stop_requested:  # a signal that landed inside a database call, say
                raise WorkerStopped(str(self.stop_requested))
            try:
                status = study_status(self.engine, claim.study_id)
                return status in (None, StudyStatus.CANCELLED, StudyStatus.FAILED)
            except TRANSIENT_ERRORS:
                return False  # keep training through a database blip

        def everyone(status: TrialStatus, reason: str) -> list[TrialOutcome]:
            attrs = {"status": status, "reason": reason[:2000], "worker_id": self.worker_id}
            return [TrialOutcome(TrialState.FAIL, None, dict(attrs)) for _ in trials]

        numbers = ", ".join(str(t.number) for t in trials)
        self.in_training = True
        try:
            if self.stop_requested:
                raise WorkerStopped(str(self.stop_requested))
            outcomes = run_trials(claim.spec, trials, self.device, self.worker_id, cancelled)
            return outcomes, False
        except WorkerStopped as exc:
            return everyone(TrialStatus.INTERRUPTED, str(exc)), True
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            # The database went away mid-trial (a report, a prune check): the run cannot go on
            # without its intermediate values, but the configuration is not at fault: retry it.
            log.warning("trial(s) %s lost the database: %s", numbers, first_line(exc))
            reason = f"database unavailable during training: {first_line(exc)}"
            return everyone(TrialStatus.INTERRUPTED, reason), True
        except Exception as exc:  # a bug or bad data must not kill the worker: record it
            log.exception("trial(s) %s raised", numbers)
            return everyone(TrialStatus.ERROR, f"{type(exc).__name__}: {exc}"), False
        finally:
            self.in_training = False

    def _tell(self, study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome) -> bool:
        """Record the outcome; False if it could not be (the trial is then left to go stale and
        be retried, within the spec's retries)."""
        try:
            set_trial_user_attrs(study, trial_id_of(trial), outcome.user_attrs)
            # skip_if_finished: it may have been failed as stale between the attrs and the tell.
            study.tell(trial, outcome.values, state=outcome.state, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Failed as stale by another worker during a long outage or a stall of ours: its
            # state and retry are settled; raising here would end this worker process.
            log.warning("trial %s was failed as stale meanwhile; not told", trial.number)
            return False
        except TRANSIENT_ERRORS:
            raise  # _retry waits for the database
        except Exception:  # e.g. a sampler's after_trial hook: must not end the worker
            log.exception("telling trial %s failed", trial.number)
            return False
        attrs = outcome.user_attrs
        value = f" value {outcome.values[0]:.4g}" if outcome.values else ""
        log.info(
            "study %r trial %d %s%s (%s) in %.1fs: %s",
            study.study_name,
            trial.number,
            outcome.state.name,
            value,
            attrs.get("status"),
            attrs.get("train_seconds") or 0.0,
            trial.params,
        )
        return True


# --- several slots per machine ------------------------------------------------------------------


def run_worker_process(options: WorkerOptions) -> None:
    """Entry point of a spawned worker process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    Worker(options).run()


def spawn_workers(options: WorkerOptions, devices: list[str]) -> list[SpawnProcess]:
    """Start one worker process per entry of ``devices`` (spawned: no torch or pool state
    inherited). Slots on the CPU share its cores: each gets an equal share of torch threads, or
    N processes with all-core thread pools would oversubscribe the machine N times."""
    cpu_slots = sum(not d.startswith("cuda") for d in devices)
    threads = options.cpu_threads or max(1, (os.cpu_count() or 1) // max(1, cpu_slots))
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(
            target=run_worker_process,
            args=(replace(options, device=d, cpu_threads=threads),),
            name=f"bnsweep-worker-{i}",
        )
        for i, d in enumerate(devices)
    ]
    for child in children:
        child.start()
    return children


def slot_devices(
    device: str, gpus: str | None, trials_per_device: int, gpu_count: int | None = None
) -> list[str]:
    """The device of each slot: one per GPU listed in ``gpus`` ("all" or "0,1"), K per device.

    Raises:
        ValueError: no GPU, or an index that is not a GPU of this machine.
    """
    if gpus is None:
        return [device] * trials_per_device
    if gpu_count is None:
        gpu_count = torch.cuda.device_count()
    if gpus == "all":
        indices = list(range(gpu_count))
    else:
        try:
            indices = [int(i) for i in gpus.split(",") if i.strip()]
        except ValueError:
            raise ValueError(f"expected 'all' or GPU indices like 0,1; got {gpus!r}") from None
    if not indices:
        raise ValueError("no GPU found")
    missing = [i for i in indices if not 0 <= i < gpu_count]
    if missing:
        raise ValueError(f"no GPU {missing[0]} on this machine ({gpu_count} found)")
    return [f"cuda:{i}" for i in indices for _ in range(trials_per_device)]


def run_workers(options: WorkerOptions, devices: list[str]) -> None:
    """Run one worker per entry of ``devices``: in this process if one, else one process each.

    SIGTERM/SIGINT to this process is forwarded to the children, which stop cleanly.
    """
    if len(devices) == 1:
        Worker(replace(options, device=devices[0])).run()
        return
    children = spawn_workers(options, devices)

    def forward(signum: int, _: Any) -> None:
        for child in children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()


def _shaping_params(spec: StudySpec, trial: optuna.Trial) -> dict[str, Any]:
    """The first member's sampled values of the settings the members of a fused group share
    (batch size, placement, ...): the others get them; the sampler chooses the rest."""
    shared = {
        name
        for name in spec.search_space.searched()
        if (info := setting_by_spec_name(name)) is not None and not info.setting.per_member
    }
    return {name: value for name, value in trial.params.items() if name in shared}
