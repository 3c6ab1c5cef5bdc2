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


def test_s3fs_keys_pass_and_local_paths_are_not_checked() -> None:
    options = {"endpoint_url": "http://x", "key": "k", "secret": "s", "client_kwargs": {}, "anon": False}
    options |= {"config_kwargs": {}, "use_listings_cache": False, "skip_instance_cache": True}
    assert set(options) <= s3fs_keys()
    assert parse_config({"source": {**SOURCE, "storage_options": options}}).source.storage_options == options
    local = {"uri": "data/sample", "format": "jsonl", "storage_options": {"anything": 1}}
    assert parse_config({"source": local}).source.storage_options == {"anything": 1}


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
    options = {"AWS_REGION": "eu-west-1", "allow_http": True, "timeout": 60, "some_future_lance_option": "x"}
    sink = parse_config({"source": SOURCE, "sink": {"uri": "s3://bucket/db", "storage_options": options}}).sink
    assert sink.storage_options == {
        "AWS_REGION": "eu-west-1",
        "allow_http": "true",
        "timeout": "60",
        "some_future_lance_option": "x",
    }
