"""Staging a pinned hub snapshot into a plain local folder, so GPU jobs load it offline (HF_HUB_OFFLINE=1).

``stage_snapshot`` resolves the configured revision to a commit, checks access and disk space before downloading,
fetches only what transformers needs to load a causal LM from safetensors (``ALLOW_PATTERNS``), removes a previous
revision's leftovers, verifies sizes and returns a manifest (written beside the files by ``write_manifest``).
Any endpoint speaking the hub's API works: ``HF_ENDPOINT`` is read at call time and passed explicitly.

No torch, no transformers; huggingface_hub is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kmap.core.io import write_json_atomic

GIB = 1024**3
FILES_DIR = "files"  # the snapshot's files, under the staging folder; the manifest sits beside it
DEFAULT_ENDPOINT = "https://huggingface.co"
FORCERUN_FIX = "rerun the staging rule: snakemake --forcerun stage_weights (with your usual targets and options)"

# What from_pretrained needs for a causal LM: safetensors weights (sharded or not) and their index, configs, and
# tokenizer files of every kind (fast, sentencepiece, tiktoken, BPE vocab/merges, chat templates).
ALLOW_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "*.tiktoken",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
# Never pickles or other frameworks' weights (the allow-list already leaves them out; this keeps them out should
# the allow-list grow), and never the original/consolidated checkpoints that some repos ship beside the
# transformers weights (e.g. original/*.safetensors in gpt-oss, consolidated.safetensors in Mistral): same
# weights again in another layout, often as large as the model.
IGNORE_PATTERNS: tuple[str, ...] = (
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.h5",
    "*.msgpack",
    "*.pkl",
    "*.pickle",
    "original/*",
    "*/original/*",
    "consolidated*",
    "*/consolidated*",
)


class StagingError(RuntimeError):
    """Staging failed; the message names the model, its repository and the fix."""


def hub_token() -> str | None:
    """The hub token from the environment (HF_TOKEN, else HUGGING_FACE_HUB_TOKEN), or None.

    Environment only, never a token file: what staging sends is what the job's environment says, so the gated
    check and its error message describe exactly what happened.
    """
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return None


def hub_endpoint() -> str:
    """HF_ENDPOINT as it is now (huggingface_hub reads it once, at import), else the library's own endpoint."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT", "").strip() or constants.ENDPOINT or DEFAULT_ENDPOINT).rstrip("/")


def files_dir(dest: Path) -> Path:
    return Path(dest) / FILES_DIR


def select_files(paths: Iterable[str]) -> list[str]:
    """The repository paths staging fetches, in huggingface_hub's own pattern semantics (as snapshot_download)."""
    from huggingface_hub.utils import filter_repo_objects

    return sorted(
        filter_repo_objects(paths, allow_patterns=list(ALLOW_PATTERNS), ignore_patterns=list(IGNORE_PATTERNS))
    )


