"""Prefect flows of the faces pipeline and their deployments."""
