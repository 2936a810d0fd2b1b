"""Warm job processes for local runs: a job's Python process forked from one that has already imported torch,
transformers, pandas, matplotlib and umap.

Importing those costs 5-10 CPU-seconds per process; a demo job's own work is often a second or two. So on a
local run (``snakemake --cores N``), each entry script's first statement, ``hand_over()``, asks a per-user
server to fork a child that runs this same script with this process's argv, working directory, environment,
umask and stdin/stdout/stderr, and then only relays signals and the exit status. The child re-runs
the whole script (Snakemake's preamble included), so every kmap module is imported fresh from disk: the server
holds third-party libraries only, never kmap code, and it is keyed by everything that shapes them at import
(interpreter, environment, the libraries' files, this file), so a changed environment or library gets a new
server rather than a stale one.

Never used on a cluster node (``SLURM_JOB_ID`` set), off with ``KMAP_WARM=0``, Linux only. When no server is
up, the first job starts one in the background and runs cold itself; the server exits after
``KMAP_WARM_IDLE_S`` seconds (default 60) without jobs. Killing the job's process (any signal) kills the
child: catchable signals are forwarded to it, and the server kills it when the job's connection drops.

Stdlib only: this module is imported before anything heavy, and it is excluded from code versions because it
decides where a job runs, never what it computes.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import hashlib
import importlib.util
import json
import os
import runpy
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

# What the server imports once. Optional: a missing one is skipped (the child imports it itself).
PRELOAD = (
    "numpy",
    "pandas",
    "yaml",
    "scipy.stats",
    "sklearn.metrics",
    "sklearn.linear_model",
    "matplotlib",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "torch",
    "safetensors.torch",
    "transformers",
    "transformers.modeling_utils",
    "transformers.models.llama.modeling_llama",
    "transformers.models.qwen2.modeling_qwen2",
    "transformers.models.qwen3.modeling_qwen3",
    "transformers.models.gemma3.modeling_gemma3",
    "transformers.models.gpt_oss.modeling_gpt_oss",
    "umap",
    "snakemake.script",
)
# Environment variables that differ between otherwise identical jobs and shape no import.
VOLATILE_ENV = frozenset({"_", "PWD", "OLDPWD", "SHLVL", "KMAP_WARM_CHILD", "PYTEST_CURRENT_TEST"})
CHILD_FLAG = "KMAP_WARM_CHILD"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_HEADER = struct.Struct("!I")
# After a server exits, its key's next server may start this many seconds after the last one did.
RESTART_AFTER_S = 30
# sys.path as the interpreter set it up, before anything was imported (the server runs with -P: no script folder).
_BASE_PATH = list(sys.path)


def enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether jobs may run in warm processes here (local Linux runs, not switched off)."""
    env = os.environ if environ is None else environ
    return (
        sys.platform == "linux"
        and hasattr(socket, "send_fds")
        and env.get("KMAP_WARM", "1") != "0"
        and "SLURM_JOB_ID" not in env
        and CHILD_FLAG not in env
    )


def runtime_dir() -> Path:
    """A directory only this user can enter (KMAP_WARM_DIR, else under $XDG_RUNTIME_DIR or the temp dir)."""
    base = os.environ.get("KMAP_WARM_DIR") or os.path.join(
        os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir(), f"kmap-warm-{os.getuid()}"
    )
    path = Path(base)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{path} must belong to this user with mode 0700")
    return path


def server_key(environ: dict[str, str] | None = None) -> str:
    """Everything that shapes what the server imports: a different key means a different server."""
    env = os.environ if environ is None else environ
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(f"{sys.executable}\0{sys.version}\0{os.getuid()}".encode())
    for name, value in sorted(env.items()):
        if name not in VOLATILE_ENV:
            digest.update(f"{name}={value}\0".encode())
    for name in PRELOAD:
        if "." in name:
            continue  # top-level packages stand for their files
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None else None
        stamp = os.stat(origin).st_mtime_ns if origin and os.path.exists(origin) else 0
        digest.update(f"{name}:{origin}:{stamp}\0".encode())
    return digest.hexdigest()[:20]


