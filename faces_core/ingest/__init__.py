"""Ingest stage: parse sources, download, validate, crop and partition faces into Parquet.

Modules in pipeline order: ``sources`` (TCS, IMFDB parsers), ``remote`` (TCS image downloads
through the shared :mod:`faces_core.download`), ``local`` (IMFDB crop hashing), ``partition``
(crop, bucket, plan, summary), ``objects`` (shards that read and write object storage),
``settings`` and ``pipeline`` (the run the ``ingest`` flow wires together).
"""
