"""Transient storage errors are retried and resume after the records already read; permanent ones name the
object in one ``unreadable_source`` row."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline import sources
from pipeline.config import SourceConfig

SOURCE = SourceConfig(uri="s3://bucket/docs/", format="jsonl")


def _doc(number: int) -> dict:
    return {"doc_id": f"d{number}", "text": f"text {number}", "error": None}


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources.time, "sleep", lambda _: None)


def test_a_read_broken_off_midway_resumes_without_repeating_records(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = []

    def flaky(path: str, root: str, source: SourceConfig) -> Iterator[dict]:
        attempts.append(path)
        for number in range(5):
            if len(attempts) == 1 and number == 2:
                raise ConnectionResetError("connection reset by peer")
            if len(attempts) == 2 and number == 4:
                raise TimeoutError("read timed out")
            yield _doc(number)

    monkeypatch.setattr(sources, "_records", flaky)
    docs = list(sources.read_object("s3://bucket/docs/a.jsonl", "s3://bucket/docs", SOURCE))
    assert [doc["doc_id"] for doc in docs] == ["d0", "d1", "d2", "d3", "d4"]
    assert len(attempts) == 3


def test_a_permanent_error_yields_one_unreadable_source_row(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(path: str, root: str, source: SourceConfig) -> Iterator[dict]:
        raise FileNotFoundError(path)
        yield  # pragma: no cover

    monkeypatch.setattr(sources, "_records", missing)
    [row] = sources.read_object("s3://bucket/docs/gone.jsonl", "s3://bucket/docs", SOURCE)
    assert row["error"] == "unreadable_source" and row["source_uri"] == "s3://bucket/docs/gone.jsonl"
    assert "FileNotFoundError" in row["error_detail"]


def test_retries_give_up_after_the_last_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def always_down(path: str, root: str, source: SourceConfig) -> Iterator[dict]:
        calls.append(1)
        raise ConnectionRefusedError("connection refused")
        yield  # pragma: no cover

    monkeypatch.setattr(sources, "_records", always_down)
    [row] = sources.read_object("s3://bucket/docs/a.jsonl", "s3://bucket/docs", SOURCE)
    assert row["error"] == "unreadable_source" and "ConnectionRefusedError" in row["error_detail"]
    assert len(calls) == len(sources.RETRY_DELAYS_S) + 1


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (OSError("503 Slow Down"), True),
        (FileNotFoundError(), False),
        (PermissionError(), False),
        (ValueError("bad parquet"), False),
    ],
)
def test_transient_errors_are_told_from_permanent_ones(error: Exception, transient: bool) -> None:
    assert sources.is_transient(error) is transient


def test_listing_is_retried_too() -> None:
    outcomes = iter([ConnectionError("down"), ConnectionError("down"), "listed"])

    def flaky_listing() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert sources.with_retries("listing", flaky_listing) == "listed"