# --- the job's side ------------------------------------------------------------------------------------------


def hand_over() -> None:
    """Run this script in a warm child and exit with its status; return to run cold when that is not possible."""
    if not enabled():
        return
    # Only a script Snakemake started as its own process (``python <script>``; the preamble keeps that file as
    # ``__real_file__`` and injects ``snakemake``). Never an entry script run in-process (runpy in a test or a
    # notebook): the interpreter was started for something else.
    main = sys.modules.get("__main__")
    script = getattr(main, "__real_file__", None) or ""
    if getattr(main, "snakemake", None) is None or not os.path.isfile(script):
        return
    if _program(sys.orig_argv) != sys.argv[0] or os.path.abspath(script) != os.path.abspath(sys.argv[0]):
        return
    try:
        folder = runtime_dir()
        key = server_key()
    except OSError:
        return
    sock_path = folder / f"{key}.sock"
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(sock_path))
    except OSError:
        conn.close()
        start_server(folder, key)
        return
    code = _run_remote(conn, os.path.abspath(script))
    if code is None:
        return  # the server went away before forking: run cold
    sys.stdout.flush()
    sys.stderr.flush()
    if code < 0:  # the child died by a signal: die by the same one, so Snakemake sees what happened
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code if code >= 0 else 128 - code)


def _program(orig_argv: list[str]) -> str | None:
    """The script file the interpreter was started with (None for ``-c``, ``-m`` or an interactive session)."""
    for arg in orig_argv[1:]:
        if arg in ("-c", "-m"):
            return None
        if not arg.startswith("-"):
            return arg
    return None


def _run_remote(conn: socket.socket, script: str) -> int | None:
    request = {
        "argv": [script, *sys.argv[1:]],
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "umask": _umask(),
    }
    body = json.dumps(request).encode()
    try:
        socket.send_fds(conn, [_HEADER.pack(len(body))], [0, 1, 2])
        conn.sendall(body)
        reader = conn.makefile("r", encoding="utf-8")
        first = reader.readline().split()
    except OSError:
        return None
    if len(first) != 2 or first[0] != "pid":
        return None
    child = int(first[1])

    def forward(signum: int, _frame: object) -> None:
        signal_job(child, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    while True:
        try:
            line = reader.readline()
        except InterruptedError:
            continue
        if not line:
            return 1  # the server died: the child was killed with it
        parts = line.split()
        if len(parts) == 2 and parts[0] == "exit":
            return int(parts[1])


def signal_job(child: int, signum: int) -> None:
    """Signal a job's child and everything it started (its process group). In its first moments, before its
    ``setsid``, the group does not exist yet: the child alone is signalled then, so no signal is lost."""
    try:
        os.killpg(child, signum)
    except ProcessLookupError:
        with contextlib.suppress(OSError):
            os.kill(child, signum)
    except OSError:
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def start_server(folder: Path, key: str) -> None:
    """Start the server in the background unless one is already starting (it holds the key's lock)."""
    lock_path = folder / f"{key}.lock"
    try:
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(lock, fcntl.LOCK_UN)
    except OSError:
        return  # a server holds it: starting, or about to listen
    log_path = folder / f"{key}.log"
    with contextlib.suppress(OSError):
        if time.time() - log_path.stat().st_mtime < RESTART_AFTER_S:
            return  # one started lately and is gone without listening: no restart loop while it keeps failing
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the server process
    # -P: the script's own folder (kmap/core) must not shadow top-level modules in the server.
    subprocess.Popen(
        [sys.executable, "-P", __file__, "serve", str(folder), key],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        close_fds=True,
    )
    log.close()


# --- the server's side ---------------------------------------------------------------------------------------


def serve(folder: Path, key: str, idle_s: float) -> None:
    """Import PRELOAD, listen on <key>.sock, fork a child per job; exit after ``idle_s`` without jobs."""
    lock = open(folder / f"{key}.lock", "a")  # noqa: SIM115 - held for the server's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # another server for this key is starting
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception as error:  # noqa: BLE001 - optional: the child imports it itself
            print(f"preload {name}: {error!r}", flush=True)
    sock_path = folder / f"{key}.sock"
    sock_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    os.chmod(sock_path, 0o600)
    listener.listen(64)
    inode = sock_path.stat().st_ino
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    last = time.monotonic()
    print(f"serving {sock_path} (pid {os.getpid()})", flush=True)
    try:
        while True:
            for item, _ in selector.select(timeout=0.2):
                if item.fileobj is listener:
                    conn, _ = listener.accept()
                    pid = _fork_job(conn, listener, selector, children)
                    if pid is not None:
                        children[pid] = conn
                        selector.register(conn, selectors.EVENT_READ, pid)
                    last = time.monotonic()
                else:  # the job's process closed its end: it is gone, so its child goes too
                    conn = item.fileobj
                    try:
                        gone = not conn.recv(1, socket.MSG_PEEK)
                    except OSError:
                        gone = True
                    if gone:
                        selector.unregister(conn)
                        signal_job(item.data, signal.SIGKILL)
            _reap(children, selector)
            if children:
                last = time.monotonic()
            elif time.monotonic() - last > idle_s or not _still_ours(sock_path, inode):
                break
    finally:
        if _still_ours(sock_path, inode):
            sock_path.unlink(missing_ok=True)


def _still_ours(sock_path: Path, inode: int) -> bool:
    try:
        return sock_path.stat().st_ino == inode
    except OSError:
        return False


def _reap(children: dict[int, socket.socket], selector: selectors.BaseSelector) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):
            conn.sendall(f"exit {code}\n".encode())
        if _registered(selector, conn):
            selector.unregister(conn)
        conn.close()


