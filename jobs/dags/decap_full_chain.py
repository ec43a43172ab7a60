"""decap_full_chain: build memory -> make shards -> train decoder -> caption [-> evaluate].

Each task runs one ``decap`` stage (``build-memory``, ``make-shards --memory``, ``train-decoder``,
``caption``) with this run's params; the Beam stages on ``runner`` with ``beam_options``
(FnApiRunner in process by default; DaskRunner, FlinkRunner, SparkRunner or DataflowRunner by params).
The trainer runs under ``torchrun --nproc-per-node N`` when ``nproc`` > 1 and resumes from its newest
checkpoint when a task is retried. Captioning is incremental: it captions only the archive shards its
output has not committed, and writes ``airflow-runs/<run id>.json`` there (also the task's XCom).
The last task scores the captions against ``references`` with ``decap evaluate``.
Triggered, not scheduled (``schedule=None``): trigger it when a new corpus lands, with the params as conf.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from jobs.dags import decap_steps as steps


@dag(
    dag_id="decap_full_chain",
    schedule=None,
    doc_md=__doc__,
    **steps.DAG_SETTINGS,
    params={
        "corpus": steps.strings(["corpora/*.txt"], "fsspec globs of text corpora (.txt, .jsonl, .parquet)"),
        "memory_options": steps.strings(["--num-shards", "16", "--index", "auto"],
                                        "more decap build-memory flags"),
        "shards": Param("runs/airflow/shards", type="string", description="train shards directory"),
        "shards_options": steps.strings([], "more decap make-shards flags, e.g. --samples-per-shard 5000"),
        "decoder_config": Param("toy", type="string", enum=["toy", "official"], description="decoder size"),
        "train_steps": Param(2000, type="integer", minimum=1, description="decoder optimiser steps"),
        "nproc": Param(1, type="integer", minimum=1,
                       description="trainer processes (GPUs or CPU shares); above 1 under torchrun"),
        "trainer_options": steps.strings([], "more decap train-decoder flags, e.g. --batch-size 256 --lr 2e-4"),
        "references": Param("references.json", type="string",
                            description="references: COCO .json, or .jsonl / .parquet of key + captions"),
        "evaluation": Param("runs/airflow/evaluation", type="string", description="decap evaluate's output"),
        "evaluate_options": steps.strings([], "more decap evaluate flags, e.g. --toy-truth URL --no-meteor"),
        **steps.model_params(),
        **steps.caption_params(["archive/*.tar"], "runs/airflow/memory", "runs/airflow/decoder",
                               "runs/airflow/captions"),
    },
)
def decap_full_chain() -> None:
    @task(execution_timeout=timedelta(hours=12))
    def build_memory(**context: Any) -> None:
        params = context["params"]
        steps.run(steps.decap_command(["build-memory", "--input", *params["corpus"], "--output", params["memory"],
                                       *steps.clip_flags(params), *params["memory_options"],
                                       *steps.beam_flags(params)]))

    @task(execution_timeout=timedelta(hours=12))
    def make_shards(**context: Any) -> None:
        params = context["params"]
        steps.run(steps.decap_command(["make-shards", "--memory", params["memory"], "--output", params["shards"],
                                       *steps.clip_flags(params), *params["shards_options"],
                                       *steps.beam_flags(params)]))

    @task(execution_timeout=timedelta(hours=72))
    def train_decoder(**context: Any) -> None:
        from decap_core.train_shards import read_vocab

        params = context["params"]
        resume = ["--resume"] if context["ti"].try_number > 1 else []
        steps.run(steps.trainer_command(params["nproc"], [
            "--train", read_vocab(params["shards"]).train_pattern, "--out", params["decoder"],
            *steps.clip_flags(params), "--config", params["decoder_config"], "--steps", str(params["train_steps"]),
            *resume, *params["trainer_options"]]))

    @task(execution_timeout=timedelta(hours=24))
    def caption(**context: Any) -> dict[str, Any]:
        return steps.caption_new_shards(context["params"], context["run_id"])

    @task(execution_timeout=timedelta(hours=6))
    def evaluate(**context: Any) -> None:
        params = context["params"]
        steps.run(steps.decap_command(["evaluate", "--captions", params["captions"], "--references",
                                       params["references"], "--output", params["evaluation"],
                                       *steps.clip_flags(params), *params["evaluate_options"]]))

    build_memory() >> make_shards() >> train_decoder() >> caption() >> evaluate()


decap_full_chain()
