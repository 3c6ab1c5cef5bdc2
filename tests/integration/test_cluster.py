"""The index job on a real multi-node Ray cluster on loopback, submitted through the Ray Jobs API, reading from
S3 (moto on loopback); then a worker node killed mid-job.

Each node is a ``ray start --block`` process in its own process group with its own ports and temp directory, so
the cluster never meets the session's in-process Ray (``ray_session``) and is torn down by process group without
touching any other Ray on the machine. All are marked slow (``make test-slow``; CI runs them after the default
suite): about 4 minutes on 2 cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pyarrow as pa
import pytest
import yaml

from pipeline import schema

# The whole module is slow (a cluster start, then a job per test): `make test-slow`, which CI runs after the
# default suite.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# Long and short documents: long ones take several macro windows, so the job makes several commits.
DOCS = ["lambda", "assert", "pass", "del", "global", "return", "with", "raise", "import", "try", "calls", "naming"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LoopbackCluster:
    """A head and worker nodes on 127.0.0.1, each a ``ray start --block`` process leading its own process group.

    Nodes inherit this process's environment (the AWS endpoint and credentials of the S3 fixture) with the venv's
    ``bin`` first on ``PATH``, so a job's ``python -m jobs.index`` is this interpreter, as on a real image. The
    cluster uses Ray's token authentication with its own token (set explicitly: the default depends on files in
    ``~/.ray``); clients send it as a bearer header.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        # Ray's unix sockets live under the temp dir and their paths must stay under 108 bytes: pytest's are too long.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ll-ray-"))
        self.gcs_port, self.dashboard_port = _free_port(), _free_port()
        self.nodes: dict[str, subprocess.Popen] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.token = secrets.token_hex(32)
        self.env = {**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_head(self, num_cpus: int) -> None:
        self._start(
            "head",
            "--head",
            f"--port={self.gcs_port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={_free_port()}",
            f"--num-cpus={num_cpus}",
        )

    def add_worker(self, name: str, num_cpus: int) -> None:
        self._start(name, f"--address=127.0.0.1:{self.gcs_port}", f"--num-cpus={num_cpus}")

    def _start(self, name: str, *args: str) -> None:
        command = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--object-store-memory={256 * 1024 * 1024}",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
            *args,
        ]
        log = (self.root / f"{name}.log").open("wb")
        self.nodes[name] = subprocess.Popen(
            command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def kill(self, name: str) -> None:
        """A node dies without warning: SIGKILL to its whole process group (raylet, workers, agents)."""
        process = self.nodes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self) -> None:
        """SIGKILL every node's process group: the test's cluster holds nothing worth a graceful shutdown."""
        for name in list(self.nodes):
            self.kill(name)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def wait_for_nodes(self, alive: int, timeout: float = 90) -> list[dict]:
        """Wait until the cluster reports ``alive`` live nodes; returns them (state API, over HTTP)."""
        deadline, nodes = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            self._check_running()
            try:
                nodes = [n for n in self.state("nodes") if n["state"] == "ALIVE"]
            except Exception:  # the dashboard is still starting
                nodes = []
            if len(nodes) == alive:
                return nodes
            time.sleep(0.5)
        raise AssertionError(f"cluster did not reach {alive} live nodes (has {len(nodes)}); see {self.temp_dir}")

    def _check_running(self) -> None:
        for name, process in self.nodes.items():
            if process.poll() is not None:
                log = (self.root / f"{name}.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"ray node {name} exited with {process.returncode}:\n{log}")

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard, headers=self.headers)

    def state(self, resource: str, **filters: str) -> list[dict]:
        """Rows of Ray's state API (``nodes``, ``tasks``, ...) over HTTP, filtered by equality."""
        import requests

        params = {"limit": 10_000, "detail": "true", "filter_keys": [], "filter_predicates": [], "filter_values": []}
        for key, value in filters.items():
            params["filter_keys"].append(key)
            params["filter_predicates"].append("=")
            params["filter_values"].append(value)
        response = requests.get(f"{self.dashboard}/api/v0/{resource}", params=params, headers=self.headers, timeout=30)
        response.raise_for_status()
        return response.json()["data"]["result"]["result"]


