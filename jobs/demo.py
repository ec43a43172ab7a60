"""The main job on the toy world, end to end: CLIP, decoder, memory, captions, quality table.

1. train the tiny CLIP on rendered image/caption pairs (or reuse the one in the work directory);
2. train the toy decoder on grammar text only;
3. build a support memory from other grammar text with the Beam pipeline (local runner);
4. render held-out images to files and caption them into Parquet with every strategy;
5. print object accuracy per strategy and a tau sweep, and plot the sweep; print what ``pd`` reaches
   from each image's own caption (a perfect CLIP), the ceiling the memory and decoder set.

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

from decap_core import metrics, projection, toyeval, toyworld
from decap_core.captioner import Captioner
from decap_core.checkpoint import load_decoder
from decap_core.clip import load_clip
from decap_core.memory import SupportMemory
from decap_core.memory_files import load_memory
from jobs import caption, evaluate, train_clip, train_decoder
from pipelines import build_memory

DEFAULT_TAUS = (0.003, 0.01, 0.02, 0.03, 0.05, 0.1)


def render_eval_images(scenes: list[toyworld.Scene], directory: str, size: int = 128) -> dict[str, frozenset]:
    """Write held-out scenes as PNG files; returns each file key's true object set."""
    fs, root = fsspec.core.url_to_fs(directory)
    fs.makedirs(root, exist_ok=True)
    truths = {}
    for index, scene in enumerate(scenes):
        key = f"eval-{index:05d}"
        with fs.open(f"{root}/{key}.png", "wb") as handle:
            toyworld.render(scene, size).save(handle, format="PNG")
        truths[key] = scene.object_set()
    return truths


def build_toy_memory(clip_path: str, seed: int, count: int, work: str) -> SupportMemory:
    """Write the memory split's sentences to a text file and build it with the Beam pipeline."""
    corpus_url = f"{work}/memory-corpus/sentences.txt"
    with fsspec.open(corpus_url, "w", auto_mkdir=True) as handle:
        handle.write("\n".join(toyworld.sentences(seed, "memory", count)) + "\n")
    manifest = build_memory.run([
        "--input", corpus_url, "--output", f"{work}/memory", "--clip-model", "toy-clip",
        "--clip-checkpoint", clip_path, "--num-shards", "2",
    ])
    print(f"      memory: {work}/memory ({manifest['rows']} distinct sentences, "
          f"{manifest['counts']['duplicates']} repeats dropped)")
    return load_memory(f"{work}/memory", manifest["clip_fingerprint"])


