"""Train DeCap's decoder on text alone: rebuild each sentence from its own CLIP text embedding.

Two ways in, both driven by one ``TrainSettings``: ``train_on_texts`` encodes a small corpus here
and samples batches from memory; ``train_from_shards`` streams train shards (``decap make-shards``)
through fsspec with several loader workers and a shuffle buffer, validates on held-out shards,
checkpoints every N steps and resumes, on the CPU, one GPU (bf16 autocast) or several under
``torchrun`` (DDP: NCCL on GPUs, gloo on CPUs; each rank reads its own shards).

A resumed run gives the weights and summary of a run never stopped (same flags, same machine): it
reads again, without training on them, the batches before its checkpoint, so its data order goes on
where the checkpoint left it. A loss that is not finite stops training before the weights take the step.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import time
from collections import Counter
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from decap_core import artifacts, train_shards, trainer_checkpoints
from decap_core.clip import ClipModel
from decap_core.decoder import Decoder, DecoderConfig
from decap_core.decoder_files import DecoderBundle, save_decoder
from decap_core.devices import default_device
from decap_core.errors import DecapError
from decap_core.optim import ClippedAdamW
from decap_core.settings import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, described, require
from decap_core.train_data import Batch, EncodedCorpus, ReadRecord, ShardStream, collate, read_samples, shards_of_rank
from decap_core.vocab import PAD, UNK, CompactVocab, clip_token_ids

SUMMARY = "train-summary.json"


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation and vocabulary settings of the decoder trainer, the same for both ways in."""

    steps: int = 2000
    batch_size: int = described(128, "sentences per rank and micro-batch")
    lr: float = 1e-3
    warmup: int = described(100, "steps of linear learning-rate warm-up")
    weight_decay: float = described(0.01, "AdamW weight decay (matrices only)")
    grad_clip: float = described(1.0, "largest gradient norm of a step")
    label_smoothing: float = 0.1
    prefix_noise: float = described(0.0, "std of Gaussian noise on prefixes (CapDec)")
    accumulate: int = described(1, "micro-batches per optimiser step")
    seed: int = 0
    min_count: int = described(1, "fewest occurrences for a token to enter the vocabulary")

    def __post_init__(self) -> None:
        require(self, AT_LEAST_ONE, "steps", "batch_size", "accumulate", "min_count")
        require(self, NON_NEGATIVE_INT, "warmup", "seed")
        require(self, POSITIVE, "lr", "grad_clip")
        require(self, NON_NEGATIVE, "weight_decay", "prefix_noise")
        require(self, FRACTION, "label_smoothing")


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
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Runtime(device, dist.get_rank(), dist.get_world_size())


def autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA; full precision elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def sentence_loss(net: torch.nn.Module, prefix: torch.Tensor, tokens: torch.Tensor, label_smoothing: float,
                  reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's cross-entropy on a batch, and its token hits: the one loss the trainer computes.

    ``tokens`` rows are ``[start, w1..wn, end, pad..]``: ``net`` (a ``Decoder``, DDP-wrapped or not)
    reads the prefix and ``w1..wn`` and predicts ``w1..wn, end``; pad targets count for nothing.
    Returns the loss (``reduction`` over target tokens) and ``[correct, counted]``: the targets the
    argmax predicts, and the targets.
    """
    targets = tokens[:, 1:]
    with autocast(prefix.device):
        logits = net(prefix, tokens[:, 1:-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=PAD, label_smoothing=label_smoothing, reduction=reduction)
    mask = targets != PAD
    return loss, torch.stack([(logits.argmax(-1) == targets)[mask].sum(), mask.sum()])


class Trainer:
    """A decoder with its clipped AdamW, warm-up/cosine schedule and step count; DDP-wrapped when distributed."""

    def __init__(self, model: Decoder, settings: TrainSettings, runtime: Runtime):
        self.settings, self.runtime, self.step = settings, runtime, 0
        self.model = model.to(runtime.device)
        self.net: torch.nn.Module = self.model
        if runtime.world_size > 1:
            cuda = runtime.device.type == "cuda"
            self.net = torch.nn.parallel.DistributedDataParallel(self.model,
                                                                 device_ids=[runtime.device.index] if cuda else None)
        self.optimiser = ClippedAdamW(self.model, settings.lr, settings.weight_decay, settings.steps, settings.warmup,
                                      settings.grad_clip)

    def train_step(self, batches: Iterator[Batch]) -> tuple[float, float]:
        """One optimiser step over ``accumulate`` micro-batches; returns (loss, token accuracy)."""
        s, device = self.settings, self.runtime.device
        self.net.train()
        loss_sum = torch.zeros((), device=device)
        hits = torch.zeros(2, dtype=torch.long, device=device)
        for micro in range(s.accumulate):
            prefix, tokens, *_ = next(batches)
            prefix, tokens = prefix.to(device, non_blocking=True), tokens.to(device, non_blocking=True)
            if s.prefix_noise > 0:  # CapDec: train on noisy prefixes to bridge the modality gap
                prefix = F.normalize(prefix + s.prefix_noise * torch.randn_like(prefix), dim=-1)
            last = micro == s.accumulate - 1
            with nullcontext() if last or self.net is self.model else self.net.no_sync():
                loss, batch_hits = sentence_loss(self.net, prefix, tokens, s.label_smoothing)
                (loss / s.accumulate).backward()
            loss_sum += loss.detach()
            hits += batch_hits
        loss = loss_sum.item() / s.accumulate
        if not math.isfinite(loss):
            raise DecapError(f"the training loss is not finite ({loss}) at step {self.step + 1}: stopped before "
                             "the weights took that step (check the train shards, or lower --lr)")
        self.optimiser.step()
        self.step += 1
        correct, counted = hits.tolist()
        return loss, correct / max(1, counted)

    def state(self) -> dict[str, Any]:
        return {"step": self.step, "optimizer": self.optimiser.optimizer.state_dict(),
                "scheduler": self.optimiser.scheduler.state_dict(), "torch_rng": torch.get_rng_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.optimiser.optimizer.load_state_dict(state["optimizer"])
        self.optimiser.scheduler.load_state_dict(state["scheduler"])
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
    """Held-out cross-entropy (no smoothing), token accuracy, and exact greedy reconstruction.

    Exact means the greedy decode has the reference's word ids, one for one: a reference with a
    token outside the vocabulary (unk, which decoding never writes) is never rebuilt exactly.
    """
    model.eval()
    nll = torch.zeros((), device=device)
    hits = torch.zeros(2, dtype=torch.long, device=device)
    for prefix, tokens in corpus.ordered(batch_size):
        loss, batch_hits = sentence_loss(model, prefix.to(device), tokens.to(device), 0.0, reduction="sum")
        nll += loss
        hits += batch_hits
    correct, counted = hits.tolist()
    exact = 0
    sample = min(exact_sample, len(corpus))
    for start in range(0, sample, batch_size):
        rows = corpus.token_rows[start : min(sample, start + batch_size)]
        decoded = model.generate(corpus.embeddings[start : start + len(rows)].to(device), end_id=vocab.end_id,
                                 pad_id=PAD, banned_ids=(UNK, vocab.start_id))
        exact += sum(vocab.words(d.tolist()) == vocab.words(r) for d, r in zip(decoded.cpu(), rows))
    return {"loss": nll.item() / max(1, counted), "token_accuracy": correct / max(1, counted),
            "exact": exact / max(1, sample), "exact_sample": sample}


def train_on_texts(
    clip: ClipModel, texts: Sequence[str], out: str, config_name: str = "toy", settings: TrainSettings | None = None
) -> DecoderBundle:
    """Train a decoder on ``texts`` (a small corpus, encoded here) and save it under ``out``."""
    settings = settings or TrainSettings()
    if not texts:
        raise DecapError("no sentences to train the decoder on")
    vocab = CompactVocab.for_training(Counter(t for text in texts for t in clip_token_ids(text)), settings.min_count)
    corpus = EncodedCorpus.from_texts(clip, texts, vocab)
    config = DecoderConfig.named(config_name, vocab_size=len(vocab), prefix_dim=clip.embed_dim)
    torch.manual_seed(settings.seed)
    trainer = Trainer(Decoder(config), settings, Runtime(default_device()))
    started = time.time()
    final_loss = trainer.fit(corpus.batches(settings.batch_size, settings.seed))
    bundle = DecoderBundle(
        trainer.model.cpu().eval(), vocab, clip.fingerprint,
        info={"config_name": config_name, "steps": settings.steps, "sentences": len(corpus),
              "settings": asdict(settings), "final_loss": final_loss, "train_seconds": time.time() - started},
    )
    save_decoder(bundle, out)
    return bundle


@dataclass(frozen=True)
class ShardSettings:
    """What the shard trainer reads, and how often it validates and checkpoints."""

    train: str
    validation: str | None = described(None, "held-out shards "
                                             "(default: the ones make-shards wrote beside the train shards)")
    clip_fingerprint: str | None = None
    workers: int = described(2, "shard loader processes per rank")
    shuffle_buffer: int = described(5000, "samples per worker's shuffle buffer")
    validate_every: int = 500
    validation_sentences: int = described(200, "held-out sentences decoded for exact match")
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    resume: bool = described(False, "continue from the newest checkpoint in the output directory")
    skip_bad_shards: bool = described(False, "warn about a missing or damaged shard and go on "
                                             "(default: stop with its URL)")

    def __post_init__(self) -> None:
        require(self, AT_LEAST_ONE, "shuffle_buffer", "validate_every", "checkpoint_every", "keep_checkpoints")
        require(self, NON_NEGATIVE_INT, "workers", "validation_sentences")


def train_from_shards(shards: ShardSettings, out: str, config_name: str = "toy",
                      settings: TrainSettings | None = None) -> dict[str, Any]:
    """Train a decoder from train shards into ``out`` (checkpoints, decoder, ``SUMMARY``); returns the summary."""
    settings = settings or TrainSettings()
    runtime = start_runtime()
    train, valid = _open_shards(shards)
    clip_fingerprint = train.metadata.plan.clip_fingerprint
    vocab = train_shards.compact_vocab(train.metadata, settings.min_count)
    config = DecoderConfig.named(config_name, vocab_size=len(vocab), prefix_dim=train.metadata.plan.dim)
    torch.manual_seed(settings.seed)
    trainer = Trainer(Decoder(config), settings, runtime)
    history = _resume(trainer, shards.resume, out, vocab, clip_fingerprint)
    samples, held_out_refused = read_samples(valid, shards.skip_bad_shards)
    valid_corpus = EncodedCorpus.from_samples([s for s in samples if len(s.tokens) <= config.max_tokens + 1], vocab)

    stream = ShardStream(train, shards_of_rank(train.urls, runtime.rank, runtime.world_size), vocab,
                         config.max_tokens + 1, shards.shuffle_buffer,
                         seed=_hash_seed(settings.seed, runtime.rank), skip_bad=shards.skip_bad_shards)
    workers = min(shards.workers, len(stream.urls))
    loader = torch.utils.data.DataLoader(stream, batch_size=settings.batch_size, collate_fn=collate,
                                         num_workers=workers, pin_memory=runtime.device.type == "cuda",
                                         persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(settings.seed))  # not torch's RNG
    record = ReadRecord()
    info = {"config_name": config_name, "train_shards": shards.train, "validation_shards": [*valid.urls],
            "settings": asdict(settings), "world_size": runtime.world_size}

    def checkpoint(step: int, final: bool = False) -> None:
        if step == settings.steps and not final:
            return  # the final call below validates and saves the last step
        validated = bool(history) and history[-1]["step"] == step  # resumed from the final checkpoint
        if runtime.is_main and (final or step % shards.validate_every == 0) and not validated:
            history.append({"step": step, **validate(trainer.model, valid_corpus, vocab, runtime.device,
                                                     shards.validation_sentences)})
            scores = ", ".join(f"{k} {v:.4g}" for k, v in history[-1].items() if k != "step")
            tqdm.write(f"validation at step {step}: " + scores)
        if runtime.is_main and (final or step % shards.checkpoint_every == 0):
            bundle = DecoderBundle(trainer.model, vocab, clip_fingerprint, {**info, "steps": step,
                                   "validation": history[-1] if history else None})
            trainer_checkpoints.save_checkpoint(out, bundle, {**trainer.state(), "history": history},
                                                keep=shards.keep_checkpoints)
            if final:
                save_decoder(bundle, out)
        if runtime.world_size > 1:
            dist.barrier()

    started = time.time()
    batches = _tracked(loader, record)
    for _ in range(trainer.step * settings.accumulate):  # resumed: the batches the checkpoint was trained on
        next(batches)
    trainer.fit(batches, after_step=checkpoint)
    checkpoint(trainer.step, final=True)
    summary = {**info, "steps": trainer.step, "seconds": time.time() - started, "validation": history,
               **_read_summary(runtime, record, held_out_refused, train.urls)}
    if runtime.is_main:
        artifacts.write_atomically(f"{out.rstrip('/')}/{SUMMARY}", lambda handle: json.dump(summary, handle, indent=1),
                                   mode="w")
    if runtime.world_size > 1:
        dist.destroy_process_group()
    return summary


def _open_shards(shards: ShardSettings) -> tuple[train_shards.ShardSet, train_shards.ShardSet]:
    """The train and validation shard sets, checked against one CLIP fingerprint."""
    train = train_shards.ShardSet.open(shards.train, shards.clip_fingerprint)
    clip_fingerprint = train.metadata.plan.clip_fingerprint
    beside = posixpath.dirname(train.urls[0])  # default: the held-out shards make-shards wrote beside them
    validation = shards.validation or [f"{beside}/{s.name}" for s in train.metadata.shards
                                       if s.name.startswith("valid-")]
    if not validation:
        raise DecapError("no validation shards: pass --validation (make-shards writes them with --validation-samples)")
    valid = train_shards.ShardSet.open(validation, clip_fingerprint)
    return train, valid


def _tracked(batches: Iterable[Batch], record: ReadRecord) -> Iterator[Batch]:
    """Batches, recording the shards they came from and the refusals they carry; a loader worker's
    error becomes one line."""
    try:
        for batch in batches:
            record.add(batch.refusals, batch.shards.tolist())
            yield batch
    except DecapError as error:  # re-raised from a worker with its traceback in the message
        raise DecapError(str(error).strip().splitlines()[-1].split("DecapError: ", 1)[-1]) from None


def _resume(trainer: Trainer, resume: bool, out: str, vocab: CompactVocab, clip_fingerprint: str) -> list[dict]:
    """Continue from the newest checkpoint under ``out`` when ``resume``; refuse to overwrite one without.

    Returns the validation history up to the checkpoint (empty for a fresh start).
    """
    if not resume:
        if trainer_checkpoints.has_checkpoints(out):
            raise DecapError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")
        return []
    latest = trainer_checkpoints.load_latest(out)
    if latest is None:
        return []
    bundle, state = latest
    if bundle.clip_fingerprint != clip_fingerprint or bundle.vocab != vocab:
        raise DecapError(f"the checkpoint in {out} was trained with CLIP {bundle.clip_fingerprint} and "
                         f"{len(bundle.vocab)} tokens, "
                         f"these shards have CLIP {clip_fingerprint} and {len(vocab)} tokens")
    trainer.model.load_state_dict(bundle.model.state_dict())
    trainer.load_state(state)
    if trainer.runtime.is_main:
        tqdm.write(f"resuming from step {trainer.step}")
    return list(state.get("history", []))  # checkpoints written before the history was kept have none


def _hash_seed(*parts: int) -> int:
    """A data-order seed per (seed, rank): each rank draws its own reproducible order."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:15], 16)


def _read_summary(runtime: Runtime, record: ReadRecord, held_out_refused: list[train_shards.Refusal],
                  urls: Sequence[str]) -> dict[str, Any]:
    """Each rank's shards read and skipped; what every rank and the validation read refused, counted."""
    if runtime.world_size == 1:
        records = [record]
    else:
        records = [None] * runtime.world_size
        dist.all_gather_object(records, record)
    everything = ReadRecord()
    for each in records:
        everything.add(list(each.refusals.values()))
    everything.add(held_out_refused)
    return {"shards_seen_by_rank": {str(rank): each.read(urls) for rank, each in enumerate(records)},
            "shards_skipped_by_rank": {str(rank): each.skipped() for rank, each in enumerate(records)},
            **everything.summary()}
