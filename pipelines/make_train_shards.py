"""Make the decoder's train shards: text corpora or a built support memory -> WebDataset tars.

Run as ``decap make-shards ...`` or ``python -m pipelines.make_train_shards ...``; every other flag
is a Beam pipeline option (without ``--runner``: the in-process ``FnApiRunner``, no network).

From corpora (``--input``) it reuses build-memory's steps: read, normalise/filter, dedupe, encode
with the CLIP text tower. From a memory (``--memory``) it reuses the memory's embeddings and only
tokenises. Either way every sentence gets a shuffle key (a hash of seed and id), so the order, the
split and the bytes of every shard are the same on every rerun: the first ``--validation-samples``
in that order go to ``valid-NNNNNN.tar``, the rest to ``train-NNNNNN.tar``, ``--samples-per-shard``
each. ``vocab.json`` (token counts, CLIP fingerprint, shard list) is written last; a rerun first
removes it, and at the end deletes shards of an earlier run that this one did not write.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from collections import Counter
from typing import Any, Iterable, Iterator

import apache_beam as beam
import fsspec
import numpy as np
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from decap_core import corpus, memory_files
from decap_core import shards as shard_files
from decap_core.clip import load_clip
from decap_core.errors import DecapError
from decap_core.textnorm import LengthLimits, NormalisationOptions
from decap_core.vocab import clip_token_ids
from pipelines.build_memory import ERRORS_DIR, BuildMemoryOptions, WriteDeadLetters, key_dead_letter, pipeline_options
from pipelines.common import DEAD, DistinctSentences, EncodeText, count

DEDUPE_GROUPS = 64  # parallelism of the global dedupe (each group must fit in a worker)
BUCKET_DIGITS = 3  # samples are ranked within 16**3 buckets of the shuffle key


class MakeShardsOptions(PipelineOptions):
    """The options of ``decap make-shards`` beyond the corpus, CLIP and token options it shares with
    ``BuildMemoryOptions`` (Beam parses every options class with one parser, so a flag is defined once)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--memory", help="a built support memory to take sentences and embeddings from, "
                                             "instead of --input (no second encoding)")
        parser.add_argument("--samples-per-shard", type=int, default=5000)
        parser.add_argument("--validation-samples", type=int, default=1000, help="held out into valid-*.tar")
        parser.add_argument("--emb-dtype", choices=sorted(shard_files.EMB_DTYPES), default="float16")
        parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle order")


def shuffle_key(seed: int, sentence_id: str) -> str:
    return hashlib.sha256(f"{seed}:{sentence_id}".encode()).hexdigest()


def encoded_to_samples(encoded: tuple[Any, list[corpus.Sentence], np.ndarray]) -> Iterator[shard_files.Sample]:
    _, sentences, embeddings = encoded
    for sentence, embedding in zip(sentences, embeddings):
        yield shard_files.Sample(sentence.id, sentence.text, np.asarray(sentence.tokens, np.int32), embedding)


class ReadMemoryShard(beam.DoFn):
    """One Parquet shard of a support memory -> ``Sample``s (tokenised here, embeddings as stored)."""

    def __init__(self, dim: int, limits: LengthLimits):
        self._dim, self._limits = dim, limits

    def process(self, url: str) -> Iterator[Any]:
        with fsspec.open(url, "rb") as handle:
            table = pq.read_table(handle, columns=["id", "text", "embedding", "source"])
        embeddings = table.column("embedding").combine_chunks().values.to_numpy(zero_copy_only=False)
        embeddings = embeddings.reshape(table.num_rows, self._dim)
        for row, (key, text, source) in enumerate(zip(*(table.column(c).to_pylist() for c in ("id", "text", "source")))):
            tokens = clip_token_ids(text)
            problem = self._limits.problem(len(tokens))
            count("read")
            if problem is not None:
                yield beam.pvalue.TaggedOutput(DEAD, corpus.DeadLetter(source, "filter", problem, f"{len(tokens)} tokens"))
            else:
                yield shard_files.Sample(key, text, np.asarray(tokens, np.int32), embeddings[row])


def key_by_bucket(sample: shard_files.Sample, seed: int) -> tuple[str, shard_files.Sample]:
    return shuffle_key(seed, sample.key)[:BUCKET_DIGITS], sample


def sort_bucket(element: tuple[str, Iterable[shard_files.Sample]], seed: int) -> tuple[str, list[shard_files.Sample]]:
    bucket, samples = element
    return bucket, sorted(samples, key=lambda sample: shuffle_key(seed, sample.key))


