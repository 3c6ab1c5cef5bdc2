"""The dry run counts a JSONL object's records from its first stored bytes, gunzipped when it is gzip."""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path

from pipeline.config import SourceConfig
from pipeline.dryrun import count_records, gunzipped_prefix, jsonl_prefix_lines

LINES = b"".join(b'{"id": "%d", "text": "record %d"}\n' % (i, i) for i in range(5000))


def test_records_are_non_blank_lines_and_a_cut_off_last_line_is_left_out() -> None:
    assert count_records(b'{"a": 1}\n\n  \n{"a": 2}\n{"a"', whole=False) == 2
    assert count_records(b'{"a": 1}\n{"a": 2}', whole=True) == 2, "a whole file's last line may lack its newline"


def test_a_gzip_prefix_decompresses_as_far_as_it_goes_across_members() -> None:
    one = gzip.compress(LINES)
    assert gunzipped_prefix(one) == LINES
    cut = gunzipped_prefix(one[: len(one) // 2])
    assert LINES.startswith(cut) and 0 < len(cut) < len(LINES)
    two = gzip.compress(LINES[:1000]) + gzip.compress(LINES[1000:])  # multi-member (bgzip, appended logs)
    assert gunzipped_prefix(two) == LINES


def test_the_prefix_counts_records_per_stored_byte(tmp_path: Path) -> None:
    source = SourceConfig(uri=str(tmp_path), format="jsonl")
    plain, packed, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz", tmp_path / "c.jsonl.bz2"
    plain.write_bytes(LINES)
    packed.write_bytes(gzip.compress(LINES))
    other.write_bytes(bz2.compress(LINES))
    assert jsonl_prefix_lines(str(plain), source) == (5000, len(LINES)), "smaller than the prefix: exact"
    quarter = len(LINES) // 4
    assert jsonl_prefix_lines(str(plain), source, limit=quarter) == (LINES[:quarter].count(b"\n"), quarter)
    compressed = packed.stat().st_size
    lines, stored = jsonl_prefix_lines(str(packed), source, limit=compressed // 2)
    assert stored == compressed // 2 and 0.4 < lines / 5000 < 0.6, "per byte as stored, compressed"
    assert jsonl_prefix_lines(str(other), source) is None, "another compression: the caller falls back"
    assert jsonl_prefix_lines(str(tmp_path / "gone.jsonl"), source) is None
