"""Warm job processes (kmap.core.warm): a job handed to a server runs exactly as it would cold (argv, working
directory, environment, sys.path, umask, stdin/stdout/stderr, exit status), dies with the job's process
whatever signal ends it, and is never used where it must not be (off, on a SLURM node, in-process runs).
Each module-level server imports torch and transformers once (about 10 s)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kmap.core import warm

REPO = Path(__file__).resolve().parents[1]
# What a Snakemake script job looks like to Python: the preamble keeps the real file in __real_file__ and injects
# ``snakemake``; then the entry script hands itself over first.
JOB = f"""
import json, os, sys, time
__real_file__ = __file__
snakemake = object()
sys.path.append({str(REPO / "workflow_scripts")!r})
from kmap.core.warm import hand_over
hand_over()
mode = sys.argv[1]
print("out", os.getpid(), flush=True)
print("err", file=sys.stderr, flush=True)
if mode == "report":
    mask = os.umask(0)
    json.dump({{"pid": os.getpid(), "warm": os.environ.get("KMAP_WARM_CHILD"), "cwd": os.getcwd(),
               "argv": sys.argv, "marker": os.environ.get("PWD"), "umask": mask, "path": sys.path,
               "stdin": sys.stdin.read(), "torch": "torch" in sys.modules}}, open(sys.argv[2], "w"))
elif mode == "exit":
    sys.exit(int(sys.argv[2]))
elif mode == "raise":
    raise RuntimeError("planted failure")
