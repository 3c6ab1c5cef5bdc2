"""storage_options keys meant for the other side, or misspelt, are refused before anything runs; the message
names the key and what it should be, and never a value."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, parse_config
from pipeline.storage_options import s3fs_keys

SOURCE = {"uri": "s3://bucket/docs/", "format": "jsonl"}


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config(raw)
    return str(raised.value)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("aws_endpoint", "'aws_endpoint' is LanceDB's name (for sink.storage_options); s3fs's is endpoint_url"),
        ("aws_access_key_id", "s3fs's is key"),
        ("region", "s3fs's is client_kwargs: {region_name: ...}"),
        ("endpoint_ur", "unknown s3fs option 'endpoint_ur' (did you mean 'endpoint_url'?)"),
        ("bogus", "unknown s3fs option 'bogus' (s3fs takes: anon, "),
    ],
)
def test_a_source_on_s3_takes_only_s3fs_keys(key: str, expected: str) -> None:
    message = _error({"source": {**SOURCE, "storage_options": {key: "SECRETVALUE"}}})
    assert message.startswith("source.storage_options: ") and expected in message
    assert f"(got keys {key!r})" in message and "SECRETVALUE" not in message


def test_an_object_storage_model_takes_only_s3fs_keys() -> None:
    model = {"name_or_path": "s3://models/minilm/", "storage_options": {"aws_endpoint": "http://x"}}
    assert "model.storage_options: 'aws_endpoint' is LanceDB's name" in _error({"source": SOURCE, "model": model})


def test_s3fs_keys_pass_and_other_filesystems_are_not_checked() -> None:
    options = {"endpoint_url": "http://x", "key": "k", "secret": "s", "client_kwargs": {}, "anon": False}
    options |= {"config_kwargs": {}, "use_listings_cache": False, "skip_instance_cache": True}
    assert set(options) <= s3fs_keys()
    assert parse_config({"source": {**SOURCE, "storage_options": options}}).source.storage_options == options
    gcs = {"uri": "gs://bucket/docs/", "format": "jsonl", "storage_options": {"anything": 1}}
    assert parse_config({"source": gcs}).source.storage_options == {"anything": 1}
    local = {"uri": "data/sample", "format": "jsonl", "storage_options": {"anything": 1}}
    with pytest.raises(ConfigError, match="is a local path, which takes no storage options"):
        parse_config({"source": local})


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"aws_endpont": "http://x"}, "unknown LanceDB option 'aws_endpont' (did you mean 'aws_endpoint'?)"),
        ({"ALLOW_HTTPS": "true"}, "unknown LanceDB option 'ALLOW_HTTPS' (did you mean 'allow_http'?)"),
        ({"key": "k"}, "'key' is s3fs's name (for source.storage_options); LanceDB's is aws_access_key_id"),
        ({"client_kwargs": {"endpoint_url": "x"}}, "LanceDB's is flat keys such as aws_endpoint and aws_region"),
        ({"aws_endpoint": ["x"]}, "'aws_endpoint' must be a single value: LanceDB's options are flat strings"),
    ],
)
def test_a_sink_on_s3_refuses_s3fs_keys_near_misses_and_nested_values(options: dict, expected: str) -> None:
    message = _error({"source": SOURCE, "sink": {"uri": "s3://bucket/db", "storage_options": options}})
    assert message.startswith("sink.storage_options: ") and expected in message, message


def test_a_sink_passes_keys_lance_may_know_and_gets_every_value_as_a_string() -> None:
    options = {"AWS_REGION": "eu-west-1", "allow_http": True, "client_max_retries": 3, "some_future_lance_option": "x"}
    sink = parse_config({"source": SOURCE, "sink": {"uri": "s3://bucket/db", "storage_options": options}}).sink
    assert sink.storage_options == {
        "AWS_REGION": "eu-west-1",
        "allow_http": "true",
        "client_max_retries": "3",
        "some_future_lance_option": "x",
    }


def test_every_spelling_lance_and_s3fs_accept_passes() -> None:
    lance = {"aws_allow_http": "true", "AWS_ALLOW_HTTP": "true", "aws_connect_timeout": "5s", "conditional_put": "etag"}
    lance |= {"default_region": "eu", "endpoint_url": "http://x", "token": "t", "aws_user_agent": "me"}
    sink = {"uri": "s3://bucket/db", "storage_options": lance}
    assert set(parse_config({"source": SOURCE, "sink": sink}).sink.storage_options) == set(lance)
    s3fs = {"profile": "analytics", "session_vars": {}, "endpoint_url": "http://x"}
    assert parse_config({"source": {**SOURCE, "storage_options": s3fs}}).source.storage_options == s3fs


def test_the_near_miss_of_a_mis_cased_s3fs_key_is_named_and_aws_profile_is_answered() -> None:
    assert "did you mean 'endpoint_url'?" in _error({"source": {**SOURCE, "storage_options": {"Endpoint_URL": "x"}}})
    assert "s3fs's is profile" in _error({"source": {**SOURCE, "storage_options": {"aws_profile": "x"}}})


def test_the_sinks_options_open_the_same_place_with_fsspec() -> None:
    from pipeline.storage_options import as_s3fs_options

    options = {"endpoint_url": "http://minio:9000", "AWS_DEFAULT_REGION": "eu", "aws_token": "t", "timeout": "60s"}
    assert as_s3fs_options(options) == {
        "client_kwargs": {"endpoint_url": "http://minio:9000", "region_name": "eu"},
        "token": "t",
    }


def test_a_tables_recorded_options_are_not_checked_again_and_a_refused_record_shows_no_value() -> None:
    from pipeline.aliases import _recorded_sections

    model = {"name_or_path": "s3://models/x/", "storage_options": {"region": "eu", "secret": "SECRETVALUE"}}
    sections = {"chunking": {"strategy": "tokens", "size": 64}, "embedding": {}}
    assert _recorded_sections("t", model, sections)["model"].storage_options["secret"] == "SECRETVALUE"
    with pytest.raises(ConfigError) as raised:
        _recorded_sections("t", model, {**sections, "chunking": {"size": 0, "secret": "SECRETVALUE"}})
    message = str(raised.value)
    assert message.startswith("sink.table: the table 't' records settings this version of lateline refuses (")
    assert "size" in message and "SECRETVALUE" not in message


def test_a_misspelt_key_inside_client_kwargs_is_named() -> None:
    options = {"client_kwargs": {"endpoint_ur": "http://x", "region_name": "eu"}}
    message = _error({"source": {**SOURCE, "storage_options": options}})
    assert "unknown client_kwargs key 'endpoint_ur' (did you mean 'endpoint_url'?)" in message
    good = {"client_kwargs": {"endpoint_url": "http://x", "region_name": "eu", "verify": False}}
    assert parse_config({"source": {**SOURCE, "storage_options": good}}).source.storage_options == good
