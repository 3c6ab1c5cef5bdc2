"""A model directory in S3 (moto on loopback) synced to a local cache: once per node, checksum-verified."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.model import resolve_model_path
from pipeline.model_store import MANIFEST, localize_model, sync_model

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@pytest.fixture(scope="module")
def s3_model(s3fs_client, tmp_path_factory) -> str:
    """A tiny random BERT with the bundled model's tokenizer, uploaded to ``s3://models/tiny-bert``."""
    from transformers import BertConfig, BertModel

    local = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(local)
    for name in TOKENIZER_FILES:
        (local / name).write_bytes((Path(resolve_model_path("all-MiniLM-L6-v2")) / name).read_bytes())
    s3fs_client.mkdir("models")
    s3fs_client.put(str(local), "models/tiny-bert", recursive=True)
    return "s3://models/tiny-bert"


def _files(path: str) -> dict[str, bytes]:
    root = Path(path)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST}


def test_synced_once_reused_then_refetched_when_corrupted(s3_model: str, s3_endpoint: str, tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}}
    first = sync_model(s3_model, options, cache_dir=str(tmp_path))
    assert first.downloaded and first.files == len(TOKENIZER_FILES) + 2  # + config.json, model.safetensors
    manifest = json.loads((Path(first.path) / MANIFEST).read_text())["files"]
    assert all(entry["etag"] for entry in manifest.values()), "S3 listings carry ETags; they are recorded"
    original = _files(first.path)
    assert AutoModel.from_pretrained(first.path).config.hidden_size == 32
    assert AutoTokenizer.from_pretrained(first.path).is_fast

    second = sync_model(s3_model, options, cache_dir=str(tmp_path))
    assert not second.downloaded and second.path == first.path

    weights = Path(first.path) / "model.safetensors"
    weights.write_bytes(bytes(reversed(weights.read_bytes())))  # same size, different bytes
    third = sync_model(s3_model, options, cache_dir=str(tmp_path))
    assert third.downloaded and _files(third.path) == original


def test_processes_on_one_node_download_once(s3_model: str, tmp_path: Path) -> None:
    """Several actors starting together on one node: the file lock lets exactly one of them download. The AWS
    endpoint and credentials come from the environment (as on a cluster), not from storage_options."""
    script = (
        "import sys; from pipeline.model_store import sync_model; "
        "r = sync_model(sys.argv[1], cache_dir=sys.argv[2]); print(int(r.downloaded), r.path)"
    )
    command = [sys.executable, "-c", script, s3_model, str(tmp_path)]
    processes = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [process.communicate(timeout=120)[0].split() for process in processes]
    assert all(process.returncode == 0 for process in processes)
    assert sorted(int(downloaded) for downloaded, _ in outputs) == [0, 0, 1]
    assert len({path for _, path in outputs}) == 1
    assert localize_model(s3_model, cache_dir=str(tmp_path)) == outputs[0][1]
