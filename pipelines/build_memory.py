"""Build a support memory from text corpora: read -> normalise/filter -> dedupe -> encode -> shards.

Run as ``decap build-memory ...`` or ``python -m pipelines.build_memory ...``; any Beam option
(``--runner``, ``--direct_num_workers``, ``--setup_file``, the runner's own) passes through. Without
``--runner`` it runs on Beam's in-process ``FnApiRunner``, which never reaches for the network.

Layout of ``--output``: ``memory-SSSSS-of-NNNNN.parquet`` (shard = hash(id) mod N, rows sorted by
id: the same inputs give byte-identical shards), ``errors/dead-letters-SSSSS-of-NNNNN.jsonl``,
optionally ``index.faiss``, and ``manifest.json`` written last. A rerun overwrites the same names,
deletes shard, dead-letter and index files of an earlier build that this one does not produce, and
removes the old manifest first so that a failed rerun never leaves a half-valid memory.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Any, Iterator

import apache_beam as beam
import fsspec
import numpy as np

from decap_core import artifacts, corpus, index, memory_files, spill
from decap_core.clip import load_clip
from decap_core.errors import DecapError
from decap_core.memory_files import FileRows, IndexInfo, MemoryCounts, MemoryManifest, MemoryPlan, ShardRows
from decap_core.vocab import clip_token_ids
from pipelines import dead_letters, options, steps
from pipelines.common import (
    DEAD,
    GROUPS,
    STATS,
    ClipDoFn,
    DistinctSentences,
    add_corpus_flags,
    limits_of,
    normalisation_of,
)
from pipelines.steps import Gather, count

INDEX_FILE = "index.faiss"


def build_parser() -> argparse.ArgumentParser:
    parser = options.new_parser("decap build-memory", "Build a support memory from text corpora (a Beam pipeline).")
    add_corpus_flags(parser)
    parser.add_argument("--output", help="fsspec URL of the memory directory")
    parser.add_argument("--num-shards", type=int, default=16,
                        help="Parquet shards; one shard's rows must fit in a worker's memory")
    parser.add_argument("--index", default="none",
                        help="none, auto (flat below 1M rows, IVF-HNSW above), flat, or a faiss factory string")
    return parser


class EncodeAndWriteShard(ClipDoFn):
    """One group's distinct sentences -> encoded in fixed batches -> ``memory-SSSSS-of-NNNNN.parquet``, rows by id.

    A group is a shard (both are ``hash(id) mod num_shards``); encoding and writing it in the step
    that deduped it keeps only that shard in memory.
    """

    def __init__(self, clip_model: str, clip_checkpoint: str | None, output: str, num_shards: int, batch_size: int):
        super().__init__(clip_model, clip_checkpoint)
        self._output, self._num_shards, self._batch_size = output, num_shards, batch_size

    def process(self, element: tuple[int, list[tuple]]) -> Iterator[dict]:
        shard, rows = element  # never empty: a group exists only where a spill file holds a sentence
        embeddings = np.concatenate([self.encode(batch) for batch in steps.batches_of(rows, self._batch_size)])
        sentences = [corpus.Sentence._make(row) for row in rows]
        by_id = sorted(range(len(rows)), key=lambda i: sentences[i].id)
        name = memory_files.shard_name(shard, self._num_shards)
        memory_files.write_shard(f"{self._output}/{name}", ShardRows(
            [sentences[i].id for i in by_id], [sentences[i].text for i in by_id], embeddings[by_id],
            [sentences[i].source for i in by_id]))
        count("kept", len(rows))
        yield {"name": name, "rows": len(rows)}


def complete_memory(gathered: dict[str, list[dict]], plan: MemoryPlan, output: str) -> MemoryManifest:
    """After every shard: write the empty shards, delete stale files, total the counts."""
    written = {shard["name"]: shard["rows"] for shard in gathered["shards"]}
    names = [memory_files.shard_name(i, plan.num_shards) for i in range(plan.num_shards)]
    for name in names:
        if name not in written:
            memory_files.write_shard(f"{output}/{name}", ShardRows([], [], np.zeros((0, plan.dim), np.float32), []))
            written[name] = 0
    artifacts.remove_stale(output, memory_files.SHARD_GLOB, names)
    spill.remove_spill(output)
    letters, reasons = dead_letters.finish(output, gathered["dead"])
    sentences = sum(stats["sentences"] for stats in gathered["stats"])
    rows, dead = sum(written.values()), sum(reasons.values())
    counts = MemoryCounts(read=sentences + dead, kept=rows, duplicates=sentences - rows, dead=dead,
                          dead_by_reason=dict(sorted(reasons.items())))
    return MemoryManifest(plan, rows, tuple(FileRows(name, written[name]) for name in names), letters, counts)


def add_index(manifest: MemoryManifest, output: str, request: str) -> MemoryManifest:
    """Build the requested faiss index from the written shards, with its recall@10 on a sample."""
    fs, root = fsspec.core.url_to_fs(f"{output}/{INDEX_FILE}")
    if fs.exists(root):
        fs.rm(root)
    factory = resolve_index(request, manifest.rows)
    if factory is None or manifest.rows == 0:
        return manifest

    def chunks():
        return (embeddings for _, embeddings in memory_files.iter_chunks(output, manifest))

    try:
        built = index.build_index(factory, manifest.plan.dim, chunks, manifest.rows)
    except DecapError as error:  # the memory itself is complete: keep it, and say so after the run
        logging.getLogger(__name__).warning("%s", error)
        return manifest
    recall = index.recall_at_k(built, chunks, manifest.rows, k=10)
    index.save_index(built, f"{output}/{INDEX_FILE}")
    info = IndexInfo(file=INDEX_FILE, factory=factory, metric="inner_product", recall_at_10=round(recall, 4),
                     recall_queries=min(1000, manifest.rows))
    return dataclasses.replace(manifest, index=info)


def resolve_index(request: str, rows: int) -> str | None:
    """The faiss factory string for ``--index`` (None: no index)."""
    lowered = request.lower()
    if lowered == "none":
        return None
    if lowered == "auto":
        return index.choose_factory(rows)
    return "Flat" if lowered == "flat" else request


def plan_build(args: argparse.Namespace) -> MemoryPlan:
    """Check the arguments, load the CLIP once here (fail fast, fingerprint), and list the inputs."""
    if not args.input or not args.output:
        raise DecapError("--input and --output are required (decap build-memory --help)")
    if args.num_shards < 1 or args.batch_size < 1:
        raise DecapError("--num-shards and --batch-size must be at least 1")
    clip = load_clip(args.clip_model, args.clip_checkpoint)
    probe = "a red circle"
    if clip.tokenize([probe])[0, : len(clip_token_ids(probe))].tolist() != clip_token_ids(probe):
        raise DecapError(f"{args.clip_model} does not use CLIP's BPE tokenizer, which build-memory counts tokens with")
    if args.index.lower() not in ("none", "auto", "flat"):
        index.empty_index(args.index, clip.embed_dim)
    return MemoryPlan(clip_model=args.clip_model, clip_fingerprint=clip.fingerprint, dim=clip.embed_dim,
                      num_shards=args.num_shards, normalisation=normalisation_of(args).describe(),
                      token_limits=limits_of(args, clip.context_length), inputs=tuple(corpus.expand_inputs(args.input)))


def build(argv: list[str] | None = None) -> MemoryManifest:
    """Build the memory; returns its manifest (also written to ``--output``/manifest.json)."""
    args, beam_options = options.parse(build_parser(), argv)
    plan = plan_build(args)
    output = args.output.rstrip("/")
    memory_files.begin(output)

    with steps.pipeline(beam_options) as p:
        distinct = p | "DistinctSentences" >> DistinctSentences(
            plan.inputs, args.field, normalisation_of(args), plan.token_limits, plan.num_shards,
            spill.spill_dir(output))
        shards = distinct[GROUPS] | "EncodeAndWriteShards" >> beam.ParDo(EncodeAndWriteShard(
            args.clip_model, args.clip_checkpoint, output, plan.num_shards, args.batch_size))
        dead = distinct[DEAD] | "DeadLetters" >> dead_letters.WriteDeadLetters(output, plan.num_shards)
        _ = (
            {"shards": shards, "stats": distinct[STATS], "dead": dead}
            | "AfterAllShards" >> Gather()
            | "CompleteMemory" >> beam.Map(complete_memory, plan, output)
            | "BuildIndex" >> beam.Map(add_index, output, args.index)
            | "WriteManifest" >> beam.Map(lambda manifest: memory_files.write_manifest(output, manifest))
        )
    manifest = memory_files.read_manifest(output)
    if manifest.rows == 0:
        memory_files.begin(output)  # unmarked: an empty memory would only fail later, at captioning
        raise DecapError(f"no sentences kept from {len(plan.inputs)} input file(s): {manifest.counts.dead} dead "
                         f"letters {manifest.counts.dead_by_reason} in {output}/errors")
    if manifest.index is None and resolve_index(args.index, manifest.rows) is not None:
        raise DecapError(f"the memory in {output} is complete ({manifest.rows} rows) but has no index: faiss could "
                         f"not train {args.index!r} on so few rows (an IVF needs at least as many rows as lists); "
                         "rebuild with --index flat or auto, or let caption build one on load")
    return manifest


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """``build``, with the manifest as its JSON."""
    return build(argv).to_json()


def main(argv: list[str] | None = None) -> None:
    manifest = build(sys.argv[1:] if argv is None else argv)
    counts = manifest.counts
    print(f"memory: {manifest.rows} rows in {len(manifest.shards)} shards; read {counts.read}, "
          f"duplicates {counts.duplicates}, dead letters {counts.dead} {counts.dead_by_reason}")


if __name__ == "__main__":
    from jobs import cli

    sys.exit(cli.main(["build-memory", *sys.argv[1:]]))
