"""Reference captions for evaluation, and how caption rows' keys find them.

Formats, chosen by the file name:

- ``*.json``: COCO style, ``images`` (``id``, ``file_name``) + ``annotations`` (``image_id``,
  ``caption``). A captions row's key matches an image by its file name without extension (the key
  of file inputs) or by its id written as a string.
- ``*.jsonl`` and ``*.parquet`` (one file or an fsspec glob of several): ``key`` + ``captions`` (a
  list of strings) or ``caption`` (one string, as img2dataset's sibling Parquet has it). Rows whose
  captions are null or empty are skipped and counted (img2dataset's failed downloads).
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import fsspec
import pyarrow.parquet as pq

from decap_core.errors import DecapError
from decap_core.toy import world as toyworld


@dataclass(frozen=True)
class Reference:
    """One image's reference sentences and its id in COCO's results format."""

    image_id: int | str
    captions: tuple[str, ...]


@dataclass(frozen=True)
class References:
    """Every reference of a file, by each key that names it (COCO: its file name stem and its id)."""

    url: str
    by_key: dict[str, Reference]
    images: int
    skipped_empty: int = 0


@dataclass(frozen=True)
class Matched:
    """Caption keys with their references, the keys with none, and how many reference images went unused."""

    references: dict[str, Reference]
    unmatched: tuple[str, ...]
    unused: int


def read_references(url: str) -> References:
    """The references at ``url`` (COCO JSON, or JSONL / Parquet of ``key`` + ``captions``)."""
    if url.endswith(".json"):
        return _read_coco(url)
    if url.endswith(".jsonl") or url.endswith(".parquet"):
        return _read_keyed(url)
    raise DecapError(f"references {url}: name a COCO .json, or a .jsonl or .parquet of key + captions")


def match(references: References, keys: Iterable[str], allow_unmatched: bool = False) -> Matched:
    """Each caption key's references; keys without are an error unless ``allow_unmatched`` (no match at all is)."""
    keys = list(dict.fromkeys(keys))
    found = {key: references.by_key[key] for key in keys if key in references.by_key}
    unmatched = tuple(key for key in keys if key not in found)
    if not found:
        raise DecapError(f"none of the {len(keys)} captioned keys has a reference in {references.url} "
                         f"(first keys: {', '.join(keys[:3])})")
    if unmatched and not allow_unmatched:
        raise DecapError(f"{len(unmatched)} of {len(keys)} captioned keys have no reference in {references.url} "
                         f"(first: {', '.join(unmatched[:3])}); --allow-unmatched scores the others")
    used = {id(reference) for reference in found.values()}
    return Matched(found, unmatched, references.images - len(used))


def object_truths(references: References) -> dict[str, frozenset[tuple[str, str]]]:
    """The toy world's truth: the ``(colour, shape)`` set each key's first reference names (its grammar names all)."""
    truths = {key: frozenset(toyworld.parse_objects(ref.captions[0])) for key, ref in references.by_key.items()}
    empty = [key for key, objects in truths.items() if not objects]
    if empty:
        raise DecapError(f"{references.url}: {len(empty)} references name no toy-world object "
                         f"(first key: {empty[0]}); --toy-truth takes the toy archive's captions")
    return truths


def _read_coco(url: str) -> References:
    document = _load_json(url)
    if not isinstance(document, dict) or not isinstance(document.get("images"), list) \
            or not isinstance(document.get("annotations"), list):
        raise DecapError(f"references {url}: a COCO file needs the lists 'images' and 'annotations'")
    keys_of: dict[Any, list[str]] = {}
    for number, image in enumerate(document["images"]):
        if not isinstance(image, dict) or "id" not in image:
            raise DecapError(f"references {url}: image {number} has no 'id'")
        if image["id"] in keys_of:
            raise DecapError(f"references {url}: image id {image['id']} appears twice")
        stem = posixpath.splitext(posixpath.basename(str(image.get("file_name", ""))))[0]
        keys_of[image["id"]] = [str(image["id"]), *([stem] if stem else [])]
    captions: dict[Any, list[str]] = {}
    for number, annotation in enumerate(document["annotations"]):
        if not isinstance(annotation, dict) or not isinstance(annotation.get("caption"), str):
            raise DecapError(f"references {url}: annotation {number} has no caption string")
        if annotation.get("image_id") not in keys_of:
            raise DecapError(f"references {url}: annotation {number} names image_id "
                             f"{annotation.get('image_id')!r}, which is not among the images")
        captions.setdefault(annotation["image_id"], []).append(annotation["caption"])
    by_key: dict[str, Reference] = {}
    for image_id, texts in captions.items():
        reference = Reference(image_id, tuple(texts))
        for key in keys_of[image_id]:
            if key in by_key and by_key[key] is not reference:
                raise DecapError(f"references {url}: key {key!r} names two images (an id and a file name)")
            by_key[key] = reference
    return References(url, by_key, len(captions))


def _read_keyed(url: str) -> References:
    by_key: dict[str, Reference] = {}
    skipped = 0
    for where, key, texts in _keyed_rows(url):
        if not isinstance(key, str) or not key:
            raise DecapError(f"references {where}: no 'key' string")
        if key in by_key:
            raise DecapError(f"references {where}: key {key!r} appears twice")
        if isinstance(texts, str):
            texts = [texts]
        if texts is None or texts == []:
            skipped += 1
            continue
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            raise DecapError(f"references {where}: 'captions' must be a list of strings")
        by_key[key] = Reference(key, tuple(texts))
    return References(url, by_key, len(by_key), skipped)


def _keyed_rows(url: str) -> Iterator[tuple[str, Any, Any]]:
    """``(where, key, captions)`` of every row of every file the URL or glob names."""
    files = [file for file in fsspec.open_files(url, "rb") if file.fs.exists(file.path)]
    if not files:
        raise DecapError(f"references {url} not found")
    for file in files:
        name = file.full_name
        if url.endswith(".parquet"):
            with file as handle:
                table = pq.read_table(handle)
            column = "captions" if "captions" in table.column_names else "caption"
            if "key" not in table.column_names or column not in table.column_names:
                raise DecapError(f"references {name}: needs the columns 'key' and 'captions' (or 'caption')")
            for number, (key, texts) in enumerate(zip(table["key"].to_pylist(), table[column].to_pylist())):
                yield f"{name} row {number}", key, texts
        else:
            with file as handle:
                for number, line in enumerate(handle, start=1):
                    if line.strip():
                        record = _parse_line(line, f"{name} line {number}")
                        yield f"{name} line {number}", record.get("key"), record.get("captions", record.get("caption"))


def _parse_line(line: bytes, where: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as error:
        raise DecapError(f"references {where}: not JSON ({error})") from None
    if not isinstance(record, dict):
        raise DecapError(f"references {where}: not a JSON object")
    return record


def _load_json(url: str) -> Any:
    try:
        with fsspec.open(url, "r") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DecapError(f"references {url} not found") from None
    except ValueError as error:
        raise DecapError(f"references {url} is not JSON: {error}") from None
