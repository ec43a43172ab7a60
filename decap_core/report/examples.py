"""Example captions for the report: what the run wrote for a sampled key under each strategy, with
the top memory neighbours and their pd weights (the captions' ``neighbors`` column)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from decap_core.toy import world as toyworld


@dataclass(frozen=True)
class Example:
    """One key: its thumbnail, reference text, each strategy's caption (and, on the toy world, whether
    it names exactly the true objects), and the memory's nearest texts with their weights."""

    key: str
    thumbnail: bytes | None
    reference: str
    captions: dict[str, str]
    exact: dict[str, bool] | None
    neighbors: list[tuple[str, float]]


def agreement(run_captions: Mapping[str, Sequence[str]], rows: Mapping[tuple[str, str], Mapping[str, Any]],
              keys: Sequence[str]) -> dict[str, float]:
    """Per strategy the run captioned, the share of ``keys`` whose caption (made again) equals the run's row."""
    shares = {}
    for strategy, captions in run_captions.items():
        pairs = [(caption, rows[(key, strategy)]["caption"]) for key, caption in zip(keys, captions)
                 if (key, strategy) in rows]
        if pairs:
            shares[strategy] = sum(again == written for again, written in pairs) / len(pairs)
    return shares


def make_examples(keys: Sequence[str], thumbnails: Mapping[str, bytes | None], references: Mapping[str, str],
                  rows: Mapping[tuple[str, str], Mapping[str, Any]], strategies: Sequence[str],
                  truths: Mapping[str, frozenset] | None = None) -> list[Example]:
    """One ``Example`` per key, from the run's rows of the strategies it captioned."""
    examples = []
    for key in keys:
        written = {s: rows[(key, s)] for s in strategies if (key, s) in rows}
        neighbors = next((row["neighbors"] for row in written.values() if row["neighbors"]), None) or []
        exact = None if truths is None else {
            s: set(toyworld.parse_objects(row["caption"])) == set(truths[key]) for s, row in written.items()}
        examples.append(Example(key, thumbnails.get(key), references[key],
                                {s: row["caption"] for s, row in written.items()}, exact,
                                [(n["text"], float(n["weight"])) for n in neighbors]))
    return examples
