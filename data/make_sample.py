"""Regenerate data/sample/topics.jsonl: 60 help topics of the Python documentation (pydoc_data.topics, PSF
licence), real English prose of mixed length, some longer than the 512-token window.

Run: python data/make_sample.py
"""

import json
from pathlib import Path
from pydoc_data.topics import topics

SAMPLE_SIZE = 60


def main() -> None:
    names = sorted(topics)
    step = max(1, len(names) // SAMPLE_SIZE)
    chosen = names[::step][:SAMPLE_SIZE]
    out = Path(__file__).parent / "sample" / "topics.jsonl"
    out.parent.mkdir(exist_ok=True)
    with out.open("w") as handle:
        for name in chosen:
            record = {"id": name, "title": name.replace("-", " "), "text": topics[name].strip()}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(chosen)} documents to {out}")


if __name__ == "__main__":
    main()
