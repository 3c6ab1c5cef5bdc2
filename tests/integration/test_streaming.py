"""The driver takes each output block as soon as the actors produce it (real Ray, no model)."""

from __future__ import annotations

import time

import pytest

from pipeline.runner import outputs_as_they_come

pytestmark = pytest.mark.integration

WAIT_S = 20.0


def test_the_driver_gets_each_block_before_the_next_one_is_finished(ray_session: None) -> None:
    """Each actor call after the first waits until the driver has received as many blocks as the actor has
    already returned. If the driver's iterator held a block back until the next was ready (Ray Data's default
    prefetch), the second call and the driver would wait for each other until the call gives up and marks its
    output ``gave_up``.

    The wait counts the actor's own calls, not block ids: the three read tasks finish in any order, and a
    call that waited for block 0 while holding the only actor would wait for a block that cannot come."""
    import pyarrow as pa
    import ray
    from ray.data import ActorPoolStrategy

    # Defined here, not at module level, so that Ray ships them by value to workers that cannot import tests.
    @ray.remote(num_cpus=0)
    class Received:
        def __init__(self) -> None:
            self.blocks = 0

        def add(self) -> None:
            self.blocks += 1

        def count(self) -> int:
            return self.blocks

    class WaitForTheDriver:
        def __init__(self, received) -> None:
            self.received = received
            self.returned = 0  # calls of this (only) actor that have returned; Ray runs them one at a time

        def __call__(self, batch: pa.Table) -> pa.Table:
            block = batch["id"][0].as_py()
            deadline = time.monotonic() + WAIT_S
            gave_up = False
            while ray.get(self.received.count.remote()) < self.returned:
                if time.monotonic() > deadline:
                    gave_up = True
                    break
                time.sleep(0.05)
            self.returned += 1
            return pa.table({"block": [block], "gave_up": [gave_up]})

    received = Received.remote()
    dataset = ray.data.range(3, override_num_blocks=3).map_batches(
        WaitForTheDriver,
        batch_size=1,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=1),
        num_cpus=0.5,
        fn_constructor_kwargs={"received": received},
    )
    outputs = []
    for batch in outputs_as_they_come(dataset):
        outputs.extend(batch.to_pylist())
        for _ in range(batch.num_rows):
            ray.get(received.add.remote())
    assert sorted(row["block"] for row in outputs) == [0, 1, 2]
    assert not any(row["gave_up"] for row in outputs), outputs
    ray.kill(received)


def test_jobs_stream_their_output_through_it_and_report_the_share_done(
    ray_session: None, tmp_path, monkeypatch, capsys
) -> None:
    import json

    import yaml

    from jobs import index as index_job
    from pipeline import runner

    calls = []

    def recorded(dataset):
        calls.append(dataset)
        return outputs_as_they_come(dataset)

    monkeypatch.setattr(runner, "outputs_as_they_come", recorded)
    from pydoc_data.topics import topics

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "short.jsonl").write_text(json.dumps({"id": "a", "text": "One short document."}) + "\n")
    long_docs = [json.dumps({"id": name, "text": topics[name]}) for name in ("lambda", "assert")]  # several chunks
    (tmp_path / "src" / "long.jsonl").write_text("\n".join([*long_docs, "{not json"]) + "\n")
    config = {
        "source": {"uri": str(tmp_path / "src"), "format": "jsonl"},
        "model": {"dtype": "float32"},
        "sink": {"uri": str(tmp_path / "db")},
        "runtime": {"summary_dir": str(tmp_path / "runs")},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    assert index_job.main(["--config", str(tmp_path / "job.yaml")]) == 0
    assert len(calls) == 1
    progress = [line for line in capsys.readouterr().err.splitlines() if " docs written, " in line]
    assert progress and "3 docs written" in progress[-1] and "1 dead-lettered" in progress[-1]
    assert "100% of the source's objects done" in progress[-1]
