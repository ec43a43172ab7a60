"""Resumable decoder-training checkpoints under ``OUT/checkpoints/step-NNNNNNNN/``.

Each holds the decoder as ``decoder.safetensors`` + ``decoder.json`` (``decap_core.decoder_files``)
and ``trainer.pt``: step, optimizer and scheduler state and the torch RNG, plain tensors and
numbers only, read back with ``torch.load(weights_only=True)``. ``trainer.pt`` is written last (by a
rename), so a checkpoint without it (a run killed while writing) is ignored; resuming takes the newest whole one.
"""
from __future__ import annotations

import io
from typing import Any

import fsspec
import torch

from decap_core.decoder_files import DecoderBundle, load_decoder, save_decoder
from decap_core.errors import DecapError

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer.pt"


def checkpoint_dir(out: str, step: int) -> str:
    return f"{out.rstrip('/')}/{CHECKPOINTS}/step-{step:08d}"


def save_checkpoint(out: str, bundle: DecoderBundle, state: dict[str, Any], keep: int = 2) -> str:
    """Write one checkpoint (trainer state last) and delete all but the newest ``keep``."""
    directory = checkpoint_dir(out, state["step"])
    save_decoder(bundle, directory)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    fs, path = fsspec.core.url_to_fs(f"{directory}/{TRAINER_STATE}")
    with fs.open(f"{path}.partial", "wb") as handle:
        handle.write(buffer.getvalue())
    fs.mv(f"{path}.partial", path)  # a rename: a run killed while writing leaves no half trainer.pt
    fs, root = fsspec.core.url_to_fs(f"{out.rstrip('/')}/{CHECKPOINTS}")
    for old in sorted(fs.glob(f"{root}/step-*"))[:-keep]:
        fs.rm(old, recursive=True)
    return directory


def has_checkpoints(out: str) -> bool:
    fs, root = fsspec.core.url_to_fs(f"{out.rstrip('/')}/{CHECKPOINTS}")
    return bool(fs.glob(f"{root}/step-*/{TRAINER_STATE}"))


def load_latest(out: str, device: str = "cpu") -> tuple[DecoderBundle, dict[str, Any]] | None:
    """The newest whole checkpoint under ``out`` (None when there is none)."""
    fs, root = fsspec.core.url_to_fs(f"{out.rstrip('/')}/{CHECKPOINTS}")
    for path in sorted(fs.glob(f"{root}/step-*/{TRAINER_STATE}"), reverse=True):
        directory = fs.unstrip_protocol(path.rsplit("/", 1)[0]) if "://" in out else path.rsplit("/", 1)[0]
        try:
            with fs.open(path, "rb") as handle:
                state = torch.load(io.BytesIO(handle.read()), map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for a damaged file
            raise DecapError(f"checkpoint {path} is damaged ({type(error).__name__}); "
                             "delete it to resume from an older one") from None
        return load_decoder(directory, device), state
    return None
