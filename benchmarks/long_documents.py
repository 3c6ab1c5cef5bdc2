"""Long-document suite: needle and passkey retrieval at 256..8192 tokens, long late chunking vs truncation.

Generates the datasets locally (pipeline/longdocs.py), evaluates each through `lateline eval`'s code path
(no chunking = whole document truncated to the window; naive and late chunking), and writes
long_documents.json / .md / .png under --out.

    python benchmarks/long_documents.py --config configs/local.yaml --out eval-results/long
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from pydoc_data.topics import topics

from pipeline.config import load_config
from pipeline.evaluation import run_eval
from pipeline.longdocs import filler_sentences, write_suite
from pipeline.model import describe_model, raw_tokenizer

METRIC = "mrr@10"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--out", type=Path, default=Path("eval-results/long"))
    parser.add_argument("--lengths", default="256,512,1024,2048,4096,8192")
    parser.add_argument("--kinds", default="needle,passkey")
    parser.add_argument("--docs", type=int, default=20, help="documents (and queries) per length")
    parser.add_argument("--chunk-size", type=int, default=128)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    tokenizer, _, window, _ = describe_model(config.model)
    backend = raw_tokenizer(tokenizer)

    def count_tokens(text: str) -> int:
        return len(backend.encode(text, add_special_tokens=False).ids)

    filler = filler_sentences(list(topics.values()))
    lengths = [int(x) for x in args.lengths.split(",")]
    table: dict[str, dict[int, dict[str, float]]] = {}
    for kind in args.kinds.split(","):
        datasets = write_suite(args.out / "data", lengths, filler, count_tokens, kind, args.docs)
        for length, dataset in datasets.items():
            report = run_eval(config, dataset, args.out / f"{kind}-{length}", [args.chunk_size])
            for variant, result in report["results"].items():
                table.setdefault(f"{kind}/{variant}", {})[length] = result["metrics"]
    (args.out / "long_documents.json").write_text(
        json.dumps({"window": window, "metric": METRIC, "results": table}, indent=2)
    )
    markdown = _markdown(table, lengths)
    (args.out / "long_documents.md").write_text(markdown)
    _chart(table, lengths, window, args.out / "long_documents.png")
    print(markdown)
    return 0


def _markdown(table: dict, lengths: list[int]) -> str:
    lines = [
        f"{METRIC} x 100 by document length (tokens)",
        "",
        "| suite / variant | " + " | ".join(map(str, lengths)) + " |",
        "|" + " --- |" * (len(lengths) + 1),
    ]
    for name, by_length in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * by_length[n][METRIC]:.1f}" for n in lengths) + " |")
    return "\n".join(lines) + "\n"


def _chart(table: dict, lengths: list[int], window: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for name, by_length in table.items():
        axes.plot(lengths, [100 * by_length[n][METRIC] for n in lengths], marker="o", label=name)
    axes.axvline(window, color="grey", linestyle=":", label=f"model window ({window})")
    axes.set_xscale("log", base=2)
    axes.set_xticks(lengths, [str(n) for n in lengths])
    axes.set_xlabel("document length (tokens)")
    axes.set_ylabel(f"{METRIC} x 100")
    axes.set_title("Needle / passkey retrieval: long late chunking vs truncation")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
