"""Train DeCap's decoder on text alone: rebuild each sentence from its own CLIP text embedding.

From train shards (``decap make-shards``): streamed through fsspec by several loader workers and a
shuffle buffer, validated on held-out shards, checkpointed every N steps and resumable
(``--resume``), on the CPU, one GPU (bf16 autocast) or several under ``torchrun`` (DDP: NCCL on
GPUs, gloo on CPUs; each rank reads its own shards). Without ``--train`` it trains on toy-world
sentences encoded in process, as ``train_decoder()`` (used by the demo) does for any small corpus.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import posixpath
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import fsspec
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from decap_core import shards as shard_files
from decap_core import toyworld, train_state
from decap_core.checkpoint import DecoderBundle, save_decoder
from decap_core.clip import ClipModel, load_clip
from decap_core.decoder import Decoder, DecoderConfig
from decap_core.devices import default_device
from decap_core.errors import DecapError
from decap_core.optim import adamw, warmup_cosine
from decap_core.train_data import Batch, EncodedCorpus, ShardStream, collate, read_samples, shards_of_rank
from decap_core.vocab import PAD, UNK, CompactVocab

SUMMARY = "train-summary.json"


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
    accumulate: int = 1
    seed: int = 0


@dataclass(frozen=True)
class Runtime:
    """Where this process trains: its device, and its rank among ``world_size`` DDP processes."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_runtime() -> Runtime:
    """The device, and DDP when launched by ``torchrun`` (NCCL with CUDA, gloo without)."""
    cuda = torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Runtime(torch.device("cuda" if cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    return Runtime(torch.device("cuda", local_rank) if cuda else torch.device("cpu"), dist.get_rank(), dist.get_world_size())


def token_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float, reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=PAD, label_smoothing=label_smoothing, reduction=reduction)


class Trainer:
    """A decoder with its AdamW, warm-up/cosine schedule and step count; DDP-wrapped when distributed."""

    def __init__(self, model: Decoder, settings: TrainSettings, runtime: Runtime):
        self.settings, self.runtime, self.step = settings, runtime, 0
        self.model = model.to(runtime.device)
        cuda = runtime.device.type == "cuda"
        self.net: torch.nn.Module = self.model
        if runtime.world_size > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[runtime.device.index] if cuda else None)
        self.optimizer = adamw(self.model, settings.lr, settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, settings.steps, settings.warmup))

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.runtime.device.type == "cuda" else nullcontext()

    def train_step(self, batches: Iterator[Batch]) -> tuple[float, float]:
        """One optimiser step over ``accumulate`` micro-batches; returns (loss, token accuracy)."""
        s, device = self.settings, self.runtime.device
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, correct, counted = 0.0, 0, 0
        for micro in range(s.accumulate):
            prefix, tokens, _ = next(batches)
            prefix, tokens = prefix.to(device, non_blocking=True), tokens.to(device, non_blocking=True)
            if s.prefix_noise > 0:  # CapDec: train on noisy prefixes to bridge the modality gap
                prefix = F.normalize(prefix + s.prefix_noise * torch.randn_like(prefix), dim=-1)
            last = micro == s.accumulate - 1
            with nullcontext() if last or self.net is self.model else self.net.no_sync():
                with self.autocast():
                    logits = self.net(prefix, tokens[:, 1:-1])
                    loss = token_loss(logits, tokens[:, 1:], s.label_smoothing)
                (loss / s.accumulate).backward()
            mask = tokens[:, 1:] != PAD
            correct += int((logits.argmax(-1)[mask] == tokens[:, 1:][mask]).sum())
            counted += int(mask.sum())
            loss_sum += loss.item()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss_sum / s.accumulate, correct / max(1, counted)

    def state(self) -> dict[str, Any]:
        return {"step": self.step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])

    def fit(self, batches: Iterator[Batch], after_step: Callable[[int], None] | None = None) -> float:
        """Train until ``settings.steps``; returns the last smoothed loss. Progress on rank 0."""
        smoothed = float("nan")
        with tqdm(total=self.settings.steps, initial=self.step, desc="train-decoder", unit="step",
                  disable=not self.runtime.is_main) as progress:
            while self.step < self.settings.steps:
                loss, accuracy = self.train_step(batches)
                smoothed = loss if smoothed != smoothed else 0.95 * smoothed + 0.05 * loss
                progress.update(1)
                progress.set_postfix(loss=f"{smoothed:.3f}", tok_acc=f"{accuracy:.3f}")
                if after_step is not None:
                    after_step(self.step)
        return smoothed


