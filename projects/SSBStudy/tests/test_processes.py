"""ssb_study.processes: the process pool both studies train their runs with."""
import os
import sys

import pytest

from ssb_study.processes import Job, run_jobs


def _py(code):
    return [sys.executable, "-c", code]


def _writer(tmp_path, name, code=""):
    """A job that runs ``code`` and then creates ``<name>.done``."""
    done = tmp_path / f"{name}.done"
    return Job(name, _py(f"{code}\nopen({str(done)!r}, 'w').write('x')\nprint('hello {name}')"),
               str(tmp_path / "logs" / f"{name}.log"), succeeded=done.exists), done


def test_every_job_runs_once_with_its_output_in_its_log(tmp_path):
    jobs = [_writer(tmp_path, n)[0] for n in ("a", "b", "c")]
    lines = []
    run_jobs(jobs, parallel=2, log=lines.append, name="t", poll_s=0.05)
    for n in ("a", "b", "c"):
        assert (tmp_path / f"{n}.done").exists()
        assert (tmp_path / "logs" / f"{n}.log").read_text() == f"hello {n}\n"
    assert sorted(l for l in lines if l.startswith("t: started")) == [
        f"t: started {n} (output in {tmp_path / 'logs' / n}.log)" for n in ("a", "b", "c")]
    assert sum("[3/3]" in l for l in lines) == 1


def test_no_more_than_parallel_jobs_run_at_once(tmp_path):
    # Each job records how many siblings were running beside it (the marker files present).
    running = tmp_path / "running"
    running.mkdir()
    # It watches for 0.5 s after a sibling appears (10 s at most, for a loaded machine).
    code = ("import os, time\n"
            f"d = {str(running)!r}\n"
            "me = os.path.join(d, str(os.getpid())); open(me, 'w').close()\n"
            "most, start, paired = 0, time.time(), None\n"
            "while time.time() - start < 10 and (paired is None or time.time() - paired < 0.5):\n"
            "    most = max(most, len(os.listdir(d)))\n"
            "    paired = paired or (time.time() if most >= 2 else None)\n"
            "    time.sleep(0.01)\n"
            "print(most)\n"
            "os.remove(me)")
    jobs = [Job(f"j{i}", _py(code), str(tmp_path / f"j{i}.log")) for i in range(4)]
    run_jobs(jobs, parallel=2, log=lambda _: None, poll_s=0.05)
    seen = [int((tmp_path / f"j{i}.log").read_text()) for i in range(4)]
    assert max(seen) == 2


def test_a_job_waits_until_it_is_ready(tmp_path):
    source, source_done = _writer(tmp_path, "source", "import time; time.sleep(0.3)")
    follower = Job("follower", _py(f"assert open({str(source_done)!r}).read() == 'x'"),
                   str(tmp_path / "follower.log"), ready=source_done.exists)
    # The follower is listed first but may only start once the source has finished.
    run_jobs([follower, source], parallel=2, log=lambda _: None, poll_s=0.05)
    assert (tmp_path / "follower.log").read_text() == ""


def test_failures_are_named_with_their_logs_and_the_others_still_run(tmp_path):
    crash = Job("crash", _py("raise SystemExit(3)"), str(tmp_path / "crash.log"))
    silent = Job("silent", _py("pass"), str(tmp_path / "silent.log"),
                 succeeded=lambda: False)  # exit 0 but no result
    waiting = Job("waiting", _py("pass"), str(tmp_path / "waiting.log"),
                  ready=lambda: False)  # what it starts from never appears
    good, good_done = _writer(tmp_path, "good")
    with pytest.raises(RuntimeError) as err:
        run_jobs([crash, silent, waiting, good], parallel=1, log=lambda _: None,
                 name="study", poll_s=0.05)
    message = str(err.value)
    assert message.startswith("study failed: ")
    assert f"crash (exit 3; see {tmp_path / 'crash.log'})" in message
    assert f"silent (exit 0; see {tmp_path / 'silent.log'})" in message
    assert "waiting (not started" in message and "good" not in message
    assert good_done.exists() and not os.path.exists(tmp_path / "waiting.log")


def test_bad_parallelism_is_refused():
    with pytest.raises(ValueError, match="parallel"):
        run_jobs([], parallel=0)
