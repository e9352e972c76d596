"""Partitioning: buckets, crops, splits, duplicates, atomic commit and the reader."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from faces_core.errors import Reason
from faces_core.ingest.partition import PartitionSettings, bucket_for, bucket_labels, partition_shard, plan_jobs
from faces_core.ingest.pipeline import IngestSettings, finalize, local_files
from faces_core.records import Box, FaceRecord
from faces_core.sample import encode, face_image
from faces_core.splits import SplitFractions, assign_split
from faces_core.storage import FACES_DIR, commit_dataset, read_faces, recover, staging_dir
from faces_core.taxonomy import empty_labels
from faces_core.validate import ValidateSettings

EDGES = (50, 100, 128, 200, 224)


def test_bucket_labels_and_edges() -> None:
    assert bucket_labels(EDGES) == ["50-100", "100-128", "128-200", "200-224", "224-inf"]
    assert bucket_for(49.9, EDGES) is None
    assert bucket_for(50, EDGES) == "50-100"
    assert bucket_for(99, EDGES) == "50-100"
    assert bucket_for(100, EDGES) == "100-128"
    assert bucket_for(223, EDGES) == "200-224"
    assert bucket_for(224, EDGES) == "224-inf"
    assert bucket_for(5000, EDGES) == "224-inf"


def test_settings_reject_bad_edges() -> None:
    with pytest.raises(ValueError, match="ascending"):
        PartitionSettings(bucket_edges=(100, 50))
    with pytest.raises(ValueError, match="sum to 1"):
        SplitFractions(0.5, 0.1, 0.1)


def _labels(**values: str) -> dict[str, str | None]:
    labels = empty_labels()
    labels.update(values)
    return labels


def _tcs_image(tmp_path: Path, sides: list[int]) -> tuple[str, list[FaceRecord]]:
    """One 800x600 JPEG with a square face of each side, plus its records."""
    rng = random.Random(1)
    boxes, x = [], 5
    for side in sides:
        boxes.append((x, 10, x + side, 10 + side))
        x += side + 5
    path = tmp_path / "group.jpg"
    path.write_bytes(encode(face_image(x + 5, 400, boxes, rng)))
    url = "http://gone.invalid/group.jpg"
    records = [
        FaceRecord(
            source="tcs",
            item=f"{url}#face{i}",
            image_ref=url,
            subject=None,
            movie=None,
            box=Box(*b),
            labels=_labels(gender="female", is_face="true"),
            image_width=x + 5,
            image_height=400,
            split_key=url,
        )
        for i, b in enumerate(boxes)
    ]
    return str(path), records


def test_partition_shard_buckets_crops_and_rejects_small(tmp_path: Path) -> None:
    path, records = _tcs_image(tmp_path, [30, 60, 110, 150, 210, 300])
    jobs, dups = plan_jobs(records, {records[0].image_ref: (path, "sha")})
    assert dups == []
    out = tmp_path / "faces"
    result = partition_shard(jobs, out, 0, PartitionSettings(), ValidateSettings())
    assert result.kept == 5
    assert [r.reason for r in result.rejections] == [Reason.TOO_SMALL]
    assert result.rejections[0].item.endswith("#face0")
    table = read_faces(out).to_table()
    buckets = sorted(zip(table["min_side"].to_pylist(), table["bucket"].to_pylist(), strict=True))
    assert buckets == [(60, "50-100"), (110, "100-128"), (150, "128-200"), (210, "200-224"), (300, "224-inf")]
    for row in table.to_pylist():
        with Image.open(io.BytesIO(row["crop"])) as crop:
            assert crop.size == (row["width"], row["height"])
        assert row["source"] == "tcs"
        assert row["gender"] == "female"
        assert row["split"] == assign_split(records[0].image_ref, SplitFractions(), 0)
    assert sorted(p.parent.name for p in out.rglob("*.parquet")) == [
        "bucket=100-128",
        "bucket=128-200",
        "bucket=200-224",
        "bucket=224-inf",
        "bucket=50-100",
    ]


def test_margin_grows_crop_and_min_side_filter(tmp_path: Path) -> None:
    path, records = _tcs_image(tmp_path, [100])
    jobs, _ = plan_jobs(records, {records[0].image_ref: (path, "sha")})
    out = tmp_path / "faces"
    partition_shard(jobs, out, 0, PartitionSettings(margin=0.02), ValidateSettings())
    row = read_faces(out).to_table().to_pylist()[0]
    assert (row["width"], row["height"]) == (104, 104)
    assert read_faces(out, min_side=128).count_rows() == 0
    assert read_faces(out, min_side=100).count_rows() == 1


def test_face_id_is_stable_across_locations(tmp_path: Path) -> None:
    ids = []
    for name in ("a", "b"):
        root = tmp_path / name / "IMFDB_final"
        crop = root / "Actor" / "Movie" / "images" / "Actor_1.jpg"
        crop.parent.mkdir(parents=True)
        crop.write_bytes(encode(face_image(80, 90, [(0, 0, 80, 90)], random.Random(3))))
        record = FaceRecord("imfdb", "Actor/Movie/Movie.txt:1", str(crop), "Actor", "Movie", None, split_key="Actor")
        files, refs, refused = local_files([record], root)
        assert refused == []
        jobs, _ = plan_jobs([record], files, refs)
        partition_shard(jobs, tmp_path / name / "faces", 0, PartitionSettings(), ValidateSettings())
        row = read_faces(tmp_path / name / "faces").to_table().to_pylist()[0]
        assert row["image_ref"] == "Actor/Movie/images/Actor_1.jpg"
        assert row["crop"] == crop.read_bytes()  # whole-crop JPEG kept byte for byte
        ids.append(row["face_id"])
    assert ids[0] == ids[1]


def test_duplicate_images_rejected_after_first(tmp_path: Path) -> None:
    records = [
        FaceRecord("imfdb", f"A/M/M.txt:{i}", f"/x/{name}", "A", "M", None, split_key="A")
        for i, name in enumerate(["b.jpg", "a.jpg", "c.jpg"])
    ]
    files = {"/x/a.jpg": ("/x/a.jpg", "same"), "/x/b.jpg": ("/x/b.jpg", "same"), "/x/c.jpg": ("/x/c.jpg", "other")}
    jobs, dups = plan_jobs(records, files)
    assert [j.ref for j in jobs] == ["/x/a.jpg", "/x/c.jpg"]
    assert [(d.item, d.reason) for d in dups] == [("A/M/M.txt:0", Reason.DUPLICATE_IMAGE)]
    assert "/x/a.jpg" in dups[0].message


def test_corrupt_image_rejects_every_face_of_it(tmp_path: Path) -> None:
    path, records = _tcs_image(tmp_path, [60, 70])
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    jobs, _ = plan_jobs(records, {records[0].image_ref: (path, "sha")})
    result = partition_shard(jobs, tmp_path / "faces", 0, PartitionSettings(), ValidateSettings())
    assert result.kept == 0
    assert [r.reason for r in result.rejections] == [Reason.CORRUPT_IMAGE] * 2


def _whole_crop(root: Path, name: str, data: bytes, label: str = "male") -> FaceRecord:
    crop = root / "Actor" / "Movie" / "images" / name
    crop.parent.mkdir(parents=True, exist_ok=True)
    crop.write_bytes(data)
    return FaceRecord(
        "imfdb",
        f"Actor/Movie/Movie.txt:{name}",
        str(crop),
        "Actor",
        "Movie",
        None,
        _labels(gender=label),
        split_key="A",
    )


def test_whole_image_crops_same_outcome_as_full_decode(tmp_path: Path) -> None:
    """IMFDB-style crops (every face is the whole image) take the shortcuts: tiny images are
    too_small from the header, upright RGB JPEGs are only checked to decode and kept as they
    are. Outcomes equal what a full decode gives: truncation is still caught at 1/8 scale,
    rotated and grayscale crops are still re-encoded upright."""
    root = tmp_path / "IMFDB_final"
    rng = random.Random(5)
    good = encode(face_image(120, 160, [(0, 0, 120, 160)], rng))
    tiny = encode(face_image(40, 60, [(0, 0, 40, 60)], rng))
    gray = io.BytesIO()
    Image.open(io.BytesIO(good)).convert("L").save(gray, "JPEG")
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.open(io.BytesIO(good)).save(rotated, "JPEG", exif=exif)
    records = [
        _whole_crop(root, "A_1.jpg", good),
        _whole_crop(root, "A_2.jpg", good[: len(good) // 2]),  # truncated
        _whole_crop(root, "A_3.jpg", tiny),
        _whole_crop(root, "A_4.jpg", tiny[: len(tiny) // 2]),  # truncated, but too small whatever it holds
        _whole_crop(root, "A_5.jpg", gray.getvalue()),
        _whole_crop(root, "A_6.jpg", rotated.getvalue()),
        _whole_crop(root, "A_7.jpg", good, label="purple"),
    ]
    files, refs, refused = local_files(records, root)
    assert refused == []
    jobs, dups = plan_jobs(records, files, refs)
    assert [d.item for d in dups] == ["Actor/Movie/Movie.txt:A_7.jpg"]  # same bytes as A_1
    result = partition_shard(jobs, tmp_path / "faces", 0, PartitionSettings(), ValidateSettings())
    outcome = sorted((r.item.rsplit(":", 1)[1], r.reason) for r in result.rejections)
    assert outcome == [
        ("A_2.jpg", Reason.CORRUPT_IMAGE),
        ("A_3.jpg", Reason.TOO_SMALL),
        ("A_4.jpg", Reason.TOO_SMALL),
    ]
    rows = {r["image_ref"].rsplit("/", 1)[1]: r for r in read_faces(tmp_path / "faces").to_table().to_pylist()}
    assert sorted(rows) == ["A_1.jpg", "A_5.jpg", "A_6.jpg"]
    assert rows["A_1.jpg"]["crop"] == good  # kept byte for byte
    assert (rows["A_1.jpg"]["width"], rows["A_1.jpg"]["height"]) == (120, 160)
    for name in ("A_5.jpg", "A_6.jpg"):  # decoded, normalised, re-encoded
        with Image.open(io.BytesIO(rows[name]["crop"])) as crop:
            assert crop.mode == "RGB"
            expected = (160, 120) if name == "A_6.jpg" else (120, 160)
            assert crop.size == expected == (rows[name]["width"], rows[name]["height"])


def test_commit_replaces_dataset_and_recover_restores_after_kill(tmp_path: Path) -> None:
    out = tmp_path / "processed"
    path, records = _tcs_image(tmp_path, [60])
    jobs, _ = plan_jobs(records, {records[0].image_ref: (path, "sha")})
    settings = IngestSettings(out_dir=str(out))
    for run in ("one", "two"):
        staging = staging_dir(out, run)
        partition_shard(jobs, staging / FACES_DIR, 0, settings.partition, settings.validate)
        summary = finalize(staging, settings, [], {"tcs": 1})
        assert summary["faces"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["errors.parquet", "faces", "summary.json"]
    assert pq.read_table(out / "errors.parquet").num_rows == 0

    # A kill between the two renames of commit_dataset: old dataset aside, new not in place.
    (out / FACES_DIR).rename(out / ".faces.old")
    staging_dir(out, "killed")
    recover(out)
    assert read_faces(out).count_rows() == 1
    assert sorted(p.name for p in out.iterdir()) == ["errors.parquet", "faces", "summary.json"]


def test_commit_dataset_moves_staging(tmp_path: Path) -> None:
    staging = staging_dir(tmp_path / "o", "x")
    (staging / FACES_DIR / "marker").write_text("1")
    final = commit_dataset(staging, tmp_path / "o")
    assert (final / "marker").read_text() == "1"
    assert not staging.exists()
