"""CLIP through open_clip: load by name from a local or fsspec checkpoint, encode, fingerprint.

Never downloads: a checkpoint is a path or fsspec URL that the user brings, or none (random
weights, for tests and benchmarks). The project's toy configs live in ``model_configs/`` and are
registered with open_clip, so ``open_clip.create_model_and_transforms('toy-clip', ...)`` works too.
"""
from __future__ import annotations

import hashlib
import io
import logging
import pathlib
from dataclasses import dataclass
from typing import Callable, Sequence

import fsspec
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from decap_core.errors import DecapError

MODEL_CONFIG_DIR = pathlib.Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)


@dataclass
class ClipModel:
    """An open_clip model with what encoding needs: its tokenizer, preprocessing and fingerprint."""

    name: str
    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    fingerprint: str

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[-1])

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm float32 text embeddings, computed on the real tokens only (no padding)."""
        tokens = self.tokenize(texts).to(_device_of(self.model))
        return encode_tokens_packed(self.model, tokens).float().cpu()

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Unit-norm float32 image embeddings, with open_clip's own preprocessing."""
        pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in images])
        return self.encode_pixels(pixels)

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit-norm float32 embeddings of already preprocessed image tensors."""
        features = self.model.encode_image(pixels.to(_device_of(self.model)))
        return F.normalize(features.float(), dim=-1).cpu()


def list_models() -> list[str]:
    """Every architecture name open_clip knows, the project's toy configs included."""
    return open_clip.list_models()


def load_clip(name: str, checkpoint: str | None = None, device: str = "cpu") -> ClipModel:
    """Create ``name`` and load ``checkpoint`` (path or fsspec URL; None keeps random weights)."""
    if name not in open_clip.list_models():
        raise DecapError(
            f"unknown CLIP architecture {name!r}; choose one of open_clip.list_models() "
            "(for example ViT-B-32) or a toy config such as toy-clip"
        )
    digest, state = "random", None
    if checkpoint is not None:
        payload = read_checkpoint_bytes(checkpoint, what="CLIP checkpoint")
        digest = hashlib.sha256(payload).hexdigest()[:16]
        state = parse_state_dict(payload, checkpoint)
    model, preprocess = create_model(name)
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first = str(error).splitlines()[0]
            raise DecapError(f"CLIP checkpoint {checkpoint} does not fit architecture {name}: {first}") from None
    model = model.to(device).eval().requires_grad_(False)
    return ClipModel(
        name=name,
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(name),
        fingerprint=f"{name}:{digest}",
    )


def create_model(name: str, seed: int = 0) -> tuple[torch.nn.Module, Callable]:
    """An open_clip model with seeded random weights and its eval preprocessing (no hub, no warning).

    The seed makes "no checkpoint" mean the same weights in every process (Beam workers, reruns),
    without touching the caller's random state.
    """
    logging.disable(logging.WARNING)  # open_clip warns that no pretrained weights were loaded
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
    return model, preprocess


def read_checkpoint_bytes(url: str, what: str) -> bytes:
    """The bytes at ``url``, or one clear error naming what was missing."""
    try:
        with fsspec.open(url, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise DecapError(f"{what} not found: {url}") from None
    except (OSError, ValueError) as error:
        raise DecapError(f"{what} could not be read from {url}: {error}") from None


def parse_state_dict(payload: bytes, url: str) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch file (weights only, never unpickling code)."""
    try:
        if payload[:1] == b"{" or url.endswith(".safetensors"):
            from safetensors.torch import load as load_safetensors

            state = load_safetensors(payload)
        else:
            state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # any parse failure means a damaged or foreign file
        raise DecapError(f"CLIP checkpoint {url} is damaged or not a checkpoint ({type(error).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DecapError(f"CLIP checkpoint {url} holds no state dict")
    return {key.removeprefix("module."): value for key, value in state.items()}


def encode_tokens_packed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``encode_text``, normalised, computed on the real tokens only.

    CLIP's text tower is causal, so a sentence's end-of-text feature depends only on its own
    tokens. The padding is dropped and the sentences of the batch are packed several to a row of
    at most the context length, each with its own positions and a block-diagonal causal mask:
    the same numbers (within float rounding) at the cost of the real tokens, in matrix products as
    large as open_clip's own. Towers that are not causal fall back to open_clip's ``encode_text``.
    """
    if getattr(model, "attn_mask", None) is None or model.text_pool_type not in ("argmax", "eos"):
        return F.normalize(model.encode_text(tokens), dim=-1)
    lengths = (tokens != 0).sum(dim=1).tolist()
    packs = pack_lengths(lengths, int(model.positional_embedding.shape[0]))
    width = max(sum(lengths[row] for row in pack) for pack in packs)
    packed = tokens.new_zeros(len(packs), width)
    positions = torch.zeros(len(packs), width, dtype=torch.long)
    segments = torch.full((len(packs), width), -1, dtype=torch.long)
    ends = torch.zeros(len(lengths), 2, dtype=torch.long)  # (pack, column) of each sentence's last token
    for pack_index, pack in enumerate(packs):
        start = 0
        for row in pack:
            end = start + lengths[row]
            packed[pack_index, start:end] = tokens[row, : lengths[row]]
            positions[pack_index, start:end] = torch.arange(lengths[row])
            segments[pack_index, start:end] = row
            ends[row] = torch.tensor([pack_index, end - 1])
            start = end
    column = torch.arange(width)
    allowed = (segments[:, :, None] == segments[:, None, :]) & (column[:, None] >= column[None, :])
    allowed |= torch.eye(width, dtype=torch.bool)  # padding attends to itself: no empty softmax rows
    cast_dtype = model.transformer.get_cast_dtype()
    heads = model.transformer.resblocks[0].attn.num_heads
    mask = torch.zeros(allowed.shape, dtype=cast_dtype).masked_fill_(~allowed, float("-inf"))
    device = model.positional_embedding.device
    x = model.token_embedding(packed.to(device)).to(cast_dtype)
    x = x + model.positional_embedding[positions.to(device)].to(cast_dtype)
    x = model.transformer(x, attn_mask=mask.to(device).repeat_interleave(heads, dim=0))
    x = model.ln_final(x)[ends[:, 0].to(device), ends[:, 1].to(device)]
    if isinstance(model.text_projection, torch.nn.Linear):
        x = model.text_projection(x)
    elif model.text_projection is not None:
        x = x @ model.text_projection
    return F.normalize(x, dim=-1)


def pack_lengths(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: groups of indices whose lengths sum to at most ``capacity``."""
    packs: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        target = next((p for p, free in enumerate(room) if lengths[index] <= free), None)
        if target is None:
            packs.append([])
            room.append(capacity)
            target = len(packs) - 1
        packs[target].append(index)
        room[target] -= lengths[index]
    return packs


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
