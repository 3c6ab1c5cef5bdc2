"""fingerprint.py: a document is re-embedded exactly when something that shapes its vectors changes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.config import ChunkingConfig, EmbeddingConfig
from pipeline.fingerprint import document_fingerprint, embedding_settings, settings_digest
from pipeline.model import ModelIdentity
from pipeline.sources import content_hash

IDENTITY = ModelIdentity(
    name="all-MiniLM-L6-v2",
    fingerprint="abc123",
    dim=384,
    pooling="mean",
    max_length=256,
    dtype="float32",
    document_prefix="",
)
CHUNKING = ChunkingConfig(strategy="tokens", size=128, overlap=16)
EMBEDDING = EmbeddingConfig(mode="late", window_overlap=64)
CONTENT = content_hash("Some document text.", '{"title": "t"}')


def fingerprint(
    chunking: ChunkingConfig = CHUNKING,
    embedding: EmbeddingConfig = EMBEDDING,
    identity: ModelIdentity = IDENTITY,
    content: str = CONTENT,
) -> str:
    return document_fingerprint(content, settings_digest(embedding_settings(chunking, embedding, identity)))


def test_identical_inputs_give_the_identical_fingerprint() -> None:
    again = fingerprint(
        ChunkingConfig(strategy="tokens", size=128, overlap=16),
        EmbeddingConfig(mode="late", window_overlap=64),
        replace(IDENTITY),
        content_hash("Some document text.", '{"title": "t"}'),
    )
    assert again == fingerprint()
    assert len(again) == 32 and int(again, 16) >= 0


@pytest.mark.parametrize(
    "changed",
    [
        {"content": content_hash("Some document text!", '{"title": "t"}')},
        {"content": content_hash("Some document text.", '{"title": "other"}')},
        {"chunking": ChunkingConfig(strategy="sentences", size=128)},
        {"chunking": ChunkingConfig(strategy="paragraphs", size=128)},
        {"chunking": ChunkingConfig(strategy="tokens", size=256, overlap=16)},
        {"chunking": ChunkingConfig(strategy="tokens", size=128, overlap=0)},
        {"identity": replace(IDENTITY, fingerprint="def456")},
        {"identity": replace(IDENTITY, name="other-model")},
        {"identity": replace(IDENTITY, max_length=128)},
        {"embedding": EmbeddingConfig(mode="naive")},
        {"embedding": EmbeddingConfig(mode="late", window_overlap=32)},
        {"embedding": EmbeddingConfig(mode="late", window_overlap=64, document_prefix="passage: ")},
    ],
    ids=lambda changed: next(iter(changed)),
)
def test_fingerprint_changes_with_everything_that_shapes_vectors(changed: dict) -> None:
    assert fingerprint(**changed) != fingerprint()


@pytest.mark.parametrize(
    ("strategy", "setting"),
    [("sentences", {"sentences_per_chunk": 2}), ("paragraphs", {"min_tokens": 8})],
)
def test_strategy_settings_count_for_their_strategy(strategy: str, setting: dict) -> None:
    base = ChunkingConfig(strategy=strategy, size=128)
    assert fingerprint(ChunkingConfig(strategy=strategy, size=128, **setting)) != fingerprint(base)


def test_settings_that_do_not_shape_vectors_are_left_out() -> None:
    # compute dtype (documented), query prefix, and settings of strategies / modes not in use
    assert fingerprint(identity=replace(IDENTITY, dtype="bfloat16")) == fingerprint()
    assert fingerprint(embedding=EmbeddingConfig(mode="late", window_overlap=64, query_prefix="q: ")) == fingerprint()
    assert fingerprint(ChunkingConfig(strategy="tokens", size=128, overlap=16, sentences_per_chunk=2)) == fingerprint()
    naive = EmbeddingConfig(mode="naive", window_overlap=64)
    assert fingerprint(embedding=EmbeddingConfig(mode="naive", window_overlap=8)) == fingerprint(embedding=naive)


def test_settings_name_versioned_strategy_and_pooling() -> None:
    settings = embedding_settings(CHUNKING, EMBEDDING, IDENTITY)
    assert settings["chunker"]["strategy"] == "tokens@v1"
    assert settings["pooling"]["mode"] == "late@v2"
    assert settings_digest(settings) == settings_digest(dict(reversed(list(settings.items()))))  # key order


def test_content_hash_separates_text_from_metadata() -> None:
    assert content_hash("ab", "c") != content_hash("a", "bc")
    assert content_hash("text", None) == content_hash("text", "")
    assert content_hash("text", None) != content_hash("text", "{}")


def test_settings_differences_name_the_config_key_and_both_values() -> None:
    from pipeline.sink import settings_differences

    table = embedding_settings(CHUNKING, EMBEDDING, IDENTITY)
    assert settings_differences(table, table) == []
    job = embedding_settings(ChunkingConfig(strategy="tokens", size=64, overlap=16), EMBEDDING, IDENTITY)
    assert settings_differences(table, job) == ["chunking.size: table 128, this job 64"]
    # Another strategy: its own setting appears, the token overlap it does not use shows as unused.
    sentences = embedding_settings(ChunkingConfig(strategy="sentences", size=128), EMBEDDING, IDENTITY)
    assert settings_differences(table, sentences) == [
        "chunking.overlap: table 16, this job unused",
        "chunking.sentences_per_chunk: table unused, this job 4",
        "chunking.strategy: table 'tokens', this job 'sentences'",
    ]
    prefixed = embedding_settings(CHUNKING, EmbeddingConfig(document_prefix="passage: "), IDENTITY)
    assert settings_differences(table, prefixed) == ["embedding.document_prefix: table '', this job 'passage: '"]


def test_a_chunker_or_pooling_of_another_lateline_version_says_to_rebuild() -> None:
    from pipeline.sink import settings_differences

    table = embedding_settings(CHUNKING, EMBEDDING, IDENTITY)
    older = {**table, "pooling": {**table["pooling"], "mode": "late@v1"}}
    [line] = settings_differences(older, table)
    assert line == "embedding.mode: the table's 'late' is lateline's v1, this lateline's is v2 (rebuild the table)"


def test_a_cls_models_naive_pooling_follows_the_mode_line() -> None:
    from pipeline.sink import settings_differences

    cls_model = replace(IDENTITY, pooling="cls")
    late = embedding_settings(CHUNKING, EMBEDDING, cls_model)
    naive = embedding_settings(CHUNKING, EmbeddingConfig(mode="naive"), cls_model)
    assert settings_differences(late, naive) == [
        "embedding.mode: table 'late', this job 'naive'",
        "embedding.window_overlap: table 64, this job unused",
    ]
