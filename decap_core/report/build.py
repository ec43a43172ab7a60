"""Put a report together from loaded parts: the sample's gap, the ablations, examples, figures, page.

``make_report`` does the work and returns the page, its numbers (``report.json``) and its figures;
writing them is the caller's (``jobs/report.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from decap_core import projection
from decap_core.captioner import Captioner
from decap_core.clip import ClipModel
from decap_core.report import ablations, examples, gap, page, plots
from decap_core.report.sample import SampledInput
from decap_core.toy.zero_shot import encode_texts_batched

FORMAT = "decap-report/1"
TOY_COLUMNS = (("object_recall", "objects named"), ("exact", "exact sets"), ("hallucination", "invented"))
COCO_COLUMNS = (("BLEU-4", "BLEU-4"), ("ROUGE-L", "ROUGE-L"), ("CIDEr-D", "CIDEr-D"))  # shown x100, as papers do


@dataclass(frozen=True)
class RunRows:
    """What the run wrote and what it is judged against: its rows by ``(key, strategy)``, the
    strategies it captioned, each key's reference sentences (and where they came from), the toy truth."""

    rows: Mapping[tuple[str, str], Mapping[str, Any]]
    strategies: Sequence[str]
    references: Mapping[str, Sequence[str]]
    references_source: str
    truths: Mapping[str, frozenset] | None = None


@dataclass(frozen=True)
class Report:
    html: str
    numbers: dict[str, Any]
    figures: dict[str, bytes]  # file name -> PNG


def make_report(clip: ClipModel, captioner: Captioner, sample: Sequence[SampledInput], run: RunRows,
                facts: Mapping[str, Any], taus: Sequence[float] = ablations.DEFAULT_TAUS,
                fractions: Sequence[float] = ablations.DEFAULT_FRACTIONS, example_count: int = 8,
                seed: int = 0) -> Report:
    """The report of ``sample`` (keys the run captioned) with the run's models; ``facts`` head the page."""
    keys = [item.key for item in sample]
    image = torch.stack([item.embedding for item in sample]).float()
    text = encode_texts_batched(clip, [run.references[key][0] for key in keys])
    projected = projection.project_pd(image, captioner.memory.chunks(), captioner.tau)
    numbers = gap.gap_numbers(image, text, projected)
    maps = gap.embedding_maps(image, text, projected, seed)
    judge = ablations.Judge(keys, run.references, run.truths)
    swept = ablations.run_ablations(captioner, image, judge, projection.STRATEGIES, taus, fractions, seed)
    agreed = examples.agreement(swept.run_captions, run.rows, keys)
    shown = examples.make_examples(keys[:example_count], {item.key: item.thumbnail for item in sample},
                                   {key: run.references[key][0] for key in keys}, run.rows, run.strategies,
                                   run.truths)
    panels = [("object_recall", "objects named", plots.percent)] if run.truths is not None else []
    panels.append(("CIDEr-D", "CIDEr-D (x100)", lambda value: f"{value:.1f}"))
    figures = {
        "gap.png": plots.gap_figure(maps, len(keys), centroids=gap.LINEAR_MAPS),
        "ablation-tau.png": plots.ablation_figure(_shown(swept.tau), "pd's tau", lambda x: f"{x:g}", panels,
                                                  f"against tau ({len(keys)} images, whole memory)"),
        "ablation-memory.png": plots.ablation_figure(
            _shown(swept.memory), "memory size (share of its sentences)", lambda x: f"{x:.0%}", panels,
            f"against memory size ({len(keys)} images, tau {captioner.tau:g}; {len(captioner.memory)} "
            "sentences at 100%)"),
    }
    all_facts = {**facts, "sample": f"{len(keys)} keys (seed {seed})", "references": run.references_source,
                 "captions made again agree with the run's rows": _agreement_text(agreed)}
    sections = [
        ("The modality gap", _gap_section(numbers, figures["gap.png"], len(keys))),
        ("Ablations", _ablation_section(swept, figures, run.truths is not None, captioner, len(keys))),
        ("Examples", _examples_intro(run) + page.examples_table(shown, run.strategies)),
    ]
    html_text = page.render_page("decap report", all_facts, sections)
    summary = {"format": FORMAT, "keys": keys, "gap": numbers, "ablations": {"tau": swept.tau, "memory": swept.memory},
               "agreement": agreed, "facts": {k: str(v) for k, v in all_facts.items()}}
    return Report(html_text, summary, figures)


