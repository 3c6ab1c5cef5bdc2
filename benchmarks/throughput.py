"""Throughput, measured side by side in one run on one corpus and machine.

Variants (each in a fresh subprocess, so its peak memory is its own):
  late         lateline end to end, late mode: S3 on loopback (moto_server) -> Ray -> LanceDB
  late-glibc   late mode with ``runtime.cpu_allocator=glibc``: glibc's heap, trimmed on growth, instead of
               jemalloc (the default), to measure the allocator
  naive        lateline end to end, naive mode
  st-default   sentence-transformers ``encode`` of the same naive chunks, its defaults (what users write)
  st-bf16      the same with the weights in bfloat16
  raw          the bare model forward over exactly the sequences lateline's late mode runs, packed the same
               way, timed as a plain loop on all threads and as one single-threaded batch per thread at once,
               on jemalloc like lateline's actors; the faster is the ceiling for this model here. Plus a
               measured matmul peak for model FLOP utilisation
  memory       lateline late mode at ``--memory-docs`` and 10x that: peak memory must stay flat

The corpus is real prose of mixed lengths: pydoc topics (the Python docs shipped with the stdlib), each
document a run of paragraphs of one topic from a random start, with a log-uniform target length of 300 to
12,000 chars. Chunks are 128-token windows in every variant. Time is wall time: lateline's includes Ray start,
model load, S3 reads, tokenizing and LanceDB writes; sentence-transformers' is model load plus ``encode`` of
chunk texts prepared beforehand (reading, chunking and writing not counted, in its favour).

    python benchmarks/throughput.py                      # 300 docs, a few minutes
    python benchmarks/throughput.py --docs 2000          # the size the targets are stated at
    python benchmarks/throughput.py --variants late,raw  # a subset
    python benchmarks/throughput.py --set runtime.threads_per_forward=2   # lateline tuned (the ceiling is
                                                                          # always timed both ways)
    python benchmarks/throughput.py --docs 2000 --rounds 3   # every variant 3 times, interleaved

This machine's speed drifts by 10-25% within an hour, so one run's ratio can land on either side of a target.
``--rounds N`` runs the variants N times, round after round (each round in a rotated order, each run on a
fresh table), and computes each ratio within each round, from runs minutes apart. It reports the median of
those paired ratios, their range and in how many rounds each target held; the table shows, per variant, its
run with the median wall time.

Prints a table and the ratios, writes ``throughput.json`` and ``throughput.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("late", "late-glibc", "naive", "st-default", "st-bf16", "raw", "memory")
CHUNK_TOKENS = 128
BUCKET = "lateline-bench"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
TARGETS = {
    "late_vs_st_default": 1.5,
    "late_vs_st_bf16": 1.0,
    "late_share_of_ceiling": 0.85,
    "memory_10x_over_1x": 1.2,
}


# --- corpus ----------------------------------------------------------------------------------------------
def make_corpus(n_docs: int, seed: int = 0) -> list[dict[str, str]]:
    """``n_docs`` documents of real prose with mixed lengths (see the module docstring); deterministic."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    docs = []
    for index in range(n_docs):
        rng = random.Random(seed * 1_000_003 + index)
        paragraphs = [p for p in topics[names[index % len(names)]].split("\n\n") if p.strip()]
        target = math.exp(rng.uniform(math.log(300), math.log(12_000)))
        start, parts, size = rng.randrange(len(paragraphs)), [], 0
        while size < target and len(parts) < len(paragraphs):
            parts.append(paragraphs[(start + len(parts)) % len(paragraphs)])
            size += len(parts[-1]) + 2
        docs.append({"id": f"doc-{index:06d}", "text": "\n\n".join(parts)})
    return docs


