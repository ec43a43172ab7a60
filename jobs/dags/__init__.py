"""Airflow DAGs that schedule decap's stages (point Airflow's ``dags_folder`` here); no stage's work is done here."""
