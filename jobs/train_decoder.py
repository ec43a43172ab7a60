"""Train DeCap's decoder on text alone: rebuild each sentence from its own CLIP text embedding.

With ``--train`` it streams train shards (``decap make-shards``) through fsspec with several loader
workers and a shuffle buffer, validates on held-out shards, checkpoints every N steps and resumes
(``--resume``), on the CPU, one GPU (bf16 autocast) or several under ``torchrun`` (DDP: NCCL on
GPUs, gloo on CPUs; each rank reads its own shards). Without ``--train`` it trains on toy-world
sentences encoded here by ``--clip-checkpoint``. The training flags mean the same on both paths.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from decap_core.clip import load_clip
from decap_core.decoder import DecoderConfig
from decap_core.errors import DecapError
from decap_core.toy import world as toyworld
from decap_core.training import ShardSettings, TrainSettings, train_from_shards, train_on_texts
from jobs.flags import add_flags, changed_flags, settings_from

train_decoder = train_on_texts  # the in-process trainer under the name the demo calls
SHARD_ONLY = ("train", "clip_fingerprint")  # ShardSettings fields that are not flags of their own


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="decap train-decoder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", help="brace pattern or glob of train shards (make-shards prints the pattern)")
    parser.add_argument("--out", required=True,
                        help="directory URL for decoder.safetensors + decoder.json and checkpoints")
    parser.add_argument("--clip-model", default="toy-clip")
    parser.add_argument("--clip-checkpoint", help="without --train: the CLIP that encodes the toy sentences; "
                                                  "with it: check the shards were made with it")
    parser.add_argument("--config", default="toy", help="decoder config: toy or official")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; on a busy machine 1 can be several times faster)")
    parser.add_argument("--toy-sentences", type=int, default=30000,
                        help="without --train: toy-world sentences encoded here")
    add_flags(parser, TrainSettings)
    add_flags(parser, ShardSettings, skip=SHARD_ONLY)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = settings_from(TrainSettings, args)  # both paths train with these
    DecoderConfig.named(args.config)  # an unknown config stops here, before any shard is read or sentence encoded
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train:
        fingerprint = load_clip(args.clip_model, args.clip_checkpoint).fingerprint if args.clip_checkpoint else None
        summary = train_from_shards(settings_from(ShardSettings, args, clip_fingerprint=fingerprint), args.out,
                                    args.config, settings)
        if int(os.environ.get("RANK", "0")) == 0:
            final = summary["validation"][-1]
            print(f"decoder saved to {args.out} after {summary['steps']} steps: validation loss {final['loss']:.4f}, "
                  f"token accuracy {final['token_accuracy']:.3f}, exact {final['exact']:.1%}")
        return
    ignored = changed_flags(ShardSettings, args, skip=SHARD_ONLY)
    if ignored:
        verb = "apply" if len(ignored) > 1 else "applies"
        raise DecapError(f"{', '.join(ignored)} {verb} only to training from shards (--train)")
    if not args.clip_checkpoint:
        raise DecapError("give --train SHARDS, or --clip-checkpoint to train on toy-world sentences encoded here")
    clip = load_clip(args.clip_model, args.clip_checkpoint)
    texts = toyworld.sentences(settings.seed, "decoder", args.toy_sentences)
    bundle = train_on_texts(clip, texts, args.out, args.config, settings)
    print(f"decoder saved to {args.out} ({bundle.model.num_parameters():,} parameters, vocabulary {len(bundle.vocab)})")


if __name__ == "__main__":
    try:
        main()
    except DecapError as error:
        sys.exit(f"train-decoder: error: {error}")
