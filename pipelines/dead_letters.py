"""The dead-letter branch of a pipeline: refused records -> ``errors/`` files, and their totals.

``WriteDeadLetters`` writes them (``decap_core.dead_letters`` has the format); after every file
is written, ``finish`` deletes an earlier run's files that this run did not write and totals the
reasons for the manifest.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam

from decap_core import artifacts, dead_letters
from decap_core.dead_letters import DeadLetter
from decap_core.metadata_files import FileRows
from pipelines.steps import count


def _key_by_file(letter: Sequence[str], num_files: int) -> tuple[int, tuple[str, ...]]:
    return dead_letters.file_of(letter[0], num_files), tuple(letter)


class _WriteFile(beam.DoFn):
    def __init__(self, output: str, num_files: int):
        self._output, self._num_files = output, num_files

    def process(self, element: tuple[int, Iterable[Sequence[str]]]) -> Iterator[dict[str, Any]]:
        index, letters = element
        letters = sorted(DeadLetter._make(letter) for letter in letters)
        name = dead_letters.relative_path(index, self._num_files)
        dead_letters.write(f"{self._output}/{name}", letters)
        reasons = Counter(letter.error for letter in letters)
        for reason, number in reasons.items():
            count(f"dead_{reason}", number)
        count("dead", len(letters))
        yield {"name": name, "rows": len(letters), "reasons": dict(reasons)}


class WriteDeadLetters(beam.PTransform):
    """``DeadLetter``s (or their plain tuples) -> ``errors/dead-letters-SSSSS-of-NNNNN.jsonl`` under ``output``.

    Letters are spread over ``num_files`` files by a hash of their key and sorted within each;
    only files with letters are written. Yields one ``{"name", "rows", "reasons"}`` per file.
    """

    def __init__(self, output: str, num_files: int):
        super().__init__()
        self._output, self._num_files = output, num_files

    def expand(self, letters):
        return (
            letters
            | "KeyByFile" >> beam.Map(_key_by_file, self._num_files)
            | "GroupByFile" >> beam.GroupByKey()
            | "WriteFiles" >> beam.ParDo(_WriteFile(self._output, self._num_files))
        )


def finish(output: str, written: Sequence[dict[str, Any]]) -> tuple[tuple[FileRows, ...], Counter]:
    """After every file is written: delete stale ones; the files (sorted) and the count of each reason."""
    written = sorted(written, key=lambda item: item["name"])
    artifacts.remove_stale(f"{output}/{dead_letters.DIRECTORY}", dead_letters.GLOB,
                           [item["name"].rsplit("/", 1)[-1] for item in written])
    reasons = sum((Counter(item["reasons"]) for item in written), Counter())
    return tuple(FileRows(item["name"], item["rows"]) for item in written), reasons
