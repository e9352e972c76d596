"""Annotate stage: detect every face in folders of photos and videos, predict its attributes, write Parquet."""
