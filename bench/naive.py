"""The baseline for parse-and-partition: how the scripts we replace read IMFDB.

A faithful re-creation of the usual notebook approach, written plainly on purpose: one
``pandas.read_csv`` per annotation txt, ``DataFrame.iterrows`` over its rows, one
``Image.open(...).convert("RGB")`` per row (decoding, so a broken crop is noticed, as our
validation does), the crop's bytes and labels appended to Python lists, then one
DataFrame written as Parquet partitioned by size bucket. Bad files are skipped with a
message, as such scripts do; nothing is hashed, de-duplicated or logged as a rejection.
It is the baseline of :mod:`bench.partition` and not used anywhere else.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
from PIL import Image

LABEL_COLUMNS = ("gender", "expression", "occlusion", "illumination", "age", "pose", "makeup")
BUCKET_EDGES = (50, 100, 150, 224)


def _bucket(min_side: int) -> str | None:
    """Size bucket of a crop, like ours: ``50-100`` ... ``224-inf``; None below 50 px."""
    if min_side < BUCKET_EDGES[0]:
        return None
    for low, high in itertools.pairwise(BUCKET_EDGES):
        if min_side < high:
            return f"{low}-{high}"
    return f"{BUCKET_EDGES[-1]}-inf"


def naive_ingest(root: Path, out: Path, same_work: bool = False) -> int:
    """Read an ``IMFDB_final`` tree row by row and write the crops as Parquet.

    Args:
        root: The ``IMFDB_final`` folder.
        out: Output folder (``bucket=<...>/`` Parquet files below it).
        same_work: Decode as ours does ("same work" baseline): a crop under the smallest bucket
            is dropped from its header, a kept one is decoded at 1/8 scale (``Image.draft``:
            libjpeg still reads every entropy-coded block, so damage is still noticed), so the
            ratio shows the pipeline, not the decoder.

    Returns:
        Faces written.
    """
    actors: list[str] = []
    movies: list[str] = []
    crops: list[bytes] = []
    widths: list[int] = []
    heights: list[int] = []
    buckets: list[str] = []
    labels: dict[str, list[str]] = {name: [] for name in LABEL_COLUMNS}
    for txt in sorted(root.glob("*/*/*.txt")):
        try:
            frame = pd.read_csv(txt, sep="\t", header=None, dtype=str, on_bad_lines="skip")
        except ValueError as exc:  # pandas' parser and decoding errors
            print(f"skipping {txt}: {exc}")
            continue
        if frame.shape[1] < 3:  # not tab-separated: no crop column
            print(f"skipping {txt}: {frame.shape[1]} column(s)")
            continue
        for _, row in frame.iterrows():
            path = txt.parent / "images" / str(row[2])
            if not path.exists():
                continue
            try:
                image = Image.open(path)
                if same_work:
                    if _bucket(min(image.size)) is None:
                        continue
                    size = image.size
                    image.draft(image.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
                    image.load()
                    width, height = size
                else:
                    width, height = image.convert("RGB").size
            except OSError as exc:
                print(f"skipping {path}: {exc}")
                continue
            bucket = _bucket(min(width, height))
            if bucket is None:
                continue
            actors.append(txt.parent.parent.name)
            movies.append(txt.parent.name)
            crops.append(path.read_bytes())
            widths.append(width)
            heights.append(height)
            buckets.append(bucket)
            for i, name in enumerate(LABEL_COLUMNS):
                labels[name].append(str(row[10 + i]) if len(row) > 10 + i else "")
    table = pd.DataFrame(
        {
            "actor": actors,
            "movie": movies,
            "width": widths,
            "height": heights,
            **labels,
            "crop": crops,
            "bucket": buckets,
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out, partition_cols=["bucket"])
    return len(table)
