"""The decoder trainer against bad input: embeddings that cannot train, a loss that goes non-finite,
a vocabulary pruned to nothing, a damaged shard under --skip-bad-shards, an unknown decoder config."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from decap_core import train_shards
from decap_core.decoder import Decoder, DecoderConfig
from decap_core.errors import DecapError
from decap_core.toy import world as toyworld
from decap_core.train_data import EncodedCorpus
from decap_core.training import SUMMARY, validate
from decap_core.vocab import END_ID, PAD, START_ID, UNK, CompactVocab
from jobs import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """600 toy sentences through the real make-shards command (random toy CLIP): 3 train shards, 1 held out."""
    root = tmp_path_factory.mktemp("trainer-inputs")
    (root / "corpus.txt").write_text("\n".join(toyworld.sentences(0, "memory", 600)) + "\n")
    command = [sys.executable, "-m", "jobs.cli", "make-shards", "--input", str(root / "corpus.txt"),
               "--output", str(root / "shards"), "--validation-samples", "50", "--samples-per-shard", "200"]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "shards"


def copy_of(shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    return copy


def train(copy, out, *extra):
    """``decap train-decoder`` in process on the train shards in ``copy``; returns its exit code."""
    return cli.main(["train-decoder", "--train", f"{copy}/train-{{000000..000002}}.tar",
                     "--validation", f"{copy}/valid-000000.tar", "--out", str(out), "--batch-size", "64",
                     "--shuffle-buffer", "100", "--validate-every", "1000", "--checkpoint-every", "1000",
                     "--validation-sentences", "8", "--threads", "1", *extra])


def error_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # not the progress bar


def test_samples_whose_embeddings_cannot_train_are_refused_where_read_and_the_rest_trains(shards, tmp_path, caplog):
    copy = copy_of(shards, tmp_path)
    url = f"{copy}/train-000001.tar"
    plan = train_shards.read_vocab(str(copy)).plan
    samples = list(train_shards.read_shard(url, plan.dim))
    rng = np.random.default_rng(0)
    narrow = rng.normal(size=plan.dim - 8)
    bad = {0: np.full(plan.dim, np.nan), 5: np.full(plan.dim, np.inf), 9: np.zeros(plan.dim),
           13: narrow / np.linalg.norm(narrow)}
    for index, embedding in bad.items():
        samples[index] = dataclasses.replace(samples[index], embedding=embedding)
    train_shards.write_shard(url, samples, plan.emb_dtype)  # the writer make-shards uses, so the real layout
    bad_keys = {samples[index].key for index in bad}

    # 12 steps of 64 read more than the 529 samples: every one is read at least once
    assert train(copy, tmp_path / "out", "--steps", "12", "--workers", "0") == 0
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    for key in bad_keys:
        assert any(url in message and key in message for message in warnings), (key, warnings)
    summary = json.loads((tmp_path / "out" / SUMMARY).read_text())
    assert summary["samples_refused"] == len(bad)
    assert {(r["url"], r["key"]) for r in summary["refusals"]} == {(url, key) for key in bad_keys}
    assert summary["steps"] == 12 and url in summary["shards_seen_by_rank"]["0"]
    weights = load_file(str(tmp_path / "out" / "decoder.safetensors"))
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())
    assert np.isfinite(summary["validation"][-1]["loss"])


def test_a_loss_that_goes_non_finite_stops_the_run_before_any_weights_are_saved(shards, tmp_path, capsys):
    # an absurd learning rate overflows the weights after one step; the second step's loss is not finite
    code = train(shards, tmp_path / "out", "--steps", "4", "--workers", "0", "--lr", "1e30", "--warmup", "0")
    errors = error_lines(capsys)
    assert code == 1 and len(errors) == 1 and "loss" in errors[0] and "not finite" in errors[0], errors
    assert not (tmp_path / "out" / "decoder.safetensors").exists()
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_a_min_count_that_leaves_the_text_unrepresentable_is_refused_before_training(shards, tmp_path, capsys):
    code = train(shards, tmp_path / "out", "--steps", "2", "--workers", "0", "--min-count", "100000")
    errors = error_lines(capsys)
    assert code == 1 and len(errors) == 1, errors
    assert "--min-count 100000" in errors[0] and "0 of " in errors[0] and "100.0%" in errors[0], errors
    assert not (tmp_path / "out").exists()


def test_a_vocabulary_is_refused_when_too_much_of_the_text_falls_outside_it():
    counts = {START_ID: 10, END_ID: 10, 100: 40, 101: 20, 102: 15, 103: 10, 104: 10, 105: 5}  # 100 word tokens
    assert len(CompactVocab.for_training(counts, min_count=10)) == 4 + 5  # 5 of 100 unknown
    with pytest.raises(DecapError, match=r"^--min-count 15 keeps 3 of 6 words: 25\.0% of the 100 "):
        CompactVocab.for_training(counts, min_count=15)
    two_words = {**counts, 102: 5, 103: 5, 104: 5, 100: 60}  # 20 of 100 unknown is allowed, 2 words are too few
    with pytest.raises(DecapError, match=r"^--min-count 20 keeps 2 of 6 words: 20\.0% of the 100 "):
        CompactVocab.for_training(two_words, min_count=20)


def test_exact_reconstruction_counts_only_sentences_rebuilt_word_for_word():
    torch.manual_seed(0)
    vocab = CompactVocab.from_counts({START_ID: 1, END_ID: 1, **{token: 1 for token in range(400, 420)}})
    # width 192: a random decoder of it ends about a quarter of its decodes within max_tokens (128: 1 in 200)
    model = Decoder(DecoderConfig.named("toy", vocab_size=len(vocab), prefix_dim=16, n_embd=192)).eval()
    cpu, banned = torch.device("cpu"), (UNK, vocab.start_id)
    embeddings = torch.nn.functional.normalize(torch.randn(200, 16), dim=-1)
    decoded = model.generate(embeddings, end_id=vocab.end_id, pad_id=PAD, banned_ids=banned)
    ended = (decoded == vocab.end_id).any(1) & (decoded[:, 0] != vocab.end_id)
    embeddings = embeddings[ended]  # the random model's decodes that ended after a word or more
    decoded = model.generate(embeddings, end_id=vocab.end_id, pad_id=PAD, banned_ids=banned)
    words = [row[: row.tolist().index(vocab.end_id)].tolist() for row in decoded]
    assert len(words) >= 16 and all(words)
    rebuilt = EncodedCorpus(embeddings, [[vocab.start_id, *w, vocab.end_id] for w in words])
    assert validate(model, rebuilt, vocab, cpu)["exact"] == 1.0
    cut = EncodedCorpus(embeddings, [[vocab.start_id, *w[:-1], vocab.end_id] for w in words])
    assert validate(model, cut, vocab, cpu)["exact"] == 0.0
    tiny = CompactVocab.from_counts({START_ID: 1, END_ID: 1})  # pad, unk, start, end: every decode is empty
    blank = Decoder(DecoderConfig.named("toy", vocab_size=len(tiny), prefix_dim=16)).eval()
    only_unk = EncodedCorpus(embeddings, [[tiny.start_id, UNK, UNK, tiny.end_id]] * len(embeddings))
    assert validate(blank, only_unk, tiny, cpu)["exact"] == 0.0  # unk decodes to no text, as an empty decode


def test_skip_bad_shards_lists_a_damaged_shard_as_skipped_not_read(shards, tmp_path):
    copy = copy_of(shards, tmp_path)
    damaged = copy / "train-000002.tar"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    # through a loader worker: what it skipped travels to the summary with the batches
    assert train(copy, tmp_path / "out", "--steps", "12", "--workers", "1", "--skip-bad-shards") == 0
    summary = json.loads((tmp_path / "out" / SUMMARY).read_text())
    assert summary["shards_skipped_by_rank"] == {"0": [str(damaged)]} and summary["shards_skipped"] == 1
    assert str(damaged) not in summary["shards_seen_by_rank"]["0"]
    assert {f"{copy}/train-00000{i}.tar" for i in (0, 1)} == set(summary["shards_seen_by_rank"]["0"])
    skipped = [r for r in summary["refusals"] if r["key"] is None]
    assert [r["url"] for r in skipped] == [str(damaged)] and "shard damaged" in skipped[0]["reason"]


def test_an_unknown_decoder_config_is_one_line_not_a_traceback(shards, tmp_path):
    command = [sys.executable, "-m", "jobs.cli", "train-decoder", "--train", f"{shards}/train-000000.tar",
               "--out", str(tmp_path / "out"), "--config", "huge"]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "'huge'" in result.stderr and "official" in result.stderr and "toy" in result.stderr
    assert not (tmp_path / "out").exists()
