"""Stage isolation: a document the tokenizer fails on is dead-lettered, the rest of its block goes on; the
lock finds the table's store with the sink's LanceDB options; stages time their steps in wall and CPU seconds."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pyarrow as pa
import pytest
import torch

from pipeline import schema, stages
from pipeline.config import ChunkingConfig, ModelConfig
from pipeline.storage_options import as_s3fs_options
from tests.unit.test_out_of_memory import _chunked_documents, _stage


class PickyTokenizer:
    """Splits on spaces with char offsets; fails on any text containing 'BOOM' (batch and single)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> SimpleNamespace:
        if "BOOM" in text:
            raise RuntimeError("tokenizer exploded")
        offsets, position = [], 0
        for word in text.split(" "):
            offsets.append((position, position + len(word)))
            position += len(word) + 1
        return SimpleNamespace(ids=list(range(len(offsets))), offsets=offsets)

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[SimpleNamespace]:
        return [self.encode(text) for text in texts]


def _documents(texts: dict[str, str]) -> pa.Table:
    rows = [
        {
            schema.DOC_ID: doc_id,
            schema.TEXT: text,
            schema.SOURCE_URI: "mem://x",
            schema.METADATA: "{}",
            schema.ERROR: None,
            schema.ERROR_DETAIL: None,
            schema.SNIPPET: None,
            schema.DOC_FINGERPRINT: doc_id,
        }
        for doc_id, text in texts.items()
    ]
    return pa.Table.from_pylist(rows, schema=schema.DOCUMENTS)


def test_a_document_the_tokenizer_fails_on_is_dead_lettered_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages, "_document_tokenizer", lambda model: PickyTokenizer())
    settings = stages.ChunkSettings(ModelConfig(), ChunkingConfig(strategy="tokens", size=2))
    output = stages.chunk_documents(_documents({"a": "one two three", "b": "BOOM here", "c": "four"}), settings)
    rows = {row[schema.DOC_ID]: row for row in output.to_pylist()}
    assert rows["b"][schema.ERROR] == "tokenize_failed" and "exploded" in rows["b"][schema.ERROR_DETAIL]
    assert rows["a"][schema.ERROR] is None and rows["a"][schema.TOKEN_ENDS] == [2, 3]
    assert rows["c"][schema.ERROR] is None and rows["c"][schema.CHAR_ENDS] == [4]
    assert output.schema.equals(schema.CHUNKED_DOCUMENTS)


def test_lancedb_storage_options_become_s3fs_arguments() -> None:
    options = as_s3fs_options(
        {
            "aws_access_key_id": "AK",
            "aws_secret_access_key": "SK",
            "aws_endpoint": "http://127.0.0.1:9000",
            "aws_region": "eu-west-1",
            "allow_http": "true",
        }
    )
    assert options == {
        "key": "AK",
        "secret": "SK",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"},
    }
    assert as_s3fs_options({}) == {}


def test_tokenizing_workers_rebuild_the_drivers_tokenizer_without_torch(tmp_path) -> None:
    """The chunk stage's tokenizer comes from the driver as JSON: same ids and offsets as the tokenizer loaded
    through transformers, and a worker process that reads, tokenizes and chunks never imports torch."""
    import subprocess
    import sys
    from pathlib import Path

    settings = stages.chunk_settings(ModelConfig(), ChunkingConfig(strategy="tokens", size=8))
    text = "Late chunking pools spans after one forward pass. Ünïcödé café — “quotes” 日本語\tand\nnewlines."
    rebuilt = stages._document_tokenizer(settings).encode(text, add_special_tokens=False)
    loaded = stages._tokenizer_of_model(settings.model).encode(text, add_special_tokens=False)
    assert (rebuilt.ids, rebuilt.offsets) == (loaded.ids, loaded.offsets)

    (tmp_path / "tokenizer.json").write_text(settings.tokenizer_json)
    script = f"""
import sys
from pathlib import Path
import pyarrow as pa
from pipeline import schema, stages
from pipeline.config import ChunkingConfig, ModelConfig
settings = stages.ChunkSettings(ModelConfig(), ChunkingConfig(strategy="tokens", size=8),
                                Path({str(tmp_path / "tokenizer.json")!r}).read_text())
row = {{schema.DOC_ID: "a", schema.TEXT: {text!r}, schema.SOURCE_URI: "mem://x", schema.METADATA: "{{}}",
        schema.DOC_FINGERPRINT: "f"}}
out = stages.chunk_documents(pa.Table.from_pylist([row], schema=schema.DOCUMENTS), settings).to_pylist()[0]
print(out[schema.INPUT_IDS] == {list(loaded.ids)!r}, "torch" in sys.modules, "transformers" in sys.modules)
"""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "False", "False"], result.stderr


def test_a_stopwatch_counts_waiting_as_wall_time_and_computing_as_cpu_time() -> None:
    watch = stages.Stopwatch()
    time.sleep(0.2)
    waited = watch.elapsed("wait")
    assert waited["wait_s"] >= 0.2 and waited["wait_cpu_s"] < 0.1
    watch.restart()
    while watch.cpu_s < 0.2:  # busy
        pass
    computed = watch.elapsed("work")
    assert computed["work_cpu_s"] >= 0.2 and computed["work_s"] >= 0.9 * computed["work_cpu_s"]


class SleepyEncoder(torch.nn.Module):
    """The tiny encoder, after a 0.1 s wait per forward: wall time the actor spends without computing."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        time.sleep(0.1)
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask)


def test_the_embedding_stage_reports_its_wall_and_cpu_seconds(tiny_bert: torch.nn.Module) -> None:
    run_stats = stages.RunStats()
    stage = _stage(SleepyEncoder(tiny_bert), max_tokens=40)
    stage.stats = run_stats
    stage(_chunked_documents({"a": 30, "b": 30, "c": 30}))  # three one-sequence batches: 0.3 s asleep
    counters = run_stats.counters
    assert counters["embed_s"] >= 0.3 and counters["forward_forwards"] == 3
    assert 0 < counters["embed_cpu_s"] < counters["embed_s"] - 0.2  # the waits are wall time, not CPU
