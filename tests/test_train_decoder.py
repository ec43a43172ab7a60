"""train-decoder: from shards (resume after SIGKILL, torchrun with two gloo ranks, bad shards, CLIP checks)
and in process (every training flag takes effect), and its settings' checks."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from decap_core.clip import create_model
from decap_core.decoder_files import load_decoder
from decap_core.errors import DecapError
from decap_core.toy import world as toyworld
from decap_core.training import SUMMARY, ShardSettings, TrainSettings
from decap_core.vocab import clip_token_ids
from jobs import cli, train_decoder
from pipelines import make_train_shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """1,000 toy sentences in four train shards and one held-out shard (random-weight toy CLIP)."""
    root = tmp_path_factory.mktemp("train-shards")
    (root / "corpus.txt").write_text("\n".join(toyworld.sentences(1, "decoder", 1000)) + "\n")
    metadata = make_train_shards.run(["--input", str(root / "corpus.txt"), "--output", str(root / "shards"),
                                      "--samples-per-shard", "240", "--validation-samples", "64",
                                      "--runner=FnApiRunner"])
    assert len(metadata["shards"]) == 5
    return root / "shards", metadata


def train_args(metadata, out, steps=30, *extra):
    return ["--train", metadata["train_pattern"], "--out", str(out), "--steps", str(steps), "--batch-size", "16",
            "--warmup", "5", "--workers", "1", "--shuffle-buffer", "100", "--validate-every", "1000",
            "--checkpoint-every", "10", "--validation-sentences", "16", "--threads", "1", *extra]


def summary(out):
    return json.loads((out / SUMMARY).read_text())


def test_sigkilled_run_resumes_to_the_planned_step_and_the_same_loss(shards, tmp_path):
    _, metadata = shards
    train_decoder.main(train_args(metadata, tmp_path / "whole"))
    whole = summary(tmp_path / "whole")["validation"][-1]

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "jobs.train_decoder", *train_args(metadata, out)]
    process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step-00000010" / "trainer.pt").exists():
        assert process.poll() is None and time.time() < deadline, "no checkpoint before the run ended"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the trainer and its loader worker
    assert process.wait() == -signal.SIGKILL
    assert not (out / "decoder.json").exists()

    train_decoder.main(train_args(metadata, out, 30, "--resume"))
    resumed = summary(out)
    assert resumed["steps"] == 30 and load_decoder(str(out)).info["steps"] == 30
    final = resumed["validation"][-1]["loss"]
    assert abs(final - whole["loss"]) / whole["loss"] < 0.05, (final, whole)
    with pytest.raises(DecapError, match="already holds checkpoints"):
        train_decoder.main(train_args(metadata, out, 40))


def test_torchrun_two_gloo_ranks_read_different_shards(shards, tmp_path):
    _, metadata = shards
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "jobs.train_decoder", *train_args(metadata, tmp_path, 6)]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    seen = summary(tmp_path)["shards_seen_by_rank"]
    assert summary(tmp_path)["world_size"] == 2 and sorted(seen) == ["0", "1"]
    assert seen["0"] and seen["1"] and not set(seen["0"]) & set(seen["1"])
    assert load_decoder(str(tmp_path)).info["steps"] == 6


@pytest.fixture
def damaged(shards, tmp_path):
    """A copy of the shards with train-000001 missing and train-000002 cut in half."""
    source, metadata = shards
    copy = tmp_path / "shards"
    shutil.copytree(source, copy)
    (copy / "train-000001.tar").unlink()
    cut = copy / "train-000002.tar"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    pattern = metadata["train_pattern"].replace(str(source), str(copy))
    return copy, {**metadata, "train_pattern": pattern, "validation_pattern": str(copy / "valid-000000.tar")}


def test_a_missing_or_damaged_shard_stops_the_run_with_its_url(damaged, tmp_path, capsys):
    copy, metadata = damaged
    cases = (("0", "train-000001.tar", "shard missing"), ("1", "train-000002.tar", "shard damaged"))
    for workers, name, message in cases:
        only = metadata["train_pattern"].rsplit("/", 1)[0] + "/" + name
        code = cli.main(["train-decoder", *train_args({"train_pattern": only}, tmp_path / name, 3,
                                                      "--workers", workers,
                                                      "--validation", metadata["validation_pattern"])])
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # not the progress bar
        assert code == 1 and len(errors) == 1 and f"error: {message}: {copy / name}" in errors[0]


def test_skip_bad_shards_warns_and_trains_on_the_rest(damaged, tmp_path, caplog):
    copy, metadata = damaged
    # 12 steps of 64 read more than the 601 good samples: every shard is visited
    train_decoder.main(train_args(metadata, tmp_path, 12, "--workers", "0", "--skip-bad-shards", "--batch-size", "64"))
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert f"shard missing: {copy}/train-000001.tar" in warned and f"shard damaged: {copy}/train-000002.tar" in warned
    assert summary(tmp_path)["steps"] == 12
    assert {f"{copy}/train-00000{i}.tar" for i in (0, 3)} <= set(summary(tmp_path)["shards_seen_by_rank"]["0"])
    only_bad = metadata["train_pattern"].rsplit("/", 1)[0] + "/train-000001.tar"
    with pytest.raises(DecapError, match="no usable samples"):
        train_decoder.main(train_args({"train_pattern": only_bad}, tmp_path / "bad", 3, "--workers", "0",
                                      "--skip-bad-shards", "--validation", metadata["validation_pattern"]))


def test_shards_of_another_clip_are_refused(shards, tmp_path):
    source, metadata = shards
    torch.manual_seed(1)
    other = open_clip.create_model("toy-clip", pretrained=None)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "other.safetensors"))
    with pytest.raises(DecapError, match="made with CLIP toy-clip:random, not toy-clip:"):
        train_decoder.main(train_args(metadata, tmp_path / "a", 3,
                                      "--clip-checkpoint", str(tmp_path / "other.safetensors")))
    foreign = tmp_path / "foreign"
    shutil.copytree(source, foreign)
    vocab = json.loads((foreign / "vocab.json").read_text())
    (foreign / "vocab.json").write_text(json.dumps({**vocab, "clip_fingerprint": "ViT-B-32:0123"}))
    mixed = f"{source}/train-000000.tar::{foreign}/train-000001.tar"
    with pytest.raises(DecapError, match="ViT-B-32:0123"):
        train_decoder.main(train_args({"train_pattern": mixed}, tmp_path / "b", 3,
                                      "--validation", metadata["validation_pattern"]))


@pytest.fixture(scope="module")
def random_clip(tmp_path_factory) -> str:
    """A random-weight toy CLIP checkpoint (what the in-process path encodes the toy sentences with)."""
    path = tmp_path_factory.mktemp("clip") / "toy-clip.safetensors"
    model, _ = create_model("toy-clip", seed=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


TOY_SENTENCES = 160


def train_in_process(clip: str, out, *extra: str):
    train_decoder.main(["--clip-checkpoint", clip, "--out", str(out), "--toy-sentences", str(TOY_SENTENCES),
                        "--steps", "2", "--batch-size", "8", "--warmup", "1", "--lr", "1e-2", "--threads", "1", *extra])
    return load_decoder(str(out))


def same_weights(a, b) -> bool:
    first, second = a.model.state_dict(), b.model.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.fixture(scope="module")
def baseline(random_clip, tmp_path_factory):
    return train_in_process(random_clip, tmp_path_factory.mktemp("baseline"))


def test_in_process_training_repeats_itself(random_clip, baseline, tmp_path):
    again = train_in_process(random_clip, tmp_path)  # so that a difference below is the flag's doing
    assert same_weights(again, baseline) and again.info["final_loss"] == baseline.info["final_loss"]


@pytest.mark.parametrize("flag, value", [("--weight-decay", 0.5), ("--grad-clip", 1e-6), ("--label-smoothing", 0.0),
                                         ("--accumulate", 2)])
def test_each_training_flag_changes_in_process_training(random_clip, baseline, tmp_path, flag, value):
    changed = train_in_process(random_clip, tmp_path, flag, str(value))
    field = flag[2:].replace("-", "_")
    assert changed.info["settings"][field] == value != baseline.info["settings"][field]
    assert not same_weights(changed, baseline)
    assert changed.info["final_loss"] != baseline.info["final_loss"]


def test_min_count_prunes_the_in_process_vocabulary(random_clip, baseline, tmp_path):
    counts = Counter(t for text in toyworld.sentences(0, "decoder", TOY_SENTENCES) for t in clip_token_ids(text))
    pruned = train_in_process(random_clip, tmp_path, "--min-count", "20")
    kept, before = set(pruned.vocab.clip_ids[4:]), set(baseline.vocab.clip_ids[4:])  # after pad, unk, start, end
    assert before == set(counts) - {pruned.vocab.clip_ids[2], pruned.vocab.clip_ids[3]}
    assert kept == {t for t in before if counts[t] >= 20} and len(kept) < len(before)


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "steps must be an integer >= 1, got 0"),
    (["--lr", "nan"], "lr must be a finite number > 0, got nan"),
    (["--accumulate", "0"], "accumulate must be an integer >= 1"),
    (["--label-smoothing", "1"], "label_smoothing must be a number from 0 up to, not including, 1"),
    (["--train", "absent/train-000000.tar", "--validate-every", "0"], "validate_every must be an integer >= 1"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
    (["--train", "absent/train-000000.tar", "--checkpoint-every", "0"], "checkpoint_every must be an integer >= 1"),
    (["--train", "absent/train-000000.tar", "--shuffle-buffer", "0"], "shuffle_buffer must be an integer >= 1"),
    (["--train", "absent/train-000000.tar", "--workers", "-1"], "workers must be an integer >= 0, got -1"),
    (["--train", "absent/train-000000.tar", "--keep-checkpoints", "-1"], "keep_checkpoints must be an integer >= 1"),
    (["--resume"], "--resume applies only to training from shards"),
    (["--workers", "1", "--validation", "v.tar"], "--validation, --workers apply only to training from shards"),
])
def test_bad_or_misplaced_settings_stop_before_any_work(tmp_path, flags, message):
    with pytest.raises(DecapError, match=message):
        train_decoder.main(["--out", str(tmp_path / "out"), *flags])
    assert not (tmp_path / "out").exists()


def test_settings_are_checked_when_made():
    assert TrainSettings(weight_decay=0, prefix_noise=0.1).prefix_noise == 0.1
    for bad in ({"batch_size": 0}, {"grad_clip": float("inf")}, {"seed": -1}, {"min_count": 1.5}, {"steps": True}):
        with pytest.raises(DecapError, match=f"^{next(iter(bad))} must be"):
            TrainSettings(**bad)
    with pytest.raises(DecapError, match="^workers must be an integer >= 0, got -1$"):
        ShardSettings(train="shards", workers=-1)
