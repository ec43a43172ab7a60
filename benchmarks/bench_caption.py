"""Bulk captioning: the caption pipeline over image embeddings in Parquet against the same work in a plain loop.

Inputs: ``images`` image-like embeddings in Parquet files of ``rows_per_file`` rows (``key`` string,
``embedding`` list<float32>), one file an input shard. Each is a random memory text embedding
moved by one fixed random vector (the modality gap) and its own Gaussian noise, then renormalised,
so it sits near the memory's texts but apart from them, as CLIP's image embeddings do.

Models: the demo's trained toy CLIP, decoder and memory (``runs/demo``) when they are complete,
else random-weights ones built here (the toy CLIP's seeded weights, a memory of the demo's size by
the build-memory pipeline, a random toy decoder). A random decoder never picks the end token, so
every caption runs to 30 tokens; a trained one stops at its end token (the output gives tokens per caption).

Each side runs in a fresh process and reports its peak RSS; wall time includes loading the models:

- pipeline: ``pipelines.caption.run`` on the in-process FnApiRunner, strategy pd (exact), defaults;
- loop: ``CaptionModels.load`` once, then ``caption_shard`` for each input file in a for-loop (the
  same library work: read, check, project, decode, CLIP-score, write, commit), no Beam, over the
  first files up to ``loop_images`` images (default 200,000). Its captions must equal the pipeline's.

Decoding's share of the machine's peak counts 2 FLOPs per decoder weight per generated token (rows
kept in the batch after their end token are not counted) against the best of a few fp32 2048^3
``torch.matmul`` in the same run. ``DECAP_BENCH_CAPTION_IMAGES`` (and ``..._LOOP_IMAGES``) set the
sizes under ``benchmarks.run``; ``python -m benchmarks.bench_caption --images 20000`` is a quick check.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from decap_core import captions_files  # noqa: E402
from decap_core.memory_files import load_memory  # noqa: E402

DEMO = Path("runs/demo")
ROWS_PER_FILE = 50_000
LOOP_IMAGES = 200_000  # the loop captions the first files up to this many images (the ratio is per image)
GAP_LENGTH = 0.7  # length of the fixed offset; with the noise, cosine to the source text is about 0.71
NOISE_LENGTH = 0.7  # expected length of each row's Gaussian noise
MEMORY_SENTENCES = 14_000  # the demo's memory corpus
MATMUL_SIZE = 2048


def demo_models(copy_to: Path, root: Path = DEMO) -> dict[str, str] | None:
    """A copy of the demo's trained models when all three are complete (a demo rerun replaces them), else None."""
    clip, decoder, memory = root / "clip" / "toy-clip.safetensors", root / "decoder", root / "memory"
    if not (clip.exists() and (decoder / "decoder.json").exists() and (memory / "manifest.json").exists()):
        return None
    copy_to.mkdir(parents=True)
    shutil.copy(clip, copy_to / clip.name)
    for directory in (decoder, memory):
        shutil.copytree(directory, copy_to / directory.name)
    return {"clip": str(copy_to / clip.name), "decoder": str(copy_to / "decoder"), "memory": str(copy_to / "memory"),
            "kind": "the demo's trained toy CLIP, decoder and memory (runs/demo)"}


def random_models(directory: Path) -> dict[str, str]:
    """A random-weights toy CLIP's memory (build-memory pipeline) and a random toy decoder."""
    from tests.caption_fixtures import build_memory_and_decoder

    directory.mkdir(parents=True, exist_ok=True)
    built = build_memory_and_decoder(directory, sentences=MEMORY_SENTENCES)
    return {**built, "kind": "random weights: toy CLIP `toy-clip:random`, a random toy decoder (30 tokens a caption), "
                             f"a memory of {MEMORY_SENTENCES:,} grammar sentences built by build-memory"}


