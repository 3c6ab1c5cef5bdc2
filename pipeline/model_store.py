"""Models in object storage: sync a model directory from ``s3://``, ``gs://``, ``az://`` (any fsspec protocol that
is not local) to node-local disk once, and hand transformers a local path.

Clusters without hub access keep their models in a bucket. Every embedding actor (and the driver) calls
:func:`localize_model` before loading; the first caller on a node downloads, the others wait on a file lock and
reuse the copy. The cache is checked on every call:

- the remote listing (relative path, size, ETag where the store gives one) must equal the one recorded in the
  copy's manifest, so a model re-uploaded under the same URI is fetched again;
- every local file's size and sha256 must equal the manifest's, so a truncated or corrupted copy is fetched again.

A download goes into a temporary directory beside the cache entry and is renamed into place only when complete,
so a crash mid-download never leaves a half-written model where a loader would find it. :func:`localize_model`
checks once per process (tokenizer and model loads of one worker call it many times; one process then also keeps
one copy for its whole run); :func:`sync_model` checks on every call.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CACHE_ENV = "LATELINE_MODEL_CACHE"
DEFAULT_CACHE = "~/.cache/lateline/models"
MANIFEST = ".lateline-manifest.json"
LOCAL_PROTOCOLS = frozenset({"file", "local"})
_HASH_BLOCK = 1 << 22
_checked: dict[tuple[str, Path], str] = {}  # (uri, cache root) -> local path, synced by this process


class ModelStoreError(RuntimeError):
    """The model URI cannot be synced: nothing there, no ``config.json``, or a download that does not match."""


@dataclass(frozen=True)
class SyncResult:
    """Where the model lies locally and whether this call downloaded it (``files``/``bytes``: what it fetched)."""

    path: str
    downloaded: bool
    files: int = 0
    bytes: int = 0


def is_remote(uri: str) -> bool:
    """True when ``uri`` names an fsspec protocol other than the local filesystem (``s3://``, ``gs://``, ...)."""
    from fsspec.utils import get_protocol

    return get_protocol(uri) not in LOCAL_PROTOCOLS


def localize_model(uri: str, storage_options: dict | None = None, cache_dir: str | None = None) -> str:
    """A local directory holding the model at ``uri``.

    Object-storage URIs are synced (see :func:`sync_model`); a ``file://`` URI becomes its path; local paths and
    hub ids are returned unchanged. ``storage_options`` go to fsspec (s3fs keys: ``key``, ``secret``,
    ``endpoint_url``, ``client_kwargs``, ...; credentials are better left to the environment). ``cache_dir``
    (default ``$LATELINE_MODEL_CACHE``, else ``~/.cache/lateline/models``) holds one directory per URI.
    """
    if not is_remote(uri):
        return uri.removeprefix("file://")
    key = (uri, cache_root(cache_dir))
    if key not in _checked or not Path(_checked[key]).is_dir():
        _checked[key] = sync_model(uri, storage_options, cache_dir).path
    return _checked[key]


def cache_root(cache_dir: str | None = None) -> Path:
    """The cache directory: ``cache_dir``, else ``$LATELINE_MODEL_CACHE``, else ``~/.cache/lateline/models``."""
    return Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def cache_key(uri: str) -> str:
    """The cache entry's name for ``uri``: a sha256 of the URI without a trailing slash."""
    return hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:32]