def _registered(selector: selectors.BaseSelector, conn: socket.socket) -> bool:
    try:
        selector.get_key(conn)
    except KeyError:
        return False
    return True


def _fork_job(
    conn: socket.socket,
    listener: socket.socket,
    selector: selectors.BaseSelector,
    children: dict[int, socket.socket],
) -> int | None:
    conn.settimeout(10)
    try:
        head, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        if len(head) != _HEADER.size or len(fds) != 3:
            raise OSError("malformed request")
        size = _HEADER.unpack(head)[0]
        body = b""
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise OSError("request cut short")
            body += chunk
        request = json.loads(body)
    except (OSError, ValueError):
        conn.close()
        return None
    conn.settimeout(None)
    sys.stdout.flush()
    sys.stderr.flush()
    server = os.getpid()
    pid = os.fork()
    if pid == 0:
        selector.close()
        listener.close()
        for other in children.values():
            other.close()
        conn.close()
        _run_child(request, fds, server)  # never returns
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall(f"pid {pid}\n".encode())
    except OSError:
        signal_job(pid, signal.SIGKILL)
    return pid


def _die_with(parent: int) -> None:
    """Should the server die (out of memory, killed), its children go too: no orphan writing outputs of a job
    Snakemake counts as failed."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def _run_child(request: dict, fds: list[int], server: int) -> None:
    code = 1
    try:
        os.setsid()  # its own process group: signals reach it and whatever it starts
        _die_with(server)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        for signum in FORWARDED:
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[CHILD_FLAG] = "1"
        os.umask(request["umask"])
        os.chdir(request["cwd"])
        # What ``python <script>`` starts with: the script's folder, then the interpreter's own path (the same as
        # the server's: PYTHONPATH is part of the key). The script then extends it as it did in the job.
        sys.path[:] = [os.path.dirname(os.path.realpath(request["argv"][0])), *_BASE_PATH]
        sys.argv[:] = request["argv"]
        try:
            runpy.run_path(request["argv"][0], run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if not isinstance(stop.code, int | None):
                print(stop.code, file=sys.stderr)
        except KeyboardInterrupt:
            traceback.print_exc()
            code = 130
        except BaseException:  # noqa: BLE001 - reported like an uncaught exception
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "serve":
    serve(Path(sys.argv[2]), sys.argv[3], float(os.environ.get("KMAP_WARM_IDLE_S", "60")))
