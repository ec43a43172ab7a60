"""decap_caption_daily: caption the archive shards that arrived since the last run.

With an existing support memory and decoder, one task runs ``decap caption`` into the same ``captions``
output every day. The pipeline's incremental mode captions only the input shards without a done marker
there, so each day's run captions only the new shards. An output made with other models or settings
(another CLIP, memory or decoder fingerprint, another strategy or tau) is refused with the pipeline's one
error line, and the task fails without retrying. Each run writes ``airflow-runs/<run id>.json`` in the
output (the shards it captioned with their counts, the output's totals) and returns the same record as XCom.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import dag, task

from jobs.dags import decap_steps as steps


@dag(
    dag_id="decap_caption_daily",
    schedule="@daily",
    doc_md=__doc__,
    **steps.DAG_SETTINGS,
    params={
        **steps.model_params(),
        **steps.caption_params(["archive/*.tar"], "runs/airflow/memory", "runs/airflow/decoder",
                               "runs/airflow/captions"),
    },
)
def decap_caption_daily() -> None:
    @task(execution_timeout=timedelta(hours=12))
    def caption_new_shards(**context: Any) -> dict[str, Any]:
        return steps.caption_new_shards(context["params"], context["run_id"])

    caption_new_shards()


decap_caption_daily()
