"""What the decap DAGs share: their params, the ``decap`` commands their tasks run, and the run records.

Each task runs one ``decap`` command in a fresh interpreter of the Python that runs the task (so Beam and
torch work in their own process, and a kill or a timeout ends that process) and streams its output into the
task log. A command refused for its input or settings (``decap X: error: ...``, e.g. a fingerprint mismatch)
fails the task at once with that line, since a retry would be refused the same way; any other failure (a
crash, a killed worker) is retried.
"""
from __future__ import annotations

import logging
import re
import shlex
import subprocess
import sys
from collections import deque
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping, Sequence

import fsspec
import pendulum
from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowException, AirflowFailException

log = logging.getLogger(__name__)

RUNNERS = ["FnApiRunner", "DaskRunner", "FlinkRunner", "SparkRunner", "DataflowRunner"]
STRATEGIES = ["pd", "nnd", "clipre", "vd"]
RECORDS_DIR = "airflow-runs"  # one JSON record per DAG run, inside the captions output
RECORD_FORMAT = "decap-airflow-caption-run/1"
DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(minutes=5), "execution_timeout": timedelta(hours=12)}
DAG_SETTINGS = {  # what every decap DAG sets alike, beside its id, schedule, doc and params
    "start_date": pendulum.datetime(2026, 1, 1, tz="UTC"),
    "catchup": False,
    "max_active_runs": 1,
    "default_args": DEFAULT_ARGS,
    "tags": ["decap"],
}
REFUSAL = re.compile(r"^decap [\w-]+: error: ")


def strings(default: list[str], description: str) -> Param:
    """An array-of-strings param."""
    return Param(default, type="array", items={"type": "string"}, description=description)


def model_params() -> dict[str, Param]:
    """CLIP and the Beam runner: params every decap DAG takes."""
    return {
        "clip_model": Param("toy-clip", type="string", description="open_clip architecture or a toy config"),
        "clip_checkpoint": Param(None, type=["null", "string"],
                                 description="CLIP weights (path or fsspec URL); null: seeded random weights"),
        "runner": Param("FnApiRunner", type="string", enum=RUNNERS,
                        description="Beam runner of the pipelines (FnApiRunner: in process, local)"),
        "beam_options": strings([], "the runner's own options, e.g. --dask_client_address=HOST:8786, "
                                    "--flink_master=HOST:8081, --project=P --region=R --temp_location=gs://B/tmp; "
                                    "--setup_file ./setup.py to ship decap to remote workers"),
    }


def caption_params(archive: list[str], memory: str, decoder: str, captions: str) -> dict[str, Param]:
    """The captioning stage's params, with these defaults for its inputs and output."""
    return {
        "archive": strings(archive, "fsspec globs or brace patterns of the image archive (decap caption --input)"),
        "memory": Param(memory, type="string", description="support memory directory (decap build-memory)"),
        "decoder": Param(decoder, type="string", description="decoder directory (decap train-decoder)"),
        "captions": Param(captions, type="string",
                          description="captions output; a rerun captions only input shards not yet captioned"),
        "strategies": Param(["pd"], type="array", items={"type": "string", "enum": STRATEGIES}, minItems=1,
                            description="projection strategies (one caption row per key and strategy)"),
        "caption_options": strings([], "more decap caption flags, e.g. --tau 0.02 --topk 64 --device cuda"),
    }


def decap_command(args: Sequence[str]) -> list[str]:
    """``decap ARGS`` run by this Python."""
    return [sys.executable, "-m", "jobs.cli", *args]


def trainer_command(nproc: int, args: Sequence[str]) -> list[str]:
    """``decap train-decoder ARGS``; under ``torchrun`` (one process per GPU or CPU share) when ``nproc`` > 1."""
    if nproc > 1:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        return [torchrun, "--standalone", "--nproc-per-node", str(nproc), "-m", "jobs.cli", "train-decoder", *args]
    return decap_command(["train-decoder", *args])


def clip_flags(params: Mapping[str, Any]) -> list[str]:
    checkpoint = params["clip_checkpoint"]
    return ["--clip-model", params["clip_model"], *(["--clip-checkpoint", checkpoint] if checkpoint else [])]


def beam_flags(params: Mapping[str, Any]) -> list[str]:
    return [f"--runner={params['runner']}", *params["beam_options"]]


def run(argv: Sequence[str]) -> None:
    """Run one command, its output line by line into the task log; fail the task when it fails."""
    log.info("running: %s", shlex.join(argv))
    tail: deque[str] = deque(maxlen=50)
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    try:
        for line in process.stdout:
            log.info("%s", line.rstrip())
            tail.append(line.rstrip())
        process.wait()
    except BaseException:  # a timeout or a cancelled task: the stage must not run on without it
        process.kill()
        process.wait()
        raise
    if process.returncode == 0:
        return
    refusals = [line for line in tail if REFUSAL.match(line)]
    if refusals:
        raise AirflowFailException(refusals[-1])
    last = tail[-1] if tail else "no output"
    raise AirflowException(f"{shlex.join(argv[:4])} ... exited with status {process.returncode}: {last}")


def caption_new_shards(params: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """Caption the archive's shards that ``params['captions']`` has not committed yet; record and return what."""
    from decap_core import artifacts, captions_files

    output = params["captions"].rstrip("/")
    before = {marker.shard_id for marker in captions_files.read_markers(output)}
    run(decap_command(["caption", "--input", *params["archive"], "--output", output, *clip_flags(params),
                       "--decoder", params["decoder"], "--memory", params["memory"],
                       *[flag for strategy in params["strategies"] for flag in ("--strategy", strategy)],
                       *params["caption_options"], *beam_flags(params)]))
    manifest = captions_files.read_manifest(output)
    new = [shard for shard in manifest["shards"] if shard["shard_id"] not in before]
    record = {
        "run_id": run_id,
        "captions": output,
        "captioned_shards": new,
        "skipped_shards": manifest["this_run"]["skipped_shards"],
        "counts": {name: sum(shard[name] for shard in new) for name in ("rows", "captioned", "dead")},
        "totals": manifest["counts"],
        "seconds": manifest["this_run"]["seconds"],
        "signature": manifest["signature"],
    }
    fs, records = fsspec.core.url_to_fs(f"{output}/{RECORDS_DIR}")
    fs.makedirs(records, exist_ok=True)
    artifacts.write_json(f"{output}/{RECORDS_DIR}/{re.sub(r'[^A-Za-z0-9._-]', '_', run_id)}.json", RECORD_FORMAT,
                         record)
    log.info("captioned %d new shards (%d rows, %d dead letters); %d already done",
             len(new), record["counts"]["rows"], record["counts"]["dead"], record["skipped_shards"])
    return record
