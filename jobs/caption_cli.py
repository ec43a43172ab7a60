"""``decap caption``: caption a glob of image files into Parquet (in process)."""
from __future__ import annotations

import argparse

import fsspec

from decap_core import projection
from decap_core.captioner import Captioner
from decap_core.checkpoint import load_decoder
from decap_core.clip import load_clip
from decap_core.devices import default_device
from decap_core.errors import DecapError
from decap_core.memory import SupportMemory
from decap_core.memory_files import load_memory
from jobs.caption import caption_images, write_result


def read_lines(url: str) -> list[str]:
    """Non-empty lines of a UTF-8 text file (compression inferred from the name)."""
    try:
        with fsspec.open(url, "rt", encoding="utf-8", compression="infer") as handle:
            return [line.strip() for line in handle if line.strip()]
    except FileNotFoundError:
        raise DecapError(f"memory text not found: {url}") from None
    except UnicodeDecodeError as error:
        raise DecapError(f"memory text {url} is not UTF-8: {error}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="decap caption", description=__doc__)
    parser.add_argument("--images", required=True, help="fsspec glob of image files")
    parser.add_argument("--clip-model", default="toy-clip")
    parser.add_argument("--clip-checkpoint", required=True)
    parser.add_argument("--decoder", required=True, help="directory with decoder.safetensors + decoder.json")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--memory", help="support memory directory built by decap build-memory")
    source.add_argument("--memory-text", help="small text file, one memory sentence a line (encoded here)")
    parser.add_argument("--strategy", action="append", choices=projection.STRATEGIES,
                        help="projection strategy (repeat for several; default pd)")
    parser.add_argument("--tau", type=float, default=projection.DEFAULT_TAU)
    parser.add_argument("--beam-width", type=int, default=1)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--out", required=True, help="Parquet URL; dead letters go beside it")
    args = parser.parse_args(argv)
    device = str(default_device(args.device))
    decoder = load_decoder(args.decoder, device)
    clip = load_clip(args.clip_model, args.clip_checkpoint, device)
    if args.memory:
        memory = load_memory(args.memory, clip.fingerprint)
    else:
        memory = SupportMemory.from_texts(clip, read_lines(args.memory_text))
    captioner = Captioner(decoder, memory, tau=args.tau, beam_width=args.beam_width)
    result = caption_images(clip, captioner, args.images, args.strategy or ["pd"])
    out, errors = write_result(result, args.out)
    print(f"{len(result.rows)} captions -> {out}; {len(result.dead_letters)} dead letters -> {errors}")
