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
import logging
import sys
from collections import Counter
from typing import Any, Iterable, Iterator

import apache_beam as beam
import fsspec
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from decap_core import corpus, index, memory_files
from decap_core.clip import load_clip
from decap_core.errors import DecapError
from decap_core.textnorm import LengthLimits, NormalisationOptions, sentence_id, shard_of
from decap_core.vocab import clip_token_ids
from pipelines.common import DEAD, STATS, DistinctSentences, EncodeText, count

DEFAULT_RUNNER = "FnApiRunner"
INDEX_FILE = "index.faiss"
ERRORS_DIR = "errors"


class BuildMemoryOptions(PipelineOptions):
    """The options of ``decap build-memory``; every other flag is a Beam pipeline option."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--input", action="extend", nargs="+", default=None,
                            help="fsspec glob(s) of .txt / .jsonl / .parquet files, optionally .gz or .zst")
        parser.add_argument("--output", help="fsspec URL of the memory directory")
        parser.add_argument("--field", default="text", help="JSON field of .jsonl rows, column of .parquet files")
        parser.add_argument("--clip-model", default="toy-clip", help="open_clip architecture or toy config")
        parser.add_argument("--clip-checkpoint", default=None, help="CLIP weights (path or fsspec URL); none: random")
        parser.add_argument("--num-shards", type=int, default=16,
                            help="Parquet shards; one shard's rows must fit in a worker's memory")
        parser.add_argument("--batch-size", type=int, default=512, help="sentences per CLIP forward pass")
        parser.add_argument("--lowercase", action="store_true", help="lower-case sentences when normalising")
        parser.add_argument("--min-tokens", type=int, default=3, help="fewest CLIP tokens, start and end included")
        parser.add_argument("--max-tokens", type=int, default=None, help="most CLIP tokens (default: the context)")
        parser.add_argument("--index", default="none",
                            help="none, auto (flat below 1M rows, IVF-HNSW above), flat, or a faiss factory string")


def key_encoded_by_shard(encoded: tuple) -> tuple[int, tuple[list[tuple[str, str, str]], np.ndarray]]:
    """An encoded batch as ``(shard, ([(id, text, source)], embeddings))``: the tokens stay behind."""
    (shard, _), sentences, embeddings = encoded
    return shard, ([(s.id, s.text, s.source) for s in sentences], embeddings)


class WriteShard(beam.DoFn):
    """All encoded batches of one shard -> ``memory-SSSSS-of-NNNNN.parquet``, rows sorted by id."""

    def __init__(self, output: str, num_shards: int):
        self._output, self._num_shards = output, num_shards

    def process(self, element: tuple[int, Iterable[tuple[list[tuple[str, str, str]], np.ndarray]]]) -> Iterator[dict]:
        shard, encoded = element
        batches = list(encoded)
        rows = [row for row_batch, _ in batches for row in row_batch]
        by_id = sorted(range(len(rows)), key=lambda i: rows[i][0])
        ids, texts, sources = zip(*(rows[i] for i in by_id))
        embeddings = np.concatenate([e for _, e in batches])[by_id]
        name = memory_files.shard_name(shard, self._num_shards)
        memory_files.write_shard(f"{self._output}/{name}", list(ids), list(texts), embeddings, list(sources))
        count("kept", len(rows))
        yield {"name": name, "rows": len(rows)}


def key_dead_letter(dead: corpus.DeadLetter, num_shards: int) -> tuple[int, corpus.DeadLetter]:
    return shard_of(sentence_id(dead.key), num_shards), dead


class WriteDeadLetters(beam.DoFn):
    """One shard's dead letters, sorted -> ``errors/dead-letters-SSSSS-of-NNNNN.jsonl``."""

    def __init__(self, output: str, num_shards: int):
        self._output, self._num_shards = output, num_shards

    def process(self, element: tuple[int, Iterable[corpus.DeadLetter]]) -> Iterator[dict]:
        shard, letters = element
        letters = sorted(letters)
        name = f"{ERRORS_DIR}/{memory_files.dead_letter_name(shard, self._num_shards)}"
        memory_files.write_dead_letters(f"{self._output}/{name}", letters)
        reasons = Counter(letter.error for letter in letters)
        for reason, number in reasons.items():
            count(f"dead_{reason}", number)
        count("dead", len(letters))
        yield {"name": name, "rows": len(letters), "reasons": dict(reasons)}


class CompleteMemory(beam.DoFn):
    """After every shard: write the empty shards, delete stale files, total the counts."""

    def __init__(self, plan: dict[str, Any]):
        self._plan = plan

    def process(self, _: Any, shards: list[dict], stats: list[dict], dead: list[dict]) -> Iterator[dict]:
        plan, output = self._plan, self._plan["output"]
        written = {shard["name"]: shard["rows"] for shard in shards}
        names = [memory_files.shard_name(i, plan["num_shards"]) for i in range(plan["num_shards"])]
        for name in names:
            if name not in written:
                memory_files.write_shard(f"{output}/{name}", [], [], np.zeros((0, plan["dim"]), np.float32), [])
                written[name] = 0
        memory_files.remove_stale(output, memory_files.SHARD_GLOB, names)
        dead = sorted(dead, key=lambda item: item["name"])
        memory_files.remove_stale(f"{output}/{ERRORS_DIR}", memory_files.DEAD_LETTER_GLOB,
                                  [d["name"].split("/")[-1] for d in dead])
        reasons = sum((Counter(d["reasons"]) for d in dead), Counter())
        sentences = sum(s["sentences"] for s in stats)
        rows = sum(written.values())
        yield {
            **{k: v for k, v in plan.items() if k not in ("output", "index")},
            "rows": rows,
            "shards": [{"name": name, "rows": written[name]} for name in names],
            "dead_letters": [{"name": d["name"], "rows": d["rows"]} for d in dead],
            "counts": {
                "read": sentences + sum(reasons.values()),
                "kept": rows,
                "duplicates": sentences - rows,
                "dead": sum(reasons.values()),
                "dead_by_reason": dict(sorted(reasons.items())),
            },
        }


