"""Ingest stage: parse sources, download, validate, crop and partition faces into Parquet.

Modules in pipeline order: ``sources`` (TCS, IMFDB parsers), ``download``, ``validate``,
``partition`` and ``pipeline`` (the steps the ``ingest`` flow wires together).
"""
