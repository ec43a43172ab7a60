"""Zero-shot checks of a CLIP on the toy world's held-out images: does it see colour and shape?"""
from __future__ import annotations

import itertools

import torch

from decap_core import metrics
from decap_core.clip import ClipModel
from decap_core.toy import looks
from decap_core.toy import world as toyworld


def single_object_prompts() -> list[tuple[tuple[str, str], str]]:
    """Every ``a <colour> <shape>`` prompt with the object it names."""
    return [
        ((colour, shape), toyworld.with_articles(f"a {colour} {shape}"))
        for colour in toyworld.COLOURS
        for shape in toyworld.SHAPES
    ]


def two_object_prompts() -> list[tuple[frozenset, str]]:
    """Every ``a <colour> <shape> and a <colour> <shape>`` prompt (distinct colours, both orders)."""
    objects = [(c, s) for c in toyworld.COLOURS for s in toyworld.SHAPES]
    return [
        (frozenset((a, b)), toyworld.with_articles(f"a {a[0]} {a[1]} and a {b[0]} {b[1]}"))
        for a, b in itertools.permutations(objects, 2)
        if a[0] != b[0]
    ]


def encode_texts_batched(clip: ClipModel, texts: list[str], batch_size: int = 512) -> torch.Tensor:
    return torch.cat([clip.encode_text(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])


def encode_scenes(clip: ClipModel, scenes: list[toyworld.Scene], size: int | None = None,
                  batch_size: int = 128) -> torch.Tensor:
    """Render each scene (at ``size`` pixels, default its look's) and embed it with CLIP's own preprocessing."""
    chunks = []
    for start in range(0, len(scenes), batch_size):
        images = [toyworld.render(scene, size) for scene in scenes[start : start + batch_size]]
        chunks.append(clip.encode_images(images))
    return torch.cat(chunks)


def clip_report(clip: ClipModel, seed: int, count: int = 300, size: int | None = None,
                nuisances: str = "web") -> dict[str, float]:
    """Zero-shot accuracy on held-out one- and two-object images, and the modality gap.

    The images look as the named ``nuisances`` setting draws them (``decap_core.toy.looks``).
    """
    singles = toyworld.scenes(seed, "eval", count, num_objects=1, nuisances=nuisances)
    doubles = toyworld.scenes(seed + 1, "eval", count, num_objects=2, nuisances=nuisances)

    prompts = single_object_prompts()
    prompt_embeddings = encode_texts_batched(clip, [text for _, text in prompts])
    answer_of = {obj: i for i, (obj, _) in enumerate(prompts)}
    single_images = encode_scenes(clip, singles, size)
    single_acc = metrics.top1_accuracy(
        single_images, prompt_embeddings,
        [answer_of[(s.objects[0].colour, s.objects[0].shape)] for s in singles],
    )

    pair_prompts = two_object_prompts()
    pair_embeddings = encode_texts_batched(clip, [text for _, text in pair_prompts])
    double_images = encode_scenes(clip, doubles, size)
    best = (double_images @ pair_embeddings.T).argmax(dim=1)
    pair_acc = sum(pair_prompts[int(b)][0] == s.object_set() for b, s in zip(best, doubles)) / len(doubles)

    rng = toyworld.split_rng(seed + 2, "eval")
    mixed = [toyworld.sample_scene(rng, nuisances=looks.nuisances(nuisances)) for _ in range(count)]
    gap = metrics.modality_gap(
        encode_scenes(clip, mixed, size),
        encode_texts_batched(clip, [toyworld.caption(s, rng) for s in mixed]),
    )
    return {"single_object_top1": single_acc, "two_object_top1": pair_acc, **gap}