class AddIndex(beam.DoFn):
    """Build the requested faiss index from the written shards, with its recall@10 on a sample."""

    def __init__(self, output: str, request: str):
        self._output, self._request = output, request

    def process(self, manifest: dict) -> Iterator[dict]:
        fs, root = fsspec.core.url_to_fs(f"{self._output}/{INDEX_FILE}")
        if fs.exists(root):
            fs.rm(root)
        factory = resolve_index(self._request, manifest["rows"])
        if factory is None or manifest["rows"] == 0:
            yield {**manifest, "index": None}
            return
        def chunks():
            return (embeddings for _, embeddings in memory_files.iter_chunks(self._output, manifest))
        built = index.build_index(factory, manifest["dim"], chunks, manifest["rows"])
        recall = index.recall_at_k(built, chunks, manifest["rows"], k=10)
        index.save_index(built, f"{self._output}/{INDEX_FILE}")
        yield {**manifest, "index": {"file": INDEX_FILE, "factory": factory, "metric": "inner_product",
                                     "recall_at_10": round(recall, 4), "recall_queries": min(1000, manifest["rows"])}}


def resolve_index(request: str, rows: int) -> str | None:
    """The faiss factory string for ``--index`` (None: no index)."""
    lowered = request.lower()
    if lowered == "none":
        return None
    if lowered == "auto":
        return index.choose_factory(rows)
    return "Flat" if lowered == "flat" else request


def write_manifest(manifest: dict, output: str) -> dict:
    memory_files.write_manifest(output, manifest)
    return manifest


def plan_build(args: BuildMemoryOptions) -> tuple[dict[str, Any], NormalisationOptions, LengthLimits]:
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
    normalisation = NormalisationOptions(lowercase=args.lowercase)
    limits = LengthLimits(context_length=clip.context_length, min_tokens=args.min_tokens, max_tokens=args.max_tokens)
    plan = {
        "output": args.output.rstrip("/"),
        "clip_model": args.clip_model,
        "clip_fingerprint": clip.fingerprint,
        "dim": clip.embed_dim,
        "num_shards": args.num_shards,
        "normalisation": normalisation.describe(),
        "token_limits": {"context_length": limits.context_length, "min_tokens": limits.min_tokens,
                         "max_tokens": limits.max_tokens},
        "inputs": corpus.expand_inputs(args.input),
        "index": args.index,
    }
    return plan, normalisation, limits


def pipeline_options(argv: list[str] | None) -> PipelineOptions:
    options = PipelineOptions(argv)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = DEFAULT_RUNNER
    return options


def run(argv: list[str] | None = None) -> dict:
    """Build the memory; returns the manifest (also written to ``--output``/manifest.json)."""
    options = pipeline_options(argv)
    args = options.view_as(BuildMemoryOptions)
    plan, normalisation, limits = plan_build(args)
    output, num_shards = plan["output"], plan["num_shards"]
    memory_files.begin_build(output, [ERRORS_DIR])

    with beam.Pipeline(options=options) as p:
        distinct = p | "DistinctSentences" >> DistinctSentences(
            plan["inputs"], args.field, normalisation, limits, num_shards, args.batch_size)
        shards = (
            distinct["batches"]
            | "SpreadBatches" >> beam.Reshuffle()
            | "EncodeText" >> EncodeText(args.clip_model, args.clip_checkpoint)
            | "KeyBatchByShard" >> beam.Map(key_encoded_by_shard)
            | "GatherShards" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(WriteShard(output, num_shards))
        )
        dead_files = (
            distinct[DEAD]
            | "KeyDeadLetters" >> beam.Map(key_dead_letter, num_shards)
            | "GroupDeadLetters" >> beam.GroupByKey()
            | "WriteDeadLetters" >> beam.ParDo(WriteDeadLetters(output, num_shards))
        )
        _ = (
            p
            | "AfterAllShards" >> beam.Create([None])
            | "CompleteMemory" >> beam.ParDo(
                CompleteMemory(plan),
                shards=beam.pvalue.AsList(shards),
                stats=beam.pvalue.AsList(distinct[STATS]),
                dead=beam.pvalue.AsList(dead_files),
            )
            | "BuildIndex" >> beam.ParDo(AddIndex(output, plan["index"]))
            | "WriteManifest" >> beam.Map(write_manifest, output)
        )
    return memory_files.read_manifest(output)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        parser = argparse.ArgumentParser(prog="decap build-memory", epilog="Any other flag is a Beam pipeline option.")
        BuildMemoryOptions._add_argparse_args(parser)
        parser.print_help()
        return
    manifest = run(argv)
    counts = manifest["counts"]
    print(f"memory: {manifest['rows']} rows in {len(manifest['shards'])} shards; read {counts['read']}, "
          f"duplicates {counts['duplicates']}, dead letters {counts['dead']} {counts['dead_by_reason']}")


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    try:
        main()
    except DecapError as error:
        sys.exit(f"build-memory: error: {error}")
