"""build-memory on a generated corpus against the same encoding in a plain Python loop.

The corpus is toy-world grammar text (``toyworld.sentences(0, "memory", n)``) in plain text files.
Both sides run in a fresh process with the toy CLIP (random weights: throughput only):

- pipeline: ``pipelines.build_memory.run`` on the in-process FnApiRunner: read, normalise, filter,
  dedupe, encode, write Parquet shards and the manifest;
- loop: read the same files, drop repeated lines, encode in length-sorted batches of the same size
  with ``encode_tokens_packed``; nothing written.

Sentences/s counts input sentences over the whole wall time of each side, CLIP loading included.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from decap_core.clip import encode_tokens_packed, load_clip
from decap_core.toy import world as toyworld

BATCH_SIZE = 512
MODEL = "toy-clip"


def write_corpus(directory: Path, sentences: int, files: int) -> list[Path]:
    texts = toyworld.sentences(0, "memory", sentences)
    paths = []
    for number in range(files):
        path = directory / f"corpus-{number:02d}.txt"
        path.write_text("\n".join(texts[number::files]) + "\n")
        paths.append(path)
    return paths


def encode_in_loop(corpus: Path) -> int:
    """The baseline: distinct lines, length-sorted batches, packed encoding; returns rows encoded."""
    lines = [line for path in sorted(corpus.glob("*.txt")) for line in path.read_text().splitlines()]
    clip = load_clip(MODEL)
    tokens = clip.tokenize(list(dict.fromkeys(lines)))
    tokens = tokens[torch.argsort((tokens != 0).sum(1), stable=True)]
    with torch.no_grad():
        for batch in tokens.split(BATCH_SIZE):
            encode_tokens_packed(clip.model, batch)
    return len(tokens)


def build_with_pipeline(corpus: Path, output: Path) -> int:
    from pipelines.build_memory import run as build_memory

    manifest = build_memory([
        "--input", str(corpus / "*.txt"), "--output", str(output), "--clip-model", MODEL,
        "--batch-size", str(BATCH_SIZE), "--runner=FnApiRunner",
    ])
    return manifest["rows"]


def measure(side: str, corpus: Path, output: Path) -> dict:
    """Run one side in a fresh interpreter; its wall time, peak RSS and rows."""
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_memory", "--side", side,
                             "--corpus", str(corpus), "--output", str(output)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(sentences: int = 1_000_000, files: int = 8) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        write_corpus(corpus, sentences, files)
        pipeline = measure("pipeline", corpus, Path(tmp) / "memory")
        loop = measure("loop", corpus, Path(tmp) / "unused")
    rate = {name: sentences / side["seconds"] for name, side in (("pipeline", pipeline), ("loop", loop))}
    return (
        "## Support memory: build-memory pipeline vs a plain encoding loop\n\n"
        f"{sentences:,} toy-grammar sentences in {files} text files, {pipeline['rows']:,} distinct; "
        f"toy CLIP ({MODEL}, random weights), batches of {BATCH_SIZE}; each side in a fresh process. "
        "Pipeline: `pipelines.build_memory.run` on the in-process FnApiRunner (one worker), "
        "16 Parquet shards + manifest. Loop: read, drop repeats, length-sorted packed encoding, no output.\n\n"
        "| side | wall s | sentences/s | share of loop | peak RSS MiB |\n|---|---|---|---|---|\n"
        f"| plain loop | {loop['seconds']:.0f} | {rate['loop']:,.0f} | 100% | {loop['peak_rss_mib']:,.0f} |\n"
        f"| build-memory pipeline | {pipeline['seconds']:.0f} | {rate['pipeline']:,.0f} | "
        f"{rate['pipeline'] / rate['loop']:.0%} | {pipeline['peak_rss_mib']:,.0f} |\n"
    )


def _side_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["pipeline", "loop"])
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--sentences", type=int, default=20_000, help="without --side: a quick run of both")
    args = parser.parse_args(argv)
    if args.side is None:
        print(run(sentences=args.sentences))
        return
    started = time.perf_counter()
    rows = build_with_pipeline(args.corpus, args.output) if args.side == "pipeline" else encode_in_loop(args.corpus)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rows": rows, "peak_rss_mib": peak}))


if __name__ == "__main__":
    _side_main(sys.argv[1:])
