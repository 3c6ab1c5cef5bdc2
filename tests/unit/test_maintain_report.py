"""maintain says what compaction did: fragments merged, or nothing to merge."""

from __future__ import annotations

from pipeline.maintain import compaction_action


def test_compaction_reports_the_merge_or_that_there_was_nothing_to_merge() -> None:
    assert compaction_action(12, 1) == "compacted 12 fragments into 1"
    assert compaction_action(1, 1) == "compaction: nothing to merge (1 fragment)"
    assert compaction_action(3, 3) == "compaction: nothing to merge (3 fragments)"
