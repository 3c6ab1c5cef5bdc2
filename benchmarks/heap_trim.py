"""When a CPU embedder hands freed heap back to the OS: when its resident memory grew, after every micro-batch,
once per block, or never.

Kept on the heap, activations of varied shapes leave it resident at its high-water mark, holes included, and the
heap creeps up with new shapes. Trimming (``malloc_trim``) keeps the actor's resident memory near what is live,
and its peak flat as a corpus grows (throughput.py's memory check). The price: the next forward faults every
handed-back page in again, and on the development VM (a virtio balloon, through which freed memory can go back to
the host) touching fresh anonymous memory costs 3.1-4.3 us a page (this benchmark measures it first). The library
(``on_growth``, :class:`pipeline.embedding.HeapTrimmer`) trims after a micro-batch only once the resident set grew
128 MiB since the last trim; ``per_batch`` trims after every one (the library's policy until 2026-12-02).

This benchmark embeds the same corpus the way a CPU actor does (late mode, 256-document blocks, the actor plan's
forward passes at once) under each policy, in one process, interleaved over ``--repeats`` rounds, and prints per
policy: seconds, page faults, peak RSS during its runs, and the time against the library's policy. Each round also
times ``bare_forward``: the encoder alone over the same late-mode sequences, sorted and packed as one plan (no
blocks, no pooling, no trim), as throughput.py's ceiling runs them, so the embedder's own cost over the bare
forward shows in one process.

The corpus is ``throughput.py``'s (pydoc prose, 300 to 12,000 chars); the model is ``configs/local.yaml``'s.

    python benchmarks/heap_trim.py                 # 512 documents, 2 rounds, about 5 minutes
    python benchmarks/heap_trim.py --docs 1024 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from throughput import CHUNK_TOKENS, lateline_config, make_corpus, time_forwards  # noqa: E402

from pipeline import embedding  # noqa: E402
from pipeline.batching import pack_by_token_budget  # noqa: E402
from pipeline.chunking import chunk_spans  # noqa: E402
from pipeline.embedding import FREE_HEAP_SLACK, ChunkEmbedder, HeapTrimmer  # noqa: E402
from pipeline.model import load_model, raw_tokenizer  # noqa: E402
from pipeline.plan import size_actor_pool  # noqa: E402

BLOCK_DOCS = 256
POLICIES = ("on_growth", "per_batch", "per_block", "never")  # the library's first
BARE = "bare_forward"
ALWAYS = -(2**62)  # a slack no change of the resident set stays within: trim after every micro-batch


@contextmanager
def trim_policy(policy: str, embedder: ChunkEmbedder) -> Iterator[Callable[[], None]]:
    """Set ``embedder`` up for ``policy``; the context yields what to call after each block (a trim for
    ``per_block``)."""
    original_release = embedding.release_freed_memory
    after_block: Callable[[], None] = lambda: None  # noqa: E731
    embedder.heap_trimmer = HeapTrimmer(ALWAYS if policy == "per_batch" else FREE_HEAP_SLACK)
    if policy in ("per_block", "never"):
        embedding.release_freed_memory = lambda: True
    if policy == "per_block":
        after_block = original_release
    try:
        yield after_block
    finally:
        embedding.release_freed_memory = original_release


class PeakRss:
    """The process's resident set, sampled every 20 ms while running; ``peak_mib`` is the highest seen."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.wait(0.02):
            with open("/proc/self/statm") as handle:
                self.peak = max(self.peak, int(handle.read().split()[1]) * page)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20


