"""Make the decoder's train shards: text corpora or a built support memory -> WebDataset tars.

Run as ``decap make-shards ...`` or ``python -m pipelines.make_train_shards ...``; every other flag
is a Beam pipeline option (without ``--runner``: the in-process ``FnApiRunner``, no network).

From corpora (``--input``) it takes build-memory's steps: read, normalise/filter, dedupe, encode
with the CLIP text tower. From a memory (``--memory``) it takes the memory's sentences and
embeddings and only tokenises. Either way every sentence gets a shuffle key (a hash of seed and
id), so the order, the split and the bytes of every shard are the same on every rerun: the first
``--validation-samples`` in that order go to ``valid-NNNNNN.tar``, the rest to
``train-NNNNNN.tar``, ``--samples-per-shard`` each. ``vocab.json`` (token counts, CLIP
fingerprint, shard list) is written last; a rerun first removes it, and at the end deletes shards
of an earlier run that this one did not write.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from collections import Counter
from typing import Any, Iterable, Iterator

import apache_beam as beam
import fsspec
import numpy as np

from decap_core import artifacts, corpus, memory_files, spill, train_shards
from decap_core.clip import load_clip
from decap_core.dead_letters import DIRECTORY as ERRORS_DIR
from decap_core.dead_letters import DeadLetter
from decap_core.errors import DecapError
from decap_core.textnorm import LengthLimits
from decap_core.train_shards import Sample, ShardFile, ShardsManifest, ShardsPlan
from decap_core.vocab import clip_token_ids
from pipelines import dead_letters, options, steps
from pipelines.common import (
    DEAD,
    GROUPS,
    DistinctSentences,
    EncodeText,
    add_corpus_flags,
    group_batches,
    limits_of,
    normalisation_of,
)
from pipelines.steps import Gather, Split, count

DEDUPE_GROUPS = 64  # parallelism of the global dedupe (each group must fit in a worker)
BUCKET_DIGITS = 3  # samples are ranked within 16**3 buckets of the shuffle key
SAMPLES = "samples"


def build_parser() -> argparse.ArgumentParser:
    parser = options.new_parser(
        "decap make-shards", "Write the decoder's WebDataset train shards (a Beam pipeline) from text corpora\n"
        "(--input) or a built support memory (--memory). With --memory, sentences, embeddings and CLIP are\n"
        "the memory's: --clip-checkpoint is only checked against its fingerprint, and --field, --lowercase,\n"
        "--clip-model and --batch-size are --input's.")
    add_corpus_flags(parser)
    parser.add_argument("--memory", help="a built support memory to take sentences and embeddings from, "
                                         "instead of --input (no second encoding)")
    parser.add_argument("--output", help="fsspec URL of the shard directory")
    parser.add_argument("--samples-per-shard", type=int, default=5000)
    parser.add_argument("--validation-samples", type=int, default=1000, help="held out into valid-*.tar")
    parser.add_argument("--emb-dtype", choices=sorted(train_shards.EMB_DTYPES), default="float16")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle order")
    return parser


def shuffle_key(seed: int, sentence_id: str) -> str:
    return hashlib.sha256(f"{seed}:{sentence_id}".encode()).hexdigest()


def encoded_to_samples(encoded: tuple[Any, list[tuple], np.ndarray]) -> Iterator[Sample]:
    _, rows, embeddings = encoded
    for row, embedding in zip(rows, embeddings):
        sentence = corpus.Sentence._make(row)
        yield Sample(sentence.id, sentence.text, np.asarray(sentence.tokens, np.int32), embedding)


class ReadMemoryShard(beam.DoFn):
    """One Parquet shard of a support memory -> ``(SAMPLES, Sample)`` (tokenised here, embeddings
    as stored) and ``(DEAD, letter)`` for sentences outside the token limits."""

    def __init__(self, dim: int, limits: LengthLimits):
        self._dim, self._limits = dim, limits

    def process(self, url: str) -> Iterator[tuple[str, Any]]:
        rows = memory_files.read_shard(url, self._dim)
        count("read", len(rows.ids))
        for key, text, embedding, source in zip(rows.ids, rows.texts, rows.embeddings, rows.sources):
            tokens = clip_token_ids(text)
            problem = self._limits.problem(len(tokens))
            if problem is not None:
                yield DEAD, tuple(DeadLetter(source, "filter", problem, f"{len(tokens)} tokens"))
            else:
                yield SAMPLES, Sample(key, text, np.asarray(tokens, np.int32), embedding)


def key_by_bucket(sample: Sample, seed: int) -> tuple[str, Sample]:
    return shuffle_key(seed, sample.key)[:BUCKET_DIGITS], sample


def bucket_offsets(gathered: dict[str, list[tuple[str, int]]]) -> Iterator[tuple[str, int]]:
    """``(bucket, samples in the buckets before it)``: buckets are ranges of the shuffle key."""
    offset = 0
    for bucket, size in sorted(gathered["sizes"]):
        yield bucket, offset
        offset += size


class PlaceSamples(beam.DoFn):
    """A bucket's samples and offset -> ``((split, shard), (rank, sample))``: a sample's global rank
    is its bucket's offset plus its place in the bucket, in shuffle-key order."""

    def __init__(self, per_shard: int, validation: int, seed: int):
        self._per_shard, self._validation, self._seed = per_shard, validation, seed

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        _, joined = element
        (offset,) = joined["offset"]
        samples = sorted(joined["samples"], key=lambda sample: shuffle_key(self._seed, sample.key))
        for place, sample in enumerate(samples):
            rank = offset + place
            split, position = ("valid", rank) if rank < self._validation else ("train", rank - self._validation)
            yield (split, position // self._per_shard), (rank, sample)


class WriteTrainShard(beam.DoFn):
    """One shard's samples, in rank order -> ``SPLIT-NNNNNN.tar``; yields its name, size and token counts."""

    def __init__(self, output: str, emb_dtype: str):
        self._output, self._emb_dtype = output, emb_dtype

    def process(self, element: tuple[tuple[str, int], Iterable[tuple[int, Sample]]]) -> Iterator[dict]:
        (split, index), ranked = element
        samples = [sample for _, sample in sorted(ranked, key=lambda item: item[0])]
        name = train_shards.shard_name(split, index)
        train_shards.write_shard(f"{self._output}/{name}", samples, self._emb_dtype)
        tokens: Counter = Counter()
        if split == "train":
            for sample in samples:
                tokens.update(int(t) for t in sample.tokens)
        count(f"{split}_samples", len(samples))
        yield {"name": name, "split": split, "samples": len(samples), "token_counts": dict(tokens)}


def complete_shards(gathered: dict[str, list[dict]], plan: ShardsPlan, output: str) -> ShardsManifest:
    """After every shard: delete stale files, total the counts: the ``vocab.json`` contents."""
    shards = sorted(gathered["shards"], key=lambda shard: shard["name"])
    names = {split: [s["name"] for s in shards if s["split"] == split] for split in train_shards.SPLITS}
    for split in train_shards.SPLITS:
        artifacts.remove_stale(output, f"{split}-*.tar", names[split])
    letters, _ = dead_letters.finish(output, gathered["dead"])
    spill.remove_spill(output)
    tokens: Counter = Counter()
    for shard in shards:
        tokens.update(shard["token_counts"])

    def pattern(split: str) -> str | None:
        return train_shards.brace_pattern(output, split, len(names[split])) if names[split] else None

    return ShardsManifest(
        plan=plan,
        samples={split: sum(s["samples"] for s in shards if s["split"] == split) for split in train_shards.SPLITS},
        shards=tuple(ShardFile(s["name"], s["samples"]) for s in shards),
        train_pattern=pattern("train"),
        validation_pattern=pattern("valid"),
        dead_letters=letters,
        dead=sum(letter.rows for letter in letters),
        token_counts=dict(sorted(tokens.items())),
    )


def write_vocab(manifest: ShardsManifest, output: str) -> None:
    if manifest.samples["train"]:  # no training sample: run() reports it and marks nothing finished
        train_shards.write_vocab(output, manifest)


def plan_shards(args: argparse.Namespace) -> tuple[ShardsPlan, list[str]]:
    """Check the arguments and the source; load the CLIP once (fail fast, fingerprint).

    Returns the plan and the files to read: the memory's shards, or the corpus files.
    """
    if bool(args.input) == bool(args.memory) or not args.output:
        raise DecapError("give --output and exactly one of --input or --memory (decap make-shards --help)")
    if min(args.samples_per_shard, args.batch_size) < 1 or args.validation_samples < 0:
        raise DecapError("--samples-per-shard and --batch-size must be at least 1, --validation-samples at least 0")
    if args.memory:
        manifest = memory_files.read_manifest(args.memory)
        built = manifest.plan
        if (args.clip_checkpoint
                and load_clip(args.clip_model, args.clip_checkpoint).fingerprint != built.clip_fingerprint):
            raise DecapError(f"memory {args.memory} was built with CLIP {built.clip_fingerprint}, "
                             f"not {args.clip_checkpoint}")
        files = memory_files.shard_urls(args.memory, manifest)
        for url in files:
            fs, path = fsspec.core.url_to_fs(url)
            if not fs.exists(path):
                raise DecapError(f"memory shard missing: {url}")
        clip = dict(clip_model=built.clip_model, clip_fingerprint=built.clip_fingerprint, dim=built.dim,
                    normalisation=built.normalisation)
        context = built.token_limits.context_length
        source: dict[str, Any] = {"memory": args.memory.rstrip("/"), "memory_rows": manifest.rows}
    else:
        loaded = load_clip(args.clip_model, args.clip_checkpoint)
        clip = dict(clip_model=args.clip_model, clip_fingerprint=loaded.fingerprint, dim=loaded.embed_dim,
                    normalisation=normalisation_of(args).describe())
        context = loaded.context_length
        files = corpus.expand_inputs(args.input)
        source = {"inputs": files}
    plan = ShardsPlan(**clip, token_limits=limits_of(args, context), source=source,
                      samples_per_shard=args.samples_per_shard, validation_samples=args.validation_samples,
                      emb_dtype=args.emb_dtype, seed=args.seed)
    return plan, files


def make(argv: list[str] | None = None) -> ShardsManifest:
    """Make the shards; returns the ``vocab.json`` contents."""
    args, beam_options = options.parse(build_parser(), argv)
    plan, files = plan_shards(args)
    output = args.output.rstrip("/")
    train_shards.begin(output)

    with steps.pipeline(beam_options) as p:
        if args.memory:
            read = (
                p
                | "ListMemoryShards" >> beam.Create(files)
                | "SpreadMemoryShards" >> beam.Reshuffle()
                | "ReadMemory" >> beam.ParDo(ReadMemoryShard(plan.dim, plan.token_limits))
                | "SplitRead" >> Split(SAMPLES, DEAD)
            )
            samples, dead = read[SAMPLES], read[DEAD]
        else:
            distinct = p | "DistinctSentences" >> DistinctSentences(
                files, args.field, normalisation_of(args), plan.token_limits, DEDUPE_GROUPS,
                spill.spill_dir(output))
            samples = (
                distinct[GROUPS]
                | "Batches" >> beam.FlatMap(group_batches, args.batch_size)
                | "SpreadBatches" >> beam.Reshuffle()
                | "EncodeText" >> EncodeText(args.clip_model, args.clip_checkpoint)
                | "ToSamples" >> beam.FlatMap(encoded_to_samples)
            )
            dead = distinct[DEAD]
        keyed = samples | "KeyByBucket" >> beam.Map(key_by_bucket, args.seed)
        offsets = (
            {"sizes": keyed | "OnePerSample" >> beam.Map(lambda kv: (kv[0], 1))
             | "BucketSizes" >> beam.CombinePerKey(sum)}
            | "AllBucketSizes" >> Gather()
            | "BucketOffsets" >> beam.FlatMap(bucket_offsets)
        )
        written = (
            {"samples": keyed, "offset": offsets}
            | "JoinOffsets" >> beam.CoGroupByKey()
            | "PlaceSamples" >> beam.ParDo(PlaceSamples(args.samples_per_shard, args.validation_samples, args.seed))
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(WriteTrainShard(output, args.emb_dtype))
        )
        dead_files = dead | "DeadLetters" >> dead_letters.WriteDeadLetters(output, 1)
        _ = (
            {"shards": written, "dead": dead_files}
            | "AfterAllShards" >> Gather()
            | "CompleteShards" >> beam.Map(complete_shards, plan, output)
            | "WriteVocab" >> beam.Map(write_vocab, output)
        )
    try:
        return train_shards.read_vocab(output)
    except DecapError:
        raise DecapError(f"no training sentences left for {output} (all held out, filtered or dead-lettered; "
                         f"see {output}/{ERRORS_DIR})") from None


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """``make``, with the ``vocab.json`` contents as JSON."""
    return make(argv).to_json()


def main(argv: list[str] | None = None) -> None:
    manifest = make(sys.argv[1:] if argv is None else argv)
    train = [s for s in manifest.shards if s.name.startswith("train-")]
    print(f"train shards: {manifest.samples['train']} samples in {len(train)} shards, "
          f"validation: {manifest.samples['valid']} samples, dead letters: {manifest.dead}")
    valid_pattern = manifest.validation_pattern
    validation = f" --validation '{valid_pattern}'" if valid_pattern else " --validation URL"
    print(f"decap train-decoder --train '{manifest.train_pattern}'{validation} --out DIR")


if __name__ == "__main__":
    from jobs import cli

    sys.exit(cli.main(["make-shards", *sys.argv[1:]]))
