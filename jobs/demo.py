"""The main job on the toy world, end to end, through the real chain of pipelines and trainers.

1. train the tiny CLIP on rendered image/caption pairs (or reuse the one in the work directory);
2. build a support memory from grammar text with ``decap build-memory`` (Beam, local runner);
3. write the decoder's train shards from other grammar text with ``decap make-shards`` (Beam) and
   train the toy decoder from them with ``decap train-decoder`` (text only);
4. pack held-out images into WebDataset tars in img2dataset's layout and caption them with
   ``decap caption`` (Beam) under every strategy: images that vary as the CLIP's training images do
   (``--nuisances``), and an out-of-distribution set (``--ood-nuisances``: values outside those
   ranges and a nuisance family that training never used);
5. print object accuracy per strategy on both sets side by side and a tau sweep, and plot the sweep;
   print what ``pd`` reaches from each image's own caption (a perfect CLIP), the ceiling the memory
   and decoder set.

``pd``'s temperature is chosen on validation images drawn apart from the scored ones, unless
``--tau`` fixes it.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

import fsspec

from decap_core import captions_files, projection
from decap_core.captioner import Captioner
from decap_core.clip import load_clip
from decap_core.clip_training import ClipTrainSettings
from decap_core.decoder_files import load_decoder
from decap_core.memory import SupportMemory
from decap_core.memory_files import load_memory
from decap_core.toy import archive as toy_archive
from decap_core.toy import evaluation, looks, plots, zero_shot
from decap_core.toy import world as toyworld
from jobs import report as html_report
from jobs import train_clip, train_decoder
from pipelines import build_memory, caption, make_train_shards

DEFAULT_TAUS = (0.003, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1)
DECODER_STEPS = 1500


def write_sentences(url: str, texts: list[str]) -> str:
    with fsspec.open(url, "w", auto_mkdir=True) as handle:
        handle.write("\n".join(texts) + "\n")
    return url


def build_toy_memory(clip_path: str, seed: int, count: int, work: str) -> SupportMemory:
    """Build the memory from the memory split's sentences with the Beam pipeline."""
    corpus_url = write_sentences(f"{work}/memory-corpus/sentences.txt", toyworld.sentences(seed, "memory", count))
    manifest = build_memory.run([
        "--input", corpus_url, "--output", f"{work}/memory", "--clip-model", "toy-clip",
        "--clip-checkpoint", clip_path, "--num-shards", "2",
    ])
    print(f"      memory: {work}/memory ({manifest['rows']} distinct sentences, "
          f"{manifest['counts']['duplicates']} repeats dropped)")
    return load_memory(f"{work}/memory", manifest["clip_fingerprint"])


def train_toy_decoder(clip_path: str, args: argparse.Namespace, work: str) -> None:
    """make-shards over the decoder split's sentences, then the shard trainer."""
    corpus_url = write_sentences(f"{work}/decoder-corpus/sentences.txt",
                                 toyworld.sentences(args.seed, "decoder", args.decoder_sentences))
    shards = make_train_shards.run([
        "--input", corpus_url, "--output", f"{work}/shards", "--clip-model", "toy-clip",
        "--clip-checkpoint", clip_path, "--samples-per-shard", "5000", "--seed", str(args.seed),
    ])
    print(f"      train shards: {shards['train_pattern']} ({shards['samples']['train']} sentences, "
          f"{shards['samples']['valid']} held out)")
    train_decoder.main([
        "--train", shards["train_pattern"], "--out", f"{work}/decoder", "--config", "toy",
        "--steps", str(args.decoder_steps), "--lr", str(args.decoder_lr), "--seed", str(args.seed),
        "--workers", "1", "--validate-every", str(args.decoder_steps), "--checkpoint-every", str(args.decoder_steps),
    ])


