"""build-memory end to end on small real files, on Beam's in-process runner."""
import gzip
import json

import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import zstandard
from safetensors.torch import save_file

from decap_core.errors import DecapError
from decap_core.memory_files import iter_chunks, load_memory, read_manifest
from decap_core.toy import world as toyworld
from jobs import cli
from pipelines.build_memory import run

OVERLONG = " ".join(["circle"] * 40)  # more tokens than toy-clip's 32-token context


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three formats, two compressions, duplicates across files, and every kind of bad input."""
    root = tmp_path_factory.mktemp("corpus")
    good = list(dict.fromkeys(toyworld.sentences(3, "memory", 160)))
    first, second, third = good[:70], good[50:120], good[120:]  # 20 sentences in both txt and jsonl
    (root / "a.txt").write_bytes(
        ("\n".join(first[:35]) + "\n\n   \t\n").encode() + b"a red \xff circle\n"
        + (OVERLONG + "\n" + "\n".join(first[35:]) + "\n").encode()
    )
    rows = [json.dumps({"text": t}) for t in second] + ['{"caption": "a blue star"}', "{not json"]
    with gzip.open(root / "b.jsonl.gz", "wt") as handle:
        handle.write("\n".join(rows) + "\n")
    pq.write_table(pa.table({"text": third + [None]}), root / "c.parquet")
    (root / "d.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(f"  {first[0]}  \n".encode()))
    torch.manual_seed(0)
    model = open_clip.create_model("toy-clip", pretrained=None).eval()
    checkpoint = root / "toy-clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    return root, good, str(checkpoint), model


def build(corpus, output, *extra):
    root, _, checkpoint, _ = corpus
    return run(["--input", str(root / "*.txt"), str(root / "*.txt.zst"), str(root / "b.jsonl.gz"),
                str(root / "c.parquet"), "--output", str(output), "--clip-checkpoint", checkpoint,
                "--num-shards", "3", "--batch-size", "16", "--runner=FnApiRunner", *extra])


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("memory")
    return output, build(corpus, output, "--index", "flat")


def test_every_good_sentence_is_kept_once_and_bad_inputs_are_dead_lettered(corpus, built):
    root, good, _, _ = corpus
    output, manifest = built
    memory = load_memory(str(output))
    assert sorted(memory.texts) == sorted(good)
    letters = [json.loads(line) for path in sorted((output / "errors").glob("*.jsonl"))
               for line in path.read_text().splitlines()]
    reasons = sorted((letter["key"].rsplit("/", 1)[-1], letter["stage"], letter["error"]) for letter in letters)
    assert reasons == [
        ("a.txt:36", "normalise", "empty"),
        ("a.txt:37", "normalise", "empty"),
        ("a.txt:38", "read", "undecodable_bytes"),
        ("a.txt:39", "filter", "exceeds_clip_context"),
        ("b.jsonl.gz:71", "read", "missing_field"),
        ("b.jsonl.gz:72", "read", "invalid_json"),
        (f"c.parquet:{len(good) - 120}", "read", "not_a_string"),
    ]
    counts = manifest["counts"]
    assert counts["dead"] == 7 and counts["kept"] == len(good) == manifest["rows"]
    assert counts["duplicates"] == 21  # 20 shared by a.txt and b.jsonl.gz, one in d.txt.zst
    assert counts["read"] == counts["kept"] + counts["duplicates"] + counts["dead"]


def test_duplicates_keep_the_first_source(corpus, built):
    root, good, _, _ = corpus
    output, _ = built
    table = pq.read_table(output / "memory-00000-of-00003.parquet").to_pylist()
    table += [r for i in (1, 2) for r in pq.read_table(output / f"memory-0000{i}-of-00003.parquet").to_pylist()]
    sources = {row["text"]: row["source"].rsplit("/", 1)[-1] for row in table}
    assert sources[good[0]] == "a.txt:1"  # also in d.txt.zst
    assert sources[good[60]].startswith("a.txt:")  # also in b.jsonl.gz


def test_shards_are_sorted_by_id_and_embeddings_equal_open_clip(corpus, built):
    _, _, _, model = corpus
    output, manifest = built
    assert [s["name"] for s in manifest["shards"]] == [f"memory-0000{i}-of-00003.parquet" for i in range(3)]
    for shard in manifest["shards"]:
        ids = pq.read_table(output / shard["name"], columns=["id"]).column("id").to_pylist()
        assert ids == sorted(ids) and len(ids) == shard["rows"]
    memory = load_memory(str(output), clip_fingerprint=manifest["clip_fingerprint"])
    with torch.no_grad():
        expected = F.normalize(model.encode_text(open_clip.get_tokenizer("toy-clip")(memory.texts)), dim=-1)
    torch.testing.assert_close(memory.embeddings, expected, atol=1e-5, rtol=0)
    assert manifest["index"]["factory"] == "Flat" and manifest["index"]["recall_at_10"] == 1.0
    assert (output / "index.faiss").exists()
    assert sum(len(texts) for texts, _ in iter_chunks(str(output))) == manifest["rows"]


def test_rerun_gives_identical_shards_and_another_shard_count_replaces_them(corpus, built, tmp_path):
    output, manifest = built
    again = build(corpus, tmp_path)
    for shard in manifest["shards"]:
        assert (tmp_path / shard["name"]).read_bytes() == (output / shard["name"]).read_bytes()
    assert again["counts"] == manifest["counts"] and again["index"] is None
    root, _, checkpoint, _ = corpus
    run(["--input", str(root / "a.txt"), "--output", str(tmp_path), "--clip-checkpoint", checkpoint,
         "--num-shards", "2", "--runner=FnApiRunner"])
    assert sorted(p.name for p in tmp_path.glob("memory-*")) == [f"memory-0000{i}-of-00002.parquet" for i in range(2)]
    assert read_manifest(str(tmp_path)).plan.num_shards == 2


def test_user_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["build-memory", "--input", str(tmp_path / "none-*.txt"), "--output", str(tmp_path)]) == 1
    assert "no input files match" in capsys.readouterr().err
    with pytest.raises(DecapError, match="not a built support memory"):
        load_memory(str(tmp_path))
