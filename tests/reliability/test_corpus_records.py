"""Bad corpus records, one at a time: each is dead-lettered with its reason and every good record is still read."""
import json
import random
import string
import time

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from decap_core import corpus
from decap_core.dead_letters import DeadLetter
from decap_core.textnorm import LengthLimits, NormalisationOptions, normalise

GOOD = [f"a small red circle number {i} beside a big blue square" for i in range(400)]
LIMITS = LengthLimits(context_length=77)


def read(path) -> tuple[list[str], list[DeadLetter]]:
    """The kept sentences' texts and the dead letters of one corpus file, as build-memory reads them."""
    kept, dead = [], []
    for record in corpus.read_records(str(path)):
        if not isinstance(record, DeadLetter):
            record = corpus.prepare(record, NormalisationOptions(), LIMITS)
        (dead if isinstance(record, DeadLetter) else kept).append(record if isinstance(record, DeadLetter)
                                                                  else record.text)
    return kept, dead


def lines_bytes(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def test_a_truncated_single_frame_zstd_file_is_a_dead_letter_not_an_empty_success(tmp_path):
    data = zstandard.ZstdCompressor().compress(lines_bytes(GOOD))
    (tmp_path / "cut.txt.zst").write_bytes(data[: len(data) // 2])
    kept, dead = read(tmp_path / "cut.txt.zst")
    assert [(d.stage, d.error) for d in dead] == [("read", "unreadable_file")] and "cut short" in dead[0].detail
    assert set(kept) <= set(GOOD)


def test_a_truncated_streamed_zstd_file_keeps_whole_lines_only_and_says_it_was_cut(tmp_path):
    """Several frames (as streaming writers make), the last cut mid-line: no fragment becomes a sentence."""
    text = lines_bytes([f"{line} {'and a green star ' * 3}" for line in GOOD] * 40)  # 1.7 MB: blocks inside frames
    compressor = zstandard.ZstdCompressor()
    frames = b"".join(compressor.compress(text[i:i + 300_000]) for i in range(0, len(text), 300_000))
    (tmp_path / "stream.txt.zst").write_bytes(frames[: int(len(frames) * 0.7)])
    kept, dead = read(tmp_path / "stream.txt.zst")
    whole = {normalise(line) for line in text.decode().splitlines()}
    assert kept and set(kept) <= whole, [k for k in kept if k not in whole][:2]  # every kept line is a whole line
    assert [d.error for d in dead] == ["unreadable_file"]


def test_garbage_zstd_is_a_dead_letter(tmp_path):
    (tmp_path / "garbage.txt.zst").write_bytes(b"\x28\xb5\x2f\xfd" + bytes(range(256)) * 4)
    kept, dead = read(tmp_path / "garbage.txt.zst")
    assert kept == [] and [d.error for d in dead] == ["unreadable_file"]


def test_jsonl_lone_surrogate_and_deep_nesting_are_dead_letters_and_the_rest_is_kept(tmp_path):
    rows = [json.dumps({"text": GOOD[0]}), '{"text": "\\ud800 a lone surrogate"}',
            '{"text": ' + "[" * 200_000 + "]" * 200_000 + "}", json.dumps({"text": GOOD[1]})]
    (tmp_path / "bad.jsonl").write_text("\n".join(rows) + "\n")
    kept, dead = read(tmp_path / "bad.jsonl")
    assert kept == GOOD[:2]
    assert [(d.key.rsplit("/", 1)[-1], d.error) for d in dead] == [("bad.jsonl:2", "invalid_unicode"),
                                                                    ("bad.jsonl:3", "invalid_json")]


def test_one_unbroken_200000_letter_line_is_refused_quickly(tmp_path):
    rng = random.Random(0)
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(200_000))
    (tmp_path / "long.txt").write_text(f"{GOOD[0]}\n{word}\n{GOOD[1]}\n")
    started = time.perf_counter()
    kept, dead = read(tmp_path / "long.txt")
    assert time.perf_counter() - started < 30  # BPE of the word itself took minutes (quadratic in its length)
    assert kept == GOOD[:2] and [(d.stage, d.error) for d in dead] == [("filter", "exceeds_clip_context")]


def test_a_line_over_the_byte_limit_is_refused_unread_and_the_next_line_kept(tmp_path):
    (tmp_path / "huge.txt").write_bytes(lines_bytes([GOOD[0], "word " * (corpus.MAX_LINE_BYTES // 4), GOOD[1]]))
    kept, dead = read(tmp_path / "huge.txt")
    assert kept == GOOD[:2]
    assert [(d.key.rsplit(":", 1)[-1], d.error) for d in dead] == [("2", "line_too_long")]


def test_one_invalid_utf8_parquet_cell_loses_only_that_cell(tmp_path):
    cells = [text.encode() for text in GOOD[:300]]
    cells[150] = b"\xff\xfe not utf-8"
    table = pa.table({"text": pa.array(cells, pa.binary()).view(pa.string())})  # written without validation
    pq.write_table(table, tmp_path / "cells.parquet")
    kept, dead = read(tmp_path / "cells.parquet")
    assert kept == GOOD[:150] + GOOD[151:300]
    assert [(d.key.rsplit(":", 1)[-1], d.error) for d in dead] == [("150", "undecodable_bytes")]


def test_bom_zero_width_and_nul_characters_do_not_make_new_sentences():
    variants = ["\ufeffa small red circle", "a small\u200b red circle", "a small red\x00 circle",
                "a small red\u00ad circle", " a small red circle\t"]
    assert {normalise(v) for v in variants} == {"a small red circle"}
    assert normalise("café") == normalise("cafe\u0301") == "café"  # NFC still joins combining accents


def test_of_repeats_the_first_line_of_the_first_file_is_kept():
    sources = ["b.txt:1", "a.txt:41", "a.txt:6", "a.txt:100"]
    assert min(sources, key=corpus.source_order) == "a.txt:6"