def sync_model(uri: str, storage_options: dict | None = None, cache_dir: str | None = None) -> SyncResult:
    """Make ``<cache>/<cache_key(uri)>`` an exact, verified copy of the directory at ``uri``; download only when
    the cached copy is missing, differs from the remote listing or fails its checksums. Safe to call from many
    processes on one node at once: they serialise on a file lock and only the first downloads.

    Raises :class:`ModelStoreError` when ``uri`` holds no files or no ``config.json``, or when a downloaded
    file's size differs from the listing.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    remote = _listing(fs, root.rstrip("/"), uri)
    base = cache_root(cache_dir)
    base.mkdir(parents=True, exist_ok=True)
    target = base / cache_key(uri)
    with _locked(base / f"{target.name}.lock"):
        if _cached_copy_is_valid(target, remote):
            return SyncResult(str(target), downloaded=False)
        _remove_leftovers(base, target.name)
        log.info("downloading model %s to %s", uri, target)
        fetched = _download(fs, root.rstrip("/"), remote, base, target, uri)
    return SyncResult(str(target), downloaded=True, files=len(remote), bytes=fetched)


def _listing(fs: Any, root: str, uri: str) -> dict[str, dict[str, Any]]:
    """Relative path -> ``{"size", "etag"}`` for every file below ``root`` (our manifest name excluded)."""
    files = {}
    for path, info in fs.find(root, detail=True).items():
        relative = path[len(root) :].lstrip("/")
        if info.get("type", "file") != "file" or not relative or relative.endswith("/") or relative == MANIFEST:
            continue
        files[relative] = {"size": int(info["size"]), "etag": _etag(info)}
    if not files:
        raise ModelStoreError(f"model.name_or_path: no files under {uri!r}")
    if "config.json" not in files:
        raise ModelStoreError(f"model.name_or_path: {uri!r} is not a model directory (no config.json at its top)")
    return files


def _etag(info: dict[str, Any]) -> str | None:
    """The store's version tag of an object (S3 ``ETag``, GCS/Azure ``etag``), quotes stripped; None if absent."""
    tag = info.get("ETag") or info.get("etag")
    return str(tag).strip('"') if tag else None


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path`` for the duration; the kernel drops it if the holder dies."""
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cached_copy_is_valid(target: Path, remote: dict[str, dict[str, Any]]) -> bool:
    """True when ``target`` has a manifest matching the remote listing and every file matches its checksum."""
    try:
        manifest = json.loads((target / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    listed = {name: {"size": entry["size"], "etag": entry["etag"]} for name, entry in manifest.items()}
    if listed != remote:
        log.info("model at %s changed remotely (size or ETag); fetching it again", target)
        return False
    for name, entry in manifest.items():
        path = target / name
        if not path.is_file() or path.stat().st_size != entry["size"] or _sha256(path) != entry["sha256"]:
            log.warning("cached model file %s fails its checksum; fetching the model again", path)
            return False
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _remove_leftovers(base: Path, key: str) -> None:
    """Temporary directories of downloads killed midway (safe to remove: we hold the entry's lock)."""
    for leftover in base.glob(f"{key}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _download(fs: Any, root: str, remote: dict[str, dict[str, Any]], base: Path, target: Path, uri: str) -> int:
    """Fetch every listed file into a temporary directory, check sizes, write the manifest, then swap it into
    place. Returns the bytes fetched."""
    staging = base / f"{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        names = sorted(remote)
        for name in names:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
        # One call with lists: async filesystems (s3fs, gcsfs) fetch the files concurrently.
        fs.get([f"{root}/{name}" for name in names], [str(staging / name) for name in names])
        _write_manifest(staging, remote, uri)
        _swap_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sum(entry["size"] for entry in remote.values())


def _write_manifest(staging: Path, remote: dict[str, dict[str, Any]], uri: str) -> None:
    files = {}
    for name, entry in remote.items():
        size = (staging / name).stat().st_size if (staging / name).is_file() else -1
        if size != entry["size"]:
            raise ModelStoreError(f"download of {uri}/{name} has {size} bytes, the listing says {entry['size']}")
        files[name] = {**entry, "sha256": _sha256(staging / name)}
    record = {"uri": uri, "downloaded_at": time.time(), "files": files}
    (staging / MANIFEST).write_text(json.dumps(record, indent=1, sort_keys=True))


def _swap_into_place(staging: Path, target: Path) -> None:
    """Replace ``target`` by ``staging`` with renames. The old copy is renamed aside before it is deleted, so a
    process that opened its files keeps reading whole files, and ``target`` is never partly written."""
    old = target.with_name(f"{target.name}.tmp-old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