@torch.no_grad()
def validate(model: Decoder, corpus: EncodedCorpus, vocab: CompactVocab, device: torch.device,
             exact_sample: int = 200, batch_size: int = 256) -> dict[str, float]:
    """Held-out cross-entropy (no smoothing), token accuracy, and exact greedy reconstruction."""
    model.eval()
    nll, correct, counted = 0.0, 0, 0
    cast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    for prefix, tokens in corpus.ordered(batch_size):
        prefix, tokens = prefix.to(device), tokens.to(device)
        with cast:
            logits = model(prefix, tokens[:, 1:-1])
        targets = tokens[:, 1:]
        mask = targets != PAD
        nll += float(token_loss(logits, targets, 0.0, reduction="sum"))
        correct += int((logits.argmax(-1)[mask] == targets[mask]).sum())
        counted += int(mask.sum())
    exact = 0
    sample = min(exact_sample, len(corpus))
    for start in range(0, sample, batch_size):
        rows = corpus.token_rows[start : min(sample, start + batch_size)]
        decoded = model.generate(corpus.embeddings[start : start + len(rows)].to(device), end_id=vocab.end_id,
                                 pad_id=PAD, banned_ids=(UNK, vocab.start_id))
        exact += sum(vocab.decode_text(d.tolist()) == vocab.decode_text(r) for d, r in zip(decoded.cpu(), rows))
    return {"loss": nll / max(1, counted), "token_accuracy": correct / max(1, counted),
            "exact": exact / max(1, sample), "exact_sample": sample}


def train_decoder(
    clip: ClipModel, texts: Sequence[str], out: str, config_name: str = "toy", settings: TrainSettings | None = None
) -> DecoderBundle:
    """Train a decoder on ``texts`` (a small corpus, encoded here) and save it under ``out``."""
    settings = settings or TrainSettings()
    vocab = CompactVocab.from_texts(texts)
    corpus = EncodedCorpus.from_texts(clip, texts, vocab)
    config = DecoderConfig.named(config_name, vocab_size=len(vocab), prefix_dim=clip.embed_dim)
    torch.manual_seed(settings.seed)
    trainer = Trainer(Decoder(config), settings, Runtime(default_device()))
    started = time.time()
    final_loss = trainer.fit(corpus.batches(settings.batch_size, settings.seed))
    bundle = DecoderBundle(
        trainer.model.cpu().eval(), vocab, clip.fingerprint,
        info={"config_name": config_name, "steps": settings.steps, "sentences": len(corpus),
              "final_loss": final_loss, "train_seconds": time.time() - started},
    )
    save_decoder(bundle, out)
    return bundle


def tracked(batches: Iterable[Batch], seen: set[int]) -> Iterator[Batch]:
    """Batches, recording the shards they came from; a loader worker's error becomes one line."""
    try:
        for batch in batches:
            seen.update(batch[2].tolist())
            yield batch
    except DecapError as error:  # re-raised from a worker with its traceback in the message
        raise DecapError(str(error).strip().splitlines()[-1].split("DecapError: ", 1)[-1]) from None


def open_shards(args: argparse.Namespace) -> tuple[shard_files.ShardSet, shard_files.ShardSet]:
    """The train and validation shard sets, checked against one CLIP fingerprint."""
    expected = load_clip(args.clip_model, args.clip_checkpoint).fingerprint if args.clip_checkpoint else None
    train = shard_files.ShardSet.open(args.train, expected)
    beside = posixpath.dirname(train.urls[0])  # default: the held-out shards make-shards wrote beside them
    validation = args.validation or [f"{beside}/{s['name']}" for s in train.metadata["shards"] if s["name"].startswith("valid-")]
    if not validation:
        raise DecapError("no validation shards: pass --validation (make-shards writes them with --validation-samples)")
    valid = shard_files.ShardSet.open(validation, train.metadata["clip_fingerprint"])
    return train, valid