@pytest.fixture(scope="module")
def cluster(s3_endpoint: str, tmp_path_factory) -> Iterator[LoopbackCluster]:
    """Head (1 CPU) and one worker (1 CPU): Ray has to place the embedding actor and the reading tasks on
    different nodes. Started after the S3 fixture, so every node sees the endpoint and credentials."""
    cluster = LoopbackCluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start_head(num_cpus=1)
        cluster.wait_for_nodes(1)
        cluster.add_worker("worker-1", num_cpus=1)
        cluster.wait_for_nodes(2)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def s3_corpus(s3fs_client) -> str:
    s3fs_client.mkdir("cluster-corpus")
    for part in range(3):
        body = "\n".join(json.dumps({"id": d, "text": topics[d]}) for d in DOCS[part::3]) + "\n"
        s3fs_client.pipe(f"cluster-corpus/docs/part-{part}.jsonl", body.encode())
    return "s3://cluster-corpus/docs/"


def _config(workdir: Path, source: str) -> Path:
    config = {
        "source": {"uri": source, "format": "jsonl"},
        "chunking": {"strategy": "tokens", "size": 64, "overlap": 8},
        "model": {"dtype": "float32"},
        "batching": {"docs_per_block": 1, "max_tokens": 4096},
        "sink": {"uri": str(workdir / "db"), "commit_rows": 10, "commit_seconds": 1},
        "runtime": {"summary_dir": str(workdir / "runs"), "progress_seconds": 2},
    }
    path = workdir / "index.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _submit(cluster: LoopbackCluster, module: str, config: Path, env_vars: dict[str, str] | None = None) -> str:
    """Submit ``python -m jobs.<module> --config CONFIG`` with the repo as working directory, as a user would
    with ``ray job submit --working-dir . -- python -m jobs.index --config ...``."""
    runtime_env = {"working_dir": str(REPO), **({"env_vars": env_vars} if env_vars else {})}
    return cluster.client().submit_job(entrypoint=f"python -m jobs.{module} --config {config}", runtime_env=runtime_env)


