"""Workers (issue 30): processes that take trials from the study's queue, run them, and tell the study.

The search's own process is a worker too (``Queue.run`` works the queue while it waits), so
``--workers 1`` is the plain search; ``--workers N`` starts N-1 more processes on this machine
(``start_local``), and ``modelpress search RECIPE --join STORAGE`` adds one from anywhere
(``driver``). A worker in the search's folder takes any task; one in another folder (another
machine) only the cheap rungs' tasks, timed beside a baseline it exports itself: the finalists,
their refits and the baseline run where the final timing and the chosen recipe need their files.

Timings are never taken while another worker of this machine trains or scores: ``Guard`` is a
readers-writer lock on files of the search folder (work holds it shared, timing exclusive, and
a waiting timer closes the gate to new work so it cannot be starved). Every speed-up stays a
ratio to the baseline timed beside it under that lock.
"""

import contextlib
import fcntl
import math
import os
import socket
import sys
import time
from pathlib import Path

from compress.core import log
from compress.core.errors import ModelpressError, OutputError, first_line
from compress.core.untrusted import open_lock

GATE, TIMING = ".search-gate.lock", ".search-timing.lock"
POLL = 0.2  # seconds between looks at the queue: a trial takes seconds to hours, a look a few queries


class Guard:
    """Work shares the machine's cores, timing must have them alone: a readers-writer lock over two files."""

    def __init__(self, folder: Path):
        self.gate, self.lock = open_lock(folder / GATE), open_lock(folder / TIMING)

    @contextlib.contextmanager
    def working(self):
        fcntl.flock(self.gate, fcntl.LOCK_EX)  # closed while a timer waits: no new work starts
        fcntl.flock(self.lock, fcntl.LOCK_SH)
        fcntl.flock(self.gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(self.lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def timing(self):
        fcntl.flock(self.gate, fcntl.LOCK_EX)
        fcntl.flock(self.lock, fcntl.LOCK_EX)  # waits for the work under way to end
        try:
            yield
        finally:
            fcntl.flock(self.lock, fcntl.LOCK_UN)
            fcntl.flock(self.gate, fcntl.LOCK_UN)


class NoGuard:
    """One process alone (tests' fake runners): nothing to wait for."""

    working = timing = staticmethod(contextlib.nullcontext)


def folder_id(out: Path) -> str:
    """Which machine and folder a trial's files lie in."""
    return f"{socket.gethostname()}:{Path(out).resolve()}"


def failed(passes: list[dict], key: str, error: str, seconds: float) -> dict:
    return {
        "key": key,
        "passes": passes,
        "validation_batches": 0,
        "validation_complete": False,
        "points": [{"name": "compressed", "scheme": "none", "status": "failed", "error": error}],
        "stages_computed": 0,
        "stages_reused": 0,
        "seconds": round(seconds, 2),  # the time estimate counts what a failure cost
    }


def execute(runner, task: dict, remote: bool = False) -> dict:
    """Run a task. A candidate the passes refuse is recorded as failed; one a library crashes on fails too,
    marked crashed so that a rerun tries it again. A full disk stops the worker: the candidate is not at fault."""
    passes, start = task["passes"], time.perf_counter()
    try:
        record = runner.run(passes, task["validation_batches"], task["scheme_of"])
    except OutputError:
        raise
    except ModelpressError as exc:
        if not passes:
            raise
        log.warn(f"search: trial failed: {first_line(exc)}")
        record = failed(passes, task["key"], first_line(exc), time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001  (torch, Torch-Pruning or ONNX Runtime failing on this candidate)
        if not passes:
            raise
        log.traceback_to_log("search: trial crashed")
        log.warn(f"search: trial crashed ({first_line(exc)}); traceback in run.log; a rerun tries it again")
        record = {**failed(passes, task["key"], first_line(exc), time.perf_counter() - start), "crashed": True}
    from compress.search.study import machine

    if remote:  # the files stay in this worker's folder: the search reads the figures, never a path
        record["points"] = [{**p, "remote_path": p.pop("path")} if "path" in p else p for p in record["points"]]
        record["remote"] = True
    return {**record, "key": task["key"], "worker": machine()}


def values(record: dict, objective: str) -> list[float] | None:
    """The study's values of a trial: its cheapest scored point's cost and metric (None: nothing scored)."""
    points = [p for p in record["points"] if p["status"] == "passed" and "speedup" in p]
    if not points:
        return None
    cost = {"latency": lambda p: 1.0 / p["speedup"], "size": lambda p: float(p["size_bytes"])}[objective]
    best = min(points, key=cost)
    return [cost(best), float(best["validation_metric"])]


def run_claimed(study, runner, claimed, own_baseline: str | None = None) -> None:
    """Run a claimed trial with a heartbeat and tell the study; an interrupted one is told failed (a rerun
    of the search queues it again)."""
    trial_id, number, task = claimed
    previous, runner.baseline_path = runner.baseline_path, own_baseline or task["baseline"]
    try:
        with study.heartbeat(trial_id):
            record = execute(runner, task, remote=own_baseline is not None)
    except BaseException:
        with contextlib.suppress(Exception):
            study.finish(trial_id, number, None, None)
        raise
    finally:
        runner.baseline_path = previous  # the search's own, which the task's only repeats
    study.finish(trial_id, number, record, None if record.get("crashed") else values(record, task["objective"]))


class Queue:
    """The coordinator's side: tasks queued in the study, worked on here too until each has a record."""

    def __init__(self, study, runner, objective: str, workers: int = 1):
        self.study, self.runner, self.objective, self.workers = study, runner, objective, workers
        self.here = folder_id(runner.out)

    def resumed(self) -> dict[str, dict]:
        """The records finished before (a rerun of the search), each checked as untrusted input."""
        from compress.search.trials import check_record

        for number, record in self.study.stored():
            check_record(record, self.runner.out, number)
        return self.study.records()

    def run(self, tasks: list[dict]) -> dict[str, dict]:
        """Queue ``tasks`` and work the queue until each has a fresh record: key -> record."""
        since = max((t.number for t in self.study.trials()), default=-1) + 1
        for task in tasks:
            queued = self.study.pending(task["key"])  # by an interrupted run, or a retry of a dead worker's
            if queued is None:
                self.study.enqueue({**task, "objective": self.objective}, task["rung"])
            else:
                since = min(since, queued)  # its record, when it comes, is this run's
        keys, told = [task["key"] for task in tasks], set()
        accepts = lambda task: True  # noqa: E731  (this folder holds every file a task needs)
        while True:
            records = self.study.records(include_crashed=True, since=since)
            missing = [key for key in keys if key not in records]
            for task in tasks if len(tasks) > 1 else []:  # the rung's progress as trials end, in any order
                if task["key"] in records and task["key"] not in told:
                    told.add(task["key"])
                    done = records[task["key"]]
                    log.info(
                        f"search: {len(told)}/{len(tasks)} done: {task.get('label', '')} by "
                        f"{done.get('worker', '?')}, {done.get('seconds', 0):.0f} s"
                    )
            if not missing:
                return {key: records[key] for key in keys}
            claimed = self.study.claim(accepts)
            if claimed is not None:
                run_claimed(self.study, self.runner, claimed)
                continue
            self.study.fail_stale()
            for key in missing:
                if self.study.pending(key) is None and key not in self.study.records(include_crashed=True, since=since):
                    # no retry left: Optuna's callback stops after RETRIES; the trial killed its workers
                    task = next(t for t in tasks if t["key"] == key)
                    error = "its worker died each time it ran it (killed, or out of memory?)"
                    self.study.add_record({**failed(task["passes"], key, error, 0.0), "crashed": True}, None)
            time.sleep(POLL)


def admitted(seconds_left: float, estimate: float, count: int, workers: int) -> int:
    """How many of ``count`` queued trials fit in ``seconds_left``, ``workers`` running them at once."""
    if estimate <= 0:
        return count
    rounds = math.floor(seconds_left / estimate)
    return max(0, min(count, rounds * workers))


def work(study, runner, accepts, own_baseline: str | None = None) -> int:
    """A joining worker: take tasks until the search ends; how many it ran."""
    from compress.search.study import machine

    study.set(f"ready {machine()}", True)  # a local worker's search queues nothing before this
    ran = 0
    while study.get("status") == "running":  # "ended": the search chose, or stopped
        claimed = study.claim(accepts)
        if claimed is None:
            study.fail_stale()
            time.sleep(POLL)
            continue
        run_claimed(study, runner, claimed, own_baseline)
        ran += 1
    return ran


def start_local(count: int, payload: tuple, url: str, out: Path, threads: int) -> list:
    """``count`` worker processes on this machine, joining the study at ``url`` in the same folder."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # a fork of a process holding torch's threads may hang
    processes = [
        context.Process(target=_worker_main, args=(payload, url, str(out), threads), name=f"modelpress-worker-{i}")
        for i in range(count)
    ]
    for process in processes:
        process.start()
    return processes


def wait_ready(study, processes: list) -> None:
    """Until each local worker has joined the study (or died): the first queued trials then go to all of them,
    rather than to this process while the others still import torch."""
    host = socket.gethostname()
    while True:
        ready = {key for key in study.study.user_attrs if key.startswith("ready ")}
        alive = [p for p in processes if p.is_alive()]
        if all(f"ready {host}/{p.pid}" in ready for p in alive):
            return
        time.sleep(POLL)


def stop_local(processes: list) -> None:
    """The search ended (its status says so): workers leave their loop; one still busy is ended."""
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.terminate()
            process.join()


def _worker_main(payload: tuple, url: str, out: str, threads: int) -> None:
    import torch

    from compress.search import driver

    torch.set_num_threads(threads)
    try:
        with log.quieted():
            if payload[0] == "recipe":
                _, source, trust, options = payload
                driver.search_recipe(source, trust_checkpoint=trust, out_dir=out, join=url, **options)
            else:
                _, model, recipe, data, options = payload
                driver.run_search(model, recipe, data, out_dir=out, join=url, **options)
    except ModelpressError as exc:
        print(f"modelpress: worker {os.getpid()}: error: {first_line(exc)}", file=sys.stderr)
        sys.exit(exc.exit_code)