def train_from_shards(args: argparse.Namespace) -> dict[str, Any]:
    """The shard trainer behind ``decap train-decoder --train ...``; returns the run summary."""
    runtime = start_runtime()
    train, valid = open_shards(args)
    clip_fingerprint = train.metadata["clip_fingerprint"]
    vocab = shard_files.compact_vocab(train.metadata, args.min_count)
    config = DecoderConfig.named(args.config, vocab_size=len(vocab), prefix_dim=train.metadata["dim"])
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                             weight_decay=args.weight_decay, grad_clip=args.grad_clip, label_smoothing=args.label_smoothing,
                             prefix_noise=args.prefix_noise, accumulate=args.accumulate, seed=args.seed)
    torch.manual_seed(settings.seed)
    trainer = Trainer(Decoder(config), settings, runtime)
    resume_checkpoint(trainer, args, vocab, clip_fingerprint)
    held_out = [s for s in read_samples(valid, args.skip_bad_shards) if len(s.tokens) <= config.max_tokens + 1]
    valid_corpus = EncodedCorpus.from_samples(held_out, vocab)

    stream = ShardStream(train, shards_of_rank(train.urls, runtime.rank, runtime.world_size), vocab,
                         config.max_tokens + 1, args.shuffle_buffer, seed=hash_seed(settings.seed, runtime.rank, trainer.step),
                         skip_bad=args.skip_bad_shards)
    workers = min(args.workers, len(stream.urls))
    loader = torch.utils.data.DataLoader(stream, batch_size=settings.batch_size, collate_fn=collate, num_workers=workers,
                                         pin_memory=runtime.device.type == "cuda", persistent_workers=workers > 0)
    seen: set[int] = set()
    history: list[dict[str, Any]] = []
    info = {"config_name": args.config, "train_shards": args.train, "validation_shards": [*valid.urls],
            "settings": asdict(settings), "world_size": runtime.world_size}

    def checkpoint(step: int, final: bool = False) -> None:
        if step == settings.steps and not final:
            return  # the final call below validates and saves the last step
        if runtime.is_main and (final or step % args.validate_every == 0):
            history.append({"step": step, **validate(trainer.model, valid_corpus, vocab, runtime.device, args.validation_sentences)})
            tqdm.write(f"validation at step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in history[-1].items() if k != "step"))
        if runtime.is_main and (final or step % args.checkpoint_every == 0):
            bundle = DecoderBundle(trainer.model, vocab, clip_fingerprint, {**info, "steps": step,
                                   "validation": history[-1] if history else None})
            train_state.save_checkpoint(args.out, bundle, trainer.state(), keep=args.keep_checkpoints)
            if final:
                save_decoder(bundle, args.out)
        if runtime.world_size > 1:
            dist.barrier()

    started = time.time()
    trainer.fit(tracked(loader, seen), after_step=checkpoint)
    checkpoint(trainer.step, final=True)
    summary = {**info, "steps": trainer.step, "seconds": time.time() - started, "validation": history,
               "shards_seen_by_rank": gather_seen(runtime, [train.urls[i] for i in sorted(seen)])}
    if runtime.is_main:
        with fsspec.open(f"{args.out.rstrip('/')}/{SUMMARY}", "w") as handle:
            json.dump(summary, handle, indent=1)
    if runtime.world_size > 1:
        dist.destroy_process_group()
    return summary


def resume_checkpoint(trainer: Trainer, args: argparse.Namespace, vocab: CompactVocab, clip_fingerprint: str) -> None:
    """Continue from the newest checkpoint under ``--out`` with ``--resume``; refuse to overwrite one without."""
    if not args.resume:
        if train_state.has_checkpoints(args.out):
            raise DecapError(f"{args.out} already holds checkpoints: pass --resume to continue, or choose another --out")
        return
    latest = train_state.load_latest(args.out)
    if latest is None:
        return
    bundle, state = latest
    if bundle.clip_fingerprint != clip_fingerprint or bundle.vocab != vocab:
        raise DecapError(f"the checkpoint in {args.out} was trained with CLIP {bundle.clip_fingerprint} and "
                         f"{len(bundle.vocab)} tokens, these shards have CLIP {clip_fingerprint} and {len(vocab)} tokens")
    trainer.model.load_state_dict(bundle.model.state_dict())
    trainer.load_state(state)
    if trainer.runtime.is_main:
        tqdm.write(f"resuming from step {trainer.step}")


def hash_seed(*parts: int) -> int:
    """A data-order seed per (seed, rank, start step): a resumed run draws a fresh, reproducible order."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:15], 16)


def gather_seen(runtime: Runtime, urls: list[str]) -> dict[str, list[str]]:
    if runtime.world_size == 1:
        return {"0": urls}
    gathered: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(gathered, urls)
    return {str(rank): seen for rank, seen in enumerate(gathered)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="decap train-decoder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", help="brace pattern of train shards (printed by decap make-shards)")
    parser.add_argument("--validation", help="held-out shards (default: the ones make-shards wrote beside --train)")
    parser.add_argument("--out", required=True, help="directory URL for decoder.safetensors + decoder.json and checkpoints")
    parser.add_argument("--clip-model", default="toy-clip")
    parser.add_argument("--clip-checkpoint", help="with --train: check the shards were made with this CLIP")
    parser.add_argument("--config", default="toy", help="decoder config: toy or official")
    parser.add_argument("--steps", type=int, default=TrainSettings.steps)
    parser.add_argument("--batch-size", type=int, default=TrainSettings.batch_size, help="per rank and micro-batch")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimiser step")
    parser.add_argument("--lr", type=float, default=TrainSettings.lr)
    parser.add_argument("--warmup", type=int, default=TrainSettings.warmup)
    parser.add_argument("--weight-decay", type=float, default=TrainSettings.weight_decay)
    parser.add_argument("--grad-clip", type=float, default=TrainSettings.grad_clip)
    parser.add_argument("--label-smoothing", type=float, default=TrainSettings.label_smoothing)
    parser.add_argument("--prefix-noise", type=float, default=0.0, help="std of Gaussian noise on prefixes (CapDec)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="shard loader processes per rank")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; on a busy machine 1 can be several times faster)")
    parser.add_argument("--shuffle-buffer", type=int, default=5000, help="samples per worker's shuffle buffer")
    parser.add_argument("--min-count", type=int, default=1, help="fewest occurrences for a token to enter the vocabulary")
    parser.add_argument("--validate-every", type=int, default=500)
    parser.add_argument("--validation-sentences", type=int, default=200, help="held-out sentences decoded for exact match")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--keep-checkpoints", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint under --out")
    parser.add_argument("--skip-bad-shards", action="store_true",
                        help="warn about a missing or damaged shard and go on (default: stop with its URL)")
    parser.add_argument("--toy-sentences", type=int, default=30000, help="without --train: toy-world sentences encoded here")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train:
        summary = train_from_shards(args)
        if int(os.environ.get("RANK", "0")) == 0:
            final = summary["validation"][-1]
            print(f"decoder saved to {args.out} after {summary['steps']} steps: validation loss {final['loss']:.4f}, "
                  f"token accuracy {final['token_accuracy']:.3f}, exact {final['exact']:.1%}")
        return
    if not args.clip_checkpoint:
        raise DecapError("give --train SHARDS, or --clip-checkpoint to train on toy-world sentences encoded here")
    clip = load_clip(args.clip_model, args.clip_checkpoint)
    texts = toyworld.sentences(args.seed, "decoder", args.toy_sentences)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                             prefix_noise=args.prefix_noise, seed=args.seed)
    bundle = train_decoder(clip, texts, args.out, args.config, settings)
    print(f"decoder saved to {args.out} ({bundle.model.num_parameters():,} parameters, vocabulary {len(bundle.vocab)})")


if __name__ == "__main__":
    try:
        main()
    except DecapError as error:
        sys.exit(f"train-decoder: error: {error}")
