"""``lateline index --dry-run``: list and sample the source, estimate documents, tokens and run time; write nothing.

Sampling reads up to ``SAMPLE_OBJECTS`` objects drawn at random (seeded: the same listing gives the same sample),
each up to ``SAMPLE_DOCS`` documents. The source's documents: for ``text``, one per object; for ``parquet``,
the sampled files' row counts (from their footers) per byte of file, times the listed bytes; for ``jsonl``,
the records per stored byte of the sampled objects: those read to their end, and of the others their first
``PREFIX_BYTES`` (non-blank lines counted, after gunzipping a ``.gz``: per byte as stored, so compressed objects
count right); when neither can be had (another compression), per byte of the sampled records' text (a raw
snippet for a record without text). Tokens, unchanged documents and bad records are the sample's per document,
times those documents.
``--limit N`` scales them to N documents, at most those of the objects the run would read.

Throughput comes from the newest successful run in ``runtime.summary_dir`` with the same model and embedding
settings that embedded at least ``MIN_BASIS_TOKENS`` document tokens (a smaller run measures mostly its
start-up): its document tokens per second of embedding (the actors' forward time), plus its start-up and
writing time once when the run would read anything (objects the object manifest does not show unchanged, as the
run decides). Else a short forward benchmark on the sampled documents (repeated up to ``BENCHMARK_TOKENS``) on
this machine (labelled as such: a cluster may be faster), plus ``STARTUP_GUESS_S`` of start-up. A sample whose
every record is bad comes with a warning naming the setting. A table the run would refuse (another model's
vectors, other settings) raises ``TableMismatch`` as the run does.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
from fsspec.core import url_to_fs
from fsspec.utils import infer_compression

from pipeline import schema
from pipeline.config import JobConfig
from pipeline.deadletters import letters_by_object
from pipeline.fingerprint import embedding_settings, settings_digest
from pipeline.known import KnownDocuments, read_known_documents
from pipeline.manifest import ObjectManifest
from pipeline.model import ModelIdentity, check_window, describe_model, raw_tokenizer
from pipeline.sink import check_compatible, open_table, read_table_record
from pipeline.sources import fingerprinted, list_source_objects, objects_table, read_object
from pipeline.storage_options import as_s3fs_options

SAMPLE_OBJECTS = 5
SAMPLE_DOCS = 200
PREFIX_BYTES = 1 << 20  # stored bytes of a JSONL object not read to its end whose lines are counted
GUNZIP_CAP = 64 << 20  # text inflated from a gzip prefix at most
BENCHMARK_TOKENS = 20_000
MIN_BASIS_TOKENS = 20_000  # document tokens a run must have embedded to serve as the throughput basis
# Start-up when no earlier run measured it: Ray's start, an actor's imports and model load (12-16 s measured on
# 2 CPU cores with the default model).
STARTUP_GUESS_S = 15.0


def dry_run(config: JobConfig, limit: int | None = None) -> dict[str, Any]:
    """The estimate as JSON data (see the module doc), for a run of at most ``limit`` documents when given."""
    tokenizer, frame, max_length, identity = describe_model(config.model, config.embedding.document_prefix)
    check_window(config.embedding, config.model.name_or_path, frame, max_length)
    identity = dataclasses.replace(identity, dtype=config.sink.vector_dtype)
    settings = embedding_settings(config.chunking, config.embedding, identity)
    digest = settings_digest(settings)
    known = _known_documents(config, identity, settings)
    objects = list_source_objects(config.source)
    total_bytes = sum(obj.size or 0 for obj in objects)
    sample = _sample(objects, config, digest, known, raw_tokenizer(tokenizer))
    manifest = ObjectManifest(config.sink.uri, config.sink.table, config.sink.storage_options)
    letters = letters_by_object(config.sink.uri, config.sink.table, config.sink.storage_options) if known else {}
    reads = len(objects) - len(manifest.unchanged(objects, digest, config.source, known, letters))
    docs, docs_basis = _source_documents(config.source.format, objects, total_bytes, sample)
    if limit is not None:  # the limit counts the documents of the objects the run reads, not of skipped ones
        docs = min(docs * reads / len(objects) if objects else 0.0, limit)
    per_doc = docs / sample["docs"] if sample["docs"] else 0.0  # sampled counts -> the run's
    tokens, to_embed = sample["tokens"] * per_doc, sample["changed_tokens"] * per_doc
    throughput, fixed_s, basis = _throughput(config, settings, sample["texts"])
    return {
        "source": config.source.uri,
        "objects": len(objects),
        "objects_to_read": reads,
        "bytes": total_bytes,
        "sampled_objects": sample["objects"],
        "sampled_docs": sample["docs"],
        "estimated_docs": round(docs),
        "estimated_docs_basis": docs_basis,
        "estimated_tokens": round(tokens),
        "estimated_unchanged_fraction": round(sample["unchanged"] / sample["docs"], 3) if sample["docs"] else None,
        "sampled_bad_records": dict(sample["bad"]),
        "estimated_bad_records": {reason: round(count * per_doc) for reason, count in sample["bad"].items()},
        "tokens_per_s": round(throughput, 1),
        "throughput_basis": basis,
        "estimated_seconds": _seconds(to_embed, throughput, fixed_s if reads else 0.0),
        "model": identity.label,
        "table": f"{config.sink.uri}/{config.sink.table}",
        "warnings": _warnings(config, sample),
    }


def _source_documents(source_format: str, objects: list, total_bytes: int, sample: dict[str, Any]) -> tuple[float, str]:
    """Documents of the whole source, estimated as the module doc says, and what they were counted from, in
    words (how far to trust them)."""
    if source_format == "text":
        return float(len(objects)), "one document per file"
    if source_format == "parquet" and sample["footer_bytes"]:
        rows = sample["footer_rows"] * total_bytes / sample["footer_bytes"]
        return rows, "row counts of the sampled files' footers, per byte"
    if sample["bytes"] or sample["prefix_bytes"]:  # objects read to their end, and prefixes: records per byte
        records = sample["complete_docs"] + sample["prefix_lines"]
        estimate = records * total_bytes / (sample["bytes"] + sample["prefix_bytes"])
        if not sample["prefix_bytes"]:
            return estimate, "records per byte of the sampled objects, read whole"
        return estimate, (
            "records per stored byte in the sampled objects' first MiB (objects not read whole), and of the "
            "objects read whole; a file whose first MiB is not typical of it (sorted by length, say) is off"
        )
    # None was: every sampled record per byte of its text (of its raw snippet, for a record with no text)
    estimate = sample["docs"] * total_bytes / sample["record_bytes"] if sample["record_bytes"] else 0.0
    return estimate, "bytes of the sampled records' text: compressed objects are undercounted by their compression"


def _seconds(to_embed: float, throughput: float, fixed_s: float) -> float | None:
    """Run time: embedding at ``throughput`` plus the fixed cost; ``None`` when there is something to embed but
    no rate to embed it at."""
    if to_embed <= 0:
        return round(fixed_s, 1)
    return round(to_embed / throughput + fixed_s, 1) if throughput else None


def _warnings(config: JobConfig, sample: dict[str, Any]) -> list[str]:
    """What the run would warn about, seen in the sample: every sampled record bad, naming the setting."""
    from pipeline.runner import bad_records_note

    bad = sample["bad"]
    if not sample["docs"] or sum(bad.values()) < sample["docs"]:
        return []
    note = bad_records_note(config, bad)
    return [f"every one of the {sample['docs']:,} sampled records would be dead-lettered {note}"]


def _sample(objects: list, config: JobConfig, digest: str, known: KnownDocuments, backend: Any) -> dict[str, Any]:
    # Drawn at random, not every n-th: a listing with a period (every other file empty, say) must not fool it.
    picked = sorted(random.Random(0).sample(range(len(objects)), min(SAMPLE_OBJECTS, len(objects))))
    chosen = [objects[index] for index in picked]
    totals: dict[str, Any] = {
        "objects": len(chosen),
        "docs": 0,
        "tokens": 0,
        "changed_tokens": 0,
        "unchanged": 0,
        "bytes": 0,
        "bad": Counter(),
        "texts": [],
        "ids": set(),  # the sample's document ids: a repeat is dead-lettered as duplicate_doc_id, as in a run
        "footer_rows": 0,  # parquet: rows the sampled files' footers give, and those files' bytes
        "footer_bytes": 0,
        "complete_docs": 0,  # records of the objects read to their end (whose bytes "bytes" sums)
        "record_bytes": 0,  # bytes of every sampled record's text, or raw snippet when it has none
        "prefix_lines": 0,  # jsonl objects not read to their end: lines in their first stored bytes, and those
        "prefix_bytes": 0,
    }
    for obj, row in zip(chosen, objects_table(chosen, known).to_pylist()):
        complete = True
        # The run's rule: a document is unchanged if its own object's share of the table has its fingerprint.
        held = dict(zip(row["known_doc_ids"], row["known_fingerprints"]))
        docs_before = totals["docs"]
        for count, doc in enumerate(read_object(obj.path, obj.root, config.source)):
            if count >= SAMPLE_DOCS:
                complete = False
                break
            _count(fingerprinted(doc, digest, held), totals, backend, doc[schema.TEXT])
        if complete and obj.size:
            totals["bytes"] += obj.size
            totals["complete_docs"] += totals["docs"] - docs_before
        elif obj.size and config.source.format == "jsonl":
            lines, stored = jsonl_prefix_lines(obj.path, config.source) or (0, 0)
            totals["prefix_lines"] += lines
            totals["prefix_bytes"] += stored
        rows = _parquet_rows(obj.path, config.source) if config.source.format == "parquet" and obj.size else None
        if rows is not None:
            totals["footer_rows"] += rows
            totals["footer_bytes"] += obj.size
    return totals


def _parquet_rows(path: str, source: Any) -> int | None:
    """Rows of a Parquet file, from its footer (a small ranged read, not the file); ``None`` when it cannot be
    read as Parquet (the run dead-letters such a file: the estimate leaves it out)."""
    import pyarrow.parquet as pq

    try:
        fs, local = url_to_fs(path, **source.storage_options)  # s3fs options, as the readers open it
        with fs.open(local, "rb") as handle:
            return pq.ParquetFile(handle).metadata.num_rows
    except (OSError, ValueError, pa.ArrowException):
        return None


def jsonl_prefix_lines(path: str, source: Any, limit: int = PREFIX_BYTES) -> tuple[int, int] | None:
    """``(records, stored bytes)`` of a JSONL object's first ``limit`` stored bytes (a ranged read): its
    complete non-blank lines, gunzipped first for a ``.gz`` name, and the stored bytes that held them (for
    gzip, in proportion to the text). ``None`` for another compression, an unreadable object, or a prefix
    without a complete line (records longer than the prefix)."""
    compression = infer_compression(path)
    if compression not in (None, "gzip"):
        return None
    try:
        fs, local = url_to_fs(path, **source.storage_options)
        stored = fs.cat_file(local, start=0, end=limit)  # no read-ahead: s3fs would fetch its whole block
    except (OSError, ValueError):
        return None
    text, used = gunzipped_prefix(stored) if compression == "gzip" else (stored, len(stored))
    whole = len(stored) < limit and used == len(stored)  # the object's every byte, decoded
    records, text_used = count_records(text, whole)
    if not records:
        return None
    return records, round(used * text_used / len(text))


def gunzipped_prefix(stored: bytes, cap: int = GUNZIP_CAP) -> tuple[bytes, int]:
    """``(text, stored bytes decoded)`` of the first bytes of a gzip file: one member or several, zero padding
    between them skipped as gzip readers do, at most ``cap`` bytes of text (a highly compressed prefix need
    not be inflated whole); a member that cannot be decoded ends it, keeping what came before."""
    out, size, position = [], 0, 0
    while size < cap:
        while position < len(stored) and stored[position] == 0:
            position += 1
        if position >= len(stored):
            break
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
        try:
            chunk = inflater.decompress(stored[position:], cap - size)
        except zlib.error:  # junk after the last member
            break
        out.append(chunk)
        size += len(chunk)
        position = len(stored) - len(inflater.unconsumed_tail) - len(inflater.unused_data)
        if not inflater.eof:  # cut off inside this member, or at the cap
            break
    return b"".join(out), position


def count_records(text: bytes, whole: bool) -> tuple[int, int]:
    """``(non-blank lines, bytes of text they take)`` of JSONL ``text``; unless ``whole``, up to its last
    newline (the line after it is cut off)."""
    end = len(text) if whole else text.rfind(b"\n") + 1
    return sum(1 for line in text[:end].split(b"\n") if line.strip()), end


def _count(doc: dict[str, Any], totals: dict[str, Any], backend: Any, text: str | None) -> None:
    totals["docs"] += 1
    totals["record_bytes"] += len((text or doc.get(schema.SNIPPET) or "").encode("utf-8"))
    if doc[schema.ERROR] not in (None, schema.UNCHANGED):
        totals["bad"][doc[schema.ERROR]] += 1
        return
    if doc[schema.DOC_ID] in totals["ids"]:
        totals["bad"]["duplicate_doc_id"] += 1
        return
    totals["ids"].add(doc[schema.DOC_ID])
    tokens = len(backend.encode(text, add_special_tokens=False).ids)
    totals["tokens"] += tokens
    if doc[schema.ERROR] == schema.UNCHANGED:
        totals["unchanged"] += 1
    else:
        totals["changed_tokens"] += tokens
        if len(totals["texts"]) < 64:
            totals["texts"].append(text)


def _known_documents(config: JobConfig, identity: ModelIdentity, settings: dict) -> KnownDocuments:
    """The table's documents, empty for a new table or an overwrite. Raises ``TableMismatch``, as the run
    would, when the table holds another model's vectors or was built with other settings."""
    fs, path = url_to_fs(config.sink.uri, **as_s3fs_options(config.sink.storage_options))
    if not fs.exists(path):  # connecting would create the directory, and a dry run writes nothing
        return KnownDocuments()
    table = open_table(config.sink.uri, config.sink.table, config.sink.storage_options)
    if table is None or config.sink.mode == "overwrite":
        return KnownDocuments()
    check_compatible(config.sink.table, read_table_record(table), identity, settings)
    return read_known_documents(table)


