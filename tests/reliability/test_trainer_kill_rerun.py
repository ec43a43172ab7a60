"""Fault injection for the decoder trainer: SIGKILL at two seeded points, rerun with --resume, and the
result is the clean run's, bit for bit (tests/test_train_decoder.py checks one kill to a close loss)."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from decap_core.toy import world as toyworld
from decap_core.training import SUMMARY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
SEED = 16  # picks the two kill delays
STEPS, EVERY = 60, 10


def shards(root) -> str:
    """The train-shard pattern of 600 toy sentences written by the real make-shards command."""
    (root / "corpus.txt").write_text("\n".join(toyworld.sentences(0, "memory", 600)) + "\n")
    command = [sys.executable, "-m", "jobs.cli", "make-shards", "--input", str(root / "corpus.txt"),
               "--output", str(root / "shards"), "--validation-samples", "50", "--samples-per-shard", "200"]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return f"{root}/shards/train-{{000000..000002}}.tar"


def command(pattern, out, *extra):
    return [sys.executable, "-m", "jobs.cli", "train-decoder", "--train", pattern, "--out", str(out),
            "--steps", str(STEPS), "--checkpoint-every", str(EVERY), "--threads", "1", "--batch-size", "16",
            "--warmup", "5", "--workers", "1", "--shuffle-buffer", "100", "--validate-every", "20",
            "--validation-sentences", "8", *extra]


def finished_checkpoints(out) -> set[str]:
    return {p.name for p in (out / "checkpoints").glob("step-*") if (p / "trainer.pt").exists()}


def kill_after_a_new_checkpoint(argv, out, delay: float) -> str:
    """Start ``argv``, wait for a checkpoint it wrote itself, wait ``delay`` seconds more, SIGKILL it;
    returns the newest whole checkpoint then."""
    before = finished_checkpoints(out) if (out / "checkpoints").exists() else set()
    process = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 180
    while not (out / "checkpoints").exists() or not finished_checkpoints(out) - before:
        assert process.poll() is None and time.time() < deadline, "no new checkpoint before the run ended"
        time.sleep(0.02)
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGKILL)  # the trainer and its loader worker
    assert process.wait() == -signal.SIGKILL, "the run ended before the kill"
    return max(finished_checkpoints(out))


def files_under(directory) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


def test_two_seeded_sigkills_and_resumes_give_the_clean_run_bit_for_bit(tmp_path):
    pattern = shards(tmp_path)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    result = subprocess.run(command(pattern, clean), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]

    step_seconds = json.loads((clean / SUMMARY).read_text())["seconds"] / STEPS  # this machine's pace
    rng = random.Random(SEED)
    delays = [step_seconds * rng.uniform(0.5, 8) for _ in range(2)]  # at most 8 steps past a new checkpoint
    first = kill_after_a_new_checkpoint(command(pattern, killed), killed, delays[0])
    second = kill_after_a_new_checkpoint(command(pattern, killed, "--resume"), killed, delays[1])
    assert first < second < f"step-{STEPS:08d}", (first, second)  # the resumed run got further, not to the end
    result = subprocess.run(command(pattern, killed, "--resume"), cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming from step" in result.stdout

    want, got = load_file(str(clean / "decoder.safetensors")), load_file(str(killed / "decoder.safetensors"))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert (killed / "decoder.json").read_text() == (clean / "decoder.json").read_text()
    summaries = [json.loads((out / SUMMARY).read_text()) for out in (clean, killed)]
    for summary in summaries:
        summary.pop("seconds")  # wall time, the one field two runs cannot share
    assert summaries[0] == summaries[1]
    assert [v["step"] for v in summaries[1]["validation"]] == [20, 40, 60]
    assert files_under(killed) == files_under(clean)  # no partial or temporary file left behind
    assert not [name for name in files_under(killed) if "partial" in name or ".tmp" in name]
