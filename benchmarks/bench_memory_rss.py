"""build-memory's peak resident memory as its input grows tenfold, and with one pathological 10 MB line.

Each run is ``bench_memory``'s pipeline side (FnApiRunner, toy CLIP with random weights) in a fresh
process over toy-grammar text files; the baseline is the smallest corpus. The pathological run is
the small corpus plus one extra file holding a single 10 MB line with no newline in it, which the
reader refuses unread (``corpus.MAX_LINE_BYTES``) and dead-letters as ``line_too_long``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_memory import measure, write_corpus

SIZES = (100_000, 1_000_000)
FILES = 8
LONG_LINE_BYTES = 10 * 2**20


def run(sizes: tuple[int, ...] = SIZES) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sentences in sizes:
            corpus = Path(tmp) / f"corpus-{sentences}"
            corpus.mkdir()
            write_corpus(corpus, sentences, FILES)
            rows.append((f"{sentences:,} sentences", measure("pipeline", corpus, Path(tmp) / f"memory-{sentences}")))
        corpus = Path(tmp) / f"corpus-{sizes[0]}"
        (corpus / "one-long-line.txt").write_bytes(b"x" * LONG_LINE_BYTES)
        long_line = measure("pipeline", corpus, Path(tmp) / "memory-long")
        rows.append((f"{sizes[0]:,} sentences + one 10 MB line", long_line))
    base = rows[0][1]["peak_rss_mib"]
    table = "\n".join(f"| {name} | {side['rows']:,} | {side['seconds']:.0f} | {side['peak_rss_mib']:,.0f} | "
                      f"{side['peak_rss_mib'] / base:.2f}x |" for name, side in rows)
    return (
        "## build-memory: peak resident memory against input size\n\n"
        f"`python -m benchmarks.bench_memory_rss`. Toy-grammar text in {FILES} files, toy CLIP (random weights), "
        "`pipelines.build_memory.run` on the in-process FnApiRunner, 16 shards, each run in a fresh process.\n\n"
        "| input | distinct rows | wall s | peak RSS MiB | vs smallest |\n|---|---|---|---|---|\n"
        f"{table}\n"
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="corpus sizes, smallest first")
    print(run(tuple(parser.parse_args(argv).sizes)))


if __name__ == "__main__":
    main(sys.argv[1:])
