"""The commands as a user runs them: errors name the key and the value, exit 2, and nothing is written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _lateline(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    exe = shutil.which("lateline") or str(Path(sys.executable).with_name("lateline"))
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _write(tmp_path: Path, config: dict) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _local(tmp_path: Path, **sections: dict) -> dict:
    config = {
        "source": {"uri": str(REPO / "data" / "sample"), "format": "jsonl"},
        "sink": {"uri": str(tmp_path / "db")},
        "runtime": {"summary_dir": str(tmp_path / "runs")},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


@pytest.mark.parametrize(
    ("section", "values", "expected"),
    [
        ("chunking", {"size": -3}, ["chunking.size", "-3"]),
        ("chunking", {"sise": 100}, ["chunking.sise", "unknown key"]),
        ("embedding", {"mode": "fast"}, ["embedding.mode", "'late'", "'naive'", "fast"]),
        ("model", {"dtype": "int4"}, ["model.dtype", "int4", "'bfloat16'"]),
        ("chunking", {"size": 64, "overlap": 64}, ["chunking.overlap", "64"]),
        ("source", {"format": "csv"}, ["source.format", "csv", "'parquet'"]),
    ],
)
def test_bad_config_exits_2_naming_key_and_value(tmp_path: Path, section: str, values: dict, expected: list) -> None:
    result = _lateline("index", "--config", _write(tmp_path, _local(tmp_path, **{section: values})))
    assert result.returncode == 2, result.stderr
    for fragment in expected:
        assert fragment in result.stderr
    assert not (tmp_path / "db").exists() and not (tmp_path / "runs").exists()


def test_set_override_is_validated_too(tmp_path: Path) -> None:
    result = _lateline("index", "--config", _write(tmp_path, _local(tmp_path)), "--set", "batching.max_tokens=0")
    assert result.returncode == 2 and "batching.max_tokens" in result.stderr and "0" in result.stderr


def test_missing_source_names_the_uri(tmp_path: Path) -> None:
    config = _local(tmp_path, source={"uri": str(tmp_path / "nowhere")})
    result = _lateline("index", "--config", _write(tmp_path, config))
    assert result.returncode == 2 and "source.uri" in result.stderr and "nowhere" in result.stderr


@pytest.mark.parametrize("job", ["index", "promote"])
def test_a_model_that_cannot_be_loaded_exits_2_naming_it_before_anything_is_written(tmp_path: Path, job: str) -> None:
    config = _local(tmp_path, model={"name_or_path": str(tmp_path / "no-such-model")})
    result = _lateline(job, "--config", _write(tmp_path, config))
    assert result.returncode == 2, result.stderr
    assert "model.name_or_path" in result.stderr and "no-such-model" in result.stderr
    assert "no such directory" in result.stderr and "repo id" not in result.stderr.lower()
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "db").exists() and not (tmp_path / "runs").exists()


def test_a_model_directory_without_weights_is_refused_before_ray_starts(tmp_path: Path) -> None:
    from pipeline.model import resolve_model_path

    model = tmp_path / "config-only"
    model.mkdir()
    shutil.copy(Path(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")) / "config.json", model)
    result = _lateline("index", "--config", _write(tmp_path, _local(tmp_path, model={"name_or_path": str(model)})))
    assert result.returncode == 2 and "model.name_or_path" in result.stderr and "config-only" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_overwrite_is_refused_by_a_backfill_which_never_removes_anything(tmp_path: Path) -> None:
    result = _lateline("backfill", "--config", _write(tmp_path, _local(tmp_path, sink={"mode": "overwrite"})))
    assert result.returncode == 2, result.stderr
    assert "sink.mode" in result.stderr and "overwrite" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", [("search", "anything"), ("deadletter", "list")])
def test_reading_before_index_says_what_to_do_and_creates_nothing(tmp_path: Path, command: tuple) -> None:
    result = _lateline(command[0], "--config", _write(tmp_path, _local(tmp_path)), *command[1:])
    assert result.returncode == 2 and "lateline index" in result.stderr
    assert not (tmp_path / "db").exists()


def test_unknown_job_prints_usage() -> None:
    result = _lateline("frobnicate")
    assert result.returncode == 2 and "usage: lateline" in result.stderr and "index" in result.stderr


def test_version_is_the_installed_package_version() -> None:
    from importlib.metadata import version

    result = _lateline("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"lateline {version('lateline')}"


@pytest.mark.parametrize(
    ("command", "named"),
    [(("search", "   "), "query: must have some text"), (("deadletter", "replay", "--json"), "--json")],
)
def test_arguments_that_mean_nothing_are_refused_before_the_config_is_read(
    tmp_path: Path, command: tuple, named: str
) -> None:
    broken = _local(tmp_path, chunking={"size": 0})  # reading this config would fail, naming chunking.size
    result = _lateline(command[0], "--config", _write(tmp_path, broken), *command[1:])
    assert result.returncode == 2 and named in result.stderr, result.stderr
    assert "chunking.size" not in result.stderr


def test_module_form_used_by_ray_job_submit(tmp_path: Path) -> None:
    config = _local(tmp_path, chunking={"size": 0})
    result = subprocess.run(
        [sys.executable, "-m", "jobs.index", "--config", _write(tmp_path, config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "chunking.size" in result.stderr


def test_a_local_run_starts_ray_on_jemalloc_and_its_actors_say_so(tmp_path: Path) -> None:
    """The Ray a job starts itself runs on the jemalloc Ray ships (runtime.cpu_allocator: auto): the actors
    report it in the summary, and do not trim a heap that is not glibc's."""
    from pipeline.allocator import bundled_jemalloc

    if bundled_jemalloc() is None:
        pytest.skip("this Ray ships no jemalloc")
    result = _lateline("index", "--config", _write(tmp_path, _local(tmp_path)), "--limit", "8")
    assert result.returncode == 0, result.stderr[-2000:]
    (summary_path,) = (tmp_path / "runs").glob("*/summary.json")
    summary = yaml.safe_load(summary_path.read_text())  # JSON is YAML
    assert summary["counts"]["docs_written"] == 8
    assert summary["actors"]["allocators"] == {"jemalloc": summary["actors"]["size"]}


