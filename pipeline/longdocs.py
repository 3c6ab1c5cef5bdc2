"""PURE: a LongEmbed-style long-document suite, generated locally (no download).

For each document length (in tokens of the given tokenizer) it writes a BEIR-layout dataset of ``docs_per_length``
documents. Each document is filler prose (Python's own help topics) with one *needle* sentence at a random
position, and one query asks for it:

- ``passkey``: "The pass key of Alder is 48213. Remember it." / "What is the pass key of Alder?"
- ``needle``: "Alder keeps a copper lantern in the greenhouse." / "Where does Alder keep a copper lantern?"

The other documents of the same length are the distractors. Truncating a document to the model window loses
every needle placed past it; long late chunking keeps it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

NAMES = [
    "Alder",
    "Briony",
    "Cassius",
    "Delphine",
    "Emrys",
    "Fenella",
    "Gideon",
    "Hester",
    "Ignatius",
    "Juniper",
    "Kestrel",
    "Lysander",
    "Marigold",
    "Niamh",
    "Oberon",
    "Perpetua",
    "Quillon",
    "Rosalind",
    "Silas",
    "Tamsin",
    "Ulric",
    "Verity",
    "Wystan",
    "Xanthe",
    "Yorick",
    "Zenobia",
]
OBJECTS = ["copper lantern", "glass harmonica", "brass telescope", "silver compass", "wooden abacus", "velvet atlas"]
PLACES = ["greenhouse", "lighthouse", "boathouse", "observatory", "orchard", "bell tower"]


def needle_and_query(kind: str, name: str, rng: random.Random) -> tuple[str, str]:
    """The sentence hidden in a document and the query that asks for it."""
    if kind == "passkey":
        key = rng.randint(10000, 99999)
        return f"The pass key of {name} is {key}. Remember it. {name}'s pass key is {key}.", (
            f"What is the pass key of {name}?"
        )
    thing, place = rng.choice(OBJECTS), rng.choice(PLACES)
    return f"{name} keeps a {thing} in the {place}.", f"Where does {name} keep a {thing}?"


def build_document(
    filler: Sequence[str], needle: str, target_tokens: int, count_tokens: Callable[[str], int], rng: random.Random
) -> str:
    """Filler sentences up to ``target_tokens`` tokens with ``needle`` inserted at a uniformly random sentence."""
    sentences: list[str] = []
    budget = target_tokens - count_tokens(needle)
    start = rng.randrange(len(filler))
    while budget > 0:
        sentence = filler[(start + len(sentences)) % len(filler)]
        budget -= count_tokens(sentence)
        sentences.append(sentence)
    sentences.insert(rng.randint(0, len(sentences)), needle)
    return " ".join(sentences)


def write_suite(
    out: Path,
    lengths: Sequence[int],
    filler: Sequence[str],
    count_tokens: Callable[[str], int],
    kind: str = "needle",
    docs_per_length: int = 20,
    seed: int = 0,
) -> dict[int, Path]:
    """One BEIR-layout dataset per length under ``out/<kind>-<length>``; returns length -> directory."""
    if docs_per_length > len(NAMES):
        raise ValueError(f"docs_per_length: at most {len(NAMES)} (got {docs_per_length})")
    rng = random.Random(seed)
    datasets = {}
    for length in lengths:
        root = out / f"{kind}-{length}"
        (root / "qrels").mkdir(parents=True, exist_ok=True)
        corpus, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
        for index, name in enumerate(NAMES[:docs_per_length]):
            needle, query = needle_and_query(kind, name, rng)
            doc_id, query_id = f"{kind}-{length}-{index}", f"q-{kind}-{length}-{index}"
            text = build_document(filler, needle, length, count_tokens, rng)
            corpus.append(json.dumps({"_id": doc_id, "title": "", "text": text}))
            queries.append(json.dumps({"_id": query_id, "text": query}))
            qrels.append(f"{query_id}\t{doc_id}\t1")
        (root / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
        (root / "queries.jsonl").write_text("\n".join(queries) + "\n")
        (root / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
        datasets[length] = root
    return datasets


def filler_sentences(texts: Sequence[str], min_chars: int = 40) -> list[str]:
    """Plain sentences from prose: one line each, without the markup-heavy ones."""
    sentences = []
    for text in texts:
        for paragraph in text.split("\n\n"):
            flat = " ".join(paragraph.split())
            if len(flat) >= min_chars and flat[-1] in ".!?" and not any(c in flat for c in "*>=|"):
                sentences.append(flat)
    return sentences
