"""Run a study's commands as separate processes, a few at a time.

The detection study (:mod:`.accuracy_study`) and the classification comparison
(:mod:`.pretrain_compare`) both train one process per variant and seed: one process each
keeps runs independent (a crash loses one run) and lets every run pin its own thread count.
"""
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

__all__ = ["Job", "run_jobs"]


def _always() -> bool:
    return True


def _nothing() -> str:
    return ""


@dataclass
class Job:
    """One command; its output (stdout and stderr) is appended to ``log_file``."""

    label: str
    command: Sequence[str]
    log_file: str
    # Whether the job produced its result; checked after the process exits with status 0.
    succeeded: Callable[[], bool] = _always
    # Whether the job may start (e.g. the run it starts from has finished).
    ready: Callable[[], bool] = _always
    # A few words on the result, logged when the job finishes.
    summary: Callable[[], str] = _nothing


def run_jobs(jobs: Sequence[Job], *, parallel: int = 2, env: Optional[Dict[str, str]] = None,
             cwd: Optional[str] = None, log=print, name: str = "runs",
             poll_s: float = 2.0) -> None:
    """Run every job, at most ``parallel`` at once, each as soon as it is ready.

    Jobs start in the given order among those ready. A job still waiting when nothing runs
    and none of the waiting ones is ready never starts (what it waited for failed).

    Raises:
        ValueError: ``parallel`` below 1.
        RuntimeError: naming each job that failed or never started, with its log file.
    """
    if parallel < 1:
        raise ValueError(f"parallel must be at least 1, got {parallel}")
    todo, running, failed = list(jobs), [], []
    done, total = 0, len(jobs)
    while todo or running:
        while len(running) < parallel and any(j.ready() for j in todo):
            job = next(j for j in todo if j.ready())
            todo.remove(job)
            os.makedirs(os.path.dirname(os.path.abspath(job.log_file)), exist_ok=True)
            out = open(job.log_file, "a")
            proc = subprocess.Popen(list(job.command), stdout=out, stderr=subprocess.STDOUT,
                                    env=env, cwd=cwd)
            running.append((job, proc, out, time.time()))
            log(f"{name}: started {job.label} (output in {job.log_file})")
        if running:
            time.sleep(poll_s)
        for item in list(running):
            job, proc, out, start = item
            if proc.poll() is None:
                continue
            running.remove(item)
            out.close()
            if proc.returncode != 0 or not job.succeeded():
                failed.append(f"{job.label} (exit {proc.returncode}; see {job.log_file})")
                log(f"{name}: FAILED {job.label} (exit {proc.returncode}); see {job.log_file}")
                continue
            done += 1
            summary = job.summary()
            log(f"{name}: [{done}/{total}] {job.label}{': ' + summary if summary else ''} "
                f"in {(time.time() - start) / 60:.1f} min")
        if todo and not running and not any(j.ready() for j in todo):
            failed += [f"{j.label} (not started: what it starts from is missing)" for j in todo]
            todo = []
    if failed:
        raise RuntimeError(f"{name} failed: " + ", ".join(failed))