def fresh_page_cost_us(mib: int = 256, repeats: int = 3) -> float:
    """Microseconds to fault in one fresh 4 KiB page of anonymous memory (the best of ``repeats`` rounds over
    ``mib`` MiB): what each page a trim handed back costs the next forward."""
    size, best = mib * 2**20, float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        with mmap.mmap(-1, size) as memory:
            for offset in range(0, size, 4096):
                memory[offset] = 1
        best = min(best, time.perf_counter() - started)
    return best / (size // 4096) * 1e6


def embed_in_blocks(embedder: ChunkEmbedder, inputs: list[Any], after_block: Callable[[], None] = lambda: None) -> None:
    for start in range(0, len(inputs), BLOCK_DOCS):
        embedder.embed(inputs[start : start + BLOCK_DOCS])
        after_block()


def measure(policy: str, embedder: ChunkEmbedder, inputs: list[Any]) -> dict[str, float]:
    def run() -> float:  # the policy is set after _measured's starting trim, which it may turn off
        with trim_policy(policy, embedder) as after_block:
            return _timed(lambda: embed_in_blocks(embedder, inputs, after_block))

    return _measured(run)


def measure_bare(embedder: ChunkEmbedder, inputs: list[Any]) -> dict[str, float]:
    """The encoder alone over ``inputs``' late-mode sequences, packed as one plan, the actor's forward passes
    at once (throughput.py's ceiling)."""
    sequences = embedder.plan(inputs).sequences
    batches = list(pack_by_token_budget([len(s) for s in sequences], embedder.max_tokens, embedder.max_sequences))
    threads = torch.get_num_threads()
    return _measured(lambda: time_forwards(embedder, sequences, batches, threads, embedder.parallel_batches))


def _timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _measured(run: Callable[[], float]) -> dict[str, float]:
    """Seconds (what ``run`` returns), page faults and peak RSS of ``run``, from a trimmed heap (so no run starts
    with the last one's leftovers)."""
    embedding.release_freed_memory()
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with PeakRss() as rss:
        seconds = run()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    return {"seconds": seconds, "page_faults": faults, "peak_rss_mib": rss.peak_mib}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=512, help="documents in the corpus")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the three policies, interleaved")
    parser.add_argument("--out", type=Path, default=Path("heap_trim.json"), help="JSON results")
    args = parser.parse_args(argv)

    config = lateline_config(Path("/nonexistent"), "/nonexistent", "late", "heap-trim")
    actors = size_actor_pool(config.runtime, os.cpu_count() or 1, 0)
    if actors.threads_per_forward:
        torch.set_num_threads(actors.threads_per_forward)
    model = load_model(config.model, device="cpu")
    docs = make_corpus(args.docs)
    backend = raw_tokenizer(model.tokenizer)
    inputs = []
    for doc, encoding in zip(docs, backend.encode_batch([d["text"] for d in docs], add_special_tokens=False)):
        spans = chunk_spans(doc["text"], encoding.offsets, "tokens", CHUNK_TOKENS)
        inputs.append((encoding.ids, [(s.token_start, s.token_end) for s in spans]))
    embedder = ChunkEmbedder(
        model, "late", config.embedding.window_overlap, config.batching.max_tokens,
        config.batching.max_sequences, parallel_batches=actors.parallel_batches,
    )  # fmt: skip
    embed_in_blocks(embedder, inputs[:BLOCK_DOCS])  # warm-up: the first forward of each shape costs more
    print(
        f"{args.docs} docs, {model.dtype}, {actors.parallel_batches} forward passes at once of "
        f"{actors.threads_per_forward} thread(s), {BLOCK_DOCS}-document blocks",
        flush=True,
    )
    page_us = fresh_page_cost_us()
    print(f"a fresh page costs {page_us:.2f} us to fault in here", flush=True)
    runs: dict[str, list[dict[str, float]]] = {policy: [] for policy in (*POLICIES, BARE)}
    for round_number in range(args.repeats):
        for policy in (*POLICIES, BARE):
            result = measure_bare(embedder, inputs) if policy == BARE else measure(policy, embedder, inputs)
            runs[policy].append(result)
            print(
                f"  round {round_number + 1} {policy:12s} {result['seconds']:7.1f} s  "
                f"{result['page_faults']:>10,} page faults  peak RSS {result['peak_rss_mib']:6.0f} MiB",
                flush=True,
            )
    summary = summarise(runs)
    print(f"\n{'policy':12s} {'best s':>7s} {'vs library':>12s} {'page faults':>12s} {'peak RSS MiB':>13s}")
    for policy, row in summary.items():
        print(
            f"{policy:12s} {row['best_seconds']:7.1f} {row['time_vs_library']:11.3f}x "
            f"{row['median_page_faults']:>12,} {row['max_peak_rss_mib']:13.0f}"
        )
    args.out.write_text(
        json.dumps({"docs": args.docs, "fresh_page_us": page_us, "runs": runs, "summary": summary}, indent=2)
    )
    print(f"\nwrote {args.out}")
    return 0


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per policy: its best time (the least disturbed round), that time over the library policy's best, its
    median page faults and its highest peak RSS."""
    best = {policy: min(r["seconds"] for r in results) for policy, results in runs.items()}
    summary = {}
    for policy, results in runs.items():
        faults = sorted(int(r["page_faults"]) for r in results)  # the lower median of an even count
        summary[policy] = {
            "best_seconds": round(best[policy], 2),
            "time_vs_library": round(best[policy] / best[POLICIES[0]], 3),
            "median_page_faults": faults[(len(faults) - 1) // 2],
            "max_peak_rss_mib": round(max(r["peak_rss_mib"] for r in results)),
        }
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
