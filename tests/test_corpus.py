"""Corpus files to records: every format and compression, and every reason a record is refused."""
import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from decap_core import corpus
from decap_core.dead_letters import DeadLetter
from decap_core.textnorm import LengthLimits, NormalisationOptions, sentence_id
from decap_core.vocab import clip_token_ids

LINES = ["a red circle", "  two   blue squares ", "", "a green star"]


def as_tuples(records):
    """Records as ``(kind, source or key, text or reason)``, the URL cut to the file name."""
    out = []
    for record in records:
        if isinstance(record, DeadLetter):
            out.append(("dead", record.key.rsplit("/", 1)[-1], record.stage, record.error))
        else:
            out.append(("raw", record.source.rsplit("/", 1)[-1], record.text))
    return out


def expected_lines(name):
    return [("raw", f"{name}:{number}", line) for number, line in enumerate(LINES, start=1)]


@pytest.mark.parametrize("name, compress", [
    ("plain.txt", lambda data: data),
    ("plain.txt.gz", gzip.compress),
    ("plain.txt.zst", lambda data: zstandard.ZstdCompressor().compress(data)),
])
def test_text_lines_are_read_as_they_are_with_one_based_line_numbers(tmp_path, name, compress):
    (tmp_path / name).write_bytes(compress(("\n".join(LINES) + "\r\n").encode()))
    assert as_tuples(corpus.read_records(str(tmp_path / name))) == expected_lines(name)


def test_a_zstd_file_of_several_frames_is_read_to_the_end(tmp_path):
    frames = [zstandard.ZstdCompressor().compress(f"{line}\n".encode()) for line in LINES]
    (tmp_path / "frames.txt.zst").write_bytes(b"".join(frames))
    assert as_tuples(corpus.read_records(str(tmp_path / "frames.txt.zst"))) == expected_lines("frames.txt.zst")


@pytest.mark.parametrize("name, compress", [("rows.jsonl", lambda data: data), ("rows.jsonl.gz", gzip.compress),
                                            ("rows.jsonl.zst", lambda data: zstandard.ZstdCompressor().compress(data))])
def test_jsonl_rows_take_the_named_field(tmp_path, name, compress):
    rows = [json.dumps({"caption": line, "other": 1}) if line else "" for line in LINES]  # a blank line stays blank
    (tmp_path / name).write_bytes(compress(("\n".join(rows) + "\n").encode()))
    assert as_tuples(corpus.read_records(str(tmp_path / name), field="caption")) == expected_lines(name)


def test_jsonl_refusals(tmp_path):
    rows = ['{"text": "a red circle"}', "{not json", '["a", "list"]', '{"caption": "no text"}', '{"text": 7}',
            '{"text": null}']
    (tmp_path / "bad.jsonl").write_text("\n".join(rows) + "\n")
    assert as_tuples(corpus.read_records(str(tmp_path / "bad.jsonl"))) == [
        ("raw", "bad.jsonl:1", "a red circle"),
        ("dead", "bad.jsonl:2", "read", "invalid_json"),
        ("dead", "bad.jsonl:3", "read", "missing_field"),
        ("dead", "bad.jsonl:4", "read", "missing_field"),
        ("dead", "bad.jsonl:5", "read", "not_a_string"),
        ("dead", "bad.jsonl:6", "read", "not_a_string"),
    ]


def test_undecodable_bytes_refuse_only_their_line(tmp_path):
    (tmp_path / "mixed.txt").write_bytes(b"a red circle\na \xff star\na blue square\n")
    assert as_tuples(corpus.read_records(str(tmp_path / "mixed.txt"))) == [
        ("raw", "mixed.txt:1", "a red circle"),
        ("dead", "mixed.txt:2", "read", "undecodable_bytes"),
        ("raw", "mixed.txt:3", "a blue square"),
    ]


def test_parquet_rows_are_zero_based_and_nulls_and_numbers_are_refused(tmp_path):
    pq.write_table(pa.table({"text": ["a red circle", None, "a green star"]}), tmp_path / "t.parquet", row_group_size=2)
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "numbers.parquet")
    assert as_tuples(corpus.read_records(str(tmp_path / "t.parquet"))) == [
        ("raw", "t.parquet:0", "a red circle"), ("dead", "t.parquet:1", "read", "not_a_string"),
        ("raw", "t.parquet:2", "a green star")]
    assert [r.error for r in corpus.read_records(str(tmp_path / "numbers.parquet"))] == ["not_a_string"] * 2
    assert as_tuples(corpus.read_records(str(tmp_path / "t.parquet"), field="caption")) == [
        ("dead", "t.parquet", "read", "missing_column")]


@pytest.mark.parametrize("name, compress", [("c.parquet.gz", gzip.compress),
                                            ("c.parquet.zst", lambda data: zstandard.ZstdCompressor().compress(data))])
def test_compressed_parquet(tmp_path, name, compress):
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": LINES}), buffer)
    (tmp_path / name).write_bytes(compress(buffer.getvalue()))
    assert as_tuples(corpus.read_records(str(tmp_path / name))) == [
        ("raw", f"{name}:{row}", line) for row, line in enumerate(LINES)]


def test_unknown_formats_and_damaged_files_are_one_letter_naming_the_file(tmp_path):
    (tmp_path / "notes.csv").write_text("a,b\n")
    (tmp_path / "cut.txt.gz").write_bytes(gzip.compress(b"a red circle\n" * 100)[:30])
    zst = zstandard.ZstdCompressor().compress(b"a red circle\n" * 100)
    (tmp_path / "cut.txt.zst").write_bytes(zst[:9])
    (tmp_path / "damaged.txt.zst").write_bytes(zst[:10] + bytes(10) + zst[20:])
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    for name, reason in [("notes.csv", "unknown_format"), ("cut.txt.gz", "unreadable_file"),
                         ("cut.txt.zst", "unreadable_file"), ("damaged.txt.zst", "unreadable_file"),
                         ("junk.parquet", "unreadable_file")]:
        dead = [r for r in corpus.read_records(str(tmp_path / name)) if isinstance(r, DeadLetter)]
        assert [(d.key, d.stage, d.error) for d in dead] == [(str(tmp_path / name), "read", reason)], name


def test_file_format_reads_compression_from_the_name():
    assert corpus.file_format("gs://b/part-1.jsonl.zst") == ("jsonl", "zstd")
    assert corpus.file_format("a.txt.gz") == ("txt", "gzip")
    assert corpus.file_format("a.parquet") == ("parquet", None)


def test_prepare_normalises_gives_the_id_and_refuses_by_length():
    limits = LengthLimits(context_length=12, min_tokens=4, max_tokens=8)
    options = NormalisationOptions(lowercase=True)
    kept = corpus.prepare(corpus.RawText("  A  Red\tCircle ", "f.txt:1"), options, limits)
    assert kept == corpus.Sentence(sentence_id("a red circle"), "a red circle", "f.txt:1",
                                   tuple(clip_token_ids("a red circle")))
    refusals = {text: corpus.prepare(corpus.RawText(text, "f.txt:2"), options, limits)
                for text in [" \t ", "red", "a red circle and a blue square", " ".join(["red"] * 20)]}
    assert [(d.stage, d.error) for d in refusals.values()] == [
        ("normalise", "empty"), ("filter", "too_short"), ("filter", "too_long"), ("filter", "exceeds_clip_context")]
