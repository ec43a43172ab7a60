"""Caption quality on the toy world's held-out images: objects named, per strategy and tau.

A caption is judged on the ``<colour> <shape>`` pairs it names (size words aside) against the
scene's objects; ``score_rows`` scores a captions output (the pipeline's rows) per strategy.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Mapping, Sequence

import torch

from decap_core.captioner import Captioner
from decap_core.clip import ClipModel
from decap_core.toy import world as toyworld


def object_scores(captions: Iterable[str], truths: Iterable[frozenset[tuple[str, str]]]) -> dict[str, float]:
    """Toy-world caption quality, judged on ``<colour> <shape>`` pairs (size words aside).

    ``object_recall``: share of true objects the caption names. ``exact``: share of captions that
    name every object and invent none. ``hallucination``: share of named objects that are absent.
    """
    named_true = total_true = invented = total_named = exact = images = 0
    for text, truth in zip(captions, truths):
        named = set(toyworld.parse_objects(text))
        named_true += len(named & truth)
        total_true += len(truth)
        invented += len(named - truth)
        total_named += len(named)
        exact += named == set(truth)
        images += 1
    return {
        "object_recall": named_true / max(1, total_true),
        "exact": exact / max(1, images),
        "hallucination": invented / max(1, total_named),
    }


def score_rows(rows: Iterable[Mapping[str, Any]], truths: Mapping[str, frozenset], strategies: Sequence[str],
               tau: float | None) -> list[dict]:
    """One table row per strategy from caption rows (``key``, ``strategy``, ``caption``): the pipeline's output."""
    by_strategy: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_strategy.setdefault(row["strategy"], []).append(row)
    table = []
    for strategy in strategies:
        chosen = by_strategy.get(strategy, [])
        scores = object_scores([r["caption"] for r in chosen], [truths[r["key"]] for r in chosen])
        table.append({"strategy": strategy, "tau": tau if strategy == "pd" else None, **scores})
    return table


def memory_coverage(memory_texts: Sequence[str], truths: Sequence[frozenset]) -> float:
    """Share of images whose exact ``(colour, shape)`` set is named by some memory sentence."""
    described = {frozenset(toyworld.parse_objects(text)) for text in memory_texts}
    return sum(truth in described for truth in truths) / max(1, len(truths))


def evaluate(
    captioner: Captioner,
    image_embeddings: torch.Tensor,
    truths: Sequence[frozenset],
    strategies: Sequence[str] = ("pd", "nnd", "clipre", "vd"),
    taus: Sequence[float] = (),
) -> list[dict]:
    """One row per strategy (and per extra tau for ``pd``): object recall, exact, hallucination."""
    rows = []
    for strategy in strategies:
        captions = captioner.caption(image_embeddings, strategy)
        tau = captioner.tau if strategy == "pd" else None
        rows.append({"strategy": strategy, "tau": tau, **object_scores(captions, truths)})
    for tau in taus:
        if tau == captioner.tau:
            continue
        captions = replace(captioner, tau=tau).caption(image_embeddings, "pd")
        rows.append({"strategy": "pd", "tau": tau, **object_scores(captions, truths)})
    return rows


def caption_query_recall(captioner: Captioner, clip: ClipModel, scenes: Sequence[toyworld.Scene], seed: int) -> float:
    """``pd``'s object recall when each image's query is its own caption's text embedding.

    A CLIP whose image embeddings matched their captions exactly would score this: the ceiling that
    this memory and decoder put on ``pd``, apart from the CLIP's image side.
    """
    rng = toyworld.split_rng(seed, "eval")
    queries = clip.encode_text([toyworld.caption(scene, rng) for scene in scenes])
    captions = captioner.caption(queries, "pd")
    return object_scores(captions, [scene.object_set() for scene in scenes])["object_recall"]


def choose_tau(captioner: Captioner, image_embeddings: torch.Tensor, truths: Sequence[frozenset],
               taus: Sequence[float]) -> tuple[float, float]:
    """The tau under which ``pd`` names the most objects of these (validation) images, and that share."""
    recall = {
        tau: object_scores(replace(captioner, tau=tau).caption(image_embeddings, "pd"), truths)["object_recall"]
        for tau in taus
    }
    best = max(taus, key=lambda tau: (recall[tau], -tau))
    return best, recall[best]


def reconstruction_scores(captioner: Captioner, clip: ClipModel, texts: Sequence[str]) -> dict[str, float]:
    """Decode sentences from their own text embeddings: do the objects (and words) come back?"""
    decoded = captioner.decode(clip.encode_text(texts))
    same_objects = sum(
        sorted(toyworld.parse_objects(d)) == sorted(toyworld.parse_objects(t)) for d, t in zip(decoded, texts)
    )
    same_sized = sum(
        sorted(toyworld.parse_sized_objects(d), key=str) == sorted(toyworld.parse_sized_objects(t), key=str)
        for d, t in zip(decoded, texts)
    )
    exact = sum(d == t for d, t in zip(decoded, texts))
    n = max(1, len(texts))
    return {"same_objects": same_objects / n, "same_sized_objects": same_sized / n, "exact": exact / n}


def format_table(rows: Sequence[dict]) -> str:
    lines = [f"{'strategy':<10}{'tau':>8}{'objects named':>16}{'exact sets':>13}{'invented':>11}"]
    for row in rows:
        tau = f"{row['tau']:g}" if row["tau"] is not None else "-"
        lines.append(
            f"{row['strategy']:<10}{tau:>8}{row['object_recall']:>16.1%}{row['exact']:>13.1%}{row['hallucination']:>11.1%}"
        )
    return "\n".join(lines)


def format_side_by_side(tables: Mapping[str, Sequence[dict]]) -> str:
    """Several sets' strategy tables in one: objects named and exact sets per set, rows matched on strategy and tau.

    Rows that only the first set has (extra taus) show ``-`` for the others.
    """
    names = list(tables)
    scored = {name: {(row["strategy"], row["tau"]): row for row in rows} for name, rows in tables.items()}
    header = f"{'':<18}" + "".join(f"{name:^28}" for name in names)
    columns = f"{'strategy':<10}{'tau':>8}" + f"{'objects named':>16}{'exact sets':>12}" * len(names)
    lines = [header.rstrip(), columns]
    for row in tables[names[0]]:
        tau = f"{row['tau']:g}" if row["tau"] is not None else "-"
        cells = ""
        for name in names:
            other = scored[name].get((row["strategy"], row["tau"]))
            cells += f"{other['object_recall']:>16.1%}{other['exact']:>12.1%}" if other else f"{'-':>16}{'-':>12}"
        lines.append(f"{row['strategy']:<10}{tau:>8}{cells}")
    return "\n".join(lines)
