"""params.yaml ``sample`` and writing the whole bundled sample: the DVC ``sample`` stage's work.

The same seed writes the same bytes, so DVC sees an unchanged sample after a re-run and does
not re-ingest it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from faces_core.sample.faces import write_annotate_sample
from faces_core.sample.imfdb import write_imfdb_sample
from faces_core.sample.tcs import write_tcs_sample


@dataclass(frozen=True)
class SampleSettings:
    """params.yaml ``sample``.

    Attributes:
        out_dir: Where ``tcs/`` and ``imfdb/IMFDB_final`` go.
        seed: Pixels and metadata (same seed, same bytes).
        slow_delay_s: Seconds the sample's slow image URL waits before answering; under the
            default download timeout, it shows that downloads run concurrently.
    """

    out_dir: str = "data/sample"
    seed: int = 0
    slow_delay_s: float = 2.0


def _load_params() -> dict[str, Any]:
    """params.yaml (``$FACES_PARAMS``), read here rather than through flows.params so the DVC
    sample stage depends on the sample code only, not on every stage's settings."""
    path = Path(os.environ.get("FACES_PARAMS", "params.yaml"))
    if not path.exists():
        return {}
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    return data if isinstance(data, dict) else {}


def sample_settings(params: dict[str, Any] | None = None, **overrides: Any) -> SampleSettings:
    """SampleSettings from params.yaml ``sample`` with the non-None overrides."""
    params = _load_params() if params is None else params
    section = dict(params.get("sample") or {})
    section.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(section) - set(SampleSettings.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in params section 'sample'")
    return SampleSettings(**section)


def write_sample(settings: SampleSettings) -> tuple[Path, Path]:
    """Write both ingest formats and the photos for annotate (``photos/``).

    Returns:
        (TCS JSON Lines file, IMFDB_final root).
    """
    root = Path(settings.out_dir)
    tcs = write_tcs_sample(root / "tcs", seed=settings.seed, slow_delay=settings.slow_delay_s)
    imfdb_root = root / "imfdb" / "IMFDB_final"
    write_imfdb_sample(imfdb_root, seed=settings.seed)
    write_annotate_sample(root / "photos", seed=settings.seed)
    return tcs.jsonl, imfdb_root
