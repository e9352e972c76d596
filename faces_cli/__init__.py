"""The ``faces`` command line: parsing flags, checking inputs, printing results, stopping cleanly.

The flows in :mod:`flows` are the pipeline; this package is how a person at a terminal runs
them (``faces <command>``, ``python -m flows.<stage>``). It is kept apart so the flows stay
wiring, and so the DVC deps of a stage name the code that makes its outputs.

Importing :mod:`flows` first keeps loopback addresses off any proxy and sets quiet Prefect
defaults before Prefect makes its API client (:func:`flows.keep_loopback_off_proxy`).
"""

from __future__ import annotations

import logging

import flows  # noqa: F401  (environment before Prefect is imported)


def setup_logging() -> None:
    """INFO lines from our loggers, without one line per API call from httpx."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
