"""A memory and train shards written by the code before the restructuring (tests/fixtures/old-artifacts,
made at commit bdd828d) load with the current code, and the current code writes the same formats."""
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from decap_core import index, memory_files, train_shards
from decap_core.errors import DecapError
from decap_core.textnorm import NORMALISATION_VERSION, sentence_id
from decap_core.vocab import clip_token_ids
from pipelines import build_memory, make_train_shards

OLD = Path(__file__).parent / "fixtures" / "old-artifacts"
DISTINCT = 20  # distinct sentences in corpus.txt


def old_json(name):
    data = json.loads((OLD / name).read_text())
    data.pop("format")
    return data


def samples_of(directory, manifest, split=""):
    """The samples of the shards ``manifest`` lists (of one split, if given), by key."""
    names = [shard.name for shard in manifest.shards if shard.name.startswith(split)]
    shard_set = train_shards.ShardSet.open([str(directory / name) for name in names])
    return {s.key: s for _, s in train_shards.iter_shards(shard_set.urls, shard_set, skip_bad=False)}


def test_the_old_memory_loads():
    manifest = memory_files.read_manifest(str(OLD / "memory"))
    assert manifest.to_json() == old_json("memory/manifest.json")
    assert (manifest.rows, manifest.plan.num_shards, manifest.plan.dim) == (DISTINCT, 2, 128)
    assert manifest.counts.read == manifest.counts.kept + manifest.counts.duplicates + manifest.counts.dead
    memory = memory_files.load_memory(str(OLD / "memory"), clip_fingerprint="toy-clip:random")
    lines = []
    for raw in (OLD / "corpus.txt").read_bytes().splitlines():
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            continue
    assert sorted(memory.texts) == sorted({line for line in lines if line and len(clip_token_ids(line)) <= 32})
    torch.testing.assert_close(memory.embeddings.norm(dim=1), torch.ones(DISTINCT))
    built = index.load_index(str(OLD / "memory" / manifest.index.file))
    _, nearest = built.search(memory.embeddings[:5].numpy(), 1)
    assert built.ntotal == DISTINCT and nearest[:, 0].tolist() == list(range(5))
    rows = memory_files.read_shard(str(OLD / "memory" / manifest.shards[0].name), manifest.plan.dim)
    assert rows.ids == sorted(rows.ids) and len(rows.ids) == manifest.shards[0].rows
    assert rows.ids == [sentence_id(text) for text in rows.texts]


def test_the_old_shards_load():
    manifest = train_shards.read_vocab(str(OLD / "shards"))
    assert manifest.to_json() == old_json("shards/vocab.json")
    samples = samples_of(OLD / "shards", manifest)
    assert len(samples) == sum(manifest.samples.values()) == 18 and manifest.dead == 2
    train = samples_of(OLD / "shards", manifest, "train-").values()
    assert len(train) == manifest.samples["train"] == 14
    assert manifest.token_counts == Counter(int(t) for s in train for t in s.tokens)
    assert len(train_shards.compact_vocab(manifest)) == len(manifest.token_counts) + 2  # pad and unk
    memory = memory_files.load_memory(str(OLD / "memory"))
    by_text = dict(zip(memory.texts, memory.embeddings.numpy()))
    for sample in samples.values():
        np.testing.assert_allclose(sample.embedding, by_text[sample.text], atol=1e-3)


def test_a_damaged_manifest_is_one_clear_error(tmp_path):
    shutil.copytree(OLD / "memory", tmp_path / "memory")
    data = json.loads((tmp_path / "memory" / "manifest.json").read_text())
    del data["counts"]["kept"]
    (tmp_path / "memory" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(DecapError, match="manifest .* is damaged"):
        memory_files.load_memory(str(tmp_path / "memory"))


def test_the_current_code_writes_what_the_old_code_wrote(tmp_path):
    """The commands that made the fixture, run again: the same JSON (but for paths) and the same rows."""
    build_memory.run(["--input", str(OLD / "corpus.txt"), "--output", str(tmp_path / "memory"), "--num-shards", "2",
                      "--batch-size", "8", "--index", "flat"])
    make_train_shards.run(["--memory", str(tmp_path / "memory"), "--output", str(tmp_path / "shards"),
                           "--samples-per-shard", "6", "--validation-samples", "4", "--max-tokens", "16"])
    # paths differ, and so does the file each dead letter goes to: a hash of its key, the input's path and line
    for name, paths in (("memory/manifest.json", ("inputs", "dead_letters")),
                        ("shards/vocab.json", ("source", "train_pattern", "validation_pattern"))):
        new, old = json.loads((tmp_path / name).read_text()), json.loads((OLD / name).read_text())
        old["normalisation"]["version"] = NORMALISATION_VERSION  # nfc-ws-2 changed no line of the fixture's corpus
        assert {k: v for k, v in new.items() if k not in paths} == {k: v for k, v in old.items() if k not in paths}
        assert sorted(new) == sorted(old)
    for shard in memory_files.read_manifest(str(OLD / "memory")).shards:
        new, old = (pq.read_table(root / "memory" / shard.name).to_pylist() for root in (tmp_path, OLD))
        assert [(r["id"], r["text"]) for r in new] == [(r["id"], r["text"]) for r in old]
        np.testing.assert_allclose([r["embedding"] for r in new], [r["embedding"] for r in old], atol=1e-6)
    manifest = train_shards.read_vocab(str(OLD / "shards"))
    new, old = samples_of(tmp_path / "shards", manifest), samples_of(OLD / "shards", manifest)
    assert sorted(new) == sorted(old)
    assert all(new[k].text == old[k].text and np.array_equal(new[k].tokens, old[k].tokens) for k in old)
