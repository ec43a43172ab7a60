"""Score a captions output (decap caption's directory) against references, per strategy.

Run as ``decap evaluate --captions DIR --references URL --output DIR``. Metrics:

- BLEU-1..4, METEOR, ROUGE-L and CIDEr-D through pycocoevalcap 1.2 (its PTB tokenizer and METEOR
  run on Java); SPICE is left out: it downloads Stanford CoreNLP models on first use.
- CLIPScore, 2.5 * max(cos, 0), from each row's clip_score: the cosine that the captioning run's
  own CLIP gave the image embedding and the caption it wrote (so the images are not re-encoded).
  Captions are encoded as written, without the prompt "A photo depicts" of Hessel et al.'s code.
- RefCLIPScore, with --clip-model (and --clip-checkpoint): the harmonic mean of CLIPScore and the
  caption's best cosine with its references' text embeddings; that CLIP must be the run's (its
  fingerprint must match the rows').
- With --toy-truth (the toy archive's Parquet, whose captions name every object): objects named,
  exact sets and invented objects, as decap demo scores them.

With --ood-captions (and --ood-references, --ood-toy-truth) a second captions output, of the same
models on an out-of-distribution set, is scored the same way, and metrics.md puts the two sets side
by side: the robustness table.

Writes metrics.json, metrics.md (Markdown tables), and results-<strategy>.json in COCO's results
format ([{"image_id", "caption"}]) for other tools (results-ood-<strategy>.json for the second set).
"""
from __future__ import annotations

import argparse
import json
import logging
from typing import Any, Sequence

import fsspec
import numpy as np

from decap_core import caption_metrics, captions_files, references
from decap_core.clip import load_clip
from decap_core.errors import DecapError
from decap_core.toy import evaluation
from jobs.flags import add_run_flags

