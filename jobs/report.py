"""One HTML page about a captioning run: the modality gap, the paper's ablations, example captions.

Run as ``decap report --captions DIR --clip-checkpoint URL --memory DIR --decoder DIR
--toy-truth URL|--references URL --output DIR``. For ``--sample`` keys of the run (seeded), it
reads their images again from the run's inputs (or ``--images``), embeds them with the run's CLIP
and shows:

- the modality gap: images, their reference texts and their pd projections in PCA, along the gap's
  own axis and in t-SNE, with centroid distance and matched cosine before and after projection;
- caption quality against pd's tau and against memory size (seeded random subsets of the memory),
  per strategy: CIDEr-D against the references (pycocoevalcap; its tokenizer runs on Java) and,
  with --toy-truth, objects named;
- example images with each strategy's caption and the top memory neighbours with their weights.

The references are --references (COCO .json, or .jsonl / .parquet of key + captions, as for decap
evaluate), else the toy truth's captions. The models must be the run's (fingerprints checked).
Writes report.html (self-contained: figures inline), report.json (its numbers) and the figures
as PNG files beside it.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any, Callable, Sequence, TypeVar

import pyarrow as pa

from decap_core import artifacts, captions_files, references
from decap_core.bulk_caption import CaptionModels, CaptionSettings
from decap_core.caption_inputs import plan_shards
from decap_core.devices import default_device
from decap_core.errors import DecapError
from decap_core.image_decoding import ImageLimits
from decap_core.report import ablations, build, sample
from jobs.flags import add_run_flags

ROW_COLUMNS = ["key", "source", "strategy", "caption", "neighbors"]
Read = TypeVar("Read")


def floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="decap report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(parser, "default: its manifest's")
    parser.add_argument("--output", required=True, help="directory for report.html, report.json and the PNGs")
    parser.add_argument("--memory", required=True, help="the run's support memory directory")
    parser.add_argument("--decoder", required=True, help="the run's decoder directory")
    parser.add_argument("--references", default=None,
                        help="COCO-style .json, or .jsonl / .parquet of key + captions (default: the toy truth's)")
    parser.add_argument("--images", action="extend", nargs="+", default=None,
                        help="where the run's inputs are now (fsspec globs; default: the manifest's input shards)")
    parser.add_argument("--sample", type=int, default=300, help="keys to look at (seeded; all when fewer)")
    parser.add_argument("--examples", type=int, default=8, help="example images shown with their captions")
    parser.add_argument("--taus", type=floats, default=list(ablations.DEFAULT_TAUS), help="pd's taus to sweep")
    parser.add_argument("--memory-fractions", type=floats, default=list(ablations.DEFAULT_FRACTIONS),
                        help="memory sizes to sweep, as shares of the memory's sentences")
    parser.add_argument("--seed", type=int, default=0, help="draws the sample, the smaller memories and t-SNE")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(argv)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the flags, make the report and write it; returns what report.json holds."""
    started = time.time()
    args = build_parser().parse_args(argv)
    if args.references is None and args.toy_truth is None:
        raise DecapError("give --references or --toy-truth (the texts the images are paired with and scored against)")
    if args.examples < 0:
        raise DecapError(f"--examples must be 0 or more, got {args.examples}")
    manifest = captions_files.read_manifest(args.captions)
    models = _load_models(args, manifest)
    run_rows = _run_rows(args, manifest)
    keys = sample.choose_keys([key for key, _ in run_rows.rows], args.sample, args.seed)
    shards = _input_shards(args.images, manifest)
    sampled = sample.read_sample(shards, keys, models.clip, models.image_size,
                                 ImageLimits(**manifest["settings"]["image_limits"]))
    facts = {"captions": args.captions, "inputs": ", ".join(args.images or manifest["inputs"]),
             "CLIP": manifest["clip_fingerprint"],
             "memory": f"{args.memory} ({len(models.captioner.memory)} sentences, {manifest['memory_fingerprint']})",
             "decoder": f"{args.decoder} ({manifest['decoder_fingerprint']})",
             "run's settings": json.dumps({k: v for k, v in manifest["settings"].items() if k != "image_limits"})}
    report = build.make_report(models.clip, models.captioner, sampled, run_rows, facts, args.taus,
                               args.memory_fractions, args.examples, args.seed)
    output = args.output.rstrip("/")
    artifacts.begin(output, "report.html")  # the page is written last: it stands for a finished report
    for name, png in report.figures.items():
        artifacts.write_atomically(f"{output}/{name}", lambda handle, png=png: handle.write(png))
    report.numbers["seconds"] = round(time.time() - started, 1)
    artifacts.write_atomically(f"{output}/report.json", lambda h: h.write(json.dumps(report.numbers, indent=1)), "w")
    artifacts.write_atomically(f"{output}/report.html", lambda h: h.write(report.html), "w")
    print(f"report: {output}/report.html ({len(keys)} keys, {report.numbers['seconds']:.0f} s)")
    return report.numbers


