"""Syncing a model directory from an fsspec store (here fsspec's in-memory filesystem) to a local cache."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from pathlib import Path

import fsspec
import pytest

from pipeline.model_store import (
    CACHE_ENV,
    MANIFEST,
    ModelStoreError,
    cache_key,
    cache_root,
    is_remote,
    localize_model,
    sync_model,
)

FILES = {
    "config.json": b'{"model_type": "bert"}',
    "model.safetensors": bytes(range(256)) * 64,
    "tokenizer.json": b'{"version": "1.0"}',
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
}


@pytest.fixture
def model_uri() -> str:
    """A model directory in fsspec's in-memory store, under a fresh prefix (the store is process-global)."""
    uri = f"memory://models-{uuid.uuid4().hex[:8]}/tiny"
    fs = fsspec.filesystem("memory")
    for name, data in FILES.items():
        fs.pipe(f"{uri}/{name}", data)
    yield uri
    fs.rm(uri.rsplit("/", 1)[0], recursive=True)


def _contents(path: str) -> dict[str, bytes]:
    root = Path(path)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST}


@pytest.mark.parametrize(
    ("uri", "remote"),
    [
        ("s3://bucket/models/minilm", True),
        ("gs://bucket/m", True),
        ("az://container/m", True),
        ("memory://m", True),
        ("/opt/models/minilm", False),
        ("sentence-transformers/all-MiniLM-L6-v2", False),
        ("file:///opt/models/minilm", False),
    ],
)
def test_object_storage_uris_are_remote_paths_and_hub_ids_are_not(uri: str, remote: bool) -> None:
    assert is_remote(uri) is remote


def test_local_paths_and_hub_ids_are_returned_unchanged(tmp_path: Path) -> None:
    assert localize_model("sentence-transformers/all-MiniLM-L6-v2", cache_dir=str(tmp_path)) == (
        "sentence-transformers/all-MiniLM-L6-v2"
    )
    assert localize_model("/opt/models/minilm", cache_dir=str(tmp_path)) == "/opt/models/minilm"
    assert localize_model("file:///opt/models/minilm", cache_dir=str(tmp_path)) == "/opt/models/minilm"
    assert list(tmp_path.iterdir()) == []


def test_first_call_downloads_an_exact_copy_second_call_reuses_it(model_uri: str, tmp_path: Path) -> None:
    first = sync_model(model_uri, cache_dir=str(tmp_path))
    assert first.downloaded and first.files == len(FILES) and first.bytes == sum(map(len, FILES.values()))
    assert first.path == str(tmp_path / cache_key(model_uri))
    assert _contents(first.path) == FILES
    manifest = json.loads((Path(first.path) / MANIFEST).read_text())
    assert manifest["uri"] == model_uri and set(manifest["files"]) == set(FILES)
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"].values())

    second = sync_model(model_uri, cache_dir=str(tmp_path))
    assert not second.downloaded and second.path == first.path
    assert localize_model(model_uri, cache_dir=str(tmp_path)) == first.path
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name], "no staging directory is left behind"


def test_a_corrupted_cached_file_is_detected_and_fetched_again(model_uri: str, tmp_path: Path) -> None:
    path = Path(sync_model(model_uri, cache_dir=str(tmp_path)).path)
    weights = path / "model.safetensors"
    weights.write_bytes(b"\x00" * weights.stat().st_size)  # same size: only the checksum can tell
    again = sync_model(model_uri, cache_dir=str(tmp_path))
    assert again.downloaded and _contents(again.path) == FILES


def test_a_deleted_cached_file_is_fetched_again(model_uri: str, tmp_path: Path) -> None:
    path = Path(sync_model(model_uri, cache_dir=str(tmp_path)).path)
    (path / "1_Pooling" / "config.json").unlink()
    assert sync_model(model_uri, cache_dir=str(tmp_path)).downloaded
    assert _contents(str(path)) == FILES


