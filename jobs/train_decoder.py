"""Train DeCap's decoder on text alone: rebuild each sentence from its own CLIP text embedding.

This first version reads an in-process corpus (sentences encoded with the CLIP text tower here).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from decap_core import toyworld
from decap_core.checkpoint import DecoderBundle, save_decoder
from decap_core.clip import ClipModel, load_clip
from decap_core.decoder import Decoder, DecoderConfig
from decap_core.memory import SupportMemory
from decap_core.optim import adamw, warmup_cosine
from decap_core.vocab import PAD, CompactVocab, clip_token_ids, pad_batch


@dataclass
class TrainSettings:
    """Optimisation settings of the decoder trainer."""

    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    prefix_noise: float = 0.0
    seed: int = 0


class EncodedCorpus:
    """Sentences as (unit-norm CLIP embedding, compact token row) pairs, sampled in random batches."""

    def __init__(self, embeddings: torch.Tensor, token_rows: Sequence[Sequence[int]]):
        self.embeddings = embeddings
        self.token_rows = list(token_rows)

    @classmethod
    def from_texts(cls, clip: ClipModel, texts: Sequence[str], vocab: CompactVocab) -> "EncodedCorpus":
        memory = SupportMemory.from_texts(clip, texts)
        return cls(memory.embeddings, [vocab.encode(clip_token_ids(t)) for t in memory.texts])

    def batches(self, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(seed)
        while True:
            for picks in torch.randperm(len(self.token_rows), generator=generator).split(batch_size):
                if len(picks) < batch_size:
                    break
                rows = [self.token_rows[i] for i in picks.tolist()]
                yield self.embeddings[picks], torch.from_numpy(pad_batch(rows, PAD))


def train_loop(model: Decoder, batches: Iterator, settings: TrainSettings, desc: str = "train-decoder") -> float:
    """Run ``settings.steps`` optimiser steps; returns the last smoothed loss."""
    torch.manual_seed(settings.seed)
    model.train()
    optimizer = adamw(model, settings.lr, settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, settings.steps, settings.warmup)
    )
    progress = tqdm(range(settings.steps), desc=desc, unit="step")
    smoothed = None
    for _ in progress:
        prefix, tokens = next(batches)
        if settings.prefix_noise > 0:
            prefix = F.normalize(prefix + settings.prefix_noise * torch.randn_like(prefix), dim=-1)
        loss, logits, targets = model.loss(prefix, tokens, PAD, settings.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        schedule.step()
        smoothed = loss.item() if smoothed is None else 0.95 * smoothed + 0.05 * loss.item()
        mask = targets != PAD
        accuracy = float((logits.argmax(-1)[mask] == targets[mask]).float().mean())
        progress.set_postfix(loss=f"{smoothed:.3f}", tok_acc=f"{accuracy:.3f}")
    model.eval()
    return float(smoothed)


def train_decoder(
    clip: ClipModel, texts: Sequence[str], out: str, config_name: str = "toy", settings: TrainSettings | None = None
) -> DecoderBundle:
    """Train a decoder on ``texts`` and save it under ``out``."""
    settings = settings or TrainSettings()
    vocab = CompactVocab.from_texts(texts)
    corpus = EncodedCorpus.from_texts(clip, texts, vocab)
    config = DecoderConfig.named(config_name, vocab_size=len(vocab), prefix_dim=clip.embed_dim)
    torch.manual_seed(settings.seed)
    model = Decoder(config)
    started = time.time()
    final_loss = train_loop(model, corpus.batches(settings.batch_size, settings.seed), settings)
    bundle = DecoderBundle(
        model, vocab, clip.fingerprint,
        info={"config_name": config_name, "steps": settings.steps, "sentences": len(corpus.token_rows),
              "final_loss": final_loss, "train_seconds": time.time() - started},
    )
    save_decoder(bundle, out)
    return bundle


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="decap train-decoder", description=__doc__)
    parser.add_argument("--clip-model", default="toy-clip")
    parser.add_argument("--clip-checkpoint", required=True)
    parser.add_argument("--out", required=True, help="directory URL for decoder.safetensors + decoder.json")
    parser.add_argument("--toy-sentences", type=int, default=30000, help="toy-world decoder corpus size")
    parser.add_argument("--config", default="toy", help="decoder config: toy or official")
    parser.add_argument("--steps", type=int, default=TrainSettings.steps)
    parser.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    parser.add_argument("--lr", type=float, default=TrainSettings.lr)
    parser.add_argument("--prefix-noise", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    clip = load_clip(args.clip_model, args.clip_checkpoint)
    texts = toyworld.sentences(args.seed, "decoder", args.toy_sentences)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             prefix_noise=args.prefix_noise, seed=args.seed)
    bundle = train_decoder(clip, texts, args.out, args.config, settings)
    print(f"decoder saved to {args.out} ({bundle.model.num_parameters():,} parameters, vocabulary {len(bundle.vocab)})")


if __name__ == "__main__":
    main()
