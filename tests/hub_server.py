"""A local stand-in for the Hugging Face hub, for the staging tests: real HTTP on 127.0.0.1, stdlib only.

It speaks the part of the hub API that huggingface_hub 2.4's ``HfApi.model_info(files_metadata=True)`` and
``snapshot_download(local_dir=...)`` use, as read from its source:

- ``GET /api/models/{repo}[/revision/{rev}][?blobs=true]``: model info; ``sha`` is the commit the revision (branch,
  tag or full commit hash) resolves to; ``siblings`` carry ``size``/``blobId``/``lfs`` with ``blobs=true``.
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=...``: the tree listing snapshot_download reads (one page,
  no ``Link: next``); entries carry ``type``, ``oid``, ``size``, ``path`` and, for LFS files, ``lfs``.
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag`` (git blob sha1; the sha256 for LFS
  files), ``Content-Length``, for LFS files ``X-Linked-Etag``/``X-Linked-Size``; ``Range: bytes=a-[b]`` gets a 206
  with ``Content-Range`` (huggingface_hub resumes with it after a dropped connection).

Errors carry the ``X-Error-Code`` header that ``hf_raise_for_status`` maps to its exceptions, with the hub's
status codes: unknown repo 401 (404 when authenticated) ``RepoNotFound``, unknown revision 404
``RevisionNotFound``, unknown file 404 ``EntryNotFound``, gated file without token 401 / with a token lacking
access 403 ``GatedRepo``. As on the hub, a gated repo's info and tree are public; only its files need
``Authorization: Bearer <token>`` with the server's token. No response carries ``X-Xet-Hash`` or a tree
``xetHash``, so huggingface_hub never takes its Xet path (it downloads over plain HTTP from this server).

Every request is recorded (``HubServer.requests``) so tests can assert what was, and was not, fetched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# Files the hub keeps in git LFS (as repos' .gitattributes do): weights and tokenizer models, anything large.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".model", ".gguf", ".onnx")
LFS_MIN_SIZE = 10 * 1024 * 1024
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str, data: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_SIZE


def lfs_pointer(data: bytes) -> bytes:
    sha256 = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()


def fake_commit_sha(files: Mapping[str, bytes], parent: str | None = None) -> str:
    """A deterministic 40-hex commit id for these files (and parent): same content, same id."""
    digest = hashlib.sha1((parent or "").encode())
    for path in sorted(files):
        digest.update(f"{path}\0{hashlib.sha256(files[path]).hexdigest()}\n".encode())
    return digest.hexdigest()


def repo_from_folder(
    folder: Path,
    *,
    extra_files: Mapping[str, bytes] | None = None,
    gated: bool = False,
    branch: str = "main",
) -> dict[str, Any]:
    """A served repository from every file under ``folder`` (e.g. save_pretrained's output) plus ``extra_files``."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    files.update(extra_files or {})
    return {"files": files, "branches": {branch: fake_commit_sha(files)}, "gated": gated}


class HubServer:
    """Serves ``repos``: {repo_id: {"files": {path: bytes}, "branches": {name: sha}, "tags"?: {...}, "gated"?: bool}}.

    The files are the content of every commit named in branches and tags; ``push`` adds a later commit.
    """

    def __init__(self, repos: Mapping[str, Mapping[str, Any]], token: str | None = None) -> None:
        self.token = token
        self.requests: list[dict[str, Any]] = []
        # Called with each request's record once it is answered (a test's hook, e.g. to move a branch mid-staging).
        self.after_request: Callable[[dict[str, Any]], None] | None = None
        self._lock = threading.Lock()
        self._repos: dict[str, dict[str, Any]] = {}
        for repo_id, repo in repos.items():
            refs = {**repo.get("branches", {}), **repo.get("tags", {})}
            self._repos[repo_id] = {
                "commits": {sha: dict(repo["files"]) for sha in refs.values()},
                "branches": dict(repo.get("branches", {})),
                "tags": dict(repo.get("tags", {})),
                "gated": bool(repo.get("gated", False)),
            }
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def push(self, repo_id: str, files: Mapping[str, bytes], branch: str = "main") -> str:
        """Commit ``files`` as the new content of ``branch``; returns the new commit id."""
        with self._lock:
            repo = self._repos[repo_id]
            sha = fake_commit_sha(files, parent=repo["branches"].get(branch))
            repo["commits"][sha] = dict(files)
            repo["branches"][branch] = sha
        return sha

    def files_fetched(self, since: int = 0) -> dict[str, int]:
        """Bytes of file content served per repo path (GETs), from request number ``since`` on."""
        fetched: dict[str, int] = {}
        for request in self.requests[since:]:
            if request["file"] is not None and request["method"] == "GET":
                fetched[request["file"]] = fetched.get(request["file"], 0) + request["bytes"]
        return fetched

    def _resolve(self, repo: dict[str, Any], revision: str) -> str | None:
        if revision in repo["branches"]:
            return repo["branches"][revision]
        if revision in repo["tags"]:
            return repo["tags"][revision]
        return revision if COMMIT_RE.match(revision) and revision in repo["commits"] else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's pooled client expects of the hub

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

            def do_HEAD(self) -> None:
                self._dispatch("HEAD")

            def do_GET(self) -> None:
                self._dispatch("GET")

            def _dispatch(self, method: str) -> None:
                record: dict[str, Any] = {
                    "method": method,
                    "path": self.path,
                    "repo": None,
                    "file": None,
                    "status": None,
                    "bytes": 0,
                    "auth": "Authorization" in self.headers,
                }
                try:
                    self._route(method, record)
                finally:
                    with server._lock:
                        server.requests.append(record)
                    if server.after_request is not None:
                        server.after_request(record)

            def _route(self, method: str, record: dict[str, Any]) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                path = parts.path
                if path.startswith("/api/") and method != "GET":
                    return self._error(record, 405, None, "Method Not Allowed")
                if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
                    repo_id, revision = match[1], unquote(match[2]) if match[2] else "main"
                    record["repo"] = repo_id
                    if not (repo := self._repo(repo_id, record)):
                        return
                    if (commit := self._commit(repo, revision, record)) is None:
                        return
                    return self._json(record, self._model_info(repo_id, repo, commit, query.get("blobs") == ["true"]))
                if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.+))?", path):
                    repo_id, revision, folder = match[1], unquote(match[2]), unquote(match[3] or "")
                    record["repo"] = repo_id
                    if not (repo := self._repo(repo_id, record)):
                        return
                    if (commit := self._commit(repo, revision, record)) is None:
                        return
                    recursive = query.get("recursive", ["false"])[0].lower() == "true"
                    return self._json(record, self._tree(repo["commits"][commit], folder, recursive))
                if match := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    repo_id, revision, file = match[1], unquote(match[2]), unquote(match[3])
                    record["repo"], record["file"] = repo_id, file
                    if not (repo := self._repo(repo_id, record)):
                        return
                    if repo["gated"] and not self._authorized(record):
                        return
                    if (commit := self._commit(repo, revision, record)) is None:
                        return
                    return self._file(method, record, repo["commits"][commit], commit, file)
                self._error(record, 404, None, "Not Found")

            # --- lookups, each answering the error itself when it fails ---

            def _repo(self, repo_id: str, record: dict[str, Any]) -> dict[str, Any] | None:
                with server._lock:
                    repo = server._repos.get(repo_id)
                if repo is None:
                    status = 404 if record["auth"] else 401
                    self._error(record, status, "RepoNotFound", "Repository not found")
                return repo

            def _commit(self, repo: dict[str, Any], revision: str, record: dict[str, Any]) -> str | None:
                with server._lock:
                    commit = server._resolve(repo, revision)
                if commit is None:
                    self._error(record, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return commit

            def _authorized(self, record: dict[str, Any]) -> bool:
                header = self.headers.get("Authorization", "")
                if server.token is not None and header == f"Bearer {server.token}":
                    return True
                status = 403 if header else 401
                message = f"Access to model {record['repo']} is restricted and you are not in the authorized list."
                self._error(record, status, "GatedRepo", message)
                return False

            # --- answers ---

            def _model_info(self, repo_id: str, repo: dict[str, Any], commit: str, blobs: bool) -> dict[str, Any]:
                siblings = []
                for path, data in sorted(repo["commits"][commit].items()):
                    sibling: dict[str, Any] = {"rfilename": path}
                    if blobs:
                        sibling.update(_file_meta(path, data))
                    siblings.append(sibling)
                return {
                    "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                    "id": repo_id,
                    "modelId": repo_id,
                    "author": repo_id.split("/")[0],
                    "sha": commit,
                    "lastModified": "2025-01-01T00:00:00.000Z",
                    "createdAt": "2025-01-01T00:00:00.000Z",
                    "private": False,
                    "gated": "manual" if repo["gated"] else False,
                    "disabled": False,
                    "tags": ["transformers", "safetensors"],
                    "library_name": "transformers",
                    "siblings": siblings,
                }

            def _tree(self, files: dict[str, bytes], folder: str, recursive: bool) -> list[dict[str, Any]]:
                prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
                entries: dict[str, dict[str, Any]] = {}
                for path, data in sorted(files.items()):
                    if not path.startswith(prefix):
                        continue
                    rest = path[len(prefix) :].split("/")
                    for depth in range(1, len(rest)):  # the folders on the way
                        sub = prefix + "/".join(rest[:depth])
                        entries.setdefault(
                            sub,
                            {
                                "type": "directory",
                                "oid": hashlib.sha1(sub.encode()).hexdigest(),
                                "size": 0,
                                "path": sub,
                            },
                        )
                        if not recursive:
                            break
                    if recursive or len(rest) == 1:
                        meta = _file_meta(path, data)
                        entry = {"type": "file", "oid": meta["blobId"], "size": meta["size"], "path": path}
                        if "lfs" in meta:
                            entry["lfs"] = {
                                "oid": meta["lfs"]["sha256"],
                                "size": meta["lfs"]["size"],
                                "pointerSize": meta["lfs"]["pointerSize"],
                            }
                        entries[path] = entry
                return [entries[key] for key in sorted(entries)]

            def _file(
                self, method: str, record: dict[str, Any], files: dict[str, bytes], commit: str, file: str
            ) -> None:
                if file not in files:
                    return self._error(
                        record, 404, "EntryNotFound", f"{file} does not exist on this revision", commit=commit
                    )
                data = files[file]
                headers = {
                    "X-Repo-Commit": commit,
                    "Accept-Ranges": "bytes",
                    "Content-Type": "application/octet-stream",
                }
                if is_lfs(file, data):
                    sha256 = hashlib.sha256(data).hexdigest()
                    headers.update(
                        {"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data))}
                    )
                else:
                    headers["ETag"] = f'"{git_blob_sha1(data)}"'
                status, body = 200, data
                if method == "GET" and (match := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))):
                    start, end = int(match[1]), int(match[2]) if match[2] else len(data) - 1
                    if start >= len(data):
                        return self._error(record, 416, None, "Range Not Satisfiable")
                    end = min(end, len(data) - 1)
                    status, body = 206, data[start : end + 1]
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                self._send(record, status, headers, body, head=method == "HEAD")

            def _json(self, record: dict[str, Any], obj: Any) -> None:
                self._send(record, 200, {"Content-Type": "application/json"}, json.dumps(obj).encode())

            def _error(
                self, record: dict[str, Any], status: int, code: str | None, message: str, commit: str | None = None
            ) -> None:
                headers = {"Content-Type": "application/json", "X-Error-Message": message}
                if code:
                    headers["X-Error-Code"] = code
                if commit:
                    headers["X-Repo-Commit"] = commit
                self._send(
                    record, status, headers, json.dumps({"error": message}).encode(), head=self.command == "HEAD"
                )

            def _send(
                self, record: dict[str, Any], status: int, headers: dict[str, str], body: bytes, head: bool = False
            ) -> None:
                record["status"] = status
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)
                    record["bytes"] = len(body)

        return Handler


def _file_meta(path: str, data: bytes) -> dict[str, Any]:
    """A sibling's metadata as the hub's model info gives it with blobs=true."""
    if is_lfs(path, data):
        pointer = lfs_pointer(data)
        return {
            "size": len(data),
            "blobId": git_blob_sha1(pointer),
            "lfs": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": len(pointer)},
        }
    return {"size": len(data), "blobId": git_blob_sha1(data)}


@contextlib.contextmanager
def serve_hub(repos: Mapping[str, Mapping[str, Any]], token: str | None = None) -> Iterator[HubServer]:
    """A running HubServer; its ``url`` is the base URL to use as HF_ENDPOINT."""
    with HubServer(repos, token=token) as server:
        yield server
