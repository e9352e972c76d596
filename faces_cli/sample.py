"""``faces sample`` and ``python -m flows.sample``: write the bundled synthetic sample."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from faces_cli import setup_logging, stopping
from faces_core.sample.settings import sample_settings, write_sample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``faces sample`` and ``python -m flows.sample``."""
    parser.add_argument("--out", dest="out_dir", help="sample directory (default: params.yaml sample.out_dir)")
    parser.add_argument("--seed", type=int, help="default: params.yaml sample.seed")


def run_from_args(args: argparse.Namespace) -> int:
    """Write the sample and say where it is."""
    setup_logging()
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


def command() -> int:
    """``python -m flows.sample`` under the stop path every command shares."""
    return stopping.run_stoppable("sample", main)
