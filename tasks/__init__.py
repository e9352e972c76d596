"""Thin Prefect task wrappers around faces_core (retries, logging, artifacts)."""
