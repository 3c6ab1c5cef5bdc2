"""The progress line's share of the source done: objects whose every record reached the driver."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipeline import schema
from pipeline.config import SourceConfig
from pipeline.runner import Tally, _duration
from pipeline.sources import list_source_objects, objects_table, read_objects
from pipeline.stages import OBJECT_ROWS, RunStats


def output(records: list[tuple[str, int | None, str | None]]) -> pa.Table:
    """A stand-in for an EmbedChunks output: ``(source_uri, chunk_index, error)`` per row."""
    return pa.table(
        {
            schema.SOURCE_URI: [uri for uri, _, _ in records],
            schema.CHUNK_INDEX: pa.array([index for _, index, _ in records], pa.int32()),
            schema.ERROR: pa.array([error for _, _, error in records], pa.string()),
        }
    )


def test_an_object_is_done_once_as_many_records_arrived_as_its_reader_reported() -> None:
    tally = Tally("index", 10.0, sizes={"a": 300, "b": 100})
    counters = {f"{OBJECT_ROWS}a": 2, f"{OBJECT_ROWS}b": 1, "forward_tokens": 5.0}
    assert tally.done_fraction({}) == 0  # nothing read yet
    tally.add_arrivals(output([("a", 0, None), ("a", 1, None), ("b", -1, "no_tokens")]))  # one doc of a (2 chunks)
    assert tally.done_fraction(counters) == pytest.approx(0.25)  # b's 100 of 400 bytes
    tally.add_arrivals(output([("a", -1, "unchanged")]))
    assert tally.done_fraction(counters) == 1.0


def test_objects_not_read_by_this_run_and_unknown_sizes() -> None:
    tally = Tally("index", 10.0, sizes={"a": None, "b": None})
    tally.add_arrivals(output([("a", 0, None), ("elsewhere", 0, None)]))
    counters = {f"{OBJECT_ROWS}a": 1, f"{OBJECT_ROWS}elsewhere": 1}
    assert tally.done_fraction(counters) == 0.5  # by object count when the store lists no sizes
    assert Tally("reembed", 10.0).done_fraction(counters) is None


def test_the_progress_line_gives_the_share_done_and_the_time_left(capsys) -> None:
    tally = Tally("backfill", 10.0, sizes={"a": 100, "b": 100})
    tally.started -= 60
    tally.add_arrivals(output([("a", 0, None)]))
    tally.print_progress(1, {f"{OBJECT_ROWS}a": 1, "forward_tokens": 1000.0})
    line = capsys.readouterr().err
    assert "50% of the source's objects done, about 60s left" in line


@pytest.mark.parametrize(("seconds", "text"), [(45, "45s"), (600, "10m"), (3 * 3600 + 5 * 60, "3h05m")])
def test_durations_read_naturally(seconds: float, text: str) -> None:
    assert _duration(seconds) == text


def test_readers_report_each_objects_record_count_bad_records_included(tmp_path) -> None:
    lines = [json.dumps({"id": "x", "text": "Text."}), "{not json", json.dumps({"id": "y", "text": "More."})]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "b.jsonl").write_text("")
    source = SourceConfig(uri=str(tmp_path), format="jsonl")
    reported = {}
    rows = pa.Table.from_pylist(objects_table(list_source_objects(source)))
    docs = [t for t in read_objects(rows, source, "d", lambda path, n: reported.update({path.rsplit("/")[-1]: n}))]
    assert reported == {"a.jsonl": 3, "b.jsonl": 0}
    assert sum(t.num_rows for t in docs) == 3


def test_a_snapshot_without_counts_keeps_the_last_ones_and_100_means_all_done(capsys) -> None:
    tally = Tally("index", 10.0, sizes={"big": 199, "small": 1})
    tally.add_arrivals(output([("big", 0, None)]))
    assert tally.done_fraction({f"{OBJECT_ROWS}big": 1, f"{OBJECT_ROWS}small": 1}) == pytest.approx(0.995)
    assert tally.done_fraction({}) == pytest.approx(0.995), "a failed snapshot must not read as 0%"
    tally.print_progress(1, {})
    assert "99% of the source's objects done" in capsys.readouterr().err


def test_an_object_without_a_listed_size_weighs_the_mean_size() -> None:
    tally = Tally("index", 10.0, sizes={"a": 100, "b": 300, "unsized": None})
    tally.add_arrivals(output([("unsized", 0, None)]))
    assert tally.done_fraction({f"{OBJECT_ROWS}unsized": 1}) == pytest.approx(200 / 600)


def test_run_stats_keep_an_objects_count_when_a_retried_read_reports_it_again() -> None:
    stats = RunStats()
    for _ in range(2):
        stats.add({f"{OBJECT_ROWS}a": 3, "docs_in": 3})
    assert stats.snapshot() == {f"{OBJECT_ROWS}a": 3, "docs_in": 6}
