"""config.py: strict, frozen job config; errors name key, value and what is allowed; secrets never printed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.config import ConfigError, JobConfig, apply_overrides, load_config, parse_config, redacted

SOURCE = {"uri": "data/sample", "format": "jsonl"}


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return str(info.value)


def test_minimal_config_gets_defaults() -> None:
    config = parse_config({"source": SOURCE})
    assert config.source.uri == "data/sample"
    assert config.chunking.strategy == "tokens" and config.chunking.size > config.chunking.overlap
    assert config.embedding.mode == "late"


def test_repository_configs_are_valid() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    for path in sorted(root.glob("*.yaml")):
        assert isinstance(load_config(path), JobConfig), path


def test_unknown_key_is_rejected_and_named() -> None:
    message = error_of({"source": SOURCE, "chunking": {"sise": 64}})
    assert message.startswith("chunking.sise:")
    assert "unknown key" in message


def test_unknown_top_level_section_is_named() -> None:
    assert error_of({"source": SOURCE, "chunker": {}}).startswith("chunker:")


def test_wrong_literal_names_key_value_and_allowed_values() -> None:
    message = error_of({"source": SOURCE, "embedding": {"mode": "fast"}})
    assert message.startswith("embedding.mode:")
    assert "'fast'" in message and "'late'" in message and "'naive'" in message


def test_non_positive_size_names_key_and_value() -> None:
    message = error_of({"source": SOURCE, "chunking": {"size": -3}})
    assert message.startswith("chunking.size:")
    assert "(got -3)" in message
    assert "greater than 0" in message


@pytest.mark.parametrize("overlap", [64, 100])
def test_overlap_not_below_size_is_rejected(overlap: int) -> None:
    message = error_of({"source": SOURCE, "chunking": {"size": 64, "overlap": overlap}})
    assert message.startswith("chunking")
    assert "overlap" in message and f"got {overlap}" in message and "64" in message


def test_overlap_is_checked_only_where_token_windows_use_it() -> None:
    config = parse_config({"source": SOURCE, "chunking": {"strategy": "sentences", "size": 64, "overlap": 64}})
    assert config.chunking.strategy == "sentences"


def test_an_empty_include_list_is_refused_naming_the_key() -> None:
    message = error_of({"source": {**SOURCE, "include": []}})
    assert message.startswith("source.include:") and "at least one file pattern" in message
    assert parse_config({"source": {**SOURCE, "include": ["*.txt"]}}).source.include == ("*.txt",)


def test_the_text_field_as_metadata_is_refused_naming_both_keys() -> None:
    message = error_of({"source": {**SOURCE, "metadata_fields": ["title", "text"]}})
    assert message.startswith("source.metadata_fields: 'text' is source.text_field") and "['title', 'text']" in message
    body = parse_config({"source": {**SOURCE, "text_field": "body", "metadata_fields": ["text"]}})
    assert body.source.metadata_fields == ("text",), "a field named text is fine when the text is in another"


@pytest.mark.parametrize("uri", ["data/sample", "/abs/docs/", "file:///abs/docs"])
def test_storage_options_for_a_local_path_are_refused_without_showing_values(uri: str) -> None:
    message = error_of({"source": {**SOURCE, "uri": uri, "storage_options": {"endpoint_url": "http://secret:9000"}}})
    assert message == (
        f"source.storage_options: {uri!r} is a local path, which takes no storage options (they are for "
        "object-store URIs) (got keys 'endpoint_url')"
    )
    secret = {"aws_secret_access_key": "wJalrXUtnFEMI"}
    sink = error_of({"source": SOURCE, "sink": {"uri": uri, "storage_options": secret}})
    assert sink.startswith(f"sink.storage_options: {uri!r} is a local path") and "wJalrXUtnFEMI" not in sink
    unset = {"source": SOURCE, "sink": {"uri": uri, "storage_options": {"aws_region": None}}}
    assert parse_config(unset).sink.uri == uri, "a null option is unset, so a local path takes it"
    no_uri = error_of({"source": {"format": "jsonl", "storage_options": {"endpoint_url": "http://h:9000"}}})
    assert no_uri == "source.uri: required key is missing", "the missing uri alone, not a local path ''"
    s3 = {"uri": "s3://bucket/docs/", "format": "jsonl", "storage_options": {"endpoint_url": "http://h:9000"}}
    assert parse_config({"source": s3}).source.storage_options == {"endpoint_url": "http://h:9000"}


def test_missing_source_is_named() -> None:
    assert error_of({}) == "source: required key is missing"


def test_every_problem_is_reported_one_per_line() -> None:
    message = error_of({"source": {"uri": "", "format": "csv"}, "batching": {"max_tokens": 0}})
    lines = message.splitlines()
    assert len(lines) == 3
    assert {line.split(":")[0] for line in lines} == {"source.uri", "source.format", "batching.max_tokens"}


def test_union_typed_key_errors_name_the_real_key() -> None:
    message = error_of({"source": SOURCE, "runtime": {"num_actors": "many"}})
    keys = {line.split(":")[0] for line in message.splitlines()}
    assert keys == {"runtime.num_actors"}, message


def test_wrong_shapes_are_named_in_yaml_words_not_python_types() -> None:
    assert error_of({"source": {**SOURCE, "metadata_fields": "title"}}) == (
        "source.metadata_fields: must be a list, e.g. [a, b] (got 'title')"
    )
    assert error_of({"source": SOURCE, "chunking": 5}) == "chunking: must be a mapping of keys (got 5)"


def test_config_is_frozen() -> None:
    config = parse_config({"source": SOURCE})
    with pytest.raises(ValidationError):
        config.chunking.size = 12  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.source = config.source  # type: ignore[misc]


# --- overrides and files --------------------------------------------------------------------------------


def test_overrides_parse_yaml_scalars_into_nested_keys() -> None:
    raw = apply_overrides(
        {"source": dict(SOURCE)},
        [
            "chunking.size=64",
            "chunking.strategy=sentences",
            "runtime.ray_progress_bars=true",
            "sink.commit_seconds=2.5",
            "model.revision=null",
            "source.storage_options.client_kwargs.endpoint_url=http://127.0.0.1:9000",
            "embedding.document_prefix=",
            "source.uri=s3://bucket/docs=2024/",
        ],
    )
    assert raw["chunking"] == {"size": 64, "strategy": "sentences"}
    assert raw["runtime"]["ray_progress_bars"] is True
    assert raw["sink"]["commit_seconds"] == 2.5
    assert raw["model"]["revision"] is None
    assert raw["source"]["storage_options"] == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    assert raw["embedding"]["document_prefix"] == ""
    assert raw["source"]["uri"] == "s3://bucket/docs=2024/"  # only the first '=' splits
    config = parse_config(raw)
    assert config.chunking.size == 64 and config.chunking.strategy == "sentences"


def test_overrides_replace_values_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("source: {uri: data, format: jsonl}\nchunking: {size: 128, overlap: 16}\n")
    config = load_config(path, ["chunking.size=32", "chunking.overlap=0"])
    assert (config.chunking.size, config.chunking.overlap) == (32, 0)


@pytest.mark.parametrize("item", ["chunking.size", "=64", ""])
def test_malformed_override_raises_config_error(item: str) -> None:
    with pytest.raises(ConfigError, match="--set"):
        apply_overrides({}, [item])


def test_override_below_a_scalar_raises_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"source\.uri\.x"):
        apply_overrides({"source": dict(SOURCE)}, ["source.uri.x=1"])


@pytest.mark.parametrize("item", ["source.uri=*.jsonl", "chunking.size=[1,"])
def test_override_value_that_is_not_yaml_gives_config_error_or_a_string(item: str) -> None:
    key, _, value = item.partition("=")
    try:
        raw = apply_overrides({}, [item])
    except ConfigError:
        return
    section, leaf = key.split(".")
    assert raw[section][leaf] == value


def test_missing_file_gives_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file") as info:
        load_config(tmp_path / "absent.yaml")
    assert "absent.yaml" in str(info.value)


def test_a_directory_given_as_config_gives_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_invalid_yaml_gives_config_error_naming_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("source: {uri: data\n  format: [jsonl\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert f'in "{path}", line 2' in str(info.value) and "<unicode string>" not in str(info.value)


@pytest.mark.parametrize("value", ["query #1", "#1", "a # b"])
def test_an_override_holding_a_yaml_comment_is_taken_as_text(value: str) -> None:
    raw = apply_overrides({}, [f"embedding.query_prefix={value}"])
    assert raw["embedding"]["query_prefix"] == value


def test_a_quoted_override_is_still_yaml() -> None:
    raw = apply_overrides({}, ['embedding.query_prefix="query: #1"', "chunking.size=64"])
    assert raw["embedding"]["query_prefix"] == "query: #1" and raw["chunking"]["size"] == 64


def test_an_override_that_yaml_reads_as_a_mapping_gets_a_quoting_hint(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("source: {uri: data, format: jsonl}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["embedding.document_prefix=passage: "])
    lines = str(info.value).splitlines()
    assert lines[0].startswith("embedding.document_prefix: Input should be a valid string")
    assert lines[1] == (
        "embedding.document_prefix: --set values are YAML, where ': ' makes a mapping; quote text: "
        "--set 'embedding.document_prefix=\"passage: \"'"
    )
    # The quoted form the hint suggests is accepted as the text it quotes.
    config = load_config(path, ['embedding.document_prefix="passage: "'])
    assert config.embedding.document_prefix == "passage: "
    # A flow mapping given on purpose gets no such hint.
    with pytest.raises(ConfigError) as info:
        load_config(path, ["embedding.document_prefix={a: 1}"])
    assert "quote text" not in str(info.value)


def test_yaml_that_is_not_a_mapping_gives_config_error(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_file_errors_are_reported_through_config_error(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("source: {uri: data, format: jsonl}\nembedding: {mode: fast}\n")
    with pytest.raises(ConfigError, match=r"^embedding\.mode: .*'fast'"):
        load_config(path)


# --- redaction ------------------------------------------------------------------------------------------


def test_redacted_masks_secrets_but_keeps_the_endpoint() -> None:
    s3fs = {  # the source's (fsspec) spelling
        "key": "AKIAEXAMPLE",
        "secret": "s3cr3t",
        "token": "tok",
        "password": "hunter2",
        "endpoint_url": "http://127.0.0.1:9000",
        "client_kwargs": {"endpoint_url": "http://minio:9000", "region_name": "us-east-1"},
        "anon": False,
    }
    lance = {  # the sink's (LanceDB) spelling
        "aws_access_key_id": "AKIAEXAMPLE",
        "aws_secret_access_key": "s3cr3t",
        "session_token": "sess",
        "aws_endpoint": "http://127.0.0.1:9000",
        "allow_http": True,
    }
    source = {**SOURCE, "uri": "s3://bucket/docs/", "storage_options": s3fs}
    config = parse_config({"source": source, "sink": {"uri": "s3://bucket/db", "storage_options": lance}})
    data = redacted(config)
    shown = data["source"]["storage_options"]
    for secret in ("key", "secret", "token", "password"):
        assert shown[secret] == "***", secret
    assert shown["endpoint_url"] == "http://127.0.0.1:9000" and shown["anon"] is False
    assert shown["client_kwargs"] == {"endpoint_url": "http://minio:9000", "region_name": "us-east-1"}
    shown = data["sink"]["storage_options"]
    for secret in ("aws_access_key_id", "aws_secret_access_key", "session_token"):
        assert shown[secret] == "***", secret
    assert shown["aws_endpoint"] == "http://127.0.0.1:9000"
    assert shown["allow_http"] == "true", "LanceDB takes strings: YAML's true is given as 'true'"
    text = repr(data)
    assert not re.search("AKIAEXAMPLE|s3cr3t|hunter2|sess'", text)
    assert config.source.storage_options["key"] == "AKIAEXAMPLE"  # the config itself is untouched


@pytest.mark.parametrize(("key", "value"), [("num_actors", 0), ("num_actors", -2), ("num_gpus_per_actor", -1)])
def test_actor_counts_out_of_range_are_rejected_before_ray(key: str, value: int) -> None:
    """A pool of 0 actors failed inside Ray (ZeroDivisionError); -1 GPUs was silently 0: both are config errors."""
    message = error_of({"source": SOURCE, "runtime": {key: value}})
    assert f"runtime.{key}" in message and str(value) in message


def test_actor_counts_in_range_and_auto_are_accepted() -> None:
    config = parse_config({"source": SOURCE, "runtime": {"num_actors": 1, "num_gpus_per_actor": 0}})
    assert (config.runtime.num_actors, config.runtime.num_gpus_per_actor) == (1, 0)
    assert parse_config({"source": SOURCE}).runtime.num_actors == "auto"


@pytest.mark.parametrize(
    ("override", "key"),
    [("chunking.size=true", "chunking.size"), ("runtime.max_dead_letters=yes", "runtime.max_dead_letters")],
)
def test_a_yaml_boolean_is_not_taken_for_a_number(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(apply_overrides({"source": dict(SOURCE)}, [override]))
    assert str(info.value) == f"{key}: must be a number; YAML reads true/false/yes/no/on/off as booleans (got True)"
    # Booleans stay booleans where a key takes one.
    assert parse_config(
        apply_overrides({"source": dict(SOURCE)}, ["runtime.ray_progress_bars=yes"])
    ).runtime.ray_progress_bars