def stage_snapshot(
    name: str,
    repo_id: str,
    revision: str | None,
    dest: Path,
    token: str | None,
    min_free_margin_gib: float = 2.0,
) -> dict[str, Any]:
    """Stage ``repo_id`` at ``revision`` (branch, tag or commit; None = the default branch) into ``dest/files``.

    Returns the manifest (see ``write_manifest``); it never contains the token. Raises StagingError.
    """
    import huggingface_hub
    from huggingface_hub import HfApi, snapshot_download

    dest = Path(dest)
    target = files_dir(dest)
    endpoint = hub_endpoint()
    where = _Context(name, repo_id, revision, token, target)
    # token=False, not None: None would make huggingface_hub fall back to a stored login token, which
    # hub_token deliberately ignores (see there).
    send_token: str | bool = token or False

    with where.translate():
        info = HfApi(endpoint=endpoint, token=send_token).model_info(
            repo_id, revision=revision, files_metadata=True, token=send_token
        )
    commit = info.sha
    if not commit:
        raise StagingError(
            f"Model {name!r}: the hub at {endpoint} answered for {repo_id}@{revision} without a commit hash; "
            "HF_ENDPOINT must point to a Hugging Face compatible hub (unset it for huggingface.co)."
        )
    # A gated repository lists its files to anyone but serves them only to accepted, authenticated users: fail
    # here, before the disk check and download, rather than on the first file.
    if info.gated and not token:
        raise StagingError(where.gated_message("no HF_TOKEN is set"))

    siblings = {sibling.rfilename: sibling for sibling in info.siblings or []}
    entries = []
    for path in select_files(list(siblings)):
        sibling = siblings[path]
        lfs = sibling.lfs
        size = lfs.size if lfs is not None else sibling.size
        if size is None:
            raise StagingError(
                f"Model {name!r}: the hub at {endpoint} gave no size for {repo_id}/{path} at {commit}, so the "
                "download cannot be checked; HF_ENDPOINT must point to a Hugging Face compatible hub."
            )
        entries.append(
            {
                "path": path,
                "size": int(size),
                "sha256": lfs.sha256 if lfs is not None else None,
                "blob_id": sibling.blob_id,
            }
        )
    if not any(entry["path"].endswith(".safetensors") for entry in entries):
        weights = sorted(
            p for p in siblings if p.endswith((".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".safetensors"))
        )
        raise StagingError(
            f"Model {name!r}: {repo_id}@{commit[:12]} has no safetensors weights that transformers loads "
            f"(weight files there: {', '.join(weights) or 'none'}); kmap loads safetensors only, never pickled "
            f"checkpoints. Choose a revision or a conversion of the model that has *.safetensors "
            f"(models.{name}.source / models.{name}.revision)."
        )
    # Leftovers of a previous revision go before the space check, so a revision change on a nearly full disk
    # can reuse their space.
    _remove_leftovers(target, {entry["path"]: entry["size"] for entry in entries})
    _check_space(where, target, entries, min_free_margin_gib)

    with where.translate():
        # A commit hash, not the branch: the files are exactly those listed above even if the branch moves meanwhile.
        # Files already complete (same commit, or same content) are kept; only missing ones are fetched.
        snapshot_download(
            repo_id,
            revision=commit,
            local_dir=target,
            allow_patterns=list(ALLOW_PATTERNS),
            ignore_patterns=list(IGNORE_PATTERNS),
            token=send_token,
            endpoint=endpoint,
        )

    bad = _mismatches(target, entries)
    if bad:
        raise StagingError(
            f"Model {name!r}: after downloading {repo_id}@{commit[:12]} into {target}, these files are missing or "
            f"of the wrong size: {', '.join(bad)}. The hub may have become unreachable during the download (see "
            "the warnings above); rerun the staging where the hub is reachable (complete files are kept)."
        )
    return {
        "name": name,
        "repo_id": repo_id,
        "revision": revision,
        "commit": commit,
        "endpoint": endpoint,
        "files_dir": FILES_DIR,
        "files": entries,
        "total_bytes": sum(entry["size"] for entry in entries),
        "staged_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "huggingface_hub": huggingface_hub.__version__,
    }


def write_manifest(manifest: dict[str, Any], path: Path) -> None:
    """Write atomically (temporary sibling, then rename): a reader never sees a half-written manifest."""
    write_json_atomic(path, manifest)


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise StagingError(f"Cannot read the staging manifest {path} ({error}); {FORCERUN_FIX}.") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise StagingError(f"The staging manifest {path} has no file list; {FORCERUN_FIX}.")
    return manifest


def check_staged(manifest_path: Path) -> Path:
    """The staged files folder, after checking that every file of the manifest is there with its size."""
    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path)
    folder = manifest_path.parent / manifest.get("files_dir", FILES_DIR)
    bad = _mismatches(folder, manifest["files"])
    if bad:
        raise StagingError(
            f"Model {manifest.get('name')!r} ({manifest.get('repo_id')}@{str(manifest.get('commit'))[:12]}): the "
            f"staged snapshot in {folder} is incomplete: {', '.join(bad)}; {FORCERUN_FIX}."
        )
    return folder


class _Context:
    """What an error message needs to name (never the token itself, only to scrub it from quoted causes)."""

    def __init__(self, name: str, repo_id: str, revision: str | None, token: str | None, target: Path) -> None:
        self.name, self.repo_id, self.revision, self.token, self.target = name, repo_id, revision, token, target

    @property
    def model(self) -> str:
        return f"Model {self.name!r} ({self.repo_id})"

    def cause(self, error: BaseException) -> str:
        text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())[:300]
        if self.token:
            text = text.replace(self.token, "***")
        return f"{type(error).__name__}: {text}" if text else type(error).__name__

    def gated_message(self, why: str) -> str:
        return (
            f"{self.model} is gated and {why}. Accept its license on https://huggingface.co/{self.repo_id} with "
            "your account, then export HF_TOKEN (a token of that account with read access) in the environment "
            "of the staging job and rerun."
        )

    @contextmanager
    def translate(self) -> Iterator[None]:
        """Turn huggingface_hub's and the network's errors into a StagingError naming the fix."""
        from huggingface_hub import errors as hub

        try:
            yield
        except StagingError:
            raise
        except hub.GatedRepoError as error:  # before RepositoryNotFoundError, its base class
            why = "the token in HF_TOKEN has no access to it" if self.token else "no HF_TOKEN is set"
            raise StagingError(f"{self.gated_message(why)} ({self.cause(error)})") from error
        except hub.RepositoryNotFoundError as error:
            raise StagingError(
                f"{self.model}: repository not found. Check the spelling of models.{self.name}.source "
                f"({self.repo_id!r}); if it is a private repository, export HF_TOKEN with access to it. "
                f"({self.cause(error)})"
            ) from error
        except hub.RevisionNotFoundError as error:
            raise StagingError(
                f"{self.model}: revision {self.revision!r} not found. Set models.{self.name}.revision to a "
                f"branch, tag or commit hash of that repository (see https://huggingface.co/{self.repo_id}/tree/main)."
                f" ({self.cause(error)})"
            ) from error
        except hub.OfflineModeIsEnabled as error:  # a ConnectionError: before the network errors
            raise StagingError(
                f"{self.model}: HF_HUB_OFFLINE is set in the staging job's environment, but staging downloads "
                "from the hub; unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) for the stage_weights job."
            ) from error
        except hub.HfHubHTTPError as error:
            status = getattr(getattr(error, "response", None), "status_code", None)
            if status in (401, 403):
                raise StagingError(
                    f"{self.model}: the hub refused access (HTTP {status}). If the model is gated or private, "
                    f"accept its license on https://huggingface.co/{self.repo_id} and export HF_TOKEN with a valid "
                    f"token of that account. ({self.cause(error)})"
                ) from error
            raise StagingError(
                f"{self.model}: the hub answered HTTP {status} ({self.cause(error)}); retry later, or check "
                "HF_ENDPOINT if you use a mirror."
            ) from error
        except Exception as error:
            if _no_space(error):
                raise StagingError(
                    f"{self.model}: the disk of {self.target} filled up during the download ({self.cause(error)}). "
                    f"Free space there (see staging.min_free_gib) or set staging.dir to a larger disk, then rerun; "
                    "complete files are kept."
                ) from error
            if isinstance(error, _network_errors()):
                raise StagingError(
                    f"{self.model}: cannot reach the hub ({self.cause(error)}). Staging needs the internet: run it "
                    "where it is available (e.g. the login node: cluster.internet_jobs: local), or set HF_ENDPOINT "
                    "to a reachable mirror."
                ) from error
            raise


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection-level failures: huggingface_hub 2.x speaks httpx2 (older versions httpx), each raising its own."""
    from huggingface_hub import errors as hub

    found: list[type[BaseException]] = [ConnectionError, TimeoutError, hub.LocalEntryNotFoundError]
    for module in ("httpx2", "httpx"):
        with suppress(ImportError, AttributeError):
            found.append(importlib.import_module(module).TransportError)
    return tuple(found)


def _no_space(error: BaseException | None) -> bool:
    """Whether ``error`` or an error in its chain is a full disk."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        error = error.__cause__ or error.__context__
    return False


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_space(where: _Context, target: Path, entries: list[dict[str, Any]], margin_gib: float) -> None:
    """Fail before downloading when the files still to fetch would leave less than the margin free."""
    missing = 0
    for entry in entries:
        local = target / entry["path"]
        if not (local.is_file() and local.stat().st_size == entry["size"]):
            missing += entry["size"]
    folder = _existing_parent(target)
    free = shutil.disk_usage(folder).free
    needed = missing + margin_gib * GIB
    if free < needed:
        raise StagingError(
            f"{where.model}: not enough disk space to stage it into {target}: it needs {needed / GIB:.2f} GiB "
            f"({missing / GIB:.2f} GiB of files still to download + {margin_gib:g} GiB margin, staging.min_free_gib) "
            f"but {folder} has {free / GIB:.2f} GiB free. Free space there or set staging.dir to a larger disk."
        )


