"""Caption metrics: the COCO scorers of pycocoevalcap 1.2 and CLIPScore / RefCLIPScore (Hessel et al., 2021).

``coco_scores`` tokenises candidates and references with the PTB tokenizer that COCO's evaluation
uses (Stanford CoreNLP, lower case, punctuation dropped), then scores BLEU-1..4, METEOR 1.5,
ROUGE-L and CIDEr-D (pycocoevalcap's ``Cider`` is the CIDEr-D variant: clipped counts, length
penalty, scaled by 10). The tokenizer and METEOR run on Java. SPICE is left out: it downloads
Stanford CoreNLP models on first use.

CLIPScore is ``2.5 * max(cos(image, caption), 0)``; RefCLIPScore is the harmonic mean of CLIPScore
and ``max(max_r cos(caption, r), 0)`` over the references ``r``.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import BinaryIO, Iterator, Mapping, Sequence

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from decap_core.clip import ClipModel
from decap_core.errors import DecapError

BLEU_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")
COCO_METRICS = (*BLEU_NAMES, "METEOR", "ROUGE-L", "CIDEr-D")
CLIP_SCORE_WEIGHT = 2.5


def tokenize(texts: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """PTB-tokenised sentences per key, in the order given (Java's Stanford tokenizer).

    Java's progress line ("PTBTokenizer tokenized N tokens at ...") is kept off the terminal; what
    Java wrote is in the error when tokenizing fails.
    """
    with tempfile.TemporaryFile() as java_stderr:
        try:
            with _stderr_to(java_stderr):
                tokens = PTBTokenizer().tokenize({key: [{"caption": text} for text in sentences]
                                                  for key, sentences in texts.items()})
        except FileNotFoundError:
            raise DecapError("java was not found: the PTB tokenizer and METEOR of pycocoevalcap need Java") from None
        if any(len(tokens.get(key, ())) != len(sentences) for key, sentences in texts.items()):
            java_stderr.seek(0)
            said = java_stderr.read().decode(errors="replace").strip().splitlines()
            raise DecapError("the PTB tokenizer returned another number of sentences than it was given"
                             + (f" (java: {said[-1]})" if said else ""))
    return tokens


@contextlib.contextmanager
def _stderr_to(sink: BinaryIO) -> Iterator[None]:
    """Point file descriptor 2, which child processes inherit, at ``sink`` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def coco_scores(references: Mapping[str, Sequence[str]], candidates: Mapping[str, str],
                meteor: bool = True) -> dict[str, float]:
    """Corpus-level BLEU-1..4, METEOR (unless ``meteor`` is False), ROUGE-L and CIDEr-D of one caption per key."""
    if set(references) != set(candidates) or not candidates:
        raise DecapError("COCO scores need one candidate and at least one reference for every key, and some keys")
    if any(not sentences for sentences in references.values()):
        raise DecapError("every key needs at least one reference sentence")
    gts = tokenize(references)
    res = tokenize({key: [text] for key, text in candidates.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = dict(zip(BLEU_NAMES, (float(value) for value in bleu)))
    if meteor:
        scores["METEOR"] = _meteor(gts, res)
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr-D"] = float(Cider().compute_score(gts, res)[0])
    return scores


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> float:
    try:
        scorer = Meteor()
    except FileNotFoundError:
        raise DecapError("java was not found: METEOR needs Java") from None
    return float(scorer.compute_score(gts, res)[0])


def clip_scores(cosines: Sequence[float]) -> np.ndarray:
    """CLIPScore of each caption from its image/caption cosine: ``2.5 * max(cos, 0)``."""
    return CLIP_SCORE_WEIGHT * np.maximum(np.asarray(cosines, dtype=np.float64), 0.0)


def max_reference_cosines(clip: ClipModel, captions: Sequence[str], references: Sequence[Sequence[str]],
                          batch_size: int = 512) -> np.ndarray:
    """For each caption, its highest cosine with the CLIP text embeddings of its own references."""
    distinct = list(dict.fromkeys([*captions, *(text for refs in references for text in refs)]))
    row = {text: i for i, text in enumerate(distinct)}
    embeddings = np.concatenate([clip.encode_text(distinct[start : start + batch_size]).numpy()
                                 for start in range(0, len(distinct), batch_size)]).astype(np.float64)
    return np.array([max(float(embeddings[row[caption]] @ embeddings[row[ref]]) for ref in refs)
                     for caption, refs in zip(captions, references)])


def ref_clip_scores(clip_score: np.ndarray, reference_cosines: np.ndarray) -> np.ndarray:
    """RefCLIPScore: the harmonic mean of CLIPScore and ``max(reference cosine, 0)`` (0 where either is 0)."""
    reference = np.maximum(reference_cosines, 0.0)
    total = clip_score + reference
    return np.divide(2 * clip_score * reference, total, out=np.zeros_like(total), where=total > 0)
