"""Decoder checkpoints: ``decoder.safetensors`` (weights) + ``decoder.json`` (everything else).

Loading never unpickles. A missing, damaged or mismatched checkpoint raises one ``DecapError``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import fsspec
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from decap_core.clip import read_checkpoint_bytes
from decap_core.decoder import Decoder, DecoderConfig
from decap_core.errors import DecapError
from decap_core.vocab import CompactVocab

WEIGHTS, METADATA = "decoder.safetensors", "decoder.json"


@dataclass
class DecoderBundle:
    """A decoder with its vocabulary and the metadata it was trained with."""

    model: Decoder
    vocab: CompactVocab
    clip_fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return str(self.info.get("fingerprint", "unsaved"))


def save_decoder(bundle: DecoderBundle, directory: str) -> str:
    """Write the bundle under ``directory`` (an fsspec URL); returns the weights' fingerprint."""
    payload = save_safetensors({k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()})
    fingerprint = hashlib.sha256(payload).hexdigest()[:16]
    metadata = {
        "config": bundle.model.config.to_dict(),
        "vocab_clip_ids": list(bundle.vocab.clip_ids),
        "clip_fingerprint": bundle.clip_fingerprint,
        "fingerprint": fingerprint,
        **{k: v for k, v in bundle.info.items() if k != "fingerprint"},
    }
    fs, root = fsspec.core.url_to_fs(directory)
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root}/{WEIGHTS}", "wb") as handle:
        handle.write(payload)
    with fs.open(f"{root}/{METADATA}", "w") as handle:
        json.dump(metadata, handle, indent=1)
    bundle.info["fingerprint"] = fingerprint
    return fingerprint


def load_decoder(directory: str, device: str = "cpu") -> DecoderBundle:
    """Read a bundle written by ``save_decoder``, or raise one clear ``DecapError``."""
    directory = directory.rstrip("/")
    raw_meta = read_checkpoint_bytes(f"{directory}/{METADATA}", what="decoder metadata")
    try:
        metadata = json.loads(raw_meta)
        config = DecoderConfig(**metadata["config"])
        vocab = CompactVocab(tuple(metadata["vocab_clip_ids"]))
    except (ValueError, KeyError, TypeError) as error:
        raise DecapError(f"decoder metadata {directory}/{METADATA} is damaged "
                         f"({type(error).__name__}: {error})") from None
    raw_weights = read_checkpoint_bytes(f"{directory}/{WEIGHTS}", what="decoder weights")
    try:
        state = load_safetensors(raw_weights)
    except Exception as error:  # safetensors raises several types for a damaged header or body
        raise DecapError(f"decoder weights {directory}/{WEIGHTS} are damaged ({type(error).__name__})") from None
    recorded = metadata.get("fingerprint")
    actual = hashlib.sha256(raw_weights).hexdigest()[:16]
    if recorded is not None and recorded != actual:
        raise DecapError(f"decoder weights {directory}/{WEIGHTS} are not the ones {METADATA} describes "
                         f"(fingerprint {actual}, recorded {recorded}): a replaced or damaged file")
    model = Decoder(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise DecapError(f"decoder weights {directory}/{WEIGHTS} do not match decoder.json: {first}") from None
    info = {k: v for k, v in metadata.items() if k not in ("config", "vocab_clip_ids", "clip_fingerprint")}
    info["fingerprint"] = actual  # of the weights as read, so every artifact names the weights it used
    return DecoderBundle(model.to(device).eval(), vocab, metadata["clip_fingerprint"], info)