elif mode == "sleep":
    open(sys.argv[2], "w").write(str(os.getpid()))
    time.sleep(120)
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An environment with its own server folder and a server already up (started by a first, cold job)."""
    folder = tmp_path_factory.mktemp("warm")
    environ = {**os.environ, "KMAP_WARM_DIR": str(folder), "KMAP_WARM_IDLE_S": "120"}
    environ.pop("SLURM_JOB_ID", None)
    environ.pop("KMAP_WARM", None)
    script = folder / "job.py"
    script.write_text(JOB)
    first = _run(script, environ, "exit", "0")
    assert first.returncode == 0, first.stderr
    _wait_for_server(folder, environ)
    yield environ
    for sock in folder.glob("*.sock"):  # its servers stop once their socket is gone
        sock.unlink()


def _run(script: Path, env: dict[str, str], *args: str, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=120, **kwargs
    )


def _socket(env: dict[str, str]) -> Path:
    return Path(env["KMAP_WARM_DIR"]) / f"{warm.server_key(env)}.sock"


def _wait_for_server(folder: Path, env: dict[str, str], timeout: float = 120) -> None:
    sock = _socket(env)
    deadline = time.monotonic() + timeout
    while not sock.exists():
        assert time.monotonic() < deadline, (list(folder.iterdir()), [p.read_text() for p in folder.glob("*.log")])
        time.sleep(0.2)


def _script(env: dict[str, str]) -> Path:
    return Path(env["KMAP_WARM_DIR"]) / "job.py"


def test_a_warm_job_sees_exactly_what_a_cold_one_does(env: dict[str, str], tmp_path: Path) -> None:
    results = {}
    for mode in ("warm", "cold"):
        # PWD shapes no import, so it is not in the server's key: the child must get the job's own value.
        environ = {**env, "PWD": f"marker-{mode}", **({"KMAP_WARM": "0"} if mode == "cold" else {})}
        out = tmp_path / f"{mode}.json"
        run = _run(_script(env), environ, "report", str(out), cwd=tmp_path, input=f"stdin-{mode}")
        assert run.returncode == 0, run.stderr
        assert run.stderr == "err\n"
        assert run.stdout.startswith("out ")
        results[mode] = json.loads(out.read_text())
    warm_run, cold_run = results["warm"], results["cold"]
    assert warm_run["warm"] == "1" and cold_run["warm"] is None  # the warm one really ran in a forked child
    assert warm_run["torch"] and not cold_run["torch"]  # ... of a process with torch already imported
    for key in ("cwd", "umask", "path"):
        assert warm_run[key] == cold_run[key], key
    assert warm_run["argv"][1:] == ["report", str(tmp_path / "warm.json")]
    assert (warm_run["marker"], warm_run["stdin"]) == ("marker-warm", "stdin-warm")
    assert (cold_run["marker"], cold_run["stdin"]) == ("marker-cold", "stdin-cold")


def test_exit_status_and_uncaught_exceptions_come_back(env: dict[str, str]) -> None:
    assert _run(_script(env), env, "exit", "3").returncode == 3
    failed = _run(_script(env), env, "raise")
    assert failed.returncode == 1
    assert "RuntimeError: planted failure" in failed.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["TERM", "INT", "KILL"])
def test_the_child_dies_with_the_jobs_process(env: dict[str, str], tmp_path: Path, sig: signal.Signals) -> None:
    pid_file = tmp_path / "pid"
    proc = subprocess.Popen(
        [sys.executable, str(_script(env)), "sleep", str(pid_file)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 - no threads yet
    )
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert child != proc.pid  # it ran in the server's child
    proc.send_signal(sig)
    code = proc.wait(timeout=30)
    # The job's process ends as a cold one would: by the signal (SIGINT: Python's KeyboardInterrupt, status 130).
    assert code == (130 if sig == signal.SIGINT else -sig)
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, f"child {child} outlived the job's process after {sig.name}"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_never_used_where_it_must_not_be(env: dict[str, str], tmp_path: Path) -> None:
    base = {k: v for k, v in env.items() if k not in ("KMAP_WARM", "SLURM_JOB_ID")}
    assert warm.enabled(base)
    assert not warm.enabled({**base, "KMAP_WARM": "0"})
    assert not warm.enabled({**base, "SLURM_JOB_ID": "12"})  # a cluster node: one job per allocation
    assert not warm.enabled({**base, warm.CHILD_FLAG: "1"})  # already handed over
    for extra in ({"KMAP_WARM": "0"}, {"SLURM_JOB_ID": "12"}):
        out = tmp_path / "r.json"
        assert _run(_script(env), {**env, **extra}, "report", str(out), input="").returncode == 0
        assert json.loads(out.read_text())["warm"] is None
    # An entry script run in-process (a test, a notebook): argv belongs to another program, so nothing is handed.
    code = f"import runpy; runpy.run_path({str(_script(env))!r}, run_name='__main__')"
    out = tmp_path / "inproc.json"
    run = subprocess.run(
        [sys.executable, "-c", code, "report", str(out)], env=env, input="", capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text())["warm"] is None


def test_the_key_follows_the_environment_and_the_libraries() -> None:
    base = {"PATH": "/usr/bin", "HOME": "/h"}
    assert warm.server_key(base) == warm.server_key({**base, "PWD": "/elsewhere", "PYTEST_CURRENT_TEST": "x"})
    assert warm.server_key(base) != warm.server_key({**base, "HF_HUB_OFFLINE": "1"})
    assert warm.server_key(base) != warm.server_key({**base, "OMP_NUM_THREADS": "1"})


def _own_server(env: dict[str, str], folder: Path) -> tuple[dict[str, str], int]:
    """A server of its own (started by a first, cold job) for a test that stops or kills it: its env and pid."""
    environ = {**env, "KMAP_WARM_DIR": str(folder)}
    assert _run(_script(env), environ, "exit", "0").returncode == 0
    _wait_for_server(folder, environ)
    log = folder / _socket(environ).name.replace(".sock", ".log")
    return environ, int(log.read_text().split("pid ")[1].split(")")[0])


def test_the_server_stops_when_its_socket_is_removed(env: dict[str, str], tmp_path: Path) -> None:
    environ, pid = _own_server(env, tmp_path / "own")
    sock = _socket(environ)
    assert _alive(pid)
    sock.unlink()
    # It notices within 0.2 s; exiting a process holding torch can take seconds on a loaded 2-core machine (10 s
    # was once too short in the suite). The idle exit (KMAP_WARM_IDLE_S = 120) cannot end it first.
    deadline = time.monotonic() + 60
    while _alive(pid):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_server_killed_takes_its_children_and_fails_their_jobs(env: dict[str, str], tmp_path: Path) -> None:
    """Out of memory or killed, the server leaves no orphan writing outputs of a job Snakemake counts as failed."""
    environ, server = _own_server(env, tmp_path / "own")
    script = _script(env)
    pid_file = tmp_path / "pid"
    proc = subprocess.Popen(
        [sys.executable, str(script), "sleep", str(pid_file)],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    child = int(pid_file.read_text())
    os.kill(server, signal.SIGKILL)
    assert proc.wait(timeout=30) == 1
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "the child outlived its server"
        time.sleep(0.05)


def test_no_restart_loop_while_a_server_keeps_failing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(warm.subprocess, "Popen", lambda args, **_: started.append(args))
    log = tmp_path / "k.log"
    log.write_text("a server started and died without listening\n")
    warm.start_server(tmp_path, "k")
    assert started == []  # started seconds ago: not again yet
    past = time.time() - warm.RESTART_AFTER_S - 1
    os.utime(log, (past, past))
    warm.start_server(tmp_path, "k")
    assert len(started) == 1 and started[0][-2:] == [str(tmp_path), "k"]
    # A server starting (it holds the key's lock) is never doubled.
    started.clear()
    os.utime(log, (past, past))
    with open(tmp_path / "k.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        warm.start_server(tmp_path, "k")
    assert started == []


def test_signal_job_reaches_the_group_and_a_child_not_yet_leading_one() -> None:
    # Its own group (after setsid): the child and what it started are signalled together.
    leader = subprocess.Popen(["bash", "-c", "sleep 60 & wait"], start_new_session=True)
    time.sleep(0.3)
    started = [
        int(p) for p in subprocess.run(["pgrep", "-P", str(leader.pid)], capture_output=True, text=True).stdout.split()
    ]
    assert started
    warm.signal_job(leader.pid, signal.SIGTERM)
    assert leader.wait(timeout=10) == -signal.SIGTERM
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in started):
        assert time.monotonic() < deadline, "the group's other process outlived the signal"
        time.sleep(0.05)
    # Before its setsid a child has no group of its own: it alone gets the signal (not lost, nobody else hit).
    loner = subprocess.Popen(["sleep", "60"])
    warm.signal_job(loner.pid, signal.SIGTERM)
    assert loner.wait(timeout=10) == -signal.SIGTERM
