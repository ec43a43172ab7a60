"""Caption image archives or image embeddings in bulk: one input shard a unit of work and of commit.

Run as ``decap caption --input PATTERN... --output DIR --decoder DIR --memory DIR`` (or
``python -m pipelines.caption``). Inputs: img2dataset WebDataset tars, image files, Parquet of
``key`` + ``embedding``, or clip-retrieval's ``img_emb/`` + ``metadata/`` (``--input-format``,
auto by default). Each input shard is captioned in batches inside one worker, with CLIP, decoder,
memory and index loaded once per worker process, and committed with a marker; a rerun into the
same output captions only the shards without one (a killed run resumes, a grown archive gets only
its new shards), and refuses an output made with other models or settings.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from typing import Any, Iterator

import apache_beam as beam
import fsspec
import pyarrow.compute as pc
import torch
from apache_beam.utils.shared import Shared

from decap_core import captions_files, projection
from decap_core.bulk_caption import CaptionModels, CaptionSettings, caption_shard
from decap_core.caption_inputs import FORMATS, InputShard, plan_shards
from decap_core.devices import default_device
from decap_core.errors import DecapError
from decap_core.image_decoding import ImageLimits
from pipelines import options, steps


def build_parser() -> argparse.ArgumentParser:
    parser = options.new_parser("decap caption", __doc__)
    parser.add_argument("--input", action="extend", nargs="+", required=True,
                        help="fsspec globs or brace patterns of tars, image files, embedding Parquet, or "
                             "clip-retrieval output folders")
    parser.add_argument("--output", required=True, help="captions directory (fsspec URL)")
    parser.add_argument("--input-format", default="auto", choices=("auto", *FORMATS))
    parser.add_argument("--clip-model", default="toy-clip", help="open_clip architecture or toy config")
    parser.add_argument("--clip-checkpoint", default=None, help="CLIP weights (path or fsspec URL)")
    parser.add_argument("--decoder", required=True, help="directory with decoder.safetensors + decoder.json")
    parser.add_argument("--memory", required=True, help="support memory directory built by decap build-memory")
    parser.add_argument("--strategy", action="append", choices=projection.STRATEGIES,
                        help="projection strategy; repeat for several (one row per key and strategy; default pd)")
    parser.add_argument("--tau", type=float, default=projection.DEFAULT_TAU, help="pd's softmax temperature")
    parser.add_argument("--topk", type=int, default=None,
                        help="pd over the K nearest memory rows through the memory's faiss index (default: exact)")
    parser.add_argument("--beam-width", type=int, default=1, help="1: greedy decoding")
    parser.add_argument("--max-tokens", type=int, default=30, help="longest caption, in decoder tokens")
    parser.add_argument("--neighbors", type=int, default=5, help="top memory texts and weights stored per caption")
    parser.add_argument("--batch-size", type=int, default=256, help="images or embeddings per forward pass")
    parser.add_argument("--files-per-shard", type=int, default=1000, help="image files per input shard")
    parser.add_argument("--max-pixels", type=int, default=ImageLimits.max_pixels,
                        help="refuse images with more pixels (decompression bombs), read from the header")
    parser.add_argument("--min-side", type=int, default=ImageLimits.min_side, help="refuse images with a shorter side")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per worker process (default: torch's; with several worker "
                             "processes on few cores, 1 can be several times faster)")
    return parser


def settings_of(args: argparse.Namespace) -> CaptionSettings:
    """The run's settings, every value checked (before any model or record is read)."""
    if args.files_per_shard < 1:
        raise DecapError(f"--files-per-shard must be at least 1, got {args.files_per_shard}")
    if args.threads is not None and args.threads < 1:
        raise DecapError(f"--threads must be at least 1, got {args.threads}")
    limits = ImageLimits(max_pixels=args.max_pixels, min_side=args.min_side)
    return CaptionSettings(
        clip_model=args.clip_model, clip_checkpoint=args.clip_checkpoint, decoder=args.decoder.rstrip("/"),
        memory=args.memory.rstrip("/"), strategies=tuple(args.strategy or ["pd"]), tau=args.tau, topk=args.topk,
        beam_width=args.beam_width, max_tokens=args.max_tokens, neighbors=args.neighbors, batch_size=args.batch_size,
        device=str(default_device(args.device)), image_limits=limits)