def run_demo(args: argparse.Namespace) -> dict:
    started = time.time()
    work = args.workdir.rstrip("/")
    fs, _ = fsspec.core.url_to_fs(work)
    clip_path = f"{work}/clip/toy-clip.safetensors"
    if args.fresh or not fs.exists(clip_path):
        print(f"[1/5] training the toy CLIP ({args.clip_steps} steps)")
        fs.makedirs(f"{work}/clip", exist_ok=True)
        report = train_clip.train_clip(clip_path, steps=args.clip_steps, seed=args.seed)
    else:
        print(f"[1/5] reusing the toy CLIP at {clip_path} (--fresh retrains)")
        report = toyeval.clip_report(load_clip("toy-clip", clip_path), args.seed)
    print(train_clip.format_report(report))
    clip = load_clip("toy-clip", clip_path)

    decoder_dir = f"{work}/decoder"
    if args.fresh or not fs.exists(f"{decoder_dir}/decoder.json"):
        print(f"[2/5] training the toy decoder on {args.decoder_sentences} grammar sentences")
        settings = train_decoder.TrainSettings(steps=args.decoder_steps, seed=args.seed)
        texts = toyworld.sentences(args.seed, "decoder", args.decoder_sentences)
        train_decoder.train_decoder(clip, texts, decoder_dir, "toy", settings)
    else:
        print(f"[2/5] reusing the decoder at {decoder_dir} (--fresh retrains)")
    decoder = load_decoder(decoder_dir)
    held_out = toyworld.sentences(args.seed + 3, "eval", 1000)

    print(f"[3/5] building a support memory from {args.memory_sentences} other grammar sentences (Beam)")
    memory = build_toy_memory(clip_path, args.seed, args.memory_sentences, work)
    captioner = Captioner(decoder, memory)
    if args.tau is None:
        validation = toyworld.scenes(args.seed + 4, "eval", args.validation_images)
        tau, recall = evaluate.choose_tau(captioner, toyeval.encode_scenes(clip, validation),
                                          [s.object_set() for s in validation], args.taus)
        print(f"      pd's tau, chosen among {', '.join(f'{t:g}' for t in args.taus)} on {len(validation)} "
              f"validation images (not the scored ones): {tau:g} (objects named {recall:.1%})")
    else:
        tau = args.tau
    captioner = replace(captioner, tau=tau)
    rebuilt = evaluate.reconstruction_scores(captioner, clip, held_out)
    print(f"decoder on {len(held_out)} held-out grammar sentences, decoded from their own embeddings: "
          f"same objects {rebuilt['same_objects']:.1%} (with sizes {rebuilt['same_sized_objects']:.1%}), "
          f"exact sentence {rebuilt['exact']:.1%}")

    print(f"[4/5] captioning {args.eval_images} held-out images")
    scenes = toyworld.scenes(args.seed, "eval", args.eval_images)
    truths = render_eval_images(scenes, f"{work}/images")
    result = caption.caption_images(clip, captioner, f"{work}/images/*.png", projection.STRATEGIES)
    out, errors = caption.write_result(result, f"{work}/captions.parquet")
    print(f"      captions: {out} ({len(result.rows)} rows), dead letters: {errors} ({len(result.dead_letters)})")

    print("[5/5] scoring captions against the held-out images' objects")
    by_strategy: dict[str, list] = {}
    for row in result.rows:
        by_strategy.setdefault(row["strategy"], []).append(row)
    table = []
    for strategy in projection.STRATEGIES:
        rows = by_strategy[strategy]
        scores = metrics.object_scores([r["caption"] for r in rows], [truths[r["key"]] for r in rows])
        table.append({"strategy": strategy, "tau": tau if strategy == "pd" else None, **scores})
    keys = sorted(truths)
    embeddings = clip.encode_images([toyworld.render(s, 128) for s in scenes])
    table += evaluate.evaluate(captioner, embeddings, [truths[k] for k in keys], strategies=(), taus=args.taus)
    coverage = evaluate.memory_coverage(memory.texts, list(truths.values()))
    ceiling = evaluate.caption_query_recall(captioner, clip, scenes, args.seed + 5)
    print(f"memory: {len(memory)} sentences; held-out images whose exact object set some memory sentence names: {coverage:.1%}")
    print(f"pd from each image's own caption instead of the image (a perfect CLIP; tau {tau:g}): objects named {ceiling:.1%}")
    print(evaluate.format_table(table))
    plot = f"{work}/tau_sweep.png"
    if "://" not in work:
        evaluate.plot_tau_sweep(table, plot)
        print(f"tau sweep plot: {plot}")
    summary = {"clip": report, "decoder_reconstruction": rebuilt, "memory_coverage": coverage,
               "memory_sentences": len(memory), "caption_query_recall": ceiling, "tau": tau, "table": table, "seconds": time.time() - started}
    with fsspec.open(f"{work}/report.json", "w") as handle:
        json.dump(summary, handle, indent=1)
    print(f"done in {summary['seconds'] / 60:.1f} min; report: {work}/report.json")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default=os.environ.get("DECAP_WORKDIR", "runs/demo"))
    parser.add_argument("--fresh", action="store_true", help="retrain CLIP and decoder even if present")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip-steps", type=int, default=800)
    parser.add_argument("--decoder-steps", type=int, default=2000)
    parser.add_argument("--decoder-sentences", type=int, default=30000)
    parser.add_argument("--memory-sentences", type=int, default=14000)
    parser.add_argument("--eval-images", type=int, default=500)
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
