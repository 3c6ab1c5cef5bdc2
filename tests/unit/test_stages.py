"""Stage isolation: a document the tokenizer fails on is dead-lettered, the rest of its block goes on; the
lock finds the table's store with the sink's LanceDB options."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow as pa
import pytest

from pipeline import schema, stages
from pipeline.config import ChunkingConfig, ModelConfig
from pipeline.lock import fsspec_options


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
    options = fsspec_options(
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
    assert fsspec_options({}) == {}
