"""The dry run counts a JSONL object's records from its first stored bytes, gunzipped when it is gzip."""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path

from pipeline.config import SourceConfig
from pipeline.dryrun import count_records, gunzipped_prefix, jsonl_prefix_lines

LINES = b"".join(b'{"id": "%d", "text": "record %d"}\n' % (i, i) for i in range(5000))


def test_records_are_non_blank_lines_up_to_the_last_newline_unless_whole() -> None:
    assert count_records(b'{"a": 1}\n\n  \n{"a": 2}\n{"a"', whole=False) == (2, 22)
    assert count_records(b'{"a": 1}\n{"a": 2}', whole=True) == (2, 17), "a whole file's last line may lack \\n"
    assert count_records(b'{"a": "longer than the prefix', whole=False) == (0, 0)


def test_a_gzip_prefix_decompresses_as_far_as_it_goes_across_members_padding_and_junk() -> None:
    one = gzip.compress(LINES)
    assert gunzipped_prefix(one) == (LINES, len(one))
    text, used = gunzipped_prefix(one[: len(one) // 2])
    assert LINES.startswith(text) and 0 < len(text) < len(LINES) and used == len(one) // 2
    two = gzip.compress(LINES[:1000]) + b"\0" * 8 + gzip.compress(LINES[1000:])  # members, zero padding between
    assert gunzipped_prefix(two) == (LINES, len(two))
    assert gunzipped_prefix(one + b"not gzip")[0] == LINES, "junk after the last member keeps what came before"
    text, used = gunzipped_prefix(one, cap=1000)
    assert text == LINES[:1000] and used < len(one), "inflated no further than the cap"


def test_the_prefix_counts_records_per_stored_byte(tmp_path: Path) -> None:
    source = SourceConfig(uri=str(tmp_path), format="jsonl")
    plain, packed, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz", tmp_path / "c.jsonl.bz2"
    plain.write_bytes(LINES)
    packed.write_bytes(gzip.compress(LINES))
    other.write_bytes(bz2.compress(LINES))
    assert jsonl_prefix_lines(str(plain), source) == (5000, len(LINES)), "smaller than the prefix: exact"
    quarter = len(LINES) // 4
    counted = LINES[: LINES[:quarter].rfind(b"\n") + 1]
    assert jsonl_prefix_lines(str(plain), source, limit=quarter) == (counted.count(b"\n"), len(counted))
    compressed = packed.stat().st_size
    lines, stored = jsonl_prefix_lines(str(packed), source, limit=compressed // 2)
    assert stored <= compressed // 2 and 0.4 < lines / 5000 < 0.6, "per byte as stored, compressed"
    assert abs(lines / stored - 5000 / compressed) < 0.05 * 5000 / compressed, "records per stored byte kept"
    assert jsonl_prefix_lines(str(other), source) is None, "another compression: the caller falls back"
    assert jsonl_prefix_lines(str(tmp_path / "gone.jsonl"), source) is None
    (tmp_path / "long.jsonl").write_bytes(b'{"text": "' + b"x" * 5000 + b'"}\n')
    assert jsonl_prefix_lines(str(tmp_path / "long.jsonl"), source, limit=1000) is None, "no whole record in it"
