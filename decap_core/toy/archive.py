"""Held-out toy-world scenes as an image archive in img2dataset's layout, for the captioning pipeline.

``NNNNN.tar`` holds ``KEY.png`` and ``KEY.json`` per scene and ``NNNNN.parquet`` beside it lists every
row with ``key``, ``status``, ``error_message``, ``url`` and ``caption`` (here one of the scene's
grammar captions), as img2dataset writes them; keys are the shard number and index, zero-padded.
"""
from __future__ import annotations

import io
import json
from typing import Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from webdataset.writer import TarWriter

from decap_core.toy import world as toyworld


def write_scene_shards(scenes: Sequence[toyworld.Scene], directory: str, per_shard: int = 100,
                       size: int | None = None, seed: int = 0) -> dict[str, frozenset]:
    """Render ``scenes`` (at ``size``, default their looks' sizes) into tars of ``per_shard`` under ``directory``.

    Returns each key's true object set.
    """
    fs, root = fsspec.core.url_to_fs(directory.rstrip("/"))
    fs.makedirs(root, exist_ok=True)
    rng = toyworld.split_rng(seed, "eval")
    truths: dict[str, frozenset] = {}
    for number, start in enumerate(range(0, len(scenes), per_shard)):
        rows = []
        with fs.open(f"{root}/{number:05d}.tar", "wb") as handle:
            writer = TarWriter(handle, encoder=False, mtime=0, user="decap", group="decap")
            for index, scene in enumerate(scenes[start : start + per_shard]):
                key = f"{number:05d}{index:04d}"
                image = io.BytesIO()
                toyworld.render(scene, size).save(image, format="PNG")
                url = f"toy://scene/{start + index}"
                text = toyworld.caption(scene, rng)
                writer.write({"__key__": key, "png": image.getvalue(),
                              "json": json.dumps({"key": key, "url": url, "caption": text}).encode()})
                rows.append({"key": key, "status": "success", "error_message": None, "url": url, "caption": text})
                truths[key] = scene.object_set()
            writer.close()
        with fs.open(f"{root}/{number:05d}.parquet", "wb") as handle:
            pq.write_table(pa.Table.from_pylist(rows), handle)
    return truths
