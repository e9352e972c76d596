"""Write the bundled synthetic sample (both ingest formats, photos to annotate): the DVC ``sample`` stage.

Run it as ``python -m flows.sample`` or ``faces sample``. Settings come from params.yaml
``sample``; the same seed writes the same bytes, so DVC sees an unchanged sample after a
re-run and does not re-ingest it. No Prefect flow: it only draws files.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``faces sample`` and ``python -m flows.sample``."""
    parser.add_argument("--out", dest="out_dir", help="sample directory (default: params.yaml sample.out_dir)")
    parser.add_argument("--seed", type=int, help="default: params.yaml sample.seed")


def run_from_args(args: argparse.Namespace) -> int:
    """Write the sample and say where it is."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tcs, imfdb_root = write_sample(sample_settings(out_dir=args.out_dir, seed=args.seed))
    print(f"TCS sample:   {tcs}")
    print(f"IMFDB sample: {imfdb_root}")
    print(f"photos:       {imfdb_root.parent.parent / 'photos'} (for annotate)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m flows.sample [--out DIR] [--seed N]``."""
    parser = argparse.ArgumentParser(prog="faces sample", description="Write the bundled synthetic sample.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    from flows.stopping import run_stoppable

    raise SystemExit(run_stoppable("sample", main))
