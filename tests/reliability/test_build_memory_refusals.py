"""build-memory as a user runs it on bad options and bad corpora: one line, nothing lost, the work kept."""
import json

import pyarrow.parquet as pq
import pytest

from decap_core.memory_files import load_memory, read_manifest
from decap_core.toy import world as toyworld
from jobs import cli

SENTENCES = list(dict.fromkeys(toyworld.sentences(0, "memory", 300)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("refusal-corpus")
    (root / "corpus.txt").write_text("\n".join(SENTENCES) + "\n")
    (root / "garbage.txt.zst").write_bytes(b"\x28\xb5\x2f\xfd" + bytes(range(256)) * 4)
    return root


def build_memory(capsys, *argv: str) -> tuple[int, str]:
    """``decap build-memory ARGV`` in process: its exit code and the last line it printed to stderr."""
    capsys.readouterr()
    code = cli.main(["build-memory", *argv])
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    return code, lines[-1] if lines else ""


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--num-shards", "0"], "--num-shards and --batch-size must be at least 1"),
    (["--min-tokens", "20", "--max-tokens", "5"], "need 0 <= min <= max"),
    (["--index", "Junk,Flat"], "faiss cannot build index 'Junk,Flat'"),
    (["--runner=NoSuchRunner"], "--runner=NoSuchRunner: Unexpected pipeline runner"),
    (["--num-shard", "2"], "unknown option --num-shard"),
])
def test_bad_options_are_refused_in_one_line_before_any_work(corpus, tmp_path, capsys, flags, message):
    output = tmp_path / "memory"
    code, line = build_memory(capsys, "--input", str(corpus / "corpus.txt"), "--output", str(output), *flags)
    assert code in (1, 2) and message in line, line
    assert not (output / "manifest.json").exists()
    assert not list(output.glob("memory-*.parquet"))  # refused before the pipeline ran


@pytest.mark.parametrize("url, message", [
    ("s3://bucket/corpus.txt", "Install s3fs to access S3"),
    ("nosuch://bucket/corpus.txt", "Protocol not known: nosuch"),
    ("", "no input files match ''"),
    ("   ", "no input files match '   '"),
])
def test_inputs_without_a_driver_or_matching_nothing_are_one_line(tmp_path, capsys, url, message):
    code, line = build_memory(capsys, "--input", url, "--output", str(tmp_path / "memory"))
    assert code == 1 and message in line, line


def test_unwritable_outputs_are_one_line(corpus, tmp_path, capsys):
    for output, message in [(corpus / "corpus.txt", "is a file, not a directory"),
                            (corpus / "corpus.txt" / "memory", "Not a directory"),
                            ("/proc/decap-memory", "cannot write to /proc/decap-memory"),
                            ("s3://bucket/memory", "Install s3fs to access S3")]:
        code, line = build_memory(capsys, "--input", str(corpus / "corpus.txt"), "--output", str(output))
        assert code == 1 and message in line, (output, line)


def test_an_index_that_cannot_train_keeps_the_finished_memory_and_says_so(corpus, tmp_path, capsys):
    output = tmp_path / "memory"
    code, line = build_memory(capsys, "--input", str(corpus / "corpus.txt"), "--output", str(output),
                              "--num-shards", "2", "--index", "IVF4096,Flat")
    assert code == 1 and "is complete" in line and "has no index" in line, line
    manifest = read_manifest(str(output))
    assert manifest.rows == len(SENTENCES) and manifest.index is None
    assert len(load_memory(str(output))) == len(SENTENCES)  # usable: caption builds an index on load


def test_inputs_that_all_fail_are_an_error_with_their_dead_letters_kept(corpus, tmp_path, capsys):
    output = tmp_path / "memory"
    code, line = build_memory(capsys, "--input", str(corpus / "garbage.txt.zst"), "--output", str(output))
    assert code == 1 and "no sentences kept from 1 input file(s)" in line and "unreadable_file" in line, line
    assert not (output / "manifest.json").exists()  # an empty memory would fail only later, at captioning
    letters = [json.loads(row) for path in (output / "errors").glob("*.jsonl") for row in path.read_text().splitlines()]
    assert [(letter["error"], letter["key"].rsplit("/", 1)[-1]) for letter in letters] == [
        ("unreadable_file", "garbage.txt.zst")]


def test_of_repeated_lines_the_first_by_line_number_is_kept(tmp_path, capsys):
    """Sources compare as (file, line number): line 6 beats line 41 (as strings, ':41' < ':6')."""
    lines = SENTENCES[:50]
    lines[40] = lines[5]
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n")
    code, _ = build_memory(capsys, "--input", str(tmp_path / "c.txt"), "--output", str(tmp_path / "memory"))
    assert code == 0
    rows = [row for path in (tmp_path / "memory").glob("memory-*.parquet")
            for row in pq.read_table(path, columns=["text", "source"]).to_pylist()]
    source = {row["text"]: row["source"] for row in rows}[SENTENCES[5]]
    assert source.endswith("c.txt:6"), source


def test_invisible_characters_do_not_make_new_sentences(tmp_path, capsys):
    sentence = SENTENCES[0]
    variants = [sentence, "\ufeff" + sentence, sentence.replace(" ", " \u200b", 1), sentence.replace(" ", "\x00 ", 1)]
    (tmp_path / "v.txt").write_text("\n".join(variants) + "\n")
    code, _ = build_memory(capsys, "--input", str(tmp_path / "v.txt"), "--output", str(tmp_path / "memory"))
    manifest = read_manifest(str(tmp_path / "memory"))
    assert code == 0 and (manifest.rows, manifest.counts.duplicates) == (1, 3)
    assert load_memory(str(tmp_path / "memory")).texts == [sentence]