def _shown(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows with their COCO scores x100, as tables and plots show them."""
    return [{**row, **{metric: 100 * row[metric] for metric, _ in COCO_COLUMNS}} for row in rows]


def _agreement_text(agreed: Mapping[str, float]) -> str:
    return ", ".join(f"{strategy} {share:.1%}" for strategy, share in agreed.items()) or "-"


def _gap_section(numbers: Mapping[str, Mapping[str, float]], png: bytes, count: int) -> str:
    rows = [[name, *(page.Num(f"{values[m]:.3f}") for m in ("centroid_distance", "matched_cosine")),
             page.Num(f"{values['own_text_nearest']:.1%}")]
            for name, values in (("image embeddings", numbers["image"]), ("projected (pd)", numbers["projected"]))]
    intro = (f"<p>{count} sampled images, the CLIP text embedding of each one's reference, and each image's "
             "pd projection onto the support memory. Centroid distance: between the mean of the row's embeddings "
             "and the mean of the texts'. Matched cosine: mean cosine of an embedding with its own text. Own text "
             "nearest: share whose nearest text among the sample's is its own.</p>")
    table = page.table(["against the texts", "centroid distance", "matched cosine", "own text nearest"], rows)
    caption = ("Fitted on all three sets at once: PCA; the gap's own axis (x: the line from the texts' mean to "
               "the images' mean, chosen from these points, so it shows how far apart the means are; y: the first "
               "principal component of the rest); t-SNE. Images (red circles) form their own cloud; projections "
               "(green triangles) should sit in the text cloud (blue squares), near their own texts. Large "
               "outlined markers: each set's mean.")
    return intro + table + page.figure(page.Figure("image, text and projected embeddings", png, caption))


def _ablation_section(swept: ablations.Ablations, figures: Mapping[str, bytes], toy: bool, captioner: Captioner,
                      count: int) -> str:
    columns = [*(TOY_COLUMNS if toy else ()), *COCO_COLUMNS]
    labels = [label for _, label in columns]

    def rows(sweep: list[dict[str, Any]], x_format) -> list[list[Any]]:
        return [[row["strategy"], x_format(row["x"]) if row["x"] is not None else "any (flat)",
                 *(page.Num(f"{row[m]:.1%}" if (m, label) in TOY_COLUMNS else f"{row[m]:.1f}")  # COCO x100
                   for m, label in columns)] for row in _shown(sweep)]

    intro = (f"<p>The same {count} images captioned again in process under each setting (exact pd over the "
             f"memory, the run's decoding settings), scored against their references (COCO scores x100, through "
             f"pycocoevalcap){' and the toy truth' if toy else ''}. Smaller memories are seeded random subsets of "
             f"the run's {len(captioner.memory)} sentences. Flat lines are baselines that the swept value does not "
             "change.</p>")
    tau_caption = "pd against its softmax temperature; nnd, clipre and vd do not use tau."
    memory_caption = f"pd (tau {captioner.tau:g}), nnd and clipre against the memory's size; vd reads no memory."
    return (intro + page.figure(page.Figure("against tau", figures["ablation-tau.png"], tau_caption))
            + page.table(["strategy", "tau", *labels], rows(swept.tau, lambda x: f"{x:g}"))
            + page.figure(page.Figure("against memory size", figures["ablation-memory.png"], memory_caption))
            + page.table(["strategy", "memory", *labels], rows(swept.memory, lambda x: f"{x:.0%}")))


def _examples_intro(run: RunRows) -> str:
    marks = " A tick: the caption names exactly the image's objects (toy truth)." if run.truths is not None else ""
    return (f"<p>The run's own captions (its Parquet rows) for the first sampled keys, with the memory texts "
            f"nearest to each image and their pd weights.{marks}</p>")
