"""build-memory on real prose nobody here wrote: the licence texts every Debian system ships.

The expected counts are worked out here from the files alone (whitespace collapsed, NFC, open_clip's
own tokenizer for the lengths), not by decap's code: read = kept + duplicates + dead, line for line.
Several licences ship twice under two names (``GPL`` and ``GPL-3``), so repeats cross files.
"""
import shutil
import unicodedata
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from open_clip.tokenizer import SimpleTokenizer

from decap_core.memory_files import read_manifest
from jobs import cli

LICENCES = Path("/usr/share/common-licenses")
CONTEXT = 32  # toy-clip's text context, start and end tokens included


@pytest.mark.skipif(not LICENCES.is_dir(), reason="Debian's common licences are not installed")
def test_debian_licences_are_counted_line_for_line(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for path in sorted(LICENCES.iterdir()):
        shutil.copyfile(path, corpus / f"{path.name}.txt")  # symlinked names become real repeats
    tokenizer = SimpleTokenizer()
    outcome: Counter = Counter()
    first_source: dict[str, str] = {}
    for path in sorted(corpus.iterdir()):
        lines = path.read_text(encoding="utf-8").removesuffix("\n").split("\n")  # form feeds stay inside lines
        for number, line in enumerate(lines, start=1):
            text = " ".join(unicodedata.normalize("NFC", line).split())
            tokens = len(tokenizer.encode(text)) + 2 if text else 0
            kind = "empty" if not text else "exceeds_clip_context" if tokens > CONTEXT else (
                "too_short" if tokens < 3 else "kept")
            outcome[kind] += 1
            if kind == "kept":
                first_source.setdefault(text, f"{path.name}:{number}")
    assert cli.main(["build-memory", "--input", str(corpus / "*.txt"), "--output", str(tmp_path / "memory"),
                     "--num-shards", "4"]) == 0, capsys.readouterr().err
    counts = read_manifest(str(tmp_path / "memory")).counts
    assert counts.read == sum(outcome.values()) == counts.kept + counts.duplicates + counts.dead
    assert (counts.kept, counts.duplicates) == (len(first_source), outcome["kept"] - len(first_source))
    assert counts.dead_by_reason == {k: n for k, n in sorted(outcome.items()) if k != "kept" and n}
    rows = [row for shard in sorted((tmp_path / "memory").glob("memory-*.parquet"))
            for row in pq.read_table(shard, columns=["text", "source"]).to_pylist()]
    assert {row["text"]: row["source"].rsplit("/", 1)[-1] for row in rows} == first_source