def _load_models(args: argparse.Namespace, manifest: dict[str, Any]) -> CaptionModels:
    """The run's CLIP, decoder and memory (exact pd, the run's decoding settings), refused unless they are the run's."""
    settings = manifest["settings"]
    models = CaptionModels.load(CaptionSettings(
        clip_model=args.clip_model or manifest["clip_model"], clip_checkpoint=args.clip_checkpoint,
        decoder=args.decoder.rstrip("/"), memory=args.memory.rstrip("/"), strategies=tuple(settings["strategies"]),
        tau=settings["tau"], beam_width=settings["beam_width"], max_tokens=settings["max_tokens"],
        device=str(default_device(args.device))))
    for name, flag in (("clip", "--clip-model/--clip-checkpoint"), ("memory", "--memory"), ("decoder", "--decoder")):
        made, given = manifest[f"{name}_fingerprint"], models.fingerprints()[f"{name}_fingerprint"]
        if made != given:
            raise DecapError(f"{args.captions} was captioned with {name} {made}, not {given} ({flag})")
    return models


def _run_rows(args: argparse.Namespace, manifest: dict[str, Any]) -> build.RunRows:
    """The run's rows of the keys that have references (and toy truth), and those references."""
    rows = captions_files.first_row_per_key(_read("captions", args.captions,
                                      lambda: captions_files.read_captions(args.captions, ROW_COLUMNS)).to_pylist())
    refs = _read("references", args.references or args.toy_truth,
                 lambda: references.read_references(args.references or args.toy_truth))
    truth = _read("toy truth", args.toy_truth, lambda: references.read_references(args.toy_truth)) \
        if args.toy_truth else None
    truths = references.object_truths(truth) if truth else None
    matched = references.match(refs, [key for key, _ in rows], allow_unmatched=True).references
    usable = {key for key in matched if truths is None or key in truths}
    if not usable:
        raise DecapError(f"no captioned key of {args.captions} is in both --references and --toy-truth")
    return build.RunRows({k: row for k, row in rows.items() if k[0] in usable}, manifest["settings"]["strategies"],
                         {key: matched[key].captions for key in usable},
                         args.references or f"the toy truth's captions ({args.toy_truth})", truths)


def _read(what: str, url: str, read: Callable[[], Read]) -> Read:
    """``read()``, with a damaged file (Parquet that does not parse, a file gone) as one clear error."""
    try:
        return read()
    except (OSError, pa.ArrowException) as error:
        raise DecapError(f"{what} {url} cannot be read ({type(error).__name__}: {error})") from None


def _input_shards(images: list[str] | None, manifest: dict[str, Any]):
    patterns = images or [shard["input_url"] for shard in manifest["shards"]]
    try:
        return plan_shards(patterns)
    except DecapError as error:
        hint = "" if images else " (the run's inputs have moved? --images names where they are now)"
        raise DecapError(f"{error}{hint}") from None


if __name__ == "__main__":
    import sys

    from jobs import cli

    sys.exit(cli.main(["report", *sys.argv[1:]]))