def test_a_model_changed_in_the_store_is_fetched_again(model_uri: str, tmp_path: Path) -> None:
    sync_model(model_uri, cache_dir=str(tmp_path))
    fsspec.filesystem("memory").pipe(f"{model_uri}/model.safetensors", b"new weights")
    again = sync_model(model_uri, cache_dir=str(tmp_path))
    assert again.downloaded and _contents(again.path)["model.safetensors"] == b"new weights"


def test_a_killed_download_leaves_nothing_a_loader_would_use(model_uri: str, tmp_path: Path) -> None:
    key = cache_key(model_uri)
    staging = tmp_path / f"{key}.tmp-999-deadbeef"
    staging.mkdir()
    (staging / "config.json").write_text("{}")  # what a download killed midway leaves
    result = sync_model(model_uri, cache_dir=str(tmp_path))
    assert result.downloaded and _contents(result.path) == FILES
    assert not staging.exists()


def test_concurrent_callers_download_once(model_uri: str, tmp_path: Path) -> None:
    results = []

    def call() -> None:
        results.append(sync_model(model_uri, cache_dir=str(tmp_path)))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.downloaded for r in results) == [False, False, False, True]
    assert len({r.path for r in results}) == 1 and _contents(results[0].path) == FILES


def test_a_directory_without_config_json_or_files_is_refused(model_uri: str, tmp_path: Path) -> None:
    fsspec.filesystem("memory").rm(f"{model_uri}/config.json")
    with pytest.raises(ModelStoreError, match=r"no config\.json"):
        sync_model(model_uri, cache_dir=str(tmp_path))
    with pytest.raises(ModelStoreError, match="no files under"):
        sync_model(f"{model_uri}-missing", cache_dir=str(tmp_path))


def test_cache_root_argument_then_environment_then_home(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "from-env"))
    assert cache_root(str(tmp_path / "given")) == tmp_path / "given"
    assert cache_root() == tmp_path / "from-env"
    monkeypatch.delenv(CACHE_ENV)
    assert cache_root() == Path("~/.cache/lateline/models").expanduser()
    assert cache_key("s3://b/m/") == cache_key("s3://b/m") != cache_key("s3://b/other")


def test_download_is_logged_with_source_and_target(model_uri: str, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline.model_store"):
        sync_model(model_uri, cache_dir=str(tmp_path))
        sync_model(model_uri, cache_dir=str(tmp_path))
    downloads = [r.getMessage() for r in caplog.records if r.getMessage().startswith("downloading model")]
    assert len(downloads) == 1 and model_uri in downloads[0]


def test_localize_checks_once_per_process(model_uri: str, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline.model_store"):
        first = localize_model(model_uri, cache_dir=str(tmp_path))
        fsspec.filesystem("memory").pipe(f"{model_uri}/model.safetensors", b"changed mid-run")
        assert localize_model(model_uri, cache_dir=str(tmp_path)) == first
    assert _contents(first)["model.safetensors"] == FILES["model.safetensors"], "one run keeps one model"
    assert sum(r.getMessage().startswith("downloading model") for r in caplog.records) == 1


@pytest.mark.parametrize(
    ("name", "local"),
    [
        ("/opt/models/minilm", True),
        ("./models/minilm", True),
        ("~/models/minilm", True),
        ("models/minilm/v2", True),
        ("sentence-transformers/all-MiniLM-L6-v2", False),
        ("bert-base-uncased", False),
        ("s3://bucket/models/minilm", False),
    ],
)
def test_a_name_that_can_only_be_a_path_is_told_apart_from_a_hub_id(name: str, local: bool) -> None:
    from pipeline.model import looks_like_local_path

    assert looks_like_local_path(name) is local


def test_a_missing_model_under_a_local_directory_is_named_as_a_directory(tmp_path: Path, monkeypatch) -> None:
    from pipeline.model import ModelNotFound

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    error = ModelNotFound.of("models/minilm", "models/minilm", OSError("not a valid repo id"))
    assert str(error).startswith("model.name_or_path: no such directory 'models/minilm'")
    hub = ModelNotFound.of("org/minilm", "org/minilm", OSError("not found on the hub"))
    assert "no such directory" not in str(hub) and "not found on the hub" in str(hub)