@pytest.mark.parametrize(
    ("stop", "code", "line", "error"),
    [
        ("SIGINT", 130, "index interrupted: ", "KeyboardInterrupt"),  # Ctrl-C
        ("SIGTERM", 143, "index stopped (SIGTERM): ", "Terminated: SIGTERM"),  # ray job stop, Kubernetes, kill
    ],
)
def test_ctrl_c_or_sigterm_ends_a_run_as_interrupted_with_its_commits_counted_and_a_rerun_resumes(
    tmp_path: Path, stop: str, code: int, line: str, error: str
) -> None:
    import json
    import signal
    import time

    exe = shutil.which("lateline") or str(Path(sys.executable).with_name("lateline"))
    # A running summary every second: the signal must come after the first commit and before the run ends.
    runtime = {"summary_dir": str(tmp_path / "runs"), "progress_seconds": 1}
    config = _write(
        tmp_path, _local(tmp_path, sink={"commit_rows": 1}, batching={"docs_per_block": 8}, runtime=runtime)
    )
    # A shell without job control starts background commands with SIGINT ignored, and Python then never turns
    # it into KeyboardInterrupt: give the job the default, as a terminal's Ctrl-C would find it.
    process = subprocess.Popen(
        [exe, "index", "--config", config],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:  # interrupt once something is committed
        summaries = list((tmp_path / "runs").glob("*/summary.json"))
        if summaries and json.loads(summaries[0].read_text())["counts"]["docs_written"] > 0:
            break
        time.sleep(0.2)
    process.send_signal(getattr(signal, stop))
    out, err = process.communicate(timeout=120)
    assert "index: ok; run summary" not in err, "the run ended before the signal: nothing was interrupted"
    assert process.returncode == code, err[-2000:]
    assert line + "what it committed stays; run the same command again to resume" in err
    assert "Traceback" not in err
    (path,) = (tmp_path / "runs").glob("*/summary.json")
    summary = json.loads(path.read_text())
    assert summary["status"] == "interrupted" and summary["error"] == error
    assert summary["counts"]["forward_tokens"] > 0, "the stages' counters reach an interrupted run's summary"
    committed = summary["counts"]["docs_written"]
    assert 0 < committed < 60 and summary["table"]["commits"] > 0, "the summary counts what was committed"
    assert summary["table"]["rows"] >= summary["counts"]["rows_written"] > 0 and summary["table"]["version"]
    # The head of the summary, as a finished run prints it, and nothing else: Ray's forwarded worker lines go
    # to stderr with the rest.
    head = json.loads(out)
    assert (head["status"], head["counts"], head["summary_path"]) == ("interrupted", summary["counts"], str(path))

    rerun = _lateline("index", "--config", config)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    latest = json.loads(max((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert latest["counts"]["docs_skipped_unchanged"] >= committed
    assert latest["counts"]["docs_written"] + latest["counts"]["docs_skipped_unchanged"] == 60