class CaptionShards(beam.DoFn):
    """Captions whole input shards, with one set of models per worker process (a Beam ``Shared`` handle)."""

    def __init__(self, settings: CaptionSettings, output: str, signature: str, threads: int | None):
        self._settings, self._output, self._signature, self._threads = settings, output, signature, threads
        self._shared = Shared()
        self._models: CaptionModels | None = None

    def setup(self) -> None:
        if self._threads:
            torch.set_num_threads(self._threads)
        self._models = self._shared.acquire(lambda: CaptionModels.load(self._settings), tag=self._signature)

    def process(self, shard: dict[str, Any]) -> Iterator[dict[str, Any]]:
        marker = caption_shard(InputShard.from_dict(shard), self._models, self._settings, self._output,
                               self._signature, steps.count)
        steps.count("shards")
        logging.info("captioned %s: %d records, %d dead", marker.shard_id, marker.captioned, marker.dead)
        yield marker.to_json()


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Caption every input shard not yet committed in ``--output``; returns the manifest."""
    args, beam_options = options.parse(build_parser(), argv)
    settings = settings_of(args)
    output = args.output.rstrip("/")
    models = CaptionModels.load(settings)  # fail fast: missing files, fingerprint mismatches
    signature, fingerprints = models.signature(settings), models.fingerprints()
    del models  # the workers load their own
    earlier = captions_files.read_markers(output) if _is_directory(output) else []
    foreign = [m for m in earlier if m.signature != signature]
    if foreign:
        raise DecapError(f"{output} holds captions made with other models or settings (shard {foreign[0].shard_id}); "
                         "choose another --output, or rerun with the same models and settings")
    done = {marker.shard_id for marker in earlier}
    shards = plan_shards(args.input, args.input_format, args.files_per_shard,
                         {member for marker in earlier for member in marker.members})
    pending = [shard for shard in shards if shard.shard_id not in done]
    captions_files.begin(output)
    started = time.time()
    if pending:
        with steps.pipeline(beam_options) as pipeline:
            _ = (
                pipeline
                | "ListShards" >> beam.Create([shard.to_dict() for shard in pending])
                | "SpreadShards" >> beam.Reshuffle()
                | "CaptionShards" >> beam.ParDo(CaptionShards(settings, output, signature, args.threads))
            )
    manifest = summarise(output, args.input, shards, settings, fingerprints, signature,
                         {"captioned_shards": len(pending), "skipped_shards": len(shards) - len(pending),
                          "seconds": round(time.time() - started, 2)})
    captions_files.write_manifest(output, manifest)
    return manifest


def _is_directory(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    if fs.isfile(path):
        raise DecapError(f"--output {url} is a file, not a directory")
    return fs.isdir(path)


def summarise(output: str, patterns: list[str], shards: list[InputShard], settings: CaptionSettings,
              fingerprints: dict[str, str], signature: str, this_run: dict[str, Any]) -> dict[str, Any]:
    """The manifest: inputs, settings, fingerprints, every committed shard and the totals."""
    markers = captions_files.read_markers(output)
    missing = sorted({s.shard_id for s in shards} - {m.shard_id for m in markers})
    if missing:
        raise DecapError(f"input shard {missing[0]} has no committed output in {output} (the pipeline failed?)")
    reasons = sum((Counter(m.dead_by_reason) for m in markers), Counter())
    keys = captions_files.read_captions(output, ["key", "strategy"]) if any(m.rows for m in markers) else None
    repeated = 0
    if keys is not None:
        counts = pc.value_counts(pc.binary_join_element_wise(keys["key"], keys["strategy"], "\x00"))
        repeated = int(pc.sum(pc.greater(counts.field("counts"), 1)).as_py() or 0)
    return {
        "inputs": list(patterns),
        "settings": settings.describe(),
        "clip_model": settings.clip_model,
        **fingerprints,
        "signature": signature,
        "shards": [{"shard_id": m.shard_id, "input_url": m.input_url, "rows": m.rows, "captioned": m.captioned,
                    "dead": m.dead} for m in markers],
        "counts": {"read": sum(m.read for m in markers), "captioned": sum(m.captioned for m in markers),
                   "rows": sum(m.rows for m in markers), "dead": sum(m.dead for m in markers),
                   "dead_by_reason": dict(sorted(reasons.items())), "keys_in_several_shards": repeated},
        "this_run": this_run,
    }


def main(argv: list[str] | None = None) -> None:
    manifest = run(sys.argv[1:] if argv is None else argv)
    counts, this_run = manifest["counts"], manifest["this_run"]
    print(f"captions: {counts['rows']} rows ({counts['captioned']} records x {len(manifest['settings']['strategies'])} "
          f"strategies) in {len(manifest['shards'])} shards ({this_run['captioned_shards']} captioned now, "
          f"{this_run['skipped_shards']} already done); dead letters: {counts['dead']} {counts['dead_by_reason']}")
    if counts["keys_in_several_shards"]:
        print(f"warning: {counts['keys_in_several_shards']} keys appear in more than one input shard "
              "(their rows differ in 'source')", file=sys.stderr)


if __name__ == "__main__":
    from jobs import cli

    sys.exit(cli.main(["caption", *sys.argv[1:]]))
