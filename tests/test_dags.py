"""The Airflow DAGs in jobs/dags/: every file loads; decap_full_chain runs end to end on the toy world (random toy
CLIP, tiny sizes); decap_caption_daily then captions only a new archive shard and refuses another decoder."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from caption_fixtures import CLIP_FINGERPRINT, random_decoder

from decap_core import captions_files
from decap_core.memory_files import read_manifest
from decap_core.toy import world as toyworld
from decap_core.toy.archive import write_scene_shards
from decap_core.train_shards import read_vocab

pytestmark = pytest.mark.slow  # about two minutes: each stage is its own interpreter (torch, Beam)

DAGS = Path(__file__).resolve().parent.parent / "jobs" / "dags"
SENTENCES = 300
VALIDATION = 20
STEPS = 8


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """Airflow with its own home and sqlite database, configured before it is first imported."""
    home = tmp_path_factory.mktemp("airflow-home")
    settings = {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS), "OMP_NUM_THREADS": "1"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in settings.items():
            patch.setenv(name, value)
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
        from airflow.dag_processing.dagbag import DagBag

        yield DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A corpus, three archive shards of four scenes (two in the archive, one staged) and their references."""
    root = tmp_path_factory.mktemp("dag-world")
    (root / "corpus.txt").write_text("\n".join(toyworld.sentences(0, "memory", SENTENCES)) + "\n")
    write_scene_shards(toyworld.scenes(0, "eval", 12), str(root / "staged"), per_shard=4, size=64)
    (root / "archive").mkdir()
    for number in ("00000", "00001"):
        for suffix in (".tar", ".parquet"):
            shutil.copy(root / "staged" / f"{number}{suffix}", root / "archive")
    rows = [row for path in sorted((root / "staged").glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    (root / "references.jsonl").write_text("".join(json.dumps({"key": row["key"], "captions": [row["caption"]]}) + "\n"
                                                   for row in rows))
    return root


def caption_conf(root: Path) -> dict:
    return {"archive": [str(root / "archive" / "*.tar")], "memory": str(root / "memory"),
            "decoder": str(root / "decoder"), "captions": str(root / "captions"),
            "caption_options": ["--threads", "1", "--batch-size", "8"]}


def archive_keys(root: Path, *numbers: str) -> set[str]:
    tables = [pq.read_table(root / "staged" / f"{number}.parquet") for number in numbers]
    return {key for table in tables for key in table.column("key").to_pylist()}


def record_of(root: Path, run) -> dict:
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in run.run_id)
    return json.loads((root / "captions" / "airflow-runs" / f"{name}.json").read_text())


def test_every_dag_file_loads(airflow):
    assert airflow.import_errors == {}
    assert {"decap_full_chain", "decap_caption_daily"} <= set(airflow.dag_ids)
    for dag_id in ("decap_full_chain", "decap_caption_daily"):
        dag = airflow.get_dag(dag_id)
        assert dag.max_active_runs == 1
        assert all(task.retries >= 1 and task.execution_timeout is not None for task in dag.tasks)
        assert dag.params.get_param("runner").value == "FnApiRunner"


def test_trainer_command_uses_torchrun_above_one_process():
    from jobs.dags import decap_steps

    single = decap_steps.trainer_command(1, ["--steps", "3"])
    several = decap_steps.trainer_command(4, ["--steps", "3"])
    assert single[1:] == ["-m", "jobs.cli", "train-decoder", "--steps", "3"]
    assert Path(several[0]).name == "torchrun" and Path(several[0]).exists()
    assert several[1:] == ["--standalone", "--nproc-per-node", "4", "-m", "jobs.cli", "train-decoder", "--steps", "3"]


@pytest.fixture(scope="module")
def full_chain(airflow, world):
    conf = {
        **caption_conf(world),
        "corpus": [str(world / "corpus.txt")],
        "memory_options": ["--num-shards", "2", "--index", "none"],
        "shards": str(world / "shards"),
        "shards_options": ["--samples-per-shard", "100", "--validation-samples", str(VALIDATION)],
        "train_steps": STEPS,
        "trainer_options": ["--workers", "1", "--threads", "1", "--batch-size", "16", "--warmup", "2",
                            "--validate-every", "4", "--checkpoint-every", "4", "--validation-sentences", "4"],
        "references": str(world / "references.jsonl"),
        "evaluation": str(world / "evaluation"),
        "evaluate_options": ["--no-meteor"],
    }
    return airflow.get_dag("decap_full_chain").test(run_conf=conf)


def test_full_chain_writes_memory_shards_decoder_and_captions(full_chain, world, airflow):
    assert full_chain.state == "success"
    memory = read_manifest(str(world / "memory"))
    assert 0 < memory.rows <= SENTENCES and memory.plan.clip_fingerprint == CLIP_FINGERPRINT
    vocab = read_vocab(str(world / "shards"))
    assert (vocab.samples["train"], vocab.samples["valid"]) == (memory.rows - VALIDATION, VALIDATION)
    summary = json.loads((world / "decoder" / "train-summary.json").read_text())
    assert summary["steps"] == STEPS and (world / "decoder" / "decoder.safetensors").stat().st_size > 0
    rows = captions_files.read_captions(str(world / "captions")).to_pylist()
    assert {row["key"] for row in rows} == archive_keys(world, "00000", "00001")
    assert all(row["strategy"] == "pd" and row["clip_fingerprint"] == CLIP_FINGERPRINT for row in rows)
    record = record_of(world, full_chain)
    assert sorted(Path(s["input_url"]).name for s in record["captioned_shards"]) == ["00000.tar", "00001.tar"]
    assert record["counts"]["captioned"] == len(rows)
    metrics = json.loads((world / "evaluation" / "metrics.json").read_text())
    assert set(metrics["strategies"]) == {"pd"}


def test_daily_captions_only_the_new_shard(full_chain, world, airflow):
    assert full_chain.state == "success"
    before = {path.name: path.read_bytes() for path in (world / "captions").glob("captions-*.parquet")}
    for suffix in (".tar", ".parquet"):
        shutil.copy(world / "staged" / f"00002{suffix}", world / "archive")
    run = airflow.get_dag("decap_caption_daily").test(run_conf=caption_conf(world))
    assert run.state == "success"
    record = record_of(world, run)
    assert [Path(s["input_url"]).name for s in record["captioned_shards"]] == ["00002.tar"]
    assert record["skipped_shards"] == 2 and record["counts"]["captioned"] == 4
    rows = captions_files.read_captions(str(world / "captions")).to_pylist()
    assert sorted(row["key"] for row in rows) == sorted(archive_keys(world, "00000", "00001", "00002"))
    assert {name: (world / "captions" / name).read_bytes() for name in before} == before


def test_daily_refuses_another_decoder(full_chain, world, airflow, capfd):
    assert full_chain.state == "success"
    texts = toyworld.sentences(1, "memory", 50)
    conf = {**caption_conf(world), "decoder": random_decoder(world / "other-decoder", texts)}
    markers = {marker.shard_id for marker in captions_files.read_markers(str(world / "captions"))}
    run = airflow.get_dag("decap_caption_daily").test(run_conf=conf)
    assert run.state == "failed"
    assert "holds captions made with other models or settings" in capfd.readouterr().out
    assert {marker.shard_id for marker in captions_files.read_markers(str(world / "captions"))} == markers
