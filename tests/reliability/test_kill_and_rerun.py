"""Fault injection: build-memory and make-shards killed (SIGKILL) at seeded moments, then rerun, equal a clean run.

Each kill lands at a moment drawn by a fixed seed from the clean run's own duration, so the points
fall across start-up, reading, encoding and writing. After the rerun the output directory holds
exactly the clean run's files, byte for byte: no duplicate or lost rows, no partial or temporary file.
"""
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from decap_core.toy import world as toyworld

pytestmark = pytest.mark.slow
KILL_SEEDS = (1, 2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kill-corpus")
    sentences = toyworld.sentences(0, "memory", 3000)
    for part in range(3):
        lines = sentences[part::3] + ["", "a red \udcff circle"]  # a blank and an undecodable line each
        (root / f"part-{part}.txt").write_bytes("\n".join(lines).encode("utf-8", "surrogateescape") + b"\n")
    return root


def command(job: str, corpus: Path, output: Path) -> list[str]:
    flags = {"build-memory": ["--num-shards", "3", "--batch-size", "64", "--index", "flat"],
             "make-shards": ["--samples-per-shard", "400", "--validation-samples", "100"]}[job]
    return [sys.executable, "-m", "jobs.cli", job, "--input", str(corpus / "*.txt"), "--output", str(output), *flags]


def files_of(directory: Path) -> dict[str, bytes]:
    """Every file's bytes by relative name, the output's own path (which vocab.json records) made neutral."""
    own = str(directory).encode()
    return {str(p.relative_to(directory)): p.read_bytes().replace(own, b"OUTPUT")
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("job", ["build-memory", "make-shards"])
def test_killed_runs_then_a_rerun_equal_a_clean_run(job, corpus, tmp_path):
    started = time.perf_counter()
    subprocess.run(command(job, corpus, tmp_path / "clean"), check=True, capture_output=True, timeout=600)
    duration = time.perf_counter() - started
    clean = files_of(tmp_path / "clean")
    killed = tmp_path / "killed"
    for seed in KILL_SEEDS:  # two kills into the same output, then one rerun to the end
        process = subprocess.Popen(command(job, corpus, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(random.Random(seed).uniform(0.3, 0.95) * duration)
        process.send_signal(signal.SIGKILL)
        process.wait()
    result = subprocess.run(command(job, corpus, killed), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert files_of(killed).keys() == clean.keys()
    assert [name for name in clean if files_of(killed)[name] != clean[name]] == []