def _wait(cluster: LoopbackCluster, job_id: str, timeout: float = 300) -> str:
    client, deadline = cluster.client(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        time.sleep(1)
    client.stop_job(job_id)
    raise AssertionError(f"job {job_id} still running after {timeout}s:\n{client.get_job_logs(job_id)[-3000:]}")


def _rows(db: Path) -> pa.Table:
    import lancedb

    return lancedb.connect(str(db)).open_table("chunks").to_arrow().sort_by(schema.CHUNK_ID)


def _check_table(table: pa.Table) -> None:
    """Every document, no duplicate chunk, every vector present and unit-norm."""
    assert set(table[schema.DOC_ID].to_pylist()) == set(DOCS)
    assert len(set(table[schema.CHUNK_ID].to_pylist())) == table.num_rows
    assert table[schema.VECTOR].null_count == 0
    vectors = np.stack(table[schema.VECTOR].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


@pytest.fixture(scope="module")
def clean_run(cluster: LoopbackCluster, s3_corpus: str, tmp_path_factory) -> dict:
    """One index job through the Jobs API on the two-node cluster, undisturbed."""
    workdir = tmp_path_factory.mktemp("clean")
    job_id = _submit(cluster, "index", _config(workdir, s3_corpus))
    status = _wait(cluster, job_id)
    logs = cluster.client().get_job_logs(job_id)
    assert status == "SUCCEEDED", logs[-3000:]
    summary = json.loads(max((workdir / "runs").glob("*/summary.json")).read_text())
    return {"job_id": job_id, "table": _rows(workdir / "db"), "summary": summary, "logs": logs}


def test_index_job_through_the_jobs_api_on_two_nodes(cluster: LoopbackCluster, clean_run: dict) -> None:
    table, summary = clean_run["table"], clean_run["summary"]
    _check_table(table)
    assert summary["status"] == "ok" and summary["counts"]["docs_written"] == len(DOCS)
    assert summary["table"]["rows"] == table.num_rows and summary["table"]["commits"] > 1
    assert summary["source"]["uri"].startswith("s3://")
    assert '"status": "ok"' in clean_run["logs"], "the job's stdout (summary head) reaches the Jobs API logs"
    nodes = {task["node_id"] for task in cluster.state("tasks", state="FINISHED") if task.get("node_id")}
    assert len(nodes) == 2, "reading/chunking and embedding ran on both nodes"


def _commits(db: Path) -> int:
    return len(list((db / "chunks.lance" / "_versions").glob("*.manifest")))


def _wait_for_first_commit(cluster: LoopbackCluster, job_id: str, db: Path) -> None:
    """Wait until the job has committed once and is still running."""
    client, deadline = cluster.client(), time.monotonic() + 240
    while _commits(db) < 1 or not (db / "chunks.lateline-lock").exists():
        status = str(client.get_job_status(job_id).value)
        assert status not in TERMINAL, f"job ended ({status}) before it could be interrupted"
        assert time.monotonic() < deadline, "the job never committed"
        time.sleep(0.05)


def _kill_worker_after_first_commit(cluster: LoopbackCluster, job_id: str, db: Path) -> None:
    """Wait until the job has committed once and is still running, then SIGKILL the worker node and start a
    replacement (as KubeRay replaces a lost worker pod)."""
    _wait_for_first_commit(cluster, job_id, db)
    cluster.kill("worker-1")
    cluster.add_worker("worker-2", num_cpus=1)


def test_ray_job_stop_ends_the_job_interrupted_with_its_summary_and_the_same_job_again_resumes(
    cluster: LoopbackCluster, clean_run: dict, s3_corpus: str, tmp_path: Path
) -> None:
    """``ray job stop`` (what KubeRay does for a deleted RayJob or its ``activeDeadlineSeconds``) sends SIGTERM,
    then SIGKILL after ``RAY_JOB_STOP_WAIT_TIME_S``, raised here as the RayJob manifests do: the job winds down
    as on Ctrl-C, and its summary says interrupted and counts its commits."""
    config = _config(tmp_path, s3_corpus)
    job_id = _submit(cluster, "index", config, env_vars={"RAY_JOB_STOP_WAIT_TIME_S": "60"})
    _wait_for_first_commit(cluster, job_id, tmp_path / "db")
    client = cluster.client()
    client.stop_job(job_id)
    assert _wait(cluster, job_id) == "STOPPED"
    logs = client.get_job_logs(job_id)
    assert "index stopped (SIGTERM): what it committed stays; run the same" in logs, logs[-3000:]
    (path,) = (tmp_path / "runs").glob("*/summary.json")
    summary = json.loads(path.read_text())
    assert summary["status"] == "interrupted" and summary["error"] == "Terminated: SIGTERM"
    assert 0 < summary["counts"]["docs_written"] < len(DOCS) and summary["table"]["commits"] > 0
    assert summary["counts"]["forward_tokens"] > 0, "the stages' counters reach a stopped run's summary"

    assert _wait(cluster, _submit(cluster, "index", config)) == "SUCCEEDED"
    table = _rows(tmp_path / "db")
    _check_table(table)
    assert table[schema.CHUNK_ID].to_pylist() == clean_run["table"][schema.CHUNK_ID].to_pylist()


def test_worker_node_killed_mid_job_still_ends_with_a_correct_table(
    cluster: LoopbackCluster, clean_run: dict, s3_corpus: str, tmp_path: Path
) -> None:
    """Kill the worker node after the first commit. Either Ray recovers (tasks retried, the embedding actor
    restarted on the new node) and the job succeeds, or it fails and a rerun of the same command resumes; either
    way the table equals the clean run's, without duplicates."""
    config = _config(tmp_path, s3_corpus)
    job_id = _submit(cluster, "index", config)
    _kill_worker_after_first_commit(cluster, job_id, tmp_path / "db")
    cluster.wait_for_nodes(2)
    status = _wait(cluster, job_id)
    print(f"job after the worker was killed: {status}")  # which path this run took, in pytest -s / -rP output
    if status != "SUCCEEDED":  # the resumable path: the same command again
        status = _wait(cluster, _submit(cluster, "index", config))
    assert status == "SUCCEEDED"
    table = _rows(tmp_path / "db")
    _check_table(table)
    clean = clean_run["table"]
    assert table[schema.CHUNK_ID].to_pylist() == clean[schema.CHUNK_ID].to_pylist()
    np.testing.assert_allclose(
        np.stack(table[schema.VECTOR].to_numpy(zero_copy_only=False)),
        np.stack(clean[schema.VECTOR].to_numpy(zero_copy_only=False)),
        atol=1e-4,
    )