FORMAT = "decap-evaluation/1"
ROW_COLUMNS = ["key", "source", "strategy", "caption", "tau", "clip_score", "clip_fingerprint"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="decap evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(parser, "for RefCLIPScore")
    parser.add_argument("--references", required=True,
                        help="COCO-style .json (images + annotations), or .jsonl / .parquet of key + captions")
    parser.add_argument("--output", required=True, help="directory for metrics.json, metrics.md, results-*.json")
    parser.add_argument("--ood-captions", default=None,
                        help="a captions output of the same models on an out-of-distribution set, scored beside it")
    parser.add_argument("--ood-references", default=None, help="references of the --ood-captions set")
    parser.add_argument("--ood-toy-truth", default=None, help="toy truth of the --ood-captions set")
    parser.add_argument("--allow-unmatched", action="store_true",
                        help="score the keys that have references and count the others (default: an error)")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (a Java process with 2 GB of heap)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(argv)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the flags, score every strategy and write the outputs; returns what metrics.json holds."""
    args = build_parser().parse_args(argv)
    if args.ood_captions is None and (args.ood_references or args.ood_toy_truth):
        raise DecapError("--ood-references and --ood-toy-truth need --ood-captions")
    if args.ood_captions is not None and args.ood_references is None:
        raise DecapError("--ood-captions needs --ood-references")
    rows = captions_files.read_captions(args.captions, ROW_COLUMNS).to_pylist()
    clip = _run_clip(args.clip_model, args.clip_checkpoint, rows)
    strategies, skipped = _score_set(rows, args.references, args.toy_truth, clip, args, f"{args.output}/results")
    report = {"format": FORMAT, "captions": args.captions, "references": args.references,
              "toy_truth": args.toy_truth, "references_skipped_empty": skipped,
              "clip_fingerprint": clip.fingerprint if clip else None, "strategies": strategies}
    tables = [format_markdown(strategies)]
    if args.ood_captions is not None:
        ood_rows = captions_files.read_captions(args.ood_captions, ROW_COLUMNS).to_pylist()
        _same_models(rows, ood_rows)
        ood, skipped = _score_set(ood_rows, args.ood_references, args.ood_toy_truth, clip, args,
                                  f"{args.output}/results-ood")
        report["out_of_distribution"] = {"captions": args.ood_captions, "references": args.ood_references,
                                         "toy_truth": args.ood_toy_truth, "references_skipped_empty": skipped,
                                         "strategies": ood}
        tables += ["Out of distribution:", format_markdown(ood), "Robustness (in distribution / out of distribution):",
                   format_robustness(strategies, ood)]
    _write(f"{args.output}/metrics.json", json.dumps(report, indent=1, sort_keys=True))
    text = "\n\n".join(tables)
    _write(f"{args.output}/metrics.md", text + "\n")
    print(text)
    return report


def _score_set(rows: list[dict[str, Any]], references_url: str, truth_url: str | None, clip,
               args: argparse.Namespace, results_prefix: str) -> tuple[dict[str, Any], int]:
    """Score one captions output per strategy and write its COCO results files; also the empty references skipped."""
    refs = references.read_references(references_url)
    truths = references.object_truths(references.read_references(truth_url)) if truth_url else None
    grouped = _by_strategy(rows)
    matched = {strategy: references.match(refs, [row["key"] for row in chosen], args.allow_unmatched)
               for strategy, chosen in grouped.items()}
    strategies = {strategy: _score_strategy(chosen, matched[strategy], truths, clip, not args.no_meteor)
                  for strategy, chosen in grouped.items()}
    for strategy, chosen in grouped.items():
        _write_results(f"{results_prefix}-{strategy}.json", chosen, matched[strategy])
    return strategies, refs.skipped_empty


def _same_models(rows: list[dict[str, Any]], other: list[dict[str, Any]]) -> None:
    """Two sets compare only if one CLIP made both (the decoder and memory are in their manifests)."""
    first, second = ({row["clip_fingerprint"] for row in chosen} for chosen in (rows, other))
    if first != second:
        raise DecapError(f"--ood-captions were made with CLIP {', '.join(sorted(second))}, "
                         f"--captions with {', '.join(sorted(first))}: the sets do not compare")


def _run_clip(name: str | None, checkpoint: str | None, rows: list[dict[str, Any]]):
    """The run's CLIP for RefCLIPScore, or None without --clip-model; refused unless the rows were made with it."""
    if name is None:
        if checkpoint is not None:
            raise DecapError("--clip-checkpoint needs --clip-model")
        return None
    clip = load_clip(name, checkpoint)
    made_with = sorted({row["clip_fingerprint"] for row in rows})
    if made_with != [clip.fingerprint]:
        raise DecapError(f"the captions were made with CLIP {', '.join(made_with)}, not {clip.fingerprint} "
                         "(--clip-model/--clip-checkpoint)")
    return clip


def _by_strategy(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows per strategy, one per key (``captions_files.first_row_per_key``)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for (_, strategy), row in captions_files.first_row_per_key(rows).items():
        grouped.setdefault(strategy, []).append(row)
    return grouped


def _score_strategy(rows: list[dict[str, Any]], matched: references.Matched, truths: dict | None, clip,
                    meteor: bool) -> dict[str, Any]:
    scored = [row for row in rows if row["key"] in matched.references]
    candidates = {row["key"]: row["caption"] for row in scored}
    refs = {key: list(matched.references[key].captions) for key in candidates}
    clip_score = caption_metrics.clip_scores([row["clip_score"] for row in rows])
    result: dict[str, Any] = {
        "tau": rows[0]["tau"], "rows": len(rows), "scored": len(scored), "unmatched": len(matched.unmatched),
        "references_without_captions": matched.unused,
        **caption_metrics.coco_scores(refs, candidates, meteor=meteor),
        "CLIPScore": float(clip_score.mean()), "RefCLIPScore": None,
    }
    if clip is not None:
        cosines = caption_metrics.max_reference_cosines(clip, list(candidates.values()), list(refs.values()))
        scored_clip = caption_metrics.clip_scores([row["clip_score"] for row in scored])
        result["RefCLIPScore"] = float(np.mean(caption_metrics.ref_clip_scores(scored_clip, cosines)))
    if truths is not None:
        missing = [row["key"] for row in rows if row["key"] not in truths]
        if missing:
            raise DecapError(f"{len(missing)} captioned keys are not in --toy-truth (first: {missing[0]})")
        result["toy"] = evaluation.object_scores([row["caption"] for row in rows], [truths[row["key"]] for row in rows])
    return result


def _write_results(url: str, rows: list[dict[str, Any]], matched: references.Matched) -> None:
    """COCO's results format: the reference's image id where there is one, else the key."""
    results = [{"image_id": matched.references[row["key"]].image_id if row["key"] in matched.references
                else row["key"], "caption": row["caption"]} for row in rows]
    _write(url, json.dumps(results, ensure_ascii=False))


def _write(url: str, text: str) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as handle:
        handle.write(text)


def format_markdown(strategies: dict[str, dict[str, Any]]) -> str:
    """One row per strategy: COCO metrics (x100), CLIPScores and, when scored, the toy world's truth."""
    toy = any("toy" in result for result in strategies.values())
    header = ["strategy", "tau", "scored", *caption_metrics.COCO_METRICS, "CLIPScore", "RefCLIPScore"]
    header += ["objects named", "exact sets", "invented"] if toy else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for strategy, result in strategies.items():
        cells = [strategy, f"{result['tau']:g}" if result["tau"] is not None else "-", str(result["scored"])]
        cells += [f"{100 * result[name]:.1f}" if name in result else "-" for name in caption_metrics.COCO_METRICS]
        cells += [f"{result[name]:.3f}" if result[name] is not None else "-" for name in ("CLIPScore", "RefCLIPScore")]
        if toy:
            cells += [f"{result['toy'][name]:.1%}" for name in ("object_recall", "exact", "hallucination")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_robustness(in_distribution: dict[str, dict[str, Any]], out_of: dict[str, dict[str, Any]]) -> str:
    """Per strategy, the headline metrics of both sets side by side (objects named where toy truth was given)."""
    names = ["CIDEr-D", "BLEU-4", "CLIPScore"] + (["object_recall"] if _has_toy(in_distribution, out_of) else [])
    lines = ["| strategy | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for strategy, result in in_distribution.items():
        other = out_of.get(strategy)
        cells = [f"{_headline(result, name)} / {_headline(other, name) if other else '-'}" for name in names]
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _has_toy(*sets: dict[str, dict[str, Any]]) -> bool:
    return all("toy" in result for chosen in sets for result in chosen.values())


def _headline(result: dict[str, Any], name: str) -> str:
    if name == "object_recall":
        return f"{result['toy']['object_recall']:.1%}"
    if name == "CLIPScore":
        return f"{result[name]:.3f}"
    return f"{100 * result[name]:.1f}"