def caption_held_out(name: str, scenes: list[toyworld.Scene], work: str, clip_path: str, decoder_dir: str,
                     tau: float, seed: int) -> list[dict]:
    """Pack one held-out set into tars, caption it under every strategy with the pipeline, and score the rows."""
    suffix = "" if name == "in distribution" else "-ood"
    fs, _ = fsspec.core.url_to_fs(work)
    archive, captions_dir = f"{work}/archive{suffix}", f"{work}/captions{suffix}"
    for directory in (archive, captions_dir):  # new models each run: the pipeline refuses to mix them
        if fs.exists(directory):
            fs.rm(directory, recursive=True)
    truths = toy_archive.write_scene_shards(scenes, archive, per_shard=100, seed=seed + 6)
    manifest = caption.run([
        "--input", f"{archive}/*.tar", "--output", captions_dir, "--clip-model", "toy-clip",
        "--clip-checkpoint", clip_path, "--decoder", decoder_dir, "--memory", f"{work}/memory", "--tau", str(tau),
        *[part for strategy in projection.STRATEGIES for part in ("--strategy", strategy)],
    ])
    counts = manifest["counts"]
    print(f"      {name}: {captions_dir} ({counts['rows']} rows from {len(manifest['shards'])} tars), "
          f"dead letters: {counts['dead']}")
    rows = captions_files.read_captions(captions_dir, ["key", "strategy", "caption"]).to_pylist()
    return evaluation.score_rows(rows, truths, projection.STRATEGIES, tau)


