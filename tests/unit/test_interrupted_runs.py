"""Jobs that died: a dead job's lock is told from a live one (pid and process start), its running summary is
marked interrupted by the run that takes the lock over."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from pipeline.config import parse_config
from pipeline.lock import TableLock
from pipeline.runner import note_interrupted_run, write_summary

DEAD_PID = 2**22 + 12_345  # above the kernel's pid_max default: no process has it


def _config(tmp_path: Path):
    return parse_config(
        {
            "source": {"uri": str(tmp_path / "src"), "format": "jsonl"},
            "sink": {"uri": str(tmp_path / "db")},
            "runtime": {"summary_dir": str(tmp_path / "runs")},
        }
    )


def _dead_lock(tmp_path: Path, run_id: str) -> None:
    (tmp_path / "db").mkdir(exist_ok=True)
    holder = {"run_id": run_id, "host": socket.gethostname(), "pid": DEAD_PID, "since": "then", "heartbeat": "then"}
    (tmp_path / "db" / "chunks.lateline-lock").write_text(json.dumps(holder))


def test_a_dead_runs_running_summary_is_marked_interrupted_when_its_lock_is_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = _config(tmp_path)
    path = write_summary(config, "dead-run", {"run_id": "dead-run", "status": "running", "counts": {"docs_written": 7}})
    _dead_lock(tmp_path, "dead-run")
    with TableLock(config.sink.uri, "chunks", "new-run") as lock:
        assert lock.taken_over["run_id"] == "dead-run"
        note_interrupted_run(config, "index", lock)
    summary = json.loads(path.read_text())
    assert summary["status"] == "interrupted" and "new-run took over its lock" in summary["error"]
    assert summary["counts"] == {"docs_written": 7}, "its last counts stay"
    err = capsys.readouterr().err
    assert "run dead-run" in err and "ended without finishing" in err and "now says interrupted" in err


@pytest.mark.parametrize("status", ["ok", "failed", None])
def test_a_finished_or_missing_summary_is_left_alone_but_the_takeover_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture, status: str | None
) -> None:
    config = _config(tmp_path)
    path = Path(config.runtime.summary_dir) / "dead-run" / "summary.json"
    if status:
        write_summary(config, "dead-run", {"run_id": "dead-run", "status": status})
    _dead_lock(tmp_path, "dead-run")
    with TableLock(config.sink.uri, "chunks", "new-run") as lock:
        note_interrupted_run(config, "backfill", lock)
    assert (json.loads(path.read_text())["status"] if status else path.exists()) == (status or False)
    err = capsys.readouterr().err
    assert "ended without finishing" in err and "interrupted" not in err


def test_a_free_lock_says_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _config(tmp_path)
    with TableLock(config.sink.uri, "chunks", "new-run") as lock:
        assert lock.taken_over is None
        note_interrupted_run(config, "index", lock)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("recorded", "live"),
    [
        ("this process", True),
        (None, True),  # a lock written before the start was recorded: the pid alone decides
        ("another-boot:123", False),  # the pid now belongs to another process (reused, or after a reboot)
    ],
)
def test_a_live_pid_keeps_the_lock_only_if_it_is_the_same_process(
    tmp_path: Path, recorded: str | None, live: bool
) -> None:
    import os

    from pipeline.lock import TableLocked, process_start

    (tmp_path / "db").mkdir()
    holder = {
        "run_id": "holder",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": "then",
        "heartbeat": "then",
    }
    if recorded:
        holder["process_start"] = process_start(os.getpid()) if recorded == "this process" else recorded
    (tmp_path / "db" / "chunks.lateline-lock").write_text(json.dumps(holder))
    lock = TableLock(str(tmp_path / "db"), "chunks", "new-run")
    if live:
        with pytest.raises(TableLocked, match="run holder"):
            lock.acquire()
    else:
        with lock:
            assert lock.taken_over["run_id"] == "holder"


def test_a_heartbeat_is_written_whole_so_a_job_killed_while_writing_it_is_still_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    lock = TableLock(str(tmp_path / "db"), "chunks", "writer")
    lock.acquire()
    path = tmp_path / "db" / "chunks.lateline-lock"
    lock.refresh()
    assert json.loads(path.read_text())["run_id"] == "writer"
    assert [p.name for p in (tmp_path / "db").iterdir()] == ["chunks.lateline-lock"], "no staged file left"

    def killed(*args: object) -> None:  # the job dies after staging the new heartbeat, before it replaces the lock
        raise SystemExit(137)

    before = path.read_text()
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(SystemExit):
        lock.refresh()
    assert path.read_text() == before, "the lock still names the job (it used to be truncated, then written)"
    staged = tmp_path / "db" / f"chunks.lateline-lock.{os.getpid()}.tmp"
    assert staged.exists()
    monkeypatch.undo()
    # The next job takes the lock (the holder is dead) and tidies the heartbeat the killed job staged.
    lock.held = False
    (tmp_path / "db" / "chunks.lateline-lock").write_text(json.dumps(lock.owner | {"pid": 2**22 + 1}))
    with TableLock(str(tmp_path / "db"), "chunks", "next") as taker:
        assert taker.taken_over["run_id"] == "writer"
        assert not staged.exists(), "the staged heartbeat of a killed job is removed by the job taking over"


def test_a_summary_dir_that_cannot_be_written_is_a_config_error_before_any_work(tmp_path: Path) -> None:
    from pipeline.config import ConfigError, parse_config
    from pipeline.runner import check_summary_dir

    (tmp_path / "a-file").write_text("")
    source = {"uri": "x", "format": "jsonl"}
    bad = parse_config({"source": source, "runtime": {"summary_dir": str(tmp_path / "a-file" / "runs")}})
    with pytest.raises(ConfigError, match=r"^runtime\.summary_dir: run summaries cannot be written to .*a-file/runs"):
        check_summary_dir(bad)
    good = parse_config({"source": source, "runtime": {"summary_dir": str(tmp_path / "new" / "runs")}})
    check_summary_dir(good)
    assert not (tmp_path / "new").exists(), "a check creates nothing: a refused run writes nothing"