def _remove_leftovers(target: Path, sizes: dict[str, int]) -> None:
    """Delete files that are not part of this snapshot (a previous revision's), and folders left empty.

    Also files of the snapshot with another size than listed (truncated or altered after staging): huggingface_hub
    trusts a file its metadata records for the same commit, so without this a rerun would keep the damaged file.

    huggingface_hub's own ``.cache`` folder stays (its per-file metadata lets unchanged files be kept), except
    the temporary ``*.incomplete`` downloads of a killed earlier run: huggingface_hub 2.x names them per process
    and never resumes them, so they would only take space (Snakemake runs one staging job per folder).
    """
    if not target.is_dir():
        return
    for path in sorted(target.rglob("*"), reverse=True):  # children before their folders
        relative = path.relative_to(target)
        if relative.parts[0] == ".cache":
            if path.is_file() and path.name.endswith(".incomplete"):
                path.unlink(missing_ok=True)
            continue
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif sizes.get(relative.as_posix()) != path.lstat().st_size:
            path.unlink(missing_ok=True)


def _mismatches(folder: Path, entries: list[dict[str, Any]]) -> list[str]:
    """Files of ``entries`` missing under ``folder`` or of another size, as 'path (why)'."""
    bad = []
    for entry in entries:
        local = folder / entry["path"]
        if not local.is_file():
            bad.append(f"{entry['path']} (missing)")
        elif local.stat().st_size != entry["size"]:
            bad.append(f"{entry['path']} ({local.stat().st_size} bytes, expected {entry['size']})")
    return bad