def write_jsonl_shards(docs: list[dict[str, str]], fs: Any, prefix: str, shard_docs: int = 250) -> None:
    for shard, start in enumerate(range(0, len(docs), shard_docs)):
        lines = "".join(json.dumps(doc) + "\n" for doc in docs[start : start + shard_docs])
        with fs.open(f"{prefix}/part-{shard:04d}.jsonl", "w") as handle:
            handle.write(lines)


# --- S3 on loopback --------------------------------------------------------------------------------------
def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    process = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(150):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("moto_server did not start")


def s3_filesystem(endpoint: str) -> Any:
    import s3fs

    # No region: moto creates buckets in us-east-1 without a location constraint.
    return s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": endpoint})


# --- memory of a process tree ----------------------------------------------------------------------------
def _children_by_parent() -> dict[int, list[int]]:
    """One pass over /proc: parent pid -> child pids."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    return children


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants living now (root first)."""
    children, pids, stack = _children_by_parent(), [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(children.get(pid, []))
    return pids


def tree_pss_bytes(root: int) -> int:
    """Proportional set size of ``root`` and all its descendants (shared pages counted once, split among
    their users), so Ray's shared object store is not counted per worker."""
    total = 0
    for pid in tree_pids(root):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def tree_cpu_seconds(root: int) -> dict[tuple[int, int], tuple[float, str]]:
    """CPU seconds (user + system) so far of ``root`` and its descendants: ``(pid, start tick) -> (seconds,
    role)``, the role ``driver`` for ``root``, ``embedding actor`` for Ray's actor-pool workers (its process
    title ``ray::MapWorker(...)``) and ``other`` for the rest (Ray's own processes, task workers)."""
    found, tick = {}, os.sysconf("SC_CLK_TCK")
    for pid in tree_pids(root):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        role = "driver" if pid == root else "embedding actor" if name.startswith("ray::MapWorker") else "other"
        found[(pid, int(fields[19]))] = ((int(fields[11]) + int(fields[12])) / tick, role)
    return found


class TreeCpu:
    """Samples the CPU seconds of a process tree every ``interval`` seconds in a thread, keeping each process's
    last value: a process's CPU in its last interval before it exits is missed (under 1% of a run here)."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid, self.interval, self.seen = pid, interval, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen.update(tree_cpu_seconds(self.pid))
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, float]:
        """CPU seconds by role (see :func:`tree_cpu_seconds`)."""
        self._stop.set()
        self._thread.join()
        by_role: dict[str, float] = {}
        for seconds, role in self.seen.values():
            by_role[role] = by_role.get(role, 0.0) + seconds
        return by_role


class PeakMemory:
    """Samples the PSS of a process tree every ``interval`` seconds in a thread; ``peak`` in bytes."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss_bytes(self.pid))
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# --- the variants (run inside a worker subprocess) -------------------------------------------------------
def lateline_config(work: Path, source_uri: str, mode: str, name: str, overrides: list[str] = ()) -> Any:
    """The benchmark's lateline config: ``configs/local.yaml`` with the corpus, chunking and sink of this run,
    then the user's ``--set`` overrides."""
    from pipeline.config import apply_overrides, load_config, parse_config

    base = load_config(ROOT / "configs" / "local.yaml").model_dump()
    raw = apply_overrides(
        base,
        [
            f"source.uri={source_uri}",
            "source.metadata_fields=[]",
            "chunking.strategy=tokens",
            f"chunking.size={CHUNK_TOKENS}",
            f"embedding.mode={mode}",
            f"sink.uri={work / ('db-' + name)}",
            f"runtime.summary_dir={work / 'runs'}",
            "runtime.progress_seconds=30",
            "maintain.after_run=false",
            *overrides,
        ],
    )
    return parse_config(raw)


def run_lateline(work: Path, source_uri: str, mode: str, name: str, overrides: list[str]) -> dict[str, Any]:
    from pipeline.runner import run_index

    config = lateline_config(work, source_uri, mode, name, overrides)
    started = time.perf_counter()
    summary = run_index(config, job="backfill")
    wall = time.perf_counter() - started
    if summary["status"] != "ok":
        raise RuntimeError(f"lateline {mode} run failed: {summary['status']} {summary.get('error')}")
    counts, phases = summary["counts"], summary["time_s"]
    return {
        "wall_s": wall,
        "docs": counts["docs_written"],
        "chunks": counts["chunks_out"],
        "tokens": counts["document_tokens"],
        "forward_tokens": counts["forward_tokens"],
        "padding_waste": summary["padding_waste"],
        "phases_s": {"ray_start": phases["ray_start"], "first_output": phases["first_output"]}
        | {"model_load": phases["model_load"], "read": phases["read"], "tokenize": phases["chunk"]}
        | {"forward": phases["embed"], "write": phases["write"], "other": wall - phases["embed"]},
        "dtype": _dtype_of(config),
        # This process is the job's driver: its CPU since it started (imports included, as a CLI run pays
        # them), and the CPU the workers measured in their steps.
        "stage_cpu_s": {"driver": time.process_time(), **{k: v for k, v in summary["cpu_s"].items() if k != "driver"}},
    }


def _dtype_of(config: Any) -> str:
    from pipeline.model import pick_dtype

    return pick_dtype(config.model.dtype, "cpu")


def naive_chunk_texts(docs: list[dict[str, str]]) -> tuple[list[str], int]:
    """The texts of the 128-token chunks lateline's naive mode embeds, and the documents' token count."""
    from pipeline.chunking import chunk_spans
    from pipeline.model import load_tokenizer, raw_tokenizer, resolve_model_path

    backend = raw_tokenizer(load_tokenizer(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")))
    texts, tokens = [], 0
    for doc, encoding in zip(docs, backend.encode_batch([d["text"] for d in docs], add_special_tokens=False)):
        tokens += len(encoding.ids)
        for span in chunk_spans(doc["text"], encoding.offsets, "tokens", CHUNK_TOKENS):
            texts.append(doc["text"][span.char_start : span.char_end])
    return texts, tokens


def run_sentence_transformers(docs: list[dict[str, str]], bf16: bool) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    from pipeline.model import resolve_model_path

    texts, doc_tokens = naive_chunk_texts(docs)
    started = time.perf_counter()
    kwargs = {"model_kwargs": {"dtype": torch.bfloat16}} if bf16 else {}
    model = SentenceTransformer(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"), device="cpu", **kwargs)
    loaded = time.perf_counter()
    model.encode(texts, show_progress_bar=False)
    done = time.perf_counter()
    lengths = [len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=512)["input_ids"]]
    padded = _st_padded_tokens(texts, lengths, batch_size=32)
    return {
        "wall_s": done - started,
        "docs": len(docs),
        "chunks": len(texts),
        "tokens": doc_tokens,
        "forward_tokens": sum(lengths),
        "padding_waste": 1 - sum(lengths) / padded,
        "phases_s": {"load": loaded - started, "forward": done - loaded},
        "dtype": "bfloat16" if bf16 else "float32",
    }


def _st_padded_tokens(texts: list[str], lengths: list[int], batch_size: int) -> int:
    """Padded tokens of sentence-transformers' batching: sorted by decreasing text length, fixed batch size."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)


def run_raw_forward(docs: list[dict[str, str]], config: Any) -> dict[str, Any]:
    """The model forward alone over lateline's late-mode sequences (``config``'s model, window overlap and
    token budget), packed by its batcher, in its dtype. Timed two ways on all CPUs: one batch at a time using
    every thread (the plain loop), and one single-threaded batch per thread at once (how lateline's CPU actor
    runs them); the ceiling is the faster."""
    from pipeline.batching import pack_by_token_budget
    from pipeline.chunking import chunk_spans
    from pipeline.embedding import ChunkEmbedder
    from pipeline.model import load_model, raw_tokenizer

    model = load_model(config.model, device="cpu")
    backend = raw_tokenizer(model.tokenizer)
    inputs = []
    for doc, encoding in zip(docs, backend.encode_batch([d["text"] for d in docs], add_special_tokens=False)):
        spans = chunk_spans(doc["text"], encoding.offsets, "tokens", CHUNK_TOKENS)
        inputs.append((encoding.ids, [(s.token_start, s.token_end) for s in spans]))
    embedder = ChunkEmbedder(model, "late", config.embedding.window_overlap, config.batching.max_tokens)
    sequences = embedder.plan(inputs).sequences
    batches = list(pack_by_token_budget([len(s) for s in sequences], config.batching.max_tokens, 256))
    threads = _torch_threads()
    measured = {
        f"plain_loop_{threads}_threads": time_forwards(embedder, sequences, batches, threads, parallel=1),
        f"{threads}_batches_at_once": time_forwards(embedder, sequences, batches, 1, parallel=threads),
    }
    timings = {name: wall for name, (wall, _) in measured.items()}
    best = min(timings, key=timings.get)
    lengths = [len(s) for s in sequences]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return {
        "wall_s": timings[best],
        "forward_cpu_s": measured[best][1],
        "arrangement": best,
        "docs": len(docs),
        "chunks": sum(len(spans) for _, spans in inputs),
        "tokens": sum(len(ids) for ids, _ in inputs),
        "forward_tokens": sum(lengths),
        "padding_waste": 1 - sum(lengths) / padded,
        "phases_s": timings,
        "dtype": model.dtype,
        "flop_per_token": flop_per_token(model.encoder.config, lengths),
        "matmul_peak_gflops": {dtype: matmul_peak_gflops(dtype) for dtype in ("float32", "bfloat16")},
    }


def time_forwards(
    embedder: Any, sequences: list[list[int]], batches: list[list[int]], threads: int, parallel: int
) -> tuple[float, float]:
    """Wall and CPU seconds to run the bare encoder over ``batches``: ``parallel`` batches at once, ``threads``
    torch threads each (the torch setting is restored afterwards)."""
    import torch

    from pipeline.embedding import torch_threads

    def forward(batch: list[int]) -> None:
        ids, mask = embedder._pad([sequences[i] for i in batch])
        with torch.inference_mode():
            embedder.model.encoder(input_ids=ids, attention_mask=mask)

    with torch_threads(threads):
        forward(batches[-1])  # warm-up (the smallest batch), so neither arrangement pays for a cold start
        started, cpu_started = time.perf_counter(), time.process_time()
        if parallel == 1:
            for batch in batches:
                forward(batch)
        else:
            with ThreadPoolExecutor(parallel) as pool:
                list(pool.map(forward, batches))
        return time.perf_counter() - started, time.process_time() - cpu_started


def flop_per_token(model_config: Any, lengths: list[int]) -> float:
    """Forward FLOPs per token: 2 x the layer weights' multiply-adds, plus attention scores and mixing
    (4 x hidden x sequence length per layer, at the token-weighted mean length)."""
    hidden, layers = model_config.hidden_size, model_config.num_hidden_layers
    dense = 2 * (4 * hidden * hidden + 2 * hidden * model_config.intermediate_size)
    mean_length = sum(n * n for n in lengths) / max(1, sum(lengths))
    return layers * (dense + 4 * hidden * mean_length)


def matmul_peak_gflops(dtype: str, size: int = 2048, repeats: int = 8) -> float:
    import torch

    a = torch.randn(size, size).to(getattr(torch, dtype))
    b = torch.randn(size, size).to(getattr(torch, dtype))
    torch.matmul(a, b)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def worker(variant: str, work: Path, scale: str, name: str) -> None:
    """Run one variant in this process and write ``<work>/<name>.json`` (a lateline run writes to a table of
    its own, ``db-<name>``, so no run finds another's documents there)."""
    corpus = json.loads((work / f"corpus-{scale}.json").read_text())
    source_uri = f"s3://{BUCKET}/{scale}"
    overrides = json.loads((work / "overrides.json").read_text())
    if variant in {"late", "naive"}:
        result = run_lateline(work, source_uri, variant, name, overrides)
    elif variant == "late-glibc":
        glibc = [*overrides, "runtime.cpu_allocator=glibc"]
        result = run_lateline(work, source_uri, "late", name, glibc)
    elif variant.startswith("st-"):
        result = run_sentence_transformers(corpus, bf16=variant == "st-bf16")
    elif variant == "raw":
        result = run_raw_forward(corpus, lateline_config(work, source_uri, "late", "raw", overrides))
    else:
        raise ValueError(f"unknown variant {variant!r}")
    (work / f"{name}.json").write_text(json.dumps(result))


# --- the parent: prepare, run each variant in a subprocess, report -----------------------------------------
def run_variant(variant: str, work: Path, scale: str, env: dict[str, str], name: str | None = None) -> dict[str, Any]:
    """Run one variant in a subprocess, its files and table named ``name`` (default ``<variant>-<scale>``; a
    name a run already used finds that run's documents in its table). A sample of a Ray process tree's PSS
    costs ~60 ms of CPU, taken from the run it measures: the memory check samples every second, the speed runs
    every 5 s (3% vs 0.6% of 2 cores)."""
    name = name or f"{variant}-{scale}"
    command = [sys.executable, __file__, "--worker", variant, "--work", str(work), "--scale", scale, "--name", name]
    print(f"  running {variant} ({scale}) ...", flush=True)
    if variant == "raw":
        # The ceiling runs on the allocator lateline's actors run on by default (jemalloc, never handing pages
        # back: fewer page faults than glibc) and with oneDNN's cache capped as in the actors, so it stays the
        # best this machine does with the model.
        from pipeline import allocator

        env = env | allocator.allocator_environment("auto", allocator.bundled_jemalloc(), env)
        env = {allocator.ONEDNN_CACHE_VARIABLE: allocator.ONEDNN_CACHE_ENTRIES} | env
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    memory = PeakMemory(process.pid, interval=1.0 if scale.startswith("memory") else 5.0)
    cpu = TreeCpu(process.pid)
    code = process.wait()
    peak, sampled_cpu = memory.stop(), cpu.stop()
    if code != 0:
        raise RuntimeError(f"variant {variant} exited with {code}")
    result = json.loads((work / f"{name}.json").read_text())
    result["peak_memory_mib"] = peak / 2**20
    if "stage_cpu_s" in result:
        result["cpu_s"] = cpu_breakdown(result["stage_cpu_s"], sampled_cpu, result["wall_s"], _cores())
    for unit in ("tokens", "docs", "chunks"):
        result[f"{unit}_per_s"] = result[unit] / result["wall_s"]
    print(f"    {result['wall_s']:.1f} s, {result['tokens_per_s']:.0f} tokens/s", flush=True)
    return result


def cpu_breakdown(stages: dict[str, float], sampled: dict[str, float], wall: float, cores: int) -> dict[str, float]:
    """Where a lateline run's CPU went, in CPU seconds, out of ``cores * wall``: the embedding actors' calls
    (forward passes, pooling, building rows), their model load, the rest of their processes (Ray's worker
    start and imports before the model load), the driver, the reading and tokenizing steps, the other
    processes (Ray's own, the task workers outside their steps) and what stayed idle. Steps are measured by
    the stages themselves; processes by sampling /proc (the larger of the two where both see one)."""
    actor = max(sampled.get("embedding actor", 0.0), stages["embed"] + stages["model_load"])
    driver = max(sampled.get("driver", 0.0), stages["driver"])
    total = driver + actor + sampled.get("other", 0.0)
    read_tokenize = stages["read"] + stages["chunk"]
    return {
        "capacity": cores * wall,
        "actor_calls": stages["embed"],
        "actor_model_load": stages["model_load"],
        "actor_rest": actor - stages["embed"] - stages["model_load"],
        "driver": driver,
        "read_and_tokenize": read_tokenize,
        "other_processes": max(0.0, total - driver - actor - read_tokenize),
        "idle": max(0.0, cores * wall - total),
    }


CPU_LABELS = {
    "actor_calls": "embedding actor, its calls (forward passes, pooling, rows)",
    "actor_model_load": "embedding actor, model load (torch and transformers imports included)",
    "actor_rest": "embedding actor, the rest (Ray worker start, imports before the load)",
    "driver": "driver (imports, model description, Ray start, plan loop, writes)",
    "read_and_tokenize": "reading and tokenizing (their steps)",
    "other_processes": "Ray's own processes and task workers outside their steps",
    "idle": "idle",
}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Speed ratios (higher = lateline faster) and the memory ratio, for what was run."""
    out = {}

    def speed(a: str, b: str) -> float:
        return results[b]["wall_s"] / results[a]["wall_s"]

    for other in ("st-default", "st-bf16"):
        for mode in ("late", "naive"):
            if mode in results and other in results:
                out[f"{mode}_vs_{other.replace('-', '_')}"] = speed(mode, other)
    for other in ("st-default", "st-bf16"):
        if "raw" in results and other in results:
            # An upper bound on late_vs_<other>: late mode cannot beat the bare forward over its own tokens.
            out[f"ceiling_vs_{other.replace('-', '_')}"] = speed("raw", other)
    if "late" in results and "late-glibc" in results:
        out["late_vs_late_glibc"] = speed("late", "late-glibc")  # jemalloc (the default) against glibc's heap
    if "late" in results and "raw" in results:
        out["late_share_of_ceiling"] = speed("late", "raw")
        # The pipeline's forward passes alone against the ceiling: what a long backfill approaches, once Ray's
        # start, the model load and the first block's wait (a fixed cost, `other` in the phases) are spread thin.
        out["late_forward_share_of_ceiling"] = results["raw"]["wall_s"] / results["late"]["phases_s"]["forward"]
        if "cpu_s" in results["late"] and "forward_cpu_s" in results["raw"]:
            # CPU per unit of work: the bare forward's CPU over the actors' calls' CPU for the same sequences
            # (1.0: the pipeline's forward passes cost no more CPU than the bare ones; below the share of the
            # ceiling, the rest is CPU other processes took and cores left idle).
            out["late_call_cpu_share_of_ceiling"] = (
                results["raw"]["forward_cpu_s"] / results["late"]["cpu_s"]["actor_calls"]
            )
        raw = results["raw"]
        peak = raw["matmul_peak_gflops"][raw["dtype"]] * 1e9
        for name in ("late", "raw"):
            out[f"mfu_{name}"] = (
                results[name]["forward_tokens"] / results[name]["wall_s"] * raw["flop_per_token"] / peak
            )
    if "memory-1x" in results and "memory-10x" in results:
        out["memory_10x_over_1x"] = results["memory-10x"]["peak_memory_mib"] / results["memory-1x"]["peak_memory_mib"]
    return out


def rotated(variants: list[str], round_index: int) -> list[str]:
    """Round ``round_index``'s order: the variants shifted by that many places, so that over the rounds no
    variant always runs first (a cold machine) or right after the same neighbour."""
    shift = round_index % len(variants) if variants else 0
    return variants[shift:] + variants[:shift]


def summarize_rounds(
    rounds: list[dict[str, dict[str, Any]]],
) -> tuple[dict[str, dict[str, Any]], dict[str, float], dict[str, dict[str, Any]]]:
    """The rounds' results in one report: per variant its run with the median wall time (the lower middle one
    for an even count), each ratio's median over the rounds' paired ratios (each computed within one round),
    and per ratio its ``min``, ``max``, ``rounds`` and, for a target, ``held`` (in how many rounds it held)."""
    per_round = [ratios(one) for one in rounds]
    results = {}
    for variant in rounds[0]:
        runs = sorted((one[variant] for one in rounds), key=lambda run: run["wall_s"])
        results[variant] = runs[(len(runs) - 1) // 2]
    found, spread = {}, {}
    for name in per_round[0]:
        values = [one[name] for one in per_round]
        found[name] = statistics.median(values)
        spread[name] = {"min": min(values), "max": max(values), "rounds": len(values)}
        if name in TARGETS:
            spread[name]["held"] = sum(target_holds(name, value) for value in values)
    return results, found, spread


def target_holds(name: str, value: float) -> bool:
    """Whether ``value`` meets ratio ``name``'s target (memory ratios are upper bounds, the rest lower)."""
    return value <= TARGETS[name] if "memory" in name else value >= TARGETS[name]


def print_table(
    results: dict[str, dict[str, Any]], found: dict[str, float], spread: dict[str, dict[str, Any]] | None = None
) -> None:
    header = f"{'variant':<12} {'dtype':<9} {'wall s':>8} {'tok/s':>8} {'docs/s':>7} {'chunks/s':>9} "
    print("\n" + header + f"{'pad waste':>9} {'peak MiB':>9}  phases (s)")
    for name, r in results.items():
        phases = " ".join(f"{k}={v:.1f}" for k, v in r["phases_s"].items())
        print(
            f"{name:<12} {r['dtype']:<9} {r['wall_s']:>8.1f} {r['tokens_per_s']:>8.0f} {r['docs_per_s']:>7.1f} "
            f"{r['chunks_per_s']:>9.1f} {r['padding_waste']:>9.1%} {r['peak_memory_mib']:>9.0f}  {phases}"
        )
    for name, r in results.items():
        if "cpu_s" in r and not name.startswith("memory"):
            cpu = r["cpu_s"]
            print(
                f"\nwhere {name} mode's CPU went: {cpu['capacity'] / r['wall_s']:.0f} cores x {r['wall_s']:.1f} s = "
                f"{cpu['capacity']:.1f} CPU s"
            )
            for key, label in CPU_LABELS.items():
                print(f"  {label:<74} {cpu[key]:7.1f}  {cpu[key] / cpu['capacity']:6.1%}")
    if "raw" in results and "forward_cpu_s" in results["raw"]:
        print(f"  (the ceiling's forward passes over the same sequences: {results['raw']['forward_cpu_s']:.1f} CPU s)")
    print()
    spread = spread or {}
    for name, value in found.items():
        rounds = spread.get(name, {"rounds": 1})
        across = ""
        if rounds["rounds"] > 1:
            across = f"  (median of {rounds['rounds']} rounds, {rounds['min']:.3f}-{rounds['max']:.3f})"
        check = ""
        if name in TARGETS:
            check = f"  target {'<=' if 'memory' in name else '>='} {TARGETS[name]}: "
            check += "holds" if target_holds(name, value) else "MISSED"
            if "held" in rounds:
                check += f", held in {rounds['held']} of {rounds['rounds']} rounds"
        print(f"{name:<31} {value:6.3f}{across}{check}")


def plot(results: dict[str, dict[str, Any]], found: dict[str, float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in results if not n.startswith("memory")]
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for axis, key, label in ((axes[0], "docs_per_s", "documents / s"), (axes[1], "tokens_per_s", "tokens / s")):
        values = [results[n][key] for n in names]
        lateline = {"late", "late-glibc", "naive"}
        bars = axis.bar(names, values, color=["#2a6f97" if n in lateline else "#999999" for n in names])
        axis.bar_label(bars, fmt="%.0f" if key == "tokens_per_s" else "%.1f")
        axis.set_title(label)
        axis.tick_params(axis="x", rotation=30)
    memory = [n for n in results if n.startswith("memory")] or names
    bars = axes[2].bar(memory, [results[n]["peak_memory_mib"] for n in memory], color="#7a9e7e")
    axes[2].bar_label(bars, fmt="%.0f")
    axes[2].set_title("peak memory (PSS of the process tree), MiB")
    ratios = [f"{k} = {v:.2f}" for k, v in found.items()]
    rows = [",  ".join(ratios[start : start + 5]) for start in range(0, len(ratios), 5)]  # fits the width
    figure.suptitle("\n".join([title, *rows]), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=300, help="documents in the corpus (targets: 2000)")
    parser.add_argument("--memory-docs", type=int, default=100, help="1x size of the memory check (0: skip)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--out", default="eval-results/throughput", help="directory for JSON and PNG")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the variants this many times, interleaved; ratios are medians of per-round pairs",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for lateline's runs and the ceiling, e.g. --set runtime.num_actors=2 (repeatable)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--scale", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, Path(args.work), args.scale, args.name)  # run_variant always names the run
        return 0
    if args.rounds < 1:
        parser.error(f"--rounds: must be at least 1, got {args.rounds}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown} (allowed: {', '.join(VARIANTS)})")
    from pipeline.config import ConfigError

    try:
        lateline_config(Path(tempfile.gettempdir()), "s3://bucket/prefix", "late", "check", args.set)
    except ConfigError as exc:
        parser.error(f"--set: {exc}")
    return benchmark(args, variants)


def benchmark(args: argparse.Namespace, variants: list[str]) -> int:
    work = Path(tempfile.mkdtemp(prefix="lateline-throughput-"))
    (work / "overrides.json").write_text(json.dumps(args.set))
    moto, endpoint = start_moto()
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "HF_HUB_OFFLINE": "1"}
    try:
        fs = s3_filesystem(endpoint)
        fs.mkdir(BUCKET)
        scales = {"main": args.docs}
        if "memory" in variants and args.memory_docs:
            scales |= {"memory-1x": args.memory_docs, "memory-10x": 10 * args.memory_docs}
        for scale, n_docs in scales.items():
            docs = make_corpus(n_docs, args.seed)
            (work / f"corpus-{scale}.json").write_text(json.dumps(docs))
            write_jsonl_shards(docs, fs, f"{BUCKET}/{scale}")
        print(f"corpus: {args.docs} docs of pydoc prose in s3://{BUCKET}/main ({endpoint}); work dir {work}")
        speed = [v for v in variants if v != "memory"]
        rounds = []
        for index in range(args.rounds):
            order = rotated(speed, index)
            if args.rounds > 1:
                print(f"round {index + 1} of {args.rounds}: {', '.join(order)}", flush=True)
            runs = {v: run_variant(v, work, "main", env, f"{v}-main-round{index}") for v in order}
            rounds.append({v: runs[v] for v in speed})
        results, found, spread = summarize_rounds(rounds) if speed else ({}, {}, {})
        if len(scales) > 1:  # once: the memory ratio is about streaming, not speed, and drifts far less
            memory = {scale: run_variant("late", work, scale, env) for scale in ("memory-1x", "memory-10x")}
            results |= memory
            found |= ratios(memory)
    finally:
        moto.terminate()
    print_table(results, found, spread)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "torch_threads": _torch_threads()}
    report = {
        "docs": args.docs,
        "overrides": args.set,
        "machine": machine,
        "rounds": args.rounds,
        "results": results,
        "ratios": found,
        "ratio_ranges": spread,
        "targets": TARGETS,
        "round_results": rounds if args.rounds > 1 else [],
    }
    (out / "throughput.json").write_text(json.dumps(report, indent=2))
    title = f"lateline throughput, {args.docs} docs, {os.cpu_count()} CPUs"
    if args.rounds > 1:
        title += f"; each variant's median run of {args.rounds} rounds, ratios the medians of per-round pairs"
    plot(results, found, out / "throughput.png", title)
    print(f"\nwrote {out / 'throughput.json'} and {out / 'throughput.png'}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
