"""The one place the Ray Data plan is wired: list -> read -> chunk/tokenize -> embed (actor pool).

Reading and chunking are Ray tasks (CPU, no reservation beyond one CPU each); embedding runs in an actor pool
sized from the cluster by :func:`size_actor_pool`. Writing happens on the driver (see :mod:`pipeline.sink`),
which consumes the plan as a stream, so memory stays flat however large the corpus is.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from pipeline.config import JobConfig, RuntimeConfig
from pipeline.known import KnownDocuments
from pipeline.sources import SourceObject, objects_table
from pipeline.stages import EmbedChunks, chunk_documents, chunk_settings, read_documents

CPU_TASK_CPUS = 0.5
CPUS_PER_CPU_ACTOR = 4  # on CPU-only clusters, one embedding actor per this many CPUs (matmuls scale sublinearly)


@dataclass(frozen=True)
class ActorPlan:
    """How the embedding actor pool is sized: actors, Ray resources per actor, torch's threads per forward
    pass (``None``: torch's default) and the forward passes each actor runs at once (a CPU actor computes with
    ``threads_per_forward * parallel_batches`` threads)."""

    size: int
    num_cpus: float
    num_gpus: float
    threads_per_forward: int | None
    parallel_batches: int = 1


def size_actor_pool(runtime: RuntimeConfig, cluster_cpus: float, cluster_gpus: float) -> ActorPlan:
    """One actor per GPU when the cluster has GPUs; on CPUs, one actor per ``CPUS_PER_CPU_ACTOR`` CPUs (at least
    one), each computing with its share of the CPUs (``runtime.torch_threads``): that many threads, split into
    forward passes of ``runtime.threads_per_forward`` threads that run at once. For a small encoder, one
    thread per forward is fastest: two single-threaded forwards at once ran 1.1-1.2x the tokens/s of one
    two-threaded forward on 2 cores (MiniLM, bf16). One CPU is always left for reading and tokenizing."""
    gpus = runtime.num_gpus_per_actor
    if gpus == "auto":
        gpus = 1.0 if cluster_gpus >= 1 else 0.0
    if gpus > 0:
        size = runtime.num_actors if runtime.num_actors != "auto" else max(1, int(cluster_gpus // gpus))
        return ActorPlan(size, runtime.num_cpus_per_actor, gpus, runtime.torch_threads)
    size = runtime.num_actors if runtime.num_actors != "auto" else max(1, int((cluster_cpus - 1) // CPUS_PER_CPU_ACTOR))
    threads = runtime.torch_threads or max(1, int(cluster_cpus // size))
    per_forward = min(runtime.threads_per_forward, threads)
    # Never reserve more than the cluster has beside one CPU for reading: a pool that cannot start would hang.
    num_cpus = min(runtime.num_cpus_per_actor, max(0.05, (cluster_cpus - 1) / size))
    return ActorPlan(size, num_cpus, 0.0, per_forward, parallel_batches=threads // per_forward)


def build_dataset(
    config: JobConfig,
    objects: list[SourceObject],
    settings_digest: str,
    actors: ActorPlan,
    stats: Any = None,
    known: KnownDocuments | None = None,
    limit: int | None = None,
) -> Any:
    """The lazy Ray Dataset of embedded chunk rows (``schema.embedded_schema``) for ``objects``. ``known``
    (``doc_id -> (fingerprint, source_uri)`` of what the table holds) lets readers drop unchanged documents;
    each object's row carries its own share of it (see ``objects_table``)."""
    import ray

    _apply_runtime(config)
    table = objects_table(objects, known)
    # Up to 10,000 blocks of whole objects: a read task per block, each with its objects' known documents.
    bounds = np.linspace(0, table.num_rows, max(1, min(table.num_rows, 10_000)) + 1).astype(int)
    dataset = ray.data.from_arrow([table.slice(start, end - start) for start, end in pairwise(bounds)])
    # Reading and chunking ask for half a CPU: a resource shape unlike the actors' keeps Ray from fusing them
    # into the embedding actors, so tokenizing runs beside the forward passes instead of before each one.
    dataset = dataset.map_batches(
        read_documents,
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=CPU_TASK_CPUS,
        fn_kwargs={"source": config.source, "settings_digest": settings_digest, "stats": stats},
    )
    return embed_documents(dataset, config, actors, stats, limit)


def _apply_runtime(config: JobConfig) -> None:
    """Ray Data settings of this job: progress bars, and the object-store budget that keeps memory flat."""
    from ray.data import DataContext
    from ray.data._internal.execution.interfaces import ExecutionResources

    context = DataContext.get_current()
    context.enable_progress_bars = config.runtime.ray_progress_bars
    budget = config.runtime.object_store_budget_mb
    limits = ExecutionResources.for_limits(object_store_memory=budget * 2**20 if budget else None)
    context.execution_options.resource_limits = limits


def embed_documents(dataset: Any, config: JobConfig, actors: ActorPlan, stats: Any = None, limit: int | None = None):
    """The shared tail of every plan: ``DOCUMENTS`` blocks -> (limit) -> blocks of ``docs_per_block`` ->
    tokenize and chunk (tasks) -> embed (actor pool) -> ``embedded_schema`` rows."""
    from ray.data import ActorPoolStrategy

    block = config.batching.docs_per_block
    if limit is not None:
        dataset = dataset.limit(limit)
    # Ray merges a task's outputs into blocks of up to 128 MiB: one large file would reach the embedding actors,
    # and the driver, as one block. Streaming repartition keeps blocks at docs_per_block documents, so progress,
    # memory and commits stay fine-grained whatever the file sizes. Strict: without it, files of 250 documents
    # stayed 250-row blocks and the 256-row batches merged two of them into one 500-document block.
    dataset = dataset.repartition(target_num_rows_per_block=block, strict=True)
    dataset = dataset.map_batches(
        chunk_documents,
        batch_size=block,
        batch_format="pyarrow",
        num_cpus=CPU_TASK_CPUS,
        fn_kwargs={"settings": chunk_settings(config.model, config.chunking), "stats": stats},
    )
    return dataset.map_batches(
        EmbedChunks,
        batch_size=block,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=actors.size),
        num_cpus=actors.num_cpus,
        num_gpus=actors.num_gpus,
        fn_constructor_kwargs={
            "model": config.model,
            "embedding": config.embedding,
            "batching": config.batching,
            "torch_threads": actors.threads_per_forward,
            "parallel_batches": actors.parallel_batches,
            "stats": stats,
        },
    )


def build_reembed_dataset(
    config: JobConfig,
    stored: Any,
    fragment_ids: list[int],
    settings_digest: str,
    actors: ActorPlan,
    stats: Any = None,
    known: Any = None,
    limit: int | None = None,
) -> Any:
    """The lazy Ray Dataset of a re-embed: the stored table's fragments (``stored``: a
    :class:`pipeline.reembed.StoredTable`) are read in tasks and rebuilt into documents, then embedded with
    ``config``'s model like any other source."""
    import ray

    from pipeline.reembed import read_stored_documents

    _apply_runtime(config)
    items = [{"fragment_id": fragment} for fragment in fragment_ids]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 10_000)))
    dataset = dataset.map_batches(
        read_stored_documents,
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=CPU_TASK_CPUS,
        fn_kwargs={"stored": stored, "digest": settings_digest, "known": known, "stats": stats},
    )
    return embed_documents(dataset, config, actors, stats, limit)
