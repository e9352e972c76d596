"""Training, evaluation and prediction of the multi-task face-attribute model (no Prefect)."""
