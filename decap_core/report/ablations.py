"""The paper's ablations on a sample: caption quality against pd's tau and against memory size.

Every setting captions the sample in process with the run's decoder (exact ``pd``, the softmax over
the whole memory, at the run's decoding settings) and is scored with CIDEr-D (and the other COCO
scores, METEOR aside) against the references, and, on the toy world, with objects named. Smaller
memories are seeded random subsets of the run's. Baselines that do not depend on the swept value
are one row with ``x`` None: ``nnd``, ``clipre`` and ``vd`` against tau, ``vd`` against memory size.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from decap_core import caption_metrics
from decap_core.captioner import Captioner
from decap_core.errors import DecapError
from decap_core.memory import SupportMemory
from decap_core.toy import evaluation

DEFAULT_TAUS = (0.003, 0.01, 0.02, 0.03, 0.05, 0.1)
DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
MEMORY_STRATEGIES = ("pd", "nnd", "clipre")  # vd does not read the memory


@dataclass(frozen=True)
class Judge:
    """Scores one caption per key, in ``keys`` order: COCO scores against ``references`` and, with
    ``truths`` (the toy world's object sets), objects named, exact sets and invented objects."""

    keys: Sequence[str]
    references: Mapping[str, Sequence[str]]
    truths: Mapping[str, frozenset] | None = None

    def __call__(self, captions: Sequence[str]) -> dict[str, float]:
        if len(captions) != len(self.keys):
            raise DecapError(f"{len(captions)} captions for {len(self.keys)} keys")
        refs = {key: list(self.references[key]) for key in self.keys}
        scores = caption_metrics.coco_scores(refs, dict(zip(self.keys, captions)), meteor=False)
        if self.truths is not None:
            scores.update(evaluation.object_scores(captions, [self.truths[key] for key in self.keys]))
        return scores


@dataclass(frozen=True)
class Ablations:
    """Rows ``{"strategy", "x", **scores}`` of each sweep, and the captions at the run's own setting
    (its tau, the whole memory) per strategy, to compare with the run's rows."""

    tau: list[dict[str, Any]]
    memory: list[dict[str, Any]]
    run_captions: dict[str, list[str]]


def subsample(memory: SupportMemory, fraction: float, seed: int) -> SupportMemory:
    """A seeded random ``fraction`` of the memory's rows (at least one), in the memory's order."""
    if not 0 < fraction <= 1:
        raise DecapError(f"a memory fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return memory
    count = max(1, round(len(memory) * fraction))
    rows = np.sort(np.random.default_rng(seed).permutation(len(memory))[:count])
    return SupportMemory([memory.texts[i] for i in rows], memory.embeddings[torch.from_numpy(rows)],
                         memory.clip_fingerprint)


def run_ablations(captioner: Captioner, embeddings: torch.Tensor, judge: Judge, strategies: Sequence[str],
                  taus: Sequence[float] = DEFAULT_TAUS, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  seed: int = 0) -> Ablations:
    """Caption and score every setting of both sweeps once (a progress bar over the settings)."""
    if not taus or not fractions:
        raise DecapError("the ablations need at least one tau and one memory fraction")
    if any(not tau > 0 for tau in taus):
        raise DecapError(f"every tau must be above 0, got {', '.join(f'{t:g}' for t in taus)}")
    run_tau = captioner.tau
    memory_swept = [s for s in MEMORY_STRATEGIES if s in strategies]
    settings = [("pd", tau, 1.0) for tau in dict.fromkeys([*taus, run_tau])] if "pd" in strategies else []
    settings += [(s, run_tau, f) for f in fractions for s in memory_swept]
    settings += [(s, run_tau, 1.0) for s in strategies if s != "pd"]
    settings = list(dict.fromkeys(settings))
    memories = {fraction: subsample(captioner.memory, fraction, seed) for fraction in {f for _, _, f in settings}}
    captions: dict[tuple[str, float, float], list[str]] = {}
    scores: dict[tuple[str, float, float], dict[str, float]] = {}
    for setting in tqdm(settings, desc="ablations", unit="setting"):
        strategy, tau, fraction = setting
        captions[setting] = replace(captioner, memory=memories[fraction], tau=tau).caption(embeddings, strategy)
        scores[setting] = judge(captions[setting])
    tau_rows = [{"strategy": "pd", "x": tau, **scores[("pd", tau, 1.0)]} for tau in taus if "pd" in strategies]
    tau_rows += [{"strategy": s, "x": None, **scores[(s, run_tau, 1.0)]} for s in strategies if s != "pd"]
    memory_rows = [{"strategy": s, "x": f, **scores[(s, run_tau, f)]} for s in memory_swept for f in fractions]
    memory_rows += [{"strategy": s, "x": None, **scores[(s, run_tau, 1.0)]} for s in strategies
                    if s not in MEMORY_STRATEGIES]
    return Ablations(tau_rows, memory_rows, {s: captions[(s, run_tau, 1.0)] for s in strategies})
