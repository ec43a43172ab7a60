"""Small real artifacts for captioning tests: a random-weights toy CLIP's memory and decoder, and
archives in the layouts of img2dataset and clip-retrieval, with bad records among the good ones."""
from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from decap_core.decoder import Decoder, DecoderConfig
from decap_core.decoder_files import DecoderBundle, save_decoder
from decap_core.toy import world as toyworld
from decap_core.vocab import CompactVocab

CLIP_FINGERPRINT = "toy-clip:random"  # load_clip('toy-clip') without a checkpoint: seeded random weights


def build_memory_and_decoder(root: Path, sentences: int = 80) -> dict[str, str]:
    """A support memory (the real build-memory pipeline) and a random decoder, both of the random toy CLIP."""
    from pipelines import build_memory

    texts = toyworld.sentences(0, "memory", sentences)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n")
    build_memory.run(["--input", str(corpus), "--output", str(root / "memory"), "--clip-model", "toy-clip",
                      "--num-shards", "2"])
    return {"memory": str(root / "memory"), "decoder": random_decoder(root / "decoder", texts)}


def random_decoder(directory: Path, texts: list[str], clip_fingerprint: str = CLIP_FINGERPRINT, config: str = "toy",
                   prefix_dim: int = 128) -> str:
    """A decoder with seeded random weights over the vocabulary of ``texts``, saved under ``directory``."""
    vocab = CompactVocab.from_texts(texts)
    torch.manual_seed(0)
    model = Decoder(DecoderConfig.named(config, vocab_size=len(vocab), prefix_dim=prefix_dim)).eval()
    save_decoder(DecoderBundle(model, vocab, clip_fingerprint, {"config_name": config}), str(directory))
    return str(directory)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_with_header_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR claims ``width`` x ``height`` (a decompression bomb's header)."""
    data = bytearray(encoded(Image.new("RGB", (4, 4), "white"), "PNG"))
    start = 8 + 8  # signature, then the IHDR chunk's length and type
    data[start : start + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : start + 13])) & 0xFFFFFFFF
    data[start + 13 : start + 17] = struct.pack(">I", crc)
    return bytes(data)


def half_red_jpeg_rotated() -> bytes:
    """A JPEG stored sideways with EXIF orientation 6: seen upright, its left half is red."""
    upright = Image.new("RGB", (64, 48), "white")
    upright.paste((255, 0, 0), (0, 0, 32, 48))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6: shown after a turn of 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(stored, "JPEG", exif=exif.tobytes(), quality=95)


def sixteen_bit_grey_png() -> bytes:
    values = np.full((48, 48), 32768, dtype=np.uint16)
    return encoded(Image.fromarray(values), "PNG")


def good_and_bad_images() -> tuple[dict[str, bytes], dict[str, tuple[bytes, str]]]:
    """``(good images by key, bad images by key as (payload, the dead-letter reason expected))``."""
    scenes = toyworld.scenes(3, "eval", 6)
    good = {f"00000{i:04d}": encoded(toyworld.render(s, 64), "PNG" if i % 2 else "JPEG") for i, s in enumerate(scenes)}
    good["000000100"] = encoded(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG")
    good["000000101"] = sixteen_bit_grey_png()
    good["000000102"] = encoded(Image.new("RGBA", (40, 40), (0, 0, 255, 0)), "PNG")
    good["000000103"] = half_red_jpeg_rotated()
    truncated = encoded(toyworld.render(scenes[0], 64), "PNG")
    bad = {
        "000000200": (b"\xff\xd8\xff\xe0 corrupt jpeg body" * 4, "undecodable"),
        "000000201": (truncated[: len(truncated) // 2], "truncated"),
        "000000202": (b"", "empty_file"),
        "000000203": (b"this is a text file, saved as .png\n", "not_an_image"),
        "000000204": (png_with_header_size(50000, 50000), "too_many_pixels"),
        "000000205": (encoded(Image.new("L", (400000, 1), 128), "PNG"), "too_small"),
    }
    return good, bad


def add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_img2dataset_shard(path: Path, images: dict[str, bytes], extension_of: dict[str, str],
                            failed_keys: tuple[str, ...] = ()) -> None:
    """``NNNNN.tar`` with ``KEY.ext`` + ``KEY.json`` + ``KEY.txt``, and the sibling ``NNNNN.parquet``."""
    rows = []
    with tarfile.open(path, "w") as tar:
        for key, payload in images.items():
            add_member(tar, f"{key}.{extension_of.get(key, 'jpg')}", payload)
            add_member(tar, f"{key}.json", json.dumps({"key": key, "url": f"https://example.org/{key}"}).encode())
            add_member(tar, f"{key}.txt", f"alt text of {key}".encode())
            rows.append({"key": key, "status": "success", "error_message": None,
                         "url": f"https://example.org/{key}", "caption": f"caption of {key}"})
    rows += [{"key": key, "status": "failed_to_download", "error_message": "404", "url": f"https://example.org/{key}",
              "caption": None} for key in failed_keys]
    pq.write_table(pa.Table.from_pylist(rows), path.with_suffix(".parquet"))
