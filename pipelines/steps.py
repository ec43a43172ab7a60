"""Beam steps every pipeline shares, written to give the same output on every runner.

Beam's ``DaskRunner`` (2.77) runs a pipeline differently from the in-process ``FnApiRunner`` in
three ways that these steps are built around (measured on a ``distributed.LocalCluster``):

- a DoFn's tagged outputs (``with_outputs``) all arrive mixed into each of its outputs, so a
  dead-letter branch receives kept sentences; here a DoFn with several outputs yields
  ``(tag, value)`` pairs and ``Split`` gives each tag its own PCollection;
- it computes only the pipeline's last step and what that step reads: a branch that no later
  step reads never runs; so a pipeline ends with one step that ``Gather``s every branch;
- a side input is computed again inside each worker task that reads it, from the pipeline's
  start (its reads and CLIP encoding included); so no step here reads a side input: ``Gather``
  joins the branches through a ``CoGroupByKey`` instead.

It also leaves its connection to the cluster open after the run; ``pipeline`` closes it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

NAMESPACE = "decap"


@contextlib.contextmanager
def pipeline(options: PipelineOptions) -> Iterator[beam.Pipeline]:
    """A pipeline that runs, and is waited for, when the block ends; then a runner's client
    (the DaskRunner's connection to its scheduler) is closed, even when the run failed."""
    built = beam.Pipeline(options=options)
    try:
        with built:
            yield built
    finally:
        client = getattr(getattr(built, "result", None), "client", None)
        if client is not None:
            client.close()


def count(name: str, value: int = 1) -> None:
    """Add to a Beam counter in the ``decap`` namespace (a no-op on runners without metrics)."""
    beam.metrics.Metrics.counter(NAMESPACE, name).inc(value)


def _select(pair: tuple[str, Any], tag: str) -> Iterator[Any]:
    if pair[0] == tag:
        yield pair[1]


class Split(beam.PTransform):
    """``(tag, value)`` pairs -> ``{tag: PCollection of its values}`` for the tags named."""

    def __init__(self, *tags: str):
        super().__init__()
        self._tags = tags

    def expand(self, pairs):
        return {tag: pairs | f"Select{tag.title()}" >> beam.FlatMap(_select, tag) for tag in self._tags}


def _lists(element: tuple[None, dict[str, Iterable[Any]]], names: Sequence[str]) -> dict[str, list[Any]]:
    return {name: list(element[1][name]) for name in names}


class Gather(beam.PTransform):
    """``{name: PCollection}`` of small summaries -> exactly one ``{name: [values]}``, in no set order.

    The one element comes even when every branch is empty, once every branch has finished.
    """

    def expand(self, branches: dict[str, beam.PCollection]):
        names = sorted(branches)
        keyed = {name: branches[name] | f"Key{name.title()}" >> beam.Map(lambda value: (None, value))
                 for name in names}
        pipeline = next(iter(branches.values())).pipeline
        keyed["_once"] = pipeline | "Once" >> beam.Create([(None, None)])
        return keyed | "Join" >> beam.CoGroupByKey() | "Lists" >> beam.Map(_lists, names)


def batches_of(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    return (items[start : start + size] for start in range(0, len(items), size))