def run_demo(args: argparse.Namespace) -> dict:
    started = time.time()
    work = args.workdir.rstrip("/")
    fs, _ = fsspec.core.url_to_fs(work)
    clip_path = f"{work}/clip/toy-clip.safetensors"
    if args.fresh or not fs.exists(clip_path):
        print(f"[1/5] training the toy CLIP ({args.clip_steps} steps)")
        fs.makedirs(f"{work}/clip", exist_ok=True)
        report = train_clip.train_clip(clip_path, steps=args.clip_steps, seed=args.seed, nuisances=args.nuisances)
    else:
        print(f"[1/5] reusing the toy CLIP at {clip_path} (--fresh retrains)")
        report = zero_shot.clip_report(load_clip("toy-clip", clip_path), args.seed, nuisances=args.nuisances)
    print(train_clip.format_report(report))
    clip = load_clip("toy-clip", clip_path)

    print(f"[2/5] building a support memory from {args.memory_sentences} grammar sentences (build-memory, Beam)")
    memory = build_toy_memory(clip_path, args.seed, args.memory_sentences, work)
    decoder_dir = f"{work}/decoder"
    if args.fresh or not fs.exists(f"{decoder_dir}/decoder.json"):
        print(f"[3/5] training the toy decoder on {args.decoder_sentences} other grammar sentences "
              "(make-shards, Beam; then train-decoder from the shards)")
        if fs.exists(decoder_dir):
            fs.rm(decoder_dir, recursive=True)  # --fresh: the trainer refuses a directory with checkpoints
        train_toy_decoder(clip_path, args, work)
    else:
        print(f"[3/5] reusing the decoder at {decoder_dir} (--fresh retrains)")
    captioner = Captioner(load_decoder(decoder_dir), memory)
    if args.tau is None:
        validation = toyworld.scenes(args.seed + 4, "eval", args.validation_images, nuisances=args.nuisances)
        tau, recall = evaluation.choose_tau(captioner, zero_shot.encode_scenes(clip, validation),
                                          [s.object_set() for s in validation], args.taus)
        print(f"      pd's tau, chosen among {', '.join(f'{t:g}' for t in args.taus)} on {len(validation)} "
              f"validation images (not the scored ones): {tau:g} (objects named {recall:.1%})")
    else:
        tau = args.tau
    captioner = replace(captioner, tau=tau)
    held_out = toyworld.sentences(args.seed + 3, "eval", 1000)
    rebuilt = evaluation.reconstruction_scores(captioner, clip, held_out)
    print(f"decoder on {len(held_out)} held-out grammar sentences, decoded from their own embeddings: "
          f"same objects {rebuilt['same_objects']:.1%} (with sizes {rebuilt['same_sized_objects']:.1%}), "
          f"exact sentence {rebuilt['exact']:.1%}")

    sets = {"in distribution": args.nuisances, "out of distribution": args.ood_nuisances}
    print(f"[4/5] captioning {args.eval_images} held-out images of each set from WebDataset tars (caption, Beam): "
          + ", ".join(f"{name} ({setting})" for name, setting in sets.items()))
    scenes = {name: toyworld.scenes(args.seed + 7 * number, "eval", args.eval_images, nuisances=setting)
              for number, (name, setting) in enumerate(sets.items())}
    tables = {name: caption_held_out(name, scenes[name], work, clip_path, decoder_dir, tau, args.seed)
              for name in sets}
    print("[5/5] scoring captions against the held-out images' objects")
    in_distribution = scenes["in distribution"]
    embeddings = zero_shot.encode_scenes(clip, in_distribution)
    tables["in distribution"] += evaluation.evaluate(captioner, embeddings, [s.object_set() for s in in_distribution],
                                                     strategies=(), taus=args.taus)
    coverage = evaluation.memory_coverage(memory.texts, [s.object_set() for s in in_distribution])
    ceiling = evaluation.caption_query_recall(captioner, clip, in_distribution, args.seed + 5)
    print(f"memory: {len(memory)} sentences; held-out images whose exact object set some memory sentence names: "
          f"{coverage:.1%}")
    print(f"pd from each image's own caption instead of the image (a perfect CLIP; tau {tau:g}): "
          f"objects named {ceiling:.1%}")
    print("strategy table: the first four rows from the pipeline's captions, the other taus in process "
          "(in distribution only)")
    print(evaluation.format_side_by_side(tables))
    table = tables["in distribution"]
    plot = f"{work}/tau_sweep.png"
    if "://" not in work:
        plots.plot_tau_sweep(table, plot)
        print(f"tau sweep plot: {plot}")
    summary = {"clip": report, "decoder_reconstruction": rebuilt, "memory_coverage": coverage,
               "memory_sentences": len(memory), "caption_query_recall": ceiling, "tau": tau, "table": table,
               "ood_table": tables["out of distribution"], "nuisances": sets, "captions": f"{work}/captions",
               "ood_captions": f"{work}/captions-ood", "seconds": time.time() - started}
    with fsspec.open(f"{work}/report.json", "w") as handle:
        json.dump(summary, handle, indent=1)
    print(f"done in {summary['seconds'] / 60:.1f} min; report: {work}/report.json")
    html_report.run([  # prints "report: {work}/report/report.html"
        "--captions", f"{work}/captions", "--clip-checkpoint", clip_path, "--memory", f"{work}/memory",
        "--decoder", decoder_dir, "--toy-truth", f"{work}/archive/*.parquet", "--output", f"{work}/report",
        "--taus", ",".join(f"{t:g}" for t in args.taus), "--seed", str(args.seed),
    ])
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default=os.environ.get("DECAP_WORKDIR", "runs/demo"))
    parser.add_argument("--fresh", action="store_true", help="retrain CLIP and decoder even if present")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nuisances", default="web", choices=list(looks.NUISANCES),
                        help="how the CLIP's training images and the in-distribution held-out images vary")
    parser.add_argument("--ood-nuisances", default="web-ood", choices=list(looks.NUISANCES),
                        help="how the out-of-distribution held-out images vary")
    parser.add_argument("--clip-steps", type=int, default=ClipTrainSettings.steps)  # the test fixture's CLIP
    parser.add_argument("--decoder-steps", type=int, default=DECODER_STEPS)
    parser.add_argument("--decoder-lr", type=float, default=1e-3)
    parser.add_argument("--decoder-sentences", type=int, default=30000)
    parser.add_argument("--memory-sentences", type=int, default=14000)
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--tau", type=float, default=None,
                        help="pd's temperature (default: the best of --taus on --validation-images images)")
    parser.add_argument("--validation-images", type=int, default=1500)
    parser.add_argument("--taus", type=lambda s: [float(x) for x in s.split(",")], default=list(DEFAULT_TAUS))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="decap demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run_demo(parser.parse_args(argv))


if __name__ == "__main__":
    main()