def write_inputs(directory: Path, memory_dir: str, images: int, rows_per_file: int, seed: int = 0) -> tuple[int, float]:
    """Parquet files of image-like embeddings; returns their width and mean cosine to the memory rows they came from."""
    memory = load_memory(memory_dir).embeddings.numpy()
    rng = np.random.default_rng(seed)
    dim = memory.shape[1]
    gap = rng.standard_normal(dim).astype(np.float32)
    gap *= GAP_LENGTH / np.linalg.norm(gap)
    cosines = []
    for number, start in enumerate(range(0, images, rows_per_file)):
        count = min(rows_per_file, images - start)
        source = memory[rng.integers(len(memory), size=count)]
        noise = rng.standard_normal((count, dim)).astype(np.float32) * (NOISE_LENGTH / np.sqrt(dim))
        vectors = source + gap + noise
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        cosines.append(float((vectors * source).sum(axis=1).mean()) * count)
        keys = pa.array([f"img{start + i:09d}" for i in range(count)])
        embedding = pa.ListArray.from_arrays(pa.array(np.arange(0, (count + 1) * dim, dim, dtype=np.int32)),
                                             pa.array(vectors.reshape(-1)))
        pq.write_table(pa.table({"key": keys, "embedding": embedding}), directory / f"emb-{number:05d}.parquet")
    return dim, sum(cosines) / images


def matmul_peak(size: int = MATMUL_SIZE, tries: int = 5) -> float:
    """Best fp32 ``torch.matmul`` rate of ``size``^3 products, in FLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(tries):
        started = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def caption_with_pipeline(inputs: Path, output: Path, models: dict[str, str]) -> dict:
    from pipelines import caption

    manifest = caption.run([
        "--input", str(inputs / "*.parquet"), "--output", str(output), *_clip_flags(models),
        "--decoder", models["decoder"], "--memory", models["memory"],
    ])
    return {"captioned": manifest["counts"]["captioned"], "shards": len(manifest["shards"])}


def caption_in_loop(inputs: Path, output: Path, models: dict[str, str], files: int | None) -> dict:
    """``caption_shard`` over the first ``files`` input files (all when None), timing the decoder's calls."""
    from decap_core.bulk_caption import CaptionModels, CaptionSettings, caption_shard
    from decap_core.caption_inputs import plan_shards
    from decap_core.devices import default_device

    settings = CaptionSettings(clip_model="toy-clip", clip_checkpoint=models.get("clip"), decoder=models["decoder"],
                               memory=models["memory"], device=str(default_device()))
    loaded = CaptionModels.load(settings)
    decoder = loaded.captioner.decoder.model
    decoding = {"seconds": 0.0, "tokens": 0}
    generate = decoder.generate

    def timed_generate(*args, **kwargs):
        started = time.perf_counter()
        tokens = generate(*args, **kwargs)
        decoding["seconds"] += time.perf_counter() - started
        decoding["tokens"] += int((tokens != kwargs["pad_id"]).sum())
        return tokens

    decoder.generate = timed_generate
    shards = plan_shards([str(inputs / "*.parquet")], "embeddings")[:files]
    captions_files.begin(str(output))
    signature = loaded.signature(settings)
    captioned = sum(caption_shard(shard, loaded, settings, str(output), signature).captioned for shard in shards)
    return {"captioned": captioned, "shards": len(shards), "decode_seconds": decoding["seconds"],
            "tokens": decoding["tokens"], "decoder_parameters": decoder.num_parameters()}


def _threads() -> str:
    settings = ", ".join(f"{name}={os.environ[name]}" for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")
                         if name in os.environ)
    return f"torch threads: {torch.get_num_threads()}{f' ({settings})' if settings else ''}."


def _clip_flags(models: dict[str, str]) -> list[str]:
    return ["--clip-model", "toy-clip", *(["--clip-checkpoint", models["clip"]] if models.get("clip") else [])]


