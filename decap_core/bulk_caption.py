"""Caption whole input shards: read, decode or check, embed, project, decode, score, commit. No Beam.

``CaptionSettings`` holds every option, checked when made (before any record is read);
``CaptionModels.load`` loads CLIP, decoder, memory and its faiss index once (per worker process);
``caption_shard`` captions one input shard in batches and commits its output with a marker
(``decap_core.captions_files``). The Beam pipeline and any plain loop call the same function.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from decap_core import index as faiss_index
from decap_core import memory_files, projection
from decap_core.caption_inputs import EmbeddingRecord, ImageRecord, InputShard, RefusedRecord, read_shard
from decap_core.captioner import Captioner
from decap_core.captions_files import ShardMarker, ShardOutput
from decap_core.clip import ClipModel, load_clip
from decap_core.decoder_files import load_decoder
from decap_core.errors import DecapError
from decap_core.image_decoding import ImageLimits, ImageRejected, decode_image, fit_for_preprocessing

MAX_BEAM_WIDTH = 32
MAX_NEIGHBORS = 100


@dataclass(frozen=True)
class CaptionSettings:
    """Every option of a captioning run; a bad value is a ``DecapError`` when the settings are made."""

    clip_model: str
    clip_checkpoint: str | None
    decoder: str
    memory: str
    strategies: tuple[str, ...] = ("pd",)
    tau: float = projection.DEFAULT_TAU
    topk: int | None = None
    beam_width: int = 1
    max_tokens: int = 30
    neighbors: int = 5
    batch_size: int = 256
    device: str = "cpu"
    image_limits: ImageLimits = field(default_factory=ImageLimits)

    def __post_init__(self) -> None:
        unknown = [s for s in self.strategies if s not in projection.STRATEGIES]
        if not self.strategies or unknown:
            raise DecapError(f"unknown strategy {unknown[0] if unknown else ''!r}; choose from "
                             f"{', '.join(projection.STRATEGIES)}")
        if len(set(self.strategies)) != len(self.strategies):
            raise DecapError(f"a strategy is given twice: {', '.join(self.strategies)}")
        if not (isinstance(self.tau, (int, float)) and math.isfinite(self.tau) and self.tau > 0):
            raise DecapError(f"--tau must be a positive number, got {self.tau}")
        if self.topk is not None and self.topk < 1:
            raise DecapError(f"--topk must be at least 1, got {self.topk}")
        if not 1 <= self.beam_width <= MAX_BEAM_WIDTH:
            raise DecapError(f"--beam-width must be between 1 and {MAX_BEAM_WIDTH}, got {self.beam_width}")
        if self.max_tokens < 1:
            raise DecapError(f"--max-tokens must be at least 1, got {self.max_tokens}")
        if not 0 <= self.neighbors <= MAX_NEIGHBORS:
            raise DecapError(f"--neighbors must be between 0 and {MAX_NEIGHBORS}, got {self.neighbors}")
        if self.batch_size < 1:
            raise DecapError(f"--batch-size must be at least 1, got {self.batch_size}")

    def describe(self) -> dict[str, Any]:
        """The settings that shape the captions (what a marker's signature covers), as JSON values."""
        return {"strategies": list(self.strategies), "tau": self.tau, "topk": self.topk, "beam_width": self.beam_width,
                "max_tokens": self.max_tokens, "neighbors": self.neighbors, "image_limits": asdict(self.image_limits)}


@dataclass
class CaptionModels:
    """CLIP, the captioner (decoder + memory + optional faiss index) and the image size CLIP takes."""

    clip: ClipModel
    captioner: Captioner
    image_size: int

    @classmethod
    def load(cls, settings: CaptionSettings) -> "CaptionModels":
        """Load and cross-check everything; a missing file or a mismatch is one ``DecapError``."""
        decoder = load_decoder(settings.decoder, settings.device)
        clip = load_clip(settings.clip_model, settings.clip_checkpoint, settings.device)
        if decoder.clip_fingerprint != clip.fingerprint:
            raise DecapError(f"decoder {settings.decoder} was trained with CLIP {decoder.clip_fingerprint}, "
                             f"not {clip.fingerprint} (--clip-model/--clip-checkpoint)")
        if settings.max_tokens > decoder.model.config.max_tokens:
            raise DecapError(f"--max-tokens {settings.max_tokens} exceeds the decoder's "
                             f"{decoder.model.config.max_tokens}")
        memory = memory_files.load_memory(settings.memory, clip.fingerprint)
        if len(memory) == 0:
            raise DecapError(f"memory {settings.memory} holds no sentences")
        index = load_or_build_index(settings.memory, memory.embeddings.numpy()) if settings.topk else None
        captioner = Captioner(decoder, memory, tau=settings.tau, beam_width=settings.beam_width,
                              max_tokens=settings.max_tokens, index=index, topk=settings.topk)
        size = clip.model.visual.image_size
        return cls(clip, captioner, int(size[0] if isinstance(size, (tuple, list)) else size))

    def fingerprints(self) -> dict[str, str]:
        return {"clip_fingerprint": self.clip.fingerprint,
                "memory_fingerprint": self.captioner.memory.fingerprint,
                "decoder_fingerprint": self.captioner.decoder.fingerprint}

    def signature(self, settings: CaptionSettings) -> str:
        """One hash of the models and settings: a rerun may add shards only under the same signature."""
        described = json.dumps({**self.fingerprints(), **settings.describe()}, sort_keys=True)
        return hashlib.sha256(described.encode()).hexdigest()[:16]


def load_or_build_index(memory_dir: str, embeddings: np.ndarray):
    """The memory's own ``index.faiss`` when its manifest names one, else an index chosen for its size."""
    described = memory_files.read_manifest(memory_dir).index
    if described:
        index = faiss_index.load_index(f"{memory_dir.rstrip('/')}/{described.file}")
        if index.ntotal != len(embeddings):
            raise DecapError(f"the index of memory {memory_dir} holds {index.ntotal} rows, "
                             f"the memory {len(embeddings)}")
        return index
    factory = faiss_index.choose_factory(len(embeddings))
    return faiss_index.build_index(factory, embeddings.shape[1], lambda: [embeddings], len(embeddings))


def checked_embedding(vector: np.ndarray, dim: int) -> tuple[str, str] | np.ndarray:
    """The unit-norm vector, or ``(reason, detail)`` when it has the wrong width, a NaN/inf, or no length."""
    if vector.ndim != 1 or vector.shape[0] != dim:
        return "wrong_width", f"shape {tuple(vector.shape)}, the memory is {dim}-d"
    if not np.isfinite(vector).all():
        return "non_finite", "NaN or infinity in the embedding"
    norm = float(np.linalg.norm(vector))
    if norm < 1e-6:
        return "zero_norm", f"norm {norm:.3g}"
    return (vector / norm).astype(np.float32)


@dataclass
class _Pending:
    records: list[ImageRecord | EmbeddingRecord] = field(default_factory=list)
    inputs: list[torch.Tensor] = field(default_factory=list)


def caption_shard(shard: InputShard, models: CaptionModels, settings: CaptionSettings, output: str,
                  signature: str, on_progress: Callable[[str, int], None] | None = None) -> ShardMarker:
    """Caption one input shard into ``output`` and commit it; returns its marker."""
    started = time.time()
    progress = on_progress or (lambda name, value: None)
    writer = ShardOutput(output, shard.shard_id)
    dead: Counter = Counter()
    read = captioned = 0
    try:
        pending = _Pending()
        for record in read_shard(shard):
            read += 1
            prepared = _prepare(record, models, settings)
            if isinstance(prepared, RefusedRecord):
                writer.write_dead_letter(prepared.key, prepared.source, prepared.stage, prepared.error, prepared.detail)
                dead[prepared.error] += 1
                progress("dead", 1)
                continue
            pending.records.append(record)
            pending.inputs.append(prepared)
            if len(pending.records) == settings.batch_size:
                captioned += _caption_batch(pending, models, settings, writer)
                progress("captioned", len(pending.records))
                pending = _Pending()
        if pending.records:
            captioned += _caption_batch(pending, models, settings, writer)
            progress("captioned", len(pending.records))
        marker = ShardMarker(shard.shard_id, shard.url, signature, read, captioned, writer.rows, sum(dead.values()),
                             dict(dead), shard.members, time.time() - started)
        writer.commit(marker)
    except BaseException:
        writer.abort()
        raise
    return marker


def _prepare(record, models: CaptionModels, settings: CaptionSettings) -> torch.Tensor | RefusedRecord:
    """A record as the model's input: preprocessed pixels or a unit-norm embedding, or why not."""
    if isinstance(record, RefusedRecord):
        return record
    if isinstance(record, EmbeddingRecord):
        checked = checked_embedding(record.embedding, models.captioner.memory.dim)
        if isinstance(checked, tuple):
            return RefusedRecord(record.key, record.source, "check", *checked)
        return torch.from_numpy(checked)
    try:
        image = decode_image(record.payload, record.source, settings.image_limits)
    except ImageRejected as rejected:
        return RefusedRecord(record.key, record.source, "decode", rejected.reason, rejected.detail)
    try:
        return models.clip.preprocess(fit_for_preprocessing(image, models.image_size))
    except (OSError, ValueError, RuntimeError, MemoryError) as error:
        return RefusedRecord(record.key, record.source, "preprocess", "preprocess_failed",
                             f"{type(error).__name__}: {error}"[:200])


def _caption_batch(pending: _Pending, models: CaptionModels, settings: CaptionSettings, writer: ShardOutput) -> int:
    """Caption one batch under every strategy and write its rows; returns the records captioned."""
    stacked = torch.stack(pending.inputs)
    if isinstance(pending.records[0], ImageRecord):
        embeddings = models.clip.encode_pixels(stacked)
    else:
        embeddings = stacked
    batch = models.captioner.caption_batch(embeddings, settings.strategies, settings.neighbors)
    memory = models.captioner.memory
    neighbors = [[{"text": memory.texts[int(r)], "weight": float(w)} for r, w in zip(rows, weights)]
                 [: settings.neighbors]
                 for rows, weights in zip(batch.neighbor_rows.tolist(), batch.neighbor_weights.tolist())]
    fingerprints = models.fingerprints()
    rows = []
    for strategy in settings.strategies:
        captions = batch.captions[strategy]
        scores = _clip_scores(models.clip, embeddings, captions)
        for i, record in enumerate(pending.records):
            rows.append({"key": record.key, "source": record.source, "strategy": strategy, "caption": captions[i],
                         "tau": settings.tau if strategy == "pd" else None, "neighbors": neighbors[i],
                         "clip_score": scores[i], "url": record.url, "source_caption": record.source_caption,
                         **fingerprints})
    writer.write_rows(rows)
    return len(pending.records)


def _clip_scores(clip: ClipModel, image_embeddings: torch.Tensor, captions: Sequence[str]) -> list[float]:
    """Cosine between each image embedding and the CLIP text embedding of its caption (each distinct text once)."""
    distinct = list(dict.fromkeys(captions))
    text = clip.encode_text(distinct)
    row_of = {caption: i for i, caption in enumerate(distinct)}
    chosen = text[[row_of[c] for c in captions]]
    return (image_embeddings.float() * chosen).sum(dim=1).tolist()