def _throughput(config: JobConfig, settings: dict, texts: list[str]) -> tuple[float, float, str]:
    """``(document tokens/s while embedding, seconds a run spends besides embedding, what they come from)``."""
    for path in sorted(Path(config.runtime.summary_dir).glob("*/summary.json"), reverse=True):
        measured = _measured_throughput(json.loads(path.read_text()), settings)
        if measured is not None:
            return measured
    rate = _benchmark(config, texts)
    return (
        rate,
        STARTUP_GUESS_S,
        f"a forward benchmark on this machine plus about {STARTUP_GUESS_S:.0f} s of start-up (no earlier "
        f"successful run of this model and settings embedded {MIN_BASIS_TOKENS:,}+ document tokens)",
    )


def _measured_throughput(summary: dict[str, Any], settings: dict) -> tuple[float, float, str] | None:
    """The throughput a run summary shows, if it is a fit basis (see the module doc)."""
    tokens = summary.get("counts", {}).get("document_tokens", 0)
    same = json.dumps(summary.get("settings"), sort_keys=True) == json.dumps(settings, sort_keys=True)
    if summary.get("status") != "ok" or not same or tokens < MIN_BASIS_TOKENS:
        return None
    wall = summary.get("wall_s") or 0.0
    actors = (summary.get("actors") or {}).get("size") or 1
    embedding_s = (summary.get("time_s") or {}).get("embed", 0.0) / actors  # actors embed side by side
    if embedding_s <= 0 or embedding_s > wall:
        return (tokens / wall, 0.0, f"run {summary.get('run_id')} (end to end)") if wall else None
    fixed = wall - embedding_s
    basis = f"run {summary.get('run_id')} ({tokens:,} tokens at its embedding rate, plus its {fixed:.0f} s of start-up)"
    return tokens / embedding_s, fixed, basis


