"""The search's record: an Optuna study (issue 30). Optuna owns storage, the trial queue and dead workers.

Every trial is an Optuna trial: its param is its rung, its user attributes the candidate's label
and the task a worker runs (``task``: passes, validation batches, the baseline to time beside)
and, once run, the modelpress record (``record``: points with metric, size, latency and the
baseline's latency timed beside them, the worker, the seconds). Its values are the cheapest scored
point's cost and metric, so optuna-dashboard draws the front. modelpress keeps what Optuna has no
equivalent for: the rungs, promotion with measured slack and the one-at-a-time finalists
(``rungs``, ``strategy``). Optuna's SuccessiveHalvingPruner stops a trial by its intermediate
values against others' at the same step; a rung here ranks whole trials by their cheapest point
within the accuracy budget (plus a slack the finalists then measure), which no Optuna pruner or
sampler does, and the space is a short list of discrete candidates, all tried, so no sampler
chooses them. The search drives the study by ask/tell of fixed candidates: ``enqueue`` adds
WAITING trials, ``claim`` takes one the way ``Study.ask`` pops its queue (a state change only one
process wins), ``finish`` tells it.

Storage: ``study.db`` (SQLite, no server) in the search folder by default, any Optuna RDB URL with
``--storage`` (PostgreSQL for several machines). A worker records a heartbeat while it runs a
trial; ``fail_stale_trials`` fails the trial of a worker that stopped beating (killed, machine
gone) and Optuna's ``RetryHeartbeatStaleTrialCallback`` puts a copy back in the queue.

The folder's ``study.db`` is untrusted like every file there: a link, FIFO or oversized file is
refused before SQLite opens it, a file that is no study is refused in one line, and every record
read back is checked (``trials.check_record``) before its figures or files are used.
"""

import contextlib
import hashlib
import json
import os
import socket
import threading
import warnings
from pathlib import Path

from compress.core.errors import InputError, OutputError, first_line
from compress.core.untrusted import MAX_RECORD_BYTES, escape, regular

STUDY_FILE = "study.db"
# SQLite's companions of study.db while a transaction runs: links there would be written through.
SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")
# A worker beats every HEARTBEAT s while it runs a trial; one silent for GRACE s is dead and its trial
# goes back to the queue (at most RETRIES times: a trial that kills every worker is recorded as failed).
# GRACE is generous: on a loaded 2-core machine a beat can wait seconds for the GIL; a worker that was
# only late keeps its work (``finish``).
HEARTBEAT, GRACE, RETRIES = 2, 30, 2
CLAIM_LOCK = ".search-claim.lock"  # beside study.db: one SQLite claim at a time (``Study._claiming``)
SQLITE_TIMEOUT = 120  # seconds a writer waits for another process's transaction on study.db


def _optuna():
    """Optuna, imported lazily (``import compress`` stays light) and quiet: modelpress logs the trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def machine() -> str:
    """Which machine and process a worker is: the report names them."""
    return f"{socket.gethostname()}/{os.getpid()}"


def default_url(out: Path) -> str:
    """The embedded storage of a search folder, checked like any file of it: regular, bounded, no link."""
    path = out / STUDY_FILE
    info = regular(path, f"{STUDY_FILE} of a search folder")
    if info is not None and info.st_size > MAX_RECORD_BYTES:
        raise InputError(
            f"{escape(path)}: {STUDY_FILE} is over the {MAX_RECORD_BYTES}-byte bound of what modelpress writes "
            "there; it was not written by modelpress: remove it or choose another --out folder"
        )
    for suffix in SQLITE_SIDE_FILES:
        regular(path.with_name(STUDY_FILE + suffix), f"{STUDY_FILE}{suffix} of a search folder")
    return f"sqlite:///{path.resolve()}"


def storage_url(storage: str | None, out: Path) -> str:
    """``--storage``/``--join``: an Optuna RDB URL, a search folder (its study.db), or None (this folder's)."""
    if storage is None:
        return default_url(out)
    if "://" in storage:
        return storage
    folder = Path(storage)
    return default_url(folder if folder.is_dir() or not folder.name.endswith(".db") else folder.parent)


def study_name(identity: dict) -> str:
    """One study per search inputs; the machine is left out so that workers of other machines join it."""
    shared = {key: value for key, value in identity.items() if key != "measured_on"}
    digest = hashlib.sha256(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"modelpress-{identity['run'].get('name', 'search')}-{digest}"


def _storage(url: str):
    optuna = _optuna()
    kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=kwargs,
        heartbeat_interval=HEARTBEAT,
        grace_period=GRACE,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=RETRIES),
    )


