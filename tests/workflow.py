"""Helpers to run the workflow in a scratch copy of the repository (so tests never touch results/)."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
COPIED = ("Snakefile", "rules", "config", "prompts", "workflow_scripts", "profiles", "envs", "report", "slurm")


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source = REPO / name
        if source.is_symlink():  # ./slurm -> profiles/slurm: `snakemake --profile slurm` from the root
            (dest / name).symlink_to(os.readlink(source))
        elif source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    return dest


def write_config(dest: Path, config: dict, name: str = "test.yaml") -> Path:
    path = dest / "config" / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def local_env(**extra: str) -> dict[str, str]:
    """The environment of a local (non-SLURM) Snakemake run, with a failing ``scontrol`` first on PATH.

    Where SLURM's client is installed but no controller runs (CI installs it for test_slurm.py), the SLURM
    executor plugin's start-up asks ``scontrol show config`` and waits 9 s for the absent controller, on every
    Snakemake call; the stub answers at once, as on a machine without SLURM."""
    stub = Path(tempfile.gettempdir()) / "kmap-tests-no-slurm"
    script = stub / "scontrol"
    if not script.exists():
        # Written aside and renamed: parallel test workers may create it at the same time.
        stub.mkdir(exist_ok=True)
        draft = stub / f".scontrol.{os.getpid()}"
        draft.write_text("#!/bin/sh\nexit 1\n")
        draft.chmod(0o755)
        draft.replace(script)
    return {**os.environ, "PATH": f"{stub}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


class _ForkServer:
    """This test process's ``tests/snakefork.py`` server: Snakemake imported once, each call a forked child."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()  # one call at a time on the pipe

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-P", str(Path(__file__).with_name("snakefork.py"))],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=tempfile.gettempdir(),
                env=local_env(),
            )
            ready = self.proc.stdout.readline()
            if not ready:
                raise RuntimeError("tests/snakefork.py did not start (its error is above)")
            atexit.register(self.proc.stdin.close)  # the server ends with its input
        return self.proc

    def run(self, command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        with self.lock:
            try:
                return self._run(command, cwd, env, timeout)
            except BaseException:
                # Interrupted mid-call (Ctrl-C, a broken reply): the pipe may hold a late reply, so the next call
                # starts a fresh server. Its running child, in its own session, is killed with it.
                self.stop()
                raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for pid in _children(self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def _run(self, command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        proc = self._start()
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {"args": command[3:], "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            pid = json.loads(proc.stdout.readline())["pid"]
            expired = threading.Event()

            def kill() -> None:
                expired.set()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)

            timer = threading.Timer(timeout, kill)
            timer.start()
            try:
                returncode = json.loads(proc.stdout.readline())["returncode"]
            finally:
                timer.cancel()
            stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
        if expired.is_set():
            raise subprocess.TimeoutExpired(command, timeout, stdout, stderr)
        return subprocess.CompletedProcess(command, returncode, stdout, stderr)


def _children(pid: int) -> list[int]:
    """Child process ids of ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


_FORK_SERVER = _ForkServer()


def snakemake(
    workdir: Path,
    *args: str,
    check: bool = True,
    timeout: int = 1200,
    env: dict[str, str] | None = None,
    fork: bool = True,
) -> subprocess.CompletedProcess:
    """``snakemake --cores 2 *args`` in ``workdir``; locally (``local_env``) unless ``env`` is given.

    Run as a child of this process's Snakemake fork server (``tests/snakefork.py``): a fresh Snakemake process
    without the 3-4 s of imports and plugin discovery each new one pays. The server runs one call at a time (a
    second thread's call waits); a call meant to overlap another passes ``fork=False``: its own interpreter."""
    command = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    if fork:
        result = _FORK_SERVER.run(command, workdir, env or local_env(), timeout)
    else:
        result = subprocess.run(
            command, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env or local_env()
        )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def local_hf_model(model_dir: Path, methods: list[str]) -> dict:
    """A config entry for a local 2-layer checkpoint as kind ``hf``: planned like a hub model (pre-flight, GPU
    resources), built offline."""
    return {"kind": "hf", "source": str(model_dir), "n_layers": 2, "dtype": "float32", "methods": methods}


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run: rule -> count (empty when nothing is planned)."""
    counts: dict[str, int] = {}
    match = re.search(r"Job stats:\n(.*?)\n\s*\n", output + "\n\n", re.S)
    if not match:
        return counts
    for line in match.group(1).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def run_entry(script: str, job: object) -> None:
    """Run an entry script in-process as Snakemake would (``snakemake`` injected, run as __main__), restoring
    stderr and logging afterwards."""
    import logging
    import runpy

    stderr, handlers = sys.stderr, logging.getLogger().handlers[:]
    try:
        runpy.run_path(str(REPO / "workflow_scripts" / script), init_globals={"snakemake": job}, run_name="__main__")
    finally:
        from kmap.core import job as harness

        harness.CURRENT = None  # later figures in this process belong to no job
        sys.stderr.flush()
        if sys.stderr is not stderr:
            sys.stderr.close()
        sys.stderr = stderr
        logging.getLogger().handlers[:] = handlers


def ablation_summary_job(responses: str, judge: str, out: Path, wildcards: object) -> object:
    """A stand-in ``snakemake`` object of the ablation_summary rule reading ``responses`` and ``judge``."""
    from types import SimpleNamespace

    names = ("metrics", "replicates", "judge_metrics", "judge_replicates")
    return SimpleNamespace(
        input=SimpleNamespace(responses=responses, judge=judge),
        output=SimpleNamespace(
            **{n: str(out / f"{n}.parquet") for n in names},
            **{f"{f}_{s}": str(out / f"{f}.{s}") for f in ("curves", "judge_curves") for s in ("png", "pdf")},
        ),
        log=[str(out / "summary.log")],
        params=SimpleNamespace(bootstrap={"n": 20, "seed": 0}, figures={"dpi": 60}, min_ok_share=0.8, code="test"),
        wildcards=wildcards,
        threads=1,
        resources=SimpleNamespace(),
    )
