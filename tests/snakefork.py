"""A Snakemake fork server for the tests: imports Snakemake and collects its plugins once, then runs each
``snakemake`` command line of a test in a forked child.

A Snakemake call spends about 3.5 of its 6 CPU-seconds importing Snakemake and collecting its plugins before it
reads the Snakefile; the workflow tests make about a hundred calls. A forked child starts with all of that done and
is otherwise a fresh ``python -m snakemake``: its own process (session, working directory, environment, argv,
stdout/stderr files), nothing of kmap imported (the server imports Snakemake only), exit status from
``snakemake.cli.main``. Used by ``tests.workflow.snakemake``; never by the workflow itself.

Protocol (one request at a time, JSON lines on stdin/stdout): request ``{"args", "cwd", "env", "stdout",
"stderr"}`` -> ``{"pid"}`` once the child runs (its process group id too), then ``{"returncode"}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys


def _child(request: dict) -> None:
    """Become ``python -m snakemake *args`` in the request's folder and environment; never returns."""
    code = 1
    try:
        os.setsid()  # its own process group: a timeout kills the jobs it started too
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path.insert(0, request["cwd"])  # what `python -m` puts first (the server runs with -P)
        stdin = os.open(os.devnull, os.O_RDONLY)
        os.dup2(stdin, 0)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            out = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(out, fd)
            os.close(out)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own descriptors, never closed
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        sys.argv = [sys.argv[0], *request["args"]]
        from snakemake.cli import main

        try:
            main(request["args"])
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        import atexit
        import logging

        atexit._run_exitfuncs()
        logging.shutdown()
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # exiting either way
                stream.flush()
        os._exit(code)


def serve() -> None:
    from snakemake.cli import parse_args

    # Building the argument parser collects every plugin registry (executors, storage, reports, loggers).
    parse_args(["--cores", "1", "-n"])
    replies = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies on the pipe
    print(json.dumps({"ready": os.getpid()}), file=replies, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(json.dumps({"pid": pid}), file=replies, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), file=replies, flush=True)


if __name__ == "__main__":
    serve()
