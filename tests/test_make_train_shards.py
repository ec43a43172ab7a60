"""make-shards end to end on small real corpora and a built memory, on Beam's in-process runner."""
import json
from collections import Counter

import numpy as np
import pytest
import torch
import webdataset as wds

from decap_core import train_shards
from decap_core.clip import load_clip
from decap_core.memory_files import load_memory
from decap_core.textnorm import sentence_id
from decap_core.toy import world as toyworld
from decap_core.vocab import clip_token_ids
from jobs import cli
from pipelines import build_memory, make_train_shards

OVERLONG = " ".join(["circle"] * 40)  # more tokens than toy-clip's 32-token context


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    good = list(dict.fromkeys(toyworld.sentences(5, "decoder", 260)))
    (root / "a.txt").write_text("\n".join(good[:200]) + "\n" + OVERLONG + "\n" + "\n".join(good[150:]) + "\n")
    return root, good


def make(corpus, output, *extra):
    root, _ = corpus
    return make_train_shards.run(["--input", str(root / "a.txt"), "--output", str(output), "--samples-per-shard", "50",
                                  "--validation-samples", "30", "--batch-size", "64", "--runner=FnApiRunner", *extra])


@pytest.fixture(scope="module")
def made(corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("shards")
    return output, make(corpus, output)


def read_all(metadata, split):
    pattern = metadata[f"{split}_pattern"] if split == "train" else metadata["validation_pattern"]
    shard_set = train_shards.ShardSet.open(pattern)
    return [sample for _, sample in train_shards.iter_shards(shard_set.urls, shard_set, skip_bad=False)]


def test_every_sentence_once_in_fixed_size_shards_with_its_embedding(corpus, made):
    _, good = corpus
    output, metadata = made
    assert metadata["samples"] == {"train": len(good) - 30, "valid": 30}
    assert [s["samples"] for s in metadata["shards"]] == [50, 50, 50, 50, len(good) - 30 - 200, 30]
    assert metadata["train_pattern"] == f"{output}/train-{{000000..000004}}.tar"
    train, valid = read_all(metadata, "train"), read_all(metadata, "valid")
    assert sorted(s.text for s in train + valid) == sorted(good)
    assert all(s.key == sentence_id(s.text) and list(s.tokens) == clip_token_ids(s.text) for s in train + valid)
    clip = load_clip("toy-clip")  # the same seeded random weights the pipeline encoded with
    expected = clip.encode_text([s.text for s in valid])
    torch.testing.assert_close(torch.from_numpy(np.stack([s.embedding for s in valid])), expected, atol=2e-3, rtol=0)
    counts = Counter(int(t) for s in train for t in s.tokens)
    assert metadata["token_counts"] == {str(t): n for t, n in sorted(counts.items())}
    letters = [json.loads(line) for path in (output / "errors").glob("*.jsonl")
               for line in path.read_text().splitlines()]
    assert [(letter["stage"], letter["error"]) for letter in letters] == [("filter", "exceeds_clip_context")]


def test_plain_webdataset_reads_the_shards(made):
    _, metadata = made
    dataset = wds.WebDataset(metadata["train_pattern"], shardshuffle=False, empty_check=False).decode()
    samples = list(dataset)
    assert len(samples) == metadata["samples"]["train"]
    first = samples[0]
    assert set(first) >= {"__key__", "txt", "tokens.npy", "emb.npy"}
    assert first["tokens.npy"].dtype == np.int32 and first["emb.npy"].dtype == np.float16
    assert "." not in first["__key__"] and len(first["__key__"]) == 32


def test_rerun_is_byte_identical_and_another_shard_size_replaces_the_shards(corpus, made, tmp_path):
    output, metadata = made
    make(corpus, tmp_path)
    for shard in metadata["shards"]:
        assert (tmp_path / shard["name"]).read_bytes() == (output / shard["name"]).read_bytes()
    left_by_a_killed_run = [tmp_path / "train-000004.tar.tmp-0123456789ab",
                            tmp_path / "errors" / "dead-letters-00000-of-00001.jsonl.tmp-0123456789ab"]
    for path in left_by_a_killed_run:
        path.write_bytes(b"half a file")
    again = make(corpus, tmp_path, "--samples-per-shard", "100", "--seed", "7")
    expected_names = [f"train-00000{i}.tar" for i in range(3)] + ["valid-000000.tar"]
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == expected_names
    assert [path for path in left_by_a_killed_run if path.exists()] == []
    assert train_shards.read_vocab(str(tmp_path)).plan.seed == 7 and again["samples"] == metadata["samples"]
    assert {s.text for s in read_all(again, "valid")} != {s.text for s in read_all(metadata, "valid")}


def test_from_a_memory_reuses_its_embeddings(corpus, tmp_path):
    root, good = corpus
    build_memory.run(["--input", str(root / "a.txt"), "--output", str(tmp_path / "memory"), "--num-shards", "2",
                      "--runner=FnApiRunner"])
    metadata = make_train_shards.run(["--memory", str(tmp_path / "memory"), "--output", str(tmp_path / "shards"),
                                      "--samples-per-shard", "100", "--validation-samples", "20",
                                      "--emb-dtype", "float32", "--max-tokens", "15", "--runner=FnApiRunner"])
    memory = load_memory(str(tmp_path / "memory"))
    by_text = dict(zip(memory.texts, memory.embeddings.numpy()))
    samples = read_all(metadata, "train") + read_all(metadata, "valid")
    too_long = [t for t in good if len(clip_token_ids(t)) > 15]
    assert too_long and len(samples) == len(good) - len(too_long) and metadata["dead"] == len(too_long)
    assert all(np.array_equal(s.embedding, by_text[s.text]) for s in samples)
    assert metadata["clip_fingerprint"] == memory.clip_fingerprint and metadata["source"]["memory_rows"] == len(good)


def test_user_errors_are_one_line(corpus, tmp_path, capsys):
    root, _ = corpus
    assert cli.main(["make-shards", "--input", str(root / "a.txt"), "--memory", str(tmp_path),
                     "--output", str(tmp_path)]) == 1
    assert "exactly one of --input or --memory" in capsys.readouterr().err
    assert cli.main(["make-shards", "--memory", str(tmp_path), "--output", str(tmp_path / "out")]) == 1
    assert "not a built support memory" in capsys.readouterr().err


def test_help_lists_only_the_flags_of_its_own_pipeline(capsys):
    helps = {}
    for command in ("make-shards", "build-memory"):
        with pytest.raises(SystemExit) as stop:
            cli.main([command, "--help"])
        assert stop.value.code == 0
        helps[command] = capsys.readouterr().out
    assert "--samples-per-shard" in helps["make-shards"] and "--input" in helps["make-shards"]
    assert "--num-shards" not in helps["make-shards"] and "--index" not in helps["make-shards"]
    assert "--num-shards" in helps["build-memory"] and "--samples-per-shard" not in helps["build-memory"]
