"""The S3 endpoint goes away mid-run (a restart): the job retries and completes with every document."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from pydoc_data.topics import topics
from urllib.parse import urlparse

import pytest
import yaml

from jobs import index as index_job
from pipeline import schema

pytestmark = pytest.mark.integration

DOCS = ["lambda", "assert", "pass", "del", "global", "return", "break", "continue"]


class RestartingProxy:
    """A TCP proxy to the S3 endpoint. On the first object download (``GET /bucket/key`` without a query) it
    "restarts": every open connection is dropped and new ones are refused for ``outage_s`` seconds."""

    def __init__(self, target: str, outage_s: float) -> None:
        parsed = urlparse(target)
        self.target = (parsed.hostname, parsed.port)
        self.outage_s = outage_s
        self.restarts = 0
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener = self._listen(0)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        return listener

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                if self.listener.fileno() == -1 and self._wait_for_restart():
                    continue
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.connections += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _wait_for_restart(self) -> bool:
        while self.listener.fileno() == -1:
            time.sleep(0.05)
        return True

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client and self.restarts == 0 and _is_object_get(data):
                    self._restart()
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                sock.close()

    def _restart(self) -> None:
        self.restarts += 1
        self.listener.close()
        with self.lock:
            for sock in self.connections:
                sock.close()
            self.connections.clear()
        time.sleep(self.outage_s)
        self.listener = self._listen(self.port)


def _is_object_get(data: bytes) -> bool:
    request_line = data.split(b"\r\n", 1)[0]
    return request_line.startswith(b"GET /") and b"?" not in request_line.split(b" ")[1]


def test_job_completes_when_the_endpoint_restarts_mid_run(
    s3fs_client, s3_endpoint, ray_session, tmp_path: Path
) -> None:
    s3fs_client.mkdir("outage")
    for index, doc in enumerate(DOCS):
        s3fs_client.pipe(f"outage/docs/part-{index}.jsonl", json.dumps({"id": doc, "text": topics[doc]}).encode())
    proxy = RestartingProxy(s3_endpoint, outage_s=3.0)
    config = {
        "source": {"uri": "s3://outage/docs/", "format": "jsonl", "storage_options": {"endpoint_url": proxy.url}},
        "model": {"dtype": "float32"},
        "sink": {"uri": str(tmp_path / "db")},
        "runtime": {"summary_dir": str(tmp_path / "runs")},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    assert index_job.main(["--config", str(path)]) == 0
    assert proxy.restarts == 1, "the endpoint must really have gone away during the run"
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert summary["counts"]["docs_written"] == len(DOCS) and summary["counts"]["docs_dead_lettered"] == 0
    import lancedb

    table = lancedb.connect(str(tmp_path / "db")).open_table("chunks").to_arrow()
    assert set(table[schema.DOC_ID].to_pylist()) == set(DOCS)
