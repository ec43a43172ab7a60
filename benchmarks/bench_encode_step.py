"""The encoding step of build-memory: Beam's RunInference against a DoFn with a ``Shared`` CLIP.

Both run the same length-sorted token batches of toy-grammar sentences through the toy CLIP
(random weights: throughput only) on the in-process FnApiRunner, each in a fresh process:

- shared DoFn (what the pipelines use): batches made by the pipeline (length-sorted within a
  shard), one CLIP per worker process through ``apache_beam.utils.shared``;
- RunInference: the same sentences as single elements, batched by RunInference's own
  ``BatchElements`` (fixed size, as build-memory's batches), through a ``ModelHandler`` that
  loads the CLIP once per worker and encodes with packed tokens.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any, Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from decap_core.clip import ClipModel, encode_tokens_packed, load_clip
from decap_core.corpus import Sentence
from decap_core.toy import world as toyworld
from decap_core.vocab import clip_token_ids, pad_batch
from pipelines.common import EncodeText, batches_of

MODEL = "toy-clip"
BATCH_SIZE = 512


class PackedClipHandler(ModelHandler[np.ndarray, PredictionResult, ClipModel]):
    """Token rows in, unit-norm text embeddings out, encoded with packed tokens."""

    def load_model(self) -> ClipModel:
        return load_clip(MODEL)

    def run_inference(self, batch: Sequence[np.ndarray], model: ClipModel,
                      inference_args=None) -> Iterable[PredictionResult]:
        import torch

        with torch.no_grad():
            embeddings = encode_tokens_packed(model.model, torch.from_numpy(pad_batch(batch))).numpy()
        return [PredictionResult(row, embedding) for row, embedding in zip(batch, embeddings)]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": BATCH_SIZE, "max_batch_size": BATCH_SIZE}


def sorted_token_rows(count: int) -> list[list[int]]:
    """Distinct toy sentences as CLIP token rows, sorted by length (as build-memory sorts a shard)."""
    texts = sorted(set(toyworld.sentences(0, "memory", count)))
    return sorted((clip_token_ids(text) for text in texts), key=len)


def encode_with_shared_dofn(rows: list[list[int]]) -> int:
    sentences = [Sentence(str(i), "", "", row) for i, row in enumerate(rows)]
    batches = [(i, list(batch)) for i, batch in enumerate(batches_of(sentences, BATCH_SIZE))]
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        _ = (pipeline
             | "Batches" >> beam.Create(batches, reshuffle=False)
             | "Encode" >> EncodeText(MODEL)
             | "Count" >> beam.combiners.Count.Globally())
    return len(rows)


def encode_with_run_inference(rows: list[list[int]]) -> int:
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        _ = (pipeline
             | "Rows" >> beam.Create([np.asarray(row, dtype=np.int64) for row in rows], reshuffle=False)
             | "Encode" >> RunInference(PackedClipHandler())
             | "Count" >> beam.combiners.Count.Globally())
    return len(rows)


def run(sentences: int = 100_000) -> str:
    results = {side: _measure(side, sentences) for side in ("shared", "runinference")}
    base = results["shared"]
    lines = [
        "## Encoding step: DoFn with a Shared CLIP vs RunInference (build-memory's choice)",
        "",
        f"{base['rows']:,} distinct toy sentences, token rows sorted by length, batches of {BATCH_SIZE}, "
        f"toy CLIP (random weights), FnApiRunner, each side in a fresh process.",
        "",
        "| encoding step | wall s | sentences/s | vs shared DoFn |",
        "|---|---|---|---|",
    ]
    for side, label in (("shared", "DoFn + `Shared` CLIP, pipeline-made batches (used)"),
                        ("runinference", "`RunInference` + `ModelHandler`, `BatchElements` batches")):
        rate = results[side]["rows"] / results[side]["seconds"]
        lines.append(f"| {label} | {results[side]['seconds']:.1f} | {rate:,.0f} | "
                     f"{base['seconds'] / results[side]['seconds']:.2f}x |")
    return "\n".join(lines) + "\n"


def _measure(side: str, sentences: int) -> dict:
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_encode_step", side, str(sentences)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _side_main(side: str, sentences: int) -> None:
    rows = sorted_token_rows(sentences)
    encode = encode_with_shared_dofn if side == "shared" else encode_with_run_inference
    started = time.perf_counter()
    encoded = encode(rows)
    print(json.dumps({"rows": encoded, "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    if len(sys.argv) == 3:
        _side_main(sys.argv[1], int(sys.argv[2]))
    else:
        print(run())