def shown_url(url: str) -> str:
    """A URL as error messages print it: without a password."""
    head, at, tail = url.rpartition("@")
    return f"{head.split(':')[0]}:…@{tail}" if at and ":" in head.split("//", 1)[-1] else url


class Study:
    """One search's Optuna study: records read back, trials queued, claimed and told."""

    def __init__(
        self, url: str, identity: dict, create: bool, directions: list[str] | None = None, metric: str = "metric"
    ):
        optuna = _optuna()
        self.url, self.name = url, study_name(identity)
        try:
            storage = _storage(url)
            if create:
                self.study = optuna.create_study(
                    storage=storage, study_name=self.name, directions=directions, load_if_exists=True
                )
            else:
                self.study = optuna.load_study(study_name=self.name, storage=storage)
        except KeyError:  # load_study: no study of that name
            raise OutputError(
                f"{shown_url(url)}: holds no search of these inputs (study {self.name}); start it with "
                "modelpress search RECIPE --storage URL, with the same recipe, model and data"
            ) from None
        except Exception as exc:  # noqa: BLE001  (SQLAlchemy, the driver or Optuna: the file or server is not one)
            raise InputError(
                f"{escape(shown_url(url))}: is not an Optuna study this search can use ({escape(first_line(exc))}); "
                f"remove {STUDY_FILE} (its trials run again), or check --storage"
            ) from None
        self.storage = self.study._storage  # the storage object handed in above: its public methods only
        shared = self.study.user_attrs.get("identity")
        if create and shared is None:
            self.study.set_user_attr("identity", identity)
            self.study.set_metric_names(["cost (1/speed-up or bytes)", metric])  # optuna-dashboard's axes
        elif not create and not _same_inputs(shared, identity):
            raise OutputError(f"{shown_url(url)}: study {self.name} searches other inputs; check the recipe and data")

    def set(self, key: str, value) -> None:
        self.study.set_user_attr(key, value)

    def get(self, key: str, default=None):
        return self.study.user_attrs.get(key, default)

    def trials(self, states=None) -> list:
        return self.study.get_trials(deepcopy=False, states=states)

    def stored(self, since: int = 0) -> list[tuple[int, object]]:
        """``(trial number, record)`` of every finished trial numbered ``since`` or later that holds one, as
        stored: untrusted until ``trials.check_record`` has read it."""
        return [
            (t.number, t.user_attrs["record"])
            for t in self.trials()
            if t.number >= since and t.state.is_finished() and "record" in t.user_attrs
        ]

    def records(self, include_crashed: bool = False, since: int = 0) -> dict[str, dict]:
        """Key -> the newest record of a finished trial numbered ``since`` or later (a crashed one only when
        asked: a rerun of the search retries it)."""
        found = {}
        for number, record in self.stored(since):
            if not isinstance(record, dict) or (record.get("crashed") and not include_crashed):
                continue
            if isinstance(record.get("key"), str):
                found[record["key"]] = {**record, "trial_number": number}
        return found

    def enqueue(self, task: dict, rung: int | None) -> None:
        """A WAITING trial of a fixed candidate: the queue workers take from. Its rung is its param (one
        distribution for every trial, as Optuna asks); the candidate's label is a user attribute."""
        optuna = _optuna()
        trial = optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params={"rung": -1 if rung is None else rung},
            distributions={"rung": optuna.distributions.IntDistribution(-1, 16)},
            user_attrs={"task": task, "candidate": task.get("label", "")},
        )
        self.study.add_trial(trial)

    @contextlib.contextmanager
    def _claiming(self):
        """SQLite has no row lock (Optuna's ``FOR UPDATE`` is a no-op there): two processes could both move
        one WAITING trial to RUNNING. Its workers share one folder, so a file lock there makes a claim
        one process's at a time; a server (PostgreSQL) locks the row itself."""
        if not self.url.startswith("sqlite:///"):
            yield
            return
        import fcntl

        from compress.core.untrusted import open_lock

        fd = open_lock(Path(self.url[len("sqlite:///") :]).parent / CLAIM_LOCK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def claim(self, accepts) -> tuple[int, int, dict] | None:
        """A waiting trial whose task ``accepts`` takes, now RUNNING for this process: (id, number, task)."""
        with self._claiming():
            return self._claim(accepts)

    def _claim(self, accepts) -> tuple[int, int, dict] | None:
        optuna = _optuna()
        for trial in self.trials(states=(optuna.trial.TrialState.WAITING,)):
            task = trial.user_attrs.get("task")
            if not isinstance(task, dict) or not accepts(task):
                continue
            if task.get("key") in self.records():  # a retry of a trial whose worker was late, not dead
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    self.storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
                continue
            try:
                if self.storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.RUNNING):
                    self.storage.set_trial_user_attr(trial._trial_id, "worker", machine())
                    return trial._trial_id, trial.number, task
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process took it and finished it
        return None

    @contextlib.contextmanager
    def heartbeat(self, trial_id: int):
        """Beat for ``trial_id`` while inside: a process that dies stops beating and its trial is retried."""
        stop = threading.Event()

        def beat():
            while True:
                with contextlib.suppress(Exception):  # a missed beat is retried; GRACE allows several
                    self.storage.record_heartbeat(trial_id)
                if stop.wait(HEARTBEAT):
                    return

        thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial_id}")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def finish(self, trial_id: int, number: int, record: dict | None, values: list[float] | None) -> None:
        """Tell the trial: its record, COMPLETE with values when a point scored, else FAIL."""
        optuna = _optuna()
        state = optuna.trial.TrialState.COMPLETE if values else optuna.trial.TrialState.FAIL
        try:
            if record is not None:
                self.storage.set_trial_user_attr(trial_id, "record", record)
            self.study.tell(number, values=values if values else None, state=state)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another process failed it as stale (a heartbeat late on a loaded machine) while this one
            # still worked: the work is kept in a trial of its own, and its retry is skipped (``claim``).
            if record is not None:
                self.add_record(record, values)

    def add_record(self, record: dict, values: list[float] | None) -> None:
        """A record computed without a worker (a rescore of kept artifacts): a finished trial at once."""
        optuna = _optuna()
        state = optuna.trial.TrialState.COMPLETE if values else optuna.trial.TrialState.FAIL
        self.study.add_trial(optuna.trial.create_trial(state=state, values=values, user_attrs={"record": record}))

    def fail_stale(self) -> None:
        """Fail the trials of workers that stopped beating; Optuna's callback queues them again."""
        _optuna().storages.fail_stale_trials(self.study)

    def pending(self, key: str) -> int | None:
        """The number of a trial of ``key`` that waits or runs (queued by this search, by an interrupted run
        of it, or a retry of a dead worker's), else None."""
        optuna = _optuna()
        states = (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)
        numbers = [t.number for t in self.trials(states=states) if (t.user_attrs.get("task") or {}).get("key") == key]
        return min(numbers) if numbers else None


def _same_inputs(shared: object, identity: dict) -> bool:
    """A joining worker's inputs against the study's: the machine may differ (its timings are its own)."""
    if not isinstance(shared, dict):
        return False
    drop = lambda d: {k: v for k, v in d.items() if k != "measured_on"}  # noqa: E731
    return json.loads(json.dumps(drop(shared), default=str)) == json.loads(json.dumps(drop(identity), default=str))