class PlaceSamples(beam.DoFn):
    """A sorted bucket -> ``((split, shard), (rank, sample))``: buckets are ranges of the shuffle key,
    so a sample's global rank is the size of the buckets before its own plus its place in it."""

    def __init__(self, per_shard: int, validation: int):
        self._per_shard, self._validation = per_shard, validation

    def process(self, element: tuple[str, list[shard_files.Sample]], sizes: dict[str, int]) -> Iterator[Any]:
        bucket, samples = element
        offset = sum(size for other, size in sizes.items() if other < bucket)
        for place, sample in enumerate(samples):
            rank = offset + place
            split, position = ("valid", rank) if rank < self._validation else ("train", rank - self._validation)
            yield (split, position // self._per_shard), (rank, sample)


class WriteTrainShard(beam.DoFn):
    """One shard's samples, in rank order -> ``SPLIT-NNNNNN.tar``; yields its name, size and token counts."""

    def __init__(self, output: str, emb_dtype: str):
        self._output, self._emb_dtype = output, emb_dtype

    def process(self, element: tuple[tuple[str, int], Iterable[tuple[int, shard_files.Sample]]]) -> Iterator[dict]:
        (split, index), ranked = element
        samples = [sample for _, sample in sorted(ranked, key=lambda item: item[0])]
        name = shard_files.shard_name(split, index)
        shard_files.write_shard(f"{self._output}/{name}", samples, self._emb_dtype)
        tokens: Counter = Counter()
        if split == "train":
            for sample in samples:
                tokens.update(int(t) for t in sample.tokens)
        count(f"{split}_samples", len(samples))
        yield {"name": name, "split": split, "samples": len(samples), "token_counts": dict(tokens)}


class CompleteShards(beam.DoFn):
    """After every shard: delete stale files, total the counts, and give the ``vocab.json`` contents."""

    def __init__(self, plan: dict[str, Any]):
        self._plan = plan

    def process(self, _: Any, shards: list[dict], dead: list[dict]) -> Iterator[dict]:
        output = self._plan["output"]
        shards = sorted(shards, key=lambda shard: shard["name"])
        names = {split: [s["name"] for s in shards if s["split"] == split] for split in shard_files.SPLITS}
        for split in shard_files.SPLITS:
            memory_files.remove_stale(output, f"{split}-*.tar", names[split])
        dead = sorted(dead, key=lambda item: item["name"])
        memory_files.remove_stale(f"{output}/{ERRORS_DIR}", memory_files.DEAD_LETTER_GLOB,
                                  [d["name"].split("/")[-1] for d in dead])
        tokens: Counter = Counter()
        for shard in shards:
            tokens.update(shard["token_counts"])
        samples = {split: sum(s["samples"] for s in shards if s["split"] == split) for split in shard_files.SPLITS}
        yield {
            **{k: v for k, v in self._plan.items() if k != "output"},
            "samples": samples,
            "shards": [{"name": s["name"], "samples": s["samples"]} for s in shards],
            "train_pattern": shard_files.brace_pattern(output, "train", len(names["train"])) if names["train"] else None,
            "validation_pattern": shard_files.brace_pattern(output, "valid", len(names["valid"])) if names["valid"] else None,
            "dead_letters": [{"name": d["name"], "rows": d["rows"]} for d in dead],
            "dead": sum(d["rows"] for d in dead),
            "token_counts": {str(t): n for t, n in sorted(tokens.items())},
        }


def write_vocab(metadata: dict[str, Any], output: str) -> dict[str, Any]:
    if metadata["samples"]["train"]:  # no training sample: run() reports it and marks nothing finished
        shard_files.write_vocab(output, metadata)
    return metadata


def plan_shards(args: argparse.Namespace) -> tuple[dict[str, Any], LengthLimits]:
    """Check the arguments and the source; load the CLIP once (fail fast, fingerprint)."""
    if bool(args.input) == bool(args.memory) or not args.output:
        raise DecapError("give --output and exactly one of --input or --memory (decap make-shards --help)")
    if min(args.samples_per_shard, args.batch_size) < 1 or args.validation_samples < 0:
        raise DecapError("--samples-per-shard and --batch-size must be at least 1, --validation-samples at least 0")
    plan: dict[str, Any] = {"output": args.output.rstrip("/"), "samples_per_shard": args.samples_per_shard,
                            "validation_samples": args.validation_samples, "emb_dtype": args.emb_dtype, "seed": args.seed}
    if args.memory:
        manifest = memory_files.read_manifest(args.memory)
        if args.clip_checkpoint and load_clip(args.clip_model, args.clip_checkpoint).fingerprint != manifest["clip_fingerprint"]:
            raise DecapError(f"memory {args.memory} was built with CLIP {manifest['clip_fingerprint']}, not {args.clip_checkpoint}")
        for shard in manifest["shards"]:
            url = f"{args.memory.rstrip('/')}/{shard['name']}"
            fs, path = fsspec.core.url_to_fs(url)
            if not fs.exists(path):
                raise DecapError(f"memory shard missing: {url}")
        context = manifest["token_limits"]["context_length"]
        plan.update(clip_model=manifest["clip_model"], clip_fingerprint=manifest["clip_fingerprint"], dim=manifest["dim"],
                    source={"memory": args.memory.rstrip("/"), "memory_rows": manifest["rows"]},
                    normalisation=manifest["normalisation"])
    else:
        clip = load_clip(args.clip_model, args.clip_checkpoint)
        context = clip.context_length
        plan.update(clip_model=args.clip_model, clip_fingerprint=clip.fingerprint, dim=clip.embed_dim,
                    source={"inputs": corpus.expand_inputs(args.input)},
                    normalisation=NormalisationOptions(lowercase=args.lowercase).describe())
    limits = LengthLimits(context_length=context, min_tokens=args.min_tokens, max_tokens=args.max_tokens)
    plan["token_limits"] = {"context_length": limits.context_length, "min_tokens": limits.min_tokens,
                            "max_tokens": limits.max_tokens}
    return plan, limits


def begin(output: str) -> None:
    """Make the directories and unmark an earlier set of shards there (a failed rerun is never read)."""
    fs, root = fsspec.core.url_to_fs(output)
    fs.makedirs(f"{root}/{ERRORS_DIR}", exist_ok=True)
    if fs.exists(f"{root}/{shard_files.VOCAB_FILE}"):
        fs.rm(f"{root}/{shard_files.VOCAB_FILE}")


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Make the shards; returns the ``vocab.json`` contents."""
    options = pipeline_options(argv)
    args = argparse.Namespace(**options.get_all_options())
    plan, limits = plan_shards(args)
    output = plan["output"]
    begin(output)

    with beam.Pipeline(options=options) as p:
        if args.memory:
            manifest = memory_files.read_manifest(args.memory)
            read = (
                p
                | "ListMemoryShards" >> beam.Create([f"{args.memory.rstrip('/')}/{s['name']}" for s in manifest["shards"]])
                | "SpreadMemoryShards" >> beam.Reshuffle()
                | "ReadMemory" >> beam.ParDo(ReadMemoryShard(plan["dim"], limits)).with_outputs(DEAD, main="samples")
            )
            samples, dead = read.samples, [read[DEAD]]
        else:
            distinct = p | "DistinctSentences" >> DistinctSentences(
                plan["source"]["inputs"], args.field, NormalisationOptions(lowercase=args.lowercase), limits,
                DEDUPE_GROUPS, args.batch_size)
            samples = (
                distinct["batches"]
                | "SpreadBatches" >> beam.Reshuffle()
                | "EncodeText" >> EncodeText(args.clip_model, args.clip_checkpoint)
                | "ToSamples" >> beam.FlatMap(encoded_to_samples)
            )
            dead = [distinct[DEAD]]
        buckets = (
            samples
            | "KeyByBucket" >> beam.Map(key_by_bucket, args.seed)
            | "GroupByBucket" >> beam.GroupByKey()
            | "SortBucket" >> beam.Map(sort_bucket, args.seed)
        )
        sizes = buckets | "BucketSizes" >> beam.Map(lambda bucket: (bucket[0], len(bucket[1])))
        written = (
            buckets
            | "PlaceSamples" >> beam.ParDo(PlaceSamples(args.samples_per_shard, args.validation_samples),
                                           sizes=beam.pvalue.AsDict(sizes))
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(WriteTrainShard(output, args.emb_dtype))
        )
        dead_files = (
            dead
            | "CollectDeadLetters" >> beam.Flatten()
            | "KeyDeadLetters" >> beam.Map(key_dead_letter, 1)
            | "GroupDeadLetters" >> beam.GroupByKey()
            | "WriteDeadLetters" >> beam.ParDo(WriteDeadLetters(output, 1))
        )
        _ = (
            p
            | "AfterAllShards" >> beam.Create([None])
            | "CompleteShards" >> beam.ParDo(CompleteShards(plan), shards=beam.pvalue.AsList(written),
                                             dead=beam.pvalue.AsList(dead_files))
            | "WriteVocab" >> beam.Map(write_vocab, output)
        )
    try:
        return shard_files.read_vocab(output)
    except DecapError:
        raise DecapError(f"no training sentences left for {output} (all held out, filtered or dead-lettered; "
                         f"see {output}/{ERRORS_DIR})") from None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        parser = argparse.ArgumentParser(
            prog="decap make-shards", epilog="--num-shards and --index are build-memory's and unused here. "
            "With --memory, --clip-checkpoint is only checked against the memory's fingerprint. "
            "Any other flag is a Beam pipeline option.")
        BuildMemoryOptions._add_argparse_args(parser)
        MakeShardsOptions._add_argparse_args(parser)
        parser.print_help()
        return
    meta = run(argv)
    train = [s for s in meta["shards"] if s["name"].startswith("train-")]
    print(f"train shards: {meta['samples']['train']} samples in {len(train)} shards, "
          f"validation: {meta['samples']['valid']} samples, dead letters: {meta['dead']}")
    validation = f" --validation '{meta['validation_pattern']}'" if meta["validation_pattern"] else " --validation URL"
    print(f"decap train-decoder --train '{meta['train_pattern']}'{validation} --out DIR")


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    try:
        main()
    except DecapError as error:
        sys.exit(f"make-shards: error: {error}")