def _benchmark(config: JobConfig, texts: list[str]) -> float:
    import torch

    from pipeline.embedding import ChunkEmbedder, torch_threads
    from pipeline.model import load_model
    from pipeline.plan import size_actor_pool

    if not texts:
        return 0.0
    model = load_model(config.model, config.embedding.document_prefix)
    backend = raw_tokenizer(model.tokenizer)
    encoded = [ids for ids in (backend.encode(text, add_special_tokens=False).ids for text in texts) if ids]
    docs, tokens = [], 0
    # The sampled documents, repeated up to BENCHMARK_TOKENS: a few short ones alone are timed mostly as noise.
    for ids in itertools.cycle(encoded) if encoded else ():
        docs.append((ids, [(0, len(ids))]))
        tokens += len(ids)
        if tokens >= BENCHMARK_TOKENS:
            break
    if not docs:
        return 0.0
    # Each CPU actor's share of this machine, split into forward passes as the pool would split it; the
    # machine's rate is one actor's times the number of actors.
    actors = size_actor_pool(config.runtime, cluster_cpus=os.cpu_count() or 1, cluster_gpus=0)
    on_cpu = not model.device.startswith("cuda")
    embedder = ChunkEmbedder(
        model,
        config.embedding.mode,
        config.embedding.window_overlap,
        config.batching.max_tokens,
        config.batching.max_sequences,
        parallel_batches=actors.parallel_batches,
    )
    threads = actors.threads_per_forward if on_cpu and actors.threads_per_forward else torch.get_num_threads()
    with torch_threads(threads):
        embedder.embed(docs[:1])  # warm-up
        started = time.perf_counter()
        embedder.embed(docs)
        rate = tokens / (time.perf_counter() - started)
    return rate * actors.size if on_cpu else rate
