"""Decoder training from WebDataset shards on the toy world: wall time, held-out reconstruction,
and step throughput against the in-process trainer (the same model and batch, sentences in memory).

Needs a trained toy CLIP: ``DECAP_BENCH_CLIP`` or ``runs/demo/clip/toy-clip.safetensors``
(``decap demo`` makes it); without one it trains one first (about 8 minutes).
"""
from __future__ import annotations

import os
import tempfile
import time

import torch

from decap_core.captioner import Captioner
from decap_core.clip import load_clip
from decap_core.clip_training import ClipTrainSettings, train_clip
from decap_core.decoder_files import load_decoder
from decap_core.memory import SupportMemory
from decap_core.toy import evaluation
from decap_core.toy import world as toyworld
from decap_core.training import ShardSettings, TrainSettings, train_from_shards, train_on_texts
from pipelines import make_train_shards

SENTENCES, HELD_OUT, STEPS, BATCH, LR, THROUGHPUT_STEPS = 30000, 1000, 2400, 128, 2e-3, 60


def _clip_checkpoint(work: str) -> str:
    path = os.environ.get("DECAP_BENCH_CLIP", "runs/demo/clip/toy-clip.safetensors")
    if not os.path.exists(path):
        path = f"{work}/toy-clip.safetensors"
        train_clip(path, ClipTrainSettings())
    return path


def _train(shards: dict, out: str, steps: int) -> float:
    started = time.perf_counter()
    train_from_shards(ShardSettings(shards["train_pattern"], shards["validation_pattern"], workers=1,
                                    validate_every=steps, checkpoint_every=steps),
                      out, "toy", TrainSettings(steps=steps, batch_size=BATCH, lr=LR))
    return time.perf_counter() - started


def run() -> str:
    torch.set_num_threads(1)  # measured here: on the shared 2-core machine 2 threads made steps 10x slower
    with tempfile.TemporaryDirectory() as work:
        clip_path = _clip_checkpoint(work)
        clip = load_clip("toy-clip", clip_path)
        with open(f"{work}/corpus.txt", "w") as handle:
            handle.write("\n".join(toyworld.sentences(0, "decoder", SENTENCES)) + "\n")
        started = time.perf_counter()
        shards = make_train_shards.run(["--input", f"{work}/corpus.txt", "--output", f"{work}/shards",
                                        "--clip-model", "toy-clip", "--clip-checkpoint", clip_path,
                                        "--samples-per-shard", "5000", "--validation-samples", "1000"])
        shard_seconds = time.perf_counter() - started
        train_seconds = _train(shards, f"{work}/decoder", STEPS)
        bundle = load_decoder(f"{work}/decoder")
        captioner = Captioner(bundle, SupportMemory.from_texts(clip, ["a red circle"]))
        scores = evaluation.reconstruction_scores(captioner, clip, toyworld.sentences(3, "eval", HELD_OUT))
        streamed = THROUGHPUT_STEPS / _train(shards, f"{work}/throughput", THROUGHPUT_STEPS)
        texts = toyworld.sentences(0, "decoder", SENTENCES)
        settings = TrainSettings(steps=THROUGHPUT_STEPS, batch_size=BATCH)
        started = time.perf_counter()
        train_on_texts(clip, texts, f"{work}/in-process", "toy", settings)
        in_process = THROUGHPUT_STEPS / (time.perf_counter() - started)
    return "\n".join([
        f"## Decoder training from shards (toy world, toy decoder, batch {BATCH}, {torch.get_num_threads()} threads)",
        "",
        f"- make-shards: {shards['samples']['train']} train + {shards['samples']['valid']} held-out sentences "
        f"encoded and written in {shard_seconds:.0f} s",
        f"- {STEPS} steps (lr {LR:g}) from shards in {train_seconds / 60:.1f} min (with make-shards: "
        f"{(shard_seconds + train_seconds) / 60:.1f} min); on {HELD_OUT} held-out grammar sentences "
        f"decoded from their own embeddings: same objects {scores['same_objects']:.1%}, with sizes "
        f"{scores['same_sized_objects']:.1%}, exact sentence {scores['exact']:.1%}",
        "",
        "| trainer | steps/s (incl. start-up) | vs in-process |",
        "| --- | ---: | ---: |",
        f"| in process, sentences encoded in memory (baseline) | {in_process:.2f} | 1.0x |",
        f"| streamed from shards, 1 loader worker | {streamed:.2f} | {streamed / in_process:.2f}x |",
    ])


if __name__ == "__main__":
    print(run())
