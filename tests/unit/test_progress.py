"""The progress line's share of the source done: objects whose every record reached the driver."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

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
    assert tally.done_fraction() == 0  # nothing read yet
    tally.add_arrivals(output([("a", 0, None), ("a", 1, None), ("b", -1, "no_tokens")]))  # one doc of a (2 chunks)
    assert tally.done_fraction() == 0  # records arrived, but no reader has said how many there are
    tally.add_object_rows([("a", 2), ("b", 1)])
    assert tally.done_fraction() == pytest.approx(0.25)  # b's 100 of 400 bytes
    tally.add_arrivals(output([("a", -1, "unchanged")]))
    assert tally.done_fraction() == 1.0


def test_a_count_reported_again_with_more_records_makes_the_object_not_done_again() -> None:
    tally = Tally("index", 10.0, sizes={"a": 100, "b": 100})
    tally.add_object_rows([("a", 1), ("b", 5)])
    tally.add_arrivals(output([("a", 0, None)]))
    assert tally.done_fraction() == 0.5
    tally.add_object_rows([("a", 2)])
    assert tally.done_fraction() == 0
    assert tally.object_rows_seen == 3


def test_objects_not_read_by_this_run_and_unknown_sizes() -> None:
    tally = Tally("index", 10.0, sizes={"a": None, "b": None})
    tally.add_arrivals(output([("a", 0, None), ("elsewhere", 0, None)]))
    tally.add_object_rows([("a", 1), ("elsewhere", 1)])
    assert tally.done_fraction() == 0.5  # by object count when the store lists no sizes
    reembed = Tally("reembed", 10.0)
    reembed.add_object_rows([("a", 1)])
    assert reembed.done_fraction() is None


def test_the_progress_line_gives_the_share_done_and_the_time_left(capsys) -> None:
    tally = Tally("backfill", 10.0, sizes={"a": 100, "b": 100, "c": 200})
    tally.started -= 60
    tally.add_arrivals(output([("a", 0, None)]))
    tally.add_object_rows([("a", 1)])
    tally.print_progress(1, {"forward_tokens": 1000.0})
    assert capsys.readouterr().err.rstrip().endswith("25% of the source's objects done"), "one point: no rate yet"
    tally._first_done = (tally._first_done[0] - 30, 0.25)  # as if a was done 30 s ago
    tally.add_arrivals(output([("b", 0, None)]))
    tally.add_object_rows([("b", 1)])
    tally.print_progress(2, {"forward_tokens": 2000.0})
    assert "50% of the source's objects done, about 60s left" in capsys.readouterr().err


def test_before_any_output_the_line_says_what_the_run_waits_for(capsys) -> None:
    tally = Tally("index", 10.0)
    tally.unchanged.update(["kept"])  # documents of objects skipped as unchanged are known before any output
    tally.print_progress(0, {}, streaming=True)
    tally.print_progress(0, {"model_load_s": 5.5}, streaming=True)
    tally.print_progress(0, {"model_load_s": 5.5})  # the final line of a run that produced nothing
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("starting: actors loading the model")
    assert lines[1].endswith("starting: the first block is in the model")
    assert "starting" not in lines[2]
    tally.add_arrivals(output([("a", 0, None)]))
    tally.add_chunks(
        output([("a", 0, None)])
        .append_column(schema.TOKEN_START, pa.array([0]))
        .append_column(schema.TOKEN_END, pa.array([3]))
    )
    tally.print_progress(0, {"model_load_s": 5.5, "forward_tokens": 3.0}, streaming=True)
    assert "starting" not in capsys.readouterr().err


@pytest.mark.parametrize(("seconds", "text"), [(45, "45s"), (600, "10m"), (3 * 3600 + 5 * 60, "3h05m")])
def test_durations_read_naturally(seconds: float, text: str) -> None:
    assert _duration(seconds) == text


def test_readers_report_each_objects_record_count_bad_records_included(tmp_path) -> None:
    lines = [json.dumps({"id": "x", "text": "Text."}), "{not json", json.dumps({"id": "y", "text": "More."})]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "b.jsonl").write_text("")
    source = SourceConfig(uri=str(tmp_path), format="jsonl")
    reported = {}
    rows = objects_table(list_source_objects(source))
    docs = [t for t in read_objects(rows, source, "d", lambda path, n: reported.update({path.rsplit("/")[-1]: n}))]
    assert reported == {"a.jsonl": 3, "b.jsonl": 0}
    assert sum(t.num_rows for t in docs) == 3


def test_a_failed_poll_keeps_the_counts_and_100_means_all_done(capsys) -> None:
    from pipeline.runner import _poll

    class Broken:
        def get(self, *args, **kwargs):
            raise TimeoutError("stats actor busy")

    stats = RunStats()
    stats.add({f"{OBJECT_ROWS}big": 1, f"{OBJECT_ROWS}small": 1})
    tally = Tally("index", 10.0, sizes={"big": 199, "small": 1})
    tally.add_arrivals(output([("big", 0, None)]))
    tally.add_object_rows(stats.poll(tally.object_rows_seen)[1])
    assert tally.done_fraction() == pytest.approx(0.995)
    assert _poll(Broken(), SimpleNamespace(poll=SimpleNamespace(remote=lambda seen: None)), tally) == {}
    assert tally.done_fraction() == pytest.approx(0.995), "a failed poll must not read as 0%"
    tally.print_progress(1, {})
    assert "99% of the source's objects done" in capsys.readouterr().err


def test_an_object_without_a_listed_size_weighs_the_mean_size() -> None:
    tally = Tally("index", 10.0, sizes={"a": 100, "b": 300, "unsized": None})
    tally.add_arrivals(output([("unsized", 0, None)]))
    tally.add_object_rows([("unsized", 1)])
    assert tally.done_fraction() == pytest.approx(200 / 600)


def test_run_stats_keep_an_objects_count_when_a_retried_read_reports_it_again() -> None:
    stats = RunStats()
    for _ in range(2):
        stats.add({f"{OBJECT_ROWS}a": 3, "docs_in": 3})
    counters, reported = stats.poll(0)
    assert counters == {"docs_in": 6}
    tally = Tally("index", 10.0, sizes={"a": 10})
    tally.add_object_rows(reported)
    assert tally.object_rows == {"a": 3}


def test_a_poll_ships_only_the_object_counts_not_fetched_before() -> None:
    from pipeline.runner import _poll

    class Local:  # ray.get over a local RunStats
        def get(self, value, timeout=None):
            return value

    stats, tally = RunStats(), Tally("index", 10.0, sizes={f"o{i}": 1 for i in range(5)})
    local = SimpleNamespace(poll=SimpleNamespace(remote=stats.poll))
    stats.add({f"{OBJECT_ROWS}o{i}": 1 for i in range(3)} | {"docs_in": 3})
    assert _poll(Local(), local, tally) == {"docs_in": 3}
    assert tally.object_rows_seen == 3
    stats.add({f"{OBJECT_ROWS}o3": 1})
    assert stats.poll(tally.object_rows_seen)[1] == [("o3", 1)]
    _poll(Local(), local, tally)
    assert tally.object_rows == {f"o{i}": 1 for i in range(4)}


def test_the_time_left_runs_at_the_rate_since_the_first_share_done_not_since_the_start() -> None:
    tally = Tally("index", 10.0, started=0.0, sizes={"a": 1})
    assert tally.time_left(0.0, now=10.0) is None  # nothing done: no rate yet
    assert tally.time_left(0.2, now=40.0) is None  # one point: start-up would weigh on any rate
    assert tally.time_left(0.2, now=50.0) is None
    # 40% more in the 40 s since 20% was first seen: 40 s for the last 40% (start-up would have said 53 s)
    assert tally.time_left(0.6, now=80.0) == pytest.approx(40.0)
    assert tally.time_left(1.0, now=90.0) is None


def test_a_run_that_dead_letters_every_record_warns_naming_the_setting(capsys) -> None:
    from collections import Counter

    from pipeline.config import parse_config
    from pipeline.runner import Tally, nothing_indexed, warn_if_nothing_indexed

    config = parse_config({"source": {"uri": "data/sample", "format": "jsonl", "text_field": "body"}})
    tally = Tally("index", 5, dead_lettered=Counter({"missing_text": 60}))
    warn_if_nothing_indexed(config, tally, docs_written=0)
    line = capsys.readouterr().err
    assert "every one of the 60 records" in line and "missing_text 60" in line and "source.text_field='body'" in line
    warn_if_nothing_indexed(config, tally, docs_written=1)
    assert capsys.readouterr().err == "", "a run that wrote something is not warned about"
    replayed_duplicate = Tally("replay", 5, dead_lettered=Counter({"duplicate_doc_id": 1}))
    assert not nothing_indexed(replayed_duplicate, docs_written=0), "its id is indexed from the other copy"
    assert nothing_indexed(tally, docs_written=0)


def test_rays_routine_notices_are_hidden_and_its_other_warnings_are_not(caplog) -> None:
    from pipeline.runner import RAY_NOTICES, TOKEN_AUTH_LOGGER, quiet_ray_notices

    loggers = [logging.getLogger(name) for name in RAY_NOTICES]
    before = [list(logger.filters) for logger in loggers]
    auth, progress = loggers
    try:
        quiet_ray_notices(local=False)
        assert auth.filters == before[0], "joining a cluster: its token-auth notices are left alone"
        quiet_ray_notices(local=True)
        quiet_ray_notices(local=True)  # a second run in the same process adds no second filter
        assert [len(logger.filters) for logger in loggers] == [len(b) + 1 for b in before]
        with caplog.at_level(logging.WARNING):
            auth.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled ...")
            auth.warning("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
            progress.warning("Progress bars disabled. To enable, set `ray.data.DataContext...`")
            progress.warning("Progress bars for operators disabled. To enable, ...")
        assert [r.getMessage().split(".")[0] for r in caplog.records] == [
            "Token authentication is disabled for this Ray cluster",
            "Progress bars for operators disabled",
        ]
        assert auth.name == TOKEN_AUTH_LOGGER
    finally:
        for logger, filters in zip(loggers, before):
            logger.filters[:] = filters


def test_a_metadata_field_no_written_document_has_is_named_once_at_the_end(capsys) -> None:
    from pipeline.runner import warn_about_empty_metadata

    tally = Tally("index", 5.0, metadata_fields=("title", "nosuch", "lang"))
    metadata = [json.dumps({"title": "A", "nosuch": None, "lang": None}), json.dumps({"title": None, "lang": "en"})]
    chunks = pa.table(
        {
            schema.CHUNK_INDEX: [0, 1, 0],
            schema.SOURCE_URI: ["s3://b/a.jsonl"] * 3,
            schema.METADATA: [metadata[0], metadata[0], metadata[1]],
            schema.TOKEN_START: [0, 10, 0],
            schema.TOKEN_END: [10, 20, 5],
        }
    )
    tally.add_chunks(chunks)
    assert tally.metadata_valued == {"title", "lang"}
    warn_about_empty_metadata(tally, docs_written=2)
    assert capsys.readouterr().err == (
        "warning: source.metadata_fields: 'nosuch' had no value in any of the 2 documents this run wrote (stored "
        "as null); a misspelt field name looks like this\n"
    )
    warn_about_empty_metadata(Tally("index", 5.0, metadata_fields=("title",)), docs_written=0)
    assert capsys.readouterr().err == "", "nothing written: nothing to say"