def measure(side: str, inputs: Path, output: Path, models: dict[str, str], files: int | None = None) -> dict:
    """Run one side in a fresh interpreter; its wall time, peak RSS and counts."""
    command = [sys.executable, "-m", "benchmarks.bench_caption", "--side", side, "--inputs", str(inputs),
               "--output", str(output), "--models", json.dumps(models)]
    result = subprocess.run(command + (["--files", str(files)] if files else []), capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def same_captions(loop_output: Path, pipeline_output: Path) -> bool:
    """Whether every caption the loop wrote is the pipeline's caption of that key."""
    loop = captions_files.read_captions(str(loop_output), ["key", "caption"]).to_pydict()
    pipeline = captions_files.read_captions(str(pipeline_output), ["key", "caption"]).to_pydict()
    written = dict(zip(pipeline["key"], pipeline["caption"]))
    return all(written.get(key) == caption for key, caption in zip(loop["key"], loop["caption"]))


def run(images: int | None = None, loop_images: int | None = None, rows_per_file: int = ROWS_PER_FILE) -> str:
    images = images or int(os.environ.get("DECAP_BENCH_CAPTION_IMAGES", 1_000_000))
    loop_images = loop_images or int(os.environ.get("DECAP_BENCH_CAPTION_LOOP_IMAGES", LOOP_IMAGES))
    loop_files = -(-min(loop_images, images) // rows_per_file)
    peak = matmul_peak()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = demo_models(root / "models") or random_models(root / "models")
        (root / "inputs").mkdir()
        dim, cosine = write_inputs(root / "inputs", models["memory"], images, rows_per_file)
        pipeline = measure("pipeline", root / "inputs", root / "pipeline", models)
        loop = measure("loop", root / "inputs", root / "loop", models, loop_files)
        identical = same_captions(root / "loop", root / "pipeline")
    rate = {"pipeline": pipeline["captioned"] / pipeline["seconds"], "loop": loop["captioned"] / loop["seconds"]}
    decode_flops = 2 * loop["decoder_parameters"] * loop["tokens"]
    subset = (f"the first {loop['shards']} files ({loop['captioned']:,} embeddings)"
              if loop["shards"] < pipeline["shards"] else "all the files")
    return (
        "## Bulk captioning: the caption pipeline vs a plain loop over image embeddings (Parquet)\n\n"
        f"{images:,} image-like embeddings (`key` + {dim}-d `embedding`) "
        f"in {pipeline['shards']} Parquet files of up to {rows_per_file:,} rows: random memory text embeddings plus "
        f"one fixed offset of length {GAP_LENGTH} (the modality gap) and Gaussian noise of length about "
        f"{NOISE_LENGTH}, renormalised (mean cosine to the source text {cosine:.2f}). Models: {models['kind']}. "
        "Strategy pd (exact softmax over the memory), batches of 256, one row per image. Each side in a fresh "
        "process; wall time includes loading the models. Pipeline: `pipelines.caption.run` on the in-process "
        f"FnApiRunner. Loop: `CaptionModels.load` + `caption_shard` per file in a for-loop, over {subset}; "
        f"its captions {'equal' if identical else 'DIFFER FROM'} the pipeline's.\n\n"
        "| side | images | wall s | captions/s | share of loop | peak RSS MiB |\n|---|---|---|---|---|---|\n"
        f"| plain loop | {loop['captioned']:,} | {loop['seconds']:.0f} | {rate['loop']:,.0f} | 100% | "
        f"{loop['peak_rss_mib']:,.0f} |\n"
        f"| caption pipeline | {pipeline['captioned']:,} | {pipeline['seconds']:.0f} | {rate['pipeline']:,.0f} | "
        f"{rate['pipeline'] / rate['loop']:.0%} | {pipeline['peak_rss_mib']:,.0f} |\n\n"
        f"Bar: peak RSS under 3 GB (2,861 MiB), throughput at least 80% of the loop's. In the loop, decoding took "
        f"{loop['decode_seconds'] / loop['seconds']:.0%} of the wall time: {loop['tokens']:,} tokens "
        f"({loop['tokens'] / loop['captioned']:.1f} a caption) by a decoder of {loop['decoder_parameters']:,} "
        f"weights, {decode_flops / loop['decode_seconds'] / 1e9:.1f} GFLOP/s, "
        f"{decode_flops / loop['decode_seconds'] / peak:.1%} of the fp32 matmul peak measured in this run "
        f"({peak / 1e9:.0f} GFLOP/s, best {MATMUL_SIZE}^3 `torch.matmul`). {_threads()}\n"
    )


def _side_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["pipeline", "loop"])
    parser.add_argument("--inputs", type=Path)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--models", type=json.loads)
    parser.add_argument("--files", type=int, default=None, help="loop: caption only the first FILES input files")
    parser.add_argument("--images", type=int, default=20_000, help="without --side: a quick run of both")
    parser.add_argument("--loop-images", type=int, default=None, help="without --side: images the loop captions")
    parser.add_argument("--rows-per-file", type=int, default=ROWS_PER_FILE)
    args = parser.parse_args(argv)
    if args.side is None:
        print(run(args.images, args.loop_images, args.rows_per_file))
        return
    started = time.perf_counter()
    if args.side == "pipeline":
        counts = caption_with_pipeline(args.inputs, args.output, args.models)
    else:
        counts = caption_in_loop(args.inputs, args.output, args.models, args.files)
    seconds = time.perf_counter() - started
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak, **counts}))


if __name__ == "__main__":
    _side_main(sys.argv[1:])
