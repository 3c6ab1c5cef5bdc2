"""plan.py size_actor_pool: one actor per GPU; on CPUs, a pool that leaves room for reading and tokenizing."""

from __future__ import annotations

import pytest

from pipeline.config import RuntimeConfig
from pipeline.plan import size_actor_pool


def test_two_cpus_no_gpu_is_one_actor_that_leaves_a_cpu_free() -> None:
    plan = size_actor_pool(RuntimeConfig(), cluster_cpus=2, cluster_gpus=0)
    assert plan.size == 1
    assert plan.num_gpus == 0
    assert 0 < plan.num_cpus < 2
    # Two single-threaded forward passes at once: 1.1-1.2x the tokens/s of one two-threaded pass here.
    assert (plan.threads_per_forward, plan.parallel_batches) == (1, 2)


@pytest.mark.parametrize("cpus", [1, 2, 3, 8, 16, 64])
def test_cpu_actors_never_reserve_more_than_the_cluster_less_one_cpu(cpus: int) -> None:
    plan = size_actor_pool(RuntimeConfig(), cluster_cpus=cpus, cluster_gpus=0)
    assert plan.size >= 1 and plan.num_gpus == 0
    if cpus > 1:
        assert plan.size * plan.num_cpus <= cpus - 1


def test_more_cpus_give_more_cpu_actors() -> None:
    small = size_actor_pool(RuntimeConfig(), cluster_cpus=4, cluster_gpus=0)
    large = size_actor_pool(RuntimeConfig(), cluster_cpus=64, cluster_gpus=0)
    assert large.size > small.size


@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_one_actor_per_gpu(gpus: int) -> None:
    plan = size_actor_pool(RuntimeConfig(), cluster_cpus=32, cluster_gpus=gpus)
    assert plan.size == gpus
    assert plan.num_gpus == 1


def test_explicit_num_actors_is_honoured() -> None:
    assert size_actor_pool(RuntimeConfig(num_actors=3), cluster_cpus=16, cluster_gpus=0).size == 3
    assert size_actor_pool(RuntimeConfig(num_actors=2), cluster_cpus=16, cluster_gpus=4).size == 2


def test_explicit_gpu_share_packs_actors_per_gpu() -> None:
    plan = size_actor_pool(RuntimeConfig(num_gpus_per_actor=0.5), cluster_cpus=16, cluster_gpus=2)
    assert (plan.size, plan.num_gpus) == (4, 0.5)


def test_zero_gpus_per_actor_forces_cpu_actors_on_a_gpu_cluster() -> None:
    plan = size_actor_pool(RuntimeConfig(num_gpus_per_actor=0), cluster_cpus=9, cluster_gpus=4)
    assert plan.num_gpus == 0 and plan.size == 2


def test_cpu_actor_threads_are_split_into_forward_passes_that_run_at_once() -> None:
    def split(**runtime: int) -> tuple[int | None, int]:
        plan = size_actor_pool(RuntimeConfig(**runtime), cluster_cpus=16, cluster_gpus=0)
        return plan.threads_per_forward, plan.parallel_batches

    assert split(torch_threads=3) == (1, 3)
    assert split(torch_threads=4, threads_per_forward=2) == (2, 2)
    assert split(torch_threads=4, threads_per_forward=4) == (4, 1)
    assert split(torch_threads=3, threads_per_forward=8) == (3, 1)  # never more threads than the actor has
    default = size_actor_pool(RuntimeConfig(), cluster_cpus=16, cluster_gpus=0)
    assert default.threads_per_forward * default.parallel_batches == 16 // default.size


def test_gpu_actors_run_one_forward_pass_at_a_time_with_the_configured_torch_threads() -> None:
    plan = size_actor_pool(RuntimeConfig(torch_threads=3), cluster_cpus=16, cluster_gpus=1)
    assert (plan.threads_per_forward, plan.parallel_batches) == (3, 1)
    assert size_actor_pool(RuntimeConfig(), cluster_cpus=16, cluster_gpus=1).threads_per_forward is None


def test_the_object_store_budget_caps_what_ray_data_keeps_in_flight() -> None:
    from ray.data import DataContext

    from pipeline.config import parse_config
    from pipeline.plan import _apply_runtime

    context = DataContext.get_current()
    saved = context.execution_options.resource_limits
    try:
        _apply_runtime(parse_config({"source": {"uri": "x", "format": "jsonl"}}))
        assert context.execution_options.resource_limits.object_store_memory == 512 * 2**20
        _apply_runtime(
            parse_config({"source": {"uri": "x", "format": "jsonl"}, "runtime": {"object_store_budget_mb": None}})
        )
        assert context.execution_options.resource_limits.object_store_memory == float("inf")
    finally:
        context.execution_options.resource_limits = saved
