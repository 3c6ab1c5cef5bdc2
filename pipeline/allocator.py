"""The memory allocator of the Ray processes lateline starts: jemalloc that never hands pages back, by default.

A CPU forward pass allocates and frees activations of many shapes. On glibc's allocator the heap fragments
and creeps up block after block, so an embedding actor trims it (``HeapTrimmer``), and every trimmed page is
faulted in again by the next forward: in one process over 1,024 late-mode documents, 2.7M page faults and
84 CPU seconds, against 1.0M and 78 never trimming (peak 1,077 MiB instead of 904) and 0.08M and 76 on
jemalloc told never to hand pages back (``MALLOC_CONF`` below; peak 853 MiB). Ray ships jemalloc
(``ray/core/libjemalloc.so``).

It is preloaded into every process of a local Ray that lateline starts, by setting ``LD_PRELOAD`` and
``MALLOC_CONF`` while ``ray.init`` starts the cluster's processes (the workers inherit them), and restoring
the driver's environment afterwards. Not through an actor's runtime environment: that keeps the actor off
Ray's prestarted workers and cost 2-7 s of start-up. A cluster lateline joins (``RAY_ADDRESS``) keeps the
allocator its nodes were started with (``infra/`` sets jemalloc in its images); each actor reports what it
runs with, and trims its heap only on glibc.

Each embedding actor also caps oneDNN's primitive cache (:func:`limit_onednn_cache`), on any cluster.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from pathlib import Path

from pipeline.config import ConfigError

# Never hand freed pages back to the OS (dirty and muzzy pages are kept for reuse): the next forward pass
# reuses them without a fault. The heap then stays at the working set of the largest micro-batches.
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"

# oneDNN (PyTorch's CPU kernels for bf16 matmuls) keeps a compiled primitive per input shape, 1,024 by default.
# Length-sorted packing gives nearly every micro-batch a shape of its own, so that cache fills with primitives
# never used again. Measured over 600 late-mode documents (the bare forward, two batches at once): peak 774-786
# MiB with 16 entries against 915-929 MiB with the default, and no slower (23.5-24.0 s against 24.3-24.8 s).
ONEDNN_CACHE_VARIABLE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
ONEDNN_CACHE_ENTRIES = "16"


def bundled_jemalloc() -> str | None:
    """The jemalloc shared library Ray ships (``ray/core/libjemalloc.so``), or None when this Ray has none."""
    import ray

    path = Path(ray.__file__).parent / "core" / "libjemalloc.so"
    return str(path) if path.is_file() else None


def allocator_environment(choice: str, jemalloc: str | None, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment variables that give a local Ray's processes the allocator of ``runtime.cpu_allocator``
    (``choice``), given Ray's jemalloc (``jemalloc``, None when missing) and the driver's ``environ``.

    ``glibc``: nothing. ``auto``: jemalloc, unless Ray ships none or the user already preloads something
    (their ``LD_PRELOAD`` is left alone). ``jemalloc``: jemalloc first in ``LD_PRELOAD``, before the user's;
    raises ``ConfigError`` when Ray ships none. A ``MALLOC_CONF`` the user set is kept."""
    if choice == "glibc":
        return {}
    if jemalloc is None:
        if choice == "jemalloc":
            raise ConfigError("runtime.cpu_allocator: 'jemalloc', but this Ray install ships no libjemalloc.so")
        return {}
    preloaded = environ.get("LD_PRELOAD", "").strip()
    if preloaded and choice == "auto":
        return {}
    return {
        "LD_PRELOAD": f"{jemalloc} {preloaded}".strip(),
        "MALLOC_CONF": environ.get("MALLOC_CONF") or JEMALLOC_CONF,
    }


@contextmanager
def environment(changes: Mapping[str, str], environ: MutableMapping[str, str] = os.environ) -> Iterator[None]:
    """``environ`` with ``changes`` applied for the block, then restored exactly (a variable that was unset is
    removed again): the driver itself keeps its allocator and does not pass the preload to other programs."""
    before = {name: environ.get(name) for name in changes}
    environ.update(changes)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value


def limit_onednn_cache(environ: MutableMapping[str, str] = os.environ) -> None:
    """Cap oneDNN's primitive cache at :data:`ONEDNN_CACHE_ENTRIES` unless the user set a capacity. oneDNN
    reads the variable when it first builds a primitive: call this before the process's first CPU forward."""
    environ.setdefault(ONEDNN_CACHE_VARIABLE, ONEDNN_CACHE_ENTRIES)


def running_allocator() -> str:
    """``jemalloc`` when jemalloc serves this process's ``malloc`` (preloaded: its ``mallctl`` is in the global
    symbol table), else ``glibc``."""
    try:
        return "jemalloc" if hasattr(ctypes.CDLL(None), "mallctl") else "glibc"
    except OSError:
        return "glibc"
