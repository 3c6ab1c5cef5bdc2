"""The allocator of the Ray processes lateline starts: which environment gives it, that the driver's own
environment comes back unchanged, and that a process tells which allocator serves it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.allocator import (
    JEMALLOC_CONF,
    ONEDNN_CACHE_ENTRIES,
    allocator_environment,
    bundled_jemalloc,
    environment,
    limit_onednn_cache,
)
from pipeline.config import ConfigError

JEMALLOC = "/ray/core/libjemalloc.so"


def test_auto_preloads_jemalloc_that_never_hands_pages_back() -> None:
    assert allocator_environment("auto", JEMALLOC, {}) == {"LD_PRELOAD": JEMALLOC, "MALLOC_CONF": JEMALLOC_CONF}


def test_auto_leaves_a_users_preload_alone_and_falls_back_to_glibc_without_jemalloc() -> None:
    assert allocator_environment("auto", JEMALLOC, {"LD_PRELOAD": "/opt/libtcmalloc.so"}) == {}
    assert allocator_environment("auto", None, {}) == {}


def test_jemalloc_goes_first_and_keeps_the_users_preload_and_malloc_conf() -> None:
    environ = {"LD_PRELOAD": "/opt/libextra.so", "MALLOC_CONF": "narenas:2"}
    assert allocator_environment("jemalloc", JEMALLOC, environ) == {
        "LD_PRELOAD": f"{JEMALLOC} /opt/libextra.so",
        "MALLOC_CONF": "narenas:2",
    }


def test_glibc_sets_nothing_and_jemalloc_without_a_library_names_the_setting() -> None:
    assert allocator_environment("glibc", JEMALLOC, {}) == {}
    with pytest.raises(ConfigError, match=r"runtime\.cpu_allocator: 'jemalloc'"):
        allocator_environment("jemalloc", None, {})


def test_the_environment_is_restored_exactly_even_after_an_error() -> None:
    environ = {"LD_PRELOAD": "/opt/mine.so", "PATH": "/bin"}
    with pytest.raises(RuntimeError), environment({"LD_PRELOAD": "/x.so", "MALLOC_CONF": "a:1"}, environ):
        assert environ == {"LD_PRELOAD": "/x.so", "MALLOC_CONF": "a:1", "PATH": "/bin"}
        raise RuntimeError("ray.init failed")
    assert environ == {"LD_PRELOAD": "/opt/mine.so", "PATH": "/bin"}


@pytest.mark.skipif(bundled_jemalloc() is None, reason="this Ray ships no jemalloc")
def test_a_process_says_which_allocator_serves_it() -> None:
    script = "from pipeline.allocator import running_allocator; print(running_allocator())"

    def run(extra: dict[str, str]) -> str:
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")} | extra
        return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True).stdout.strip()

    assert run({}) == "glibc"
    assert run(allocator_environment("auto", bundled_jemalloc(), {})) == "jemalloc"


def test_onednn_cache_is_capped_unless_the_user_set_a_capacity() -> None:
    environ: dict[str, str] = {}
    limit_onednn_cache(environ)
    assert environ == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": ONEDNN_CACHE_ENTRIES}
    mine = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256"}
    limit_onednn_cache(mine)
    assert mine == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256"}
