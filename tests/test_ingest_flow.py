"""The ingest flow end to end under a real (temporary) Prefect server and a loopback image host.

Every face a source declares must end up either in the Parquet dataset or in the error log,
and a second run must download nothing.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from PIL import Image

from faces_core.errors import read_errors
from faces_core.ingest.partition import bucket_for
from faces_core.ingest.sources.imfdb import scan_imfdb
from faces_core.ingest.sources.tcs import read_tcs
from faces_core.records import ParseResult
from faces_core.sample.imfdb import write_imfdb_sample
from faces_core.sample.tcs import routes_for_jsonl, write_tcs_sample
from faces_core.storage import read_faces
from faces_core.testing import LoopbackServer, Route
from flows.ingest import ingest
from tests.conftest import shared_path

pytestmark = pytest.mark.usefixtures("prefect_harness", "fast_download_params")

FAST_PARAMS = """
download: {concurrency: 16, timeout_s: 2.0, retries: 2, backoff_s: 0.05, backoff_max_s: 0.2}
"""


@pytest.fixture
def fast_download_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Short timeouts and backoff so injected failures resolve in seconds."""
    params = tmp_path / "params.yaml"
    params.write_text(FAST_PARAMS)
    monkeypatch.setenv("FACES_PARAMS", str(params))


# Stage of rejections that concern a whole face (others, e.g. unknown_label, keep the face).
FACE_LEVEL = {
    "bad_geometry",
    "degenerate_box",
    "box_out_of_bounds",
    "http_error",
    "timeout",
    "connection_error",
    "not_an_image",
    "too_large",
    "corrupt_image",
    "decompression_bomb",
    "duplicate_image",
    "too_small",
}


def _run(tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    params = {
        "out_dir": str(tmp_path / "processed"),
        "raw_dir": str(tmp_path / "raw"),
        "tcs": "",
        "imfdb_root": "",
        "workers": 1,
    }
    params.update(kwargs)
    return ingest(**params)


def _assert_every_face_accounted(parsed: ParseResult, out: Path) -> Counter[str]:
    """Each parsed face is in the dataset xor rejected as a whole; returns face-level reasons."""
    kept = read_faces(out).to_table(columns=["item"])["item"].to_pylist()
    assert len(kept) == len(set(kept)), "a face is in the dataset twice"
    errors = read_errors(out / "errors.parquet")
    items = [r.item for r in parsed.records]
    # Parse-stage rejections of parts of a kept face (IMFDB's "#frame_box") name other items.
    dropped = {e.item: str(e.reason) for e in errors if str(e.reason) in FACE_LEVEL and e.item in set(items)}
    assert set(kept).isdisjoint(dropped)
    assert set(kept) | set(dropped) == set(items)
    return Counter(dropped.values())


def test_tcs_sample_flow_is_complete_and_resumable(tmp_path: Path) -> None:
    sample = write_tcs_sample(tmp_path / "sample", slow_delay=4.0)
    with LoopbackServer(sample.routes) as server:
        summary = _run(
            tmp_path,
            tcs=str(sample.jsonl),
            proxy=server.proxy_url,
        )
        first_hits = sum(server.hits.values())
        out = tmp_path / "processed"
        parsed = read_tcs(sample.jsonl)
        reasons = _assert_every_face_accounted(parsed, out)
        assert summary["faces"] == read_faces(out).count_rows() > 0
        assert summary["sources"]["tcs"]["images"] == sample.images
        for url, outcome in sample.outcomes.items():
            if outcome != "ok":
                assert reasons[outcome] >= 1, (url, outcome)
        table_one = read_faces(out).to_table().sort_by("face_id")

        second = _run(tmp_path, tcs=str(sample.jsonl), proxy=server.proxy_url)
        # Only the URLs that failed are asked again; every stored image comes from the store.
        stored = {u for u, o in sample.outcomes.items() if o == "ok"}
        asked_again = sum(server.hits.values()) - first_hits
        assert not any(server.hits[u] > 1 and u in stored and sample.routes[u].fail_times == 0 for u in stored)
        assert asked_again <= 3 * (len(sample.outcomes) - len(stored))
    table_two = read_faces(out).to_table().sort_by("face_id")
    assert table_two.equals(table_one)
    assert second == summary


def test_imfdb_sample_flow_buckets_splits_and_crops(tmp_path: Path) -> None:
    root = tmp_path / "IMFDB_final"
    write_imfdb_sample(root)
    summary = _run(tmp_path, imfdb_root=str(root), workers=2, shard_size=10)
    out = tmp_path / "processed"
    parsed = scan_imfdb(root)
    _assert_every_face_accounted(parsed, out)
    table = read_faces(out).to_table()
    rows = table.to_pylist()
    assert summary["sources"]["imfdb"]["faces"] == len(rows) > 0
    splits_per_actor: dict[str, set[str]] = {}
    for row in rows:
        splits_per_actor.setdefault(row["subject"], set()).add(row["split"])
        with Image.open(io.BytesIO(row["crop"])) as crop:
            assert crop.size == (row["width"], row["height"])
        assert min(row["width"], row["height"]) == row["min_side"] >= 50
    assert all(len(s) == 1 for s in splits_per_actor.values())
    assert pq.read_table(out / "errors.parquet").num_rows == len(read_errors(out / "errors.parquet"))


EDGES = (50, 100, 128, 200, 224)
REAL_FAILURES = {
    0: Route(status=404, content_type="text/plain", body=b"gone"),
    1: Route(fail_times=2, fail_status=500),  # then succeeds on the last retry
    3: Route(delay=5.0),  # longer than the client timeout
    4: Route(body=b"<html><body>moved</body></html>", content_type="text/html"),
    5: "truncate",
}
REAL_REASONS = {0: "http_error", 3: "timeout", 4: "not_an_image", 5: "corrupt_image"}


@pytest.mark.shared
def test_real_tcs_file_through_flow(tmp_path: Path) -> None:
    jsonl = shared_path("reference", "tcs", "Face_Recognition.json")
    parsed = read_tcs(jsonl)
    assert parsed.images == 120
    routes = routes_for_jsonl(jsonl)
    urls = list(dict.fromkeys(r.image_ref for r in parsed.records))
    for index, change in REAL_FAILURES.items():
        url, good = urls[index], routes[urls[index]]
        if change == "truncate":
            routes[url] = Route(body=good.body[: len(good.body) // 2], content_type=good.content_type)
        else:
            assert isinstance(change, Route)
            routes[url] = Route(
                body=change.body or good.body,
                content_type=change.content_type if change.body else good.content_type,
                status=change.status,
                delay=change.delay,
                fail_times=change.fail_times,
                fail_status=change.fail_status,
            )
    with LoopbackServer(routes) as server:
        out = tmp_path / "processed"
        settings = {"tcs": str(jsonl), "proxy": server.proxy_url, "workers": 2}
        summary = _run(tmp_path, **settings, concurrency=16)
        reasons = _assert_every_face_accounted(parsed, out)
        faces_of = Counter(r.image_ref for r in parsed.records)
        for index, reason in REAL_REASONS.items():
            assert reasons[reason] >= faces_of[urls[index]], reason
        errors = read_errors(out / "errors.parquet")
        assert not [e for e in errors if e.item.startswith(urls[1]) and e.stage == "download"]
        hits_before = sum(server.hits.values())
        _run(tmp_path, **settings)
        asked = sum(server.hits.values()) - hits_before
        # Only the four permanently failing URLs are asked again (with their retries).
        assert server.hits[urls[1]] == 3
        assert asked <= 4 * 3
    assert summary["sources"]["tcs"]["images"] == 120


@pytest.mark.shared
def test_imfdb_reference_through_flow(tmp_path: Path) -> None:
    root = shared_path("reference", "imfdb")
    summary = _run(tmp_path, imfdb_root=str(root), workers=2)
    out = tmp_path / "processed"
    parsed = scan_imfdb(root)
    reasons = _assert_every_face_accounted(parsed, out)
    assert reasons["too_small"] == 87  # Gundammakatha's 22x26 crops and the like
    entry = summary["sources"]["imfdb"]
    assert (entry["images"], entry["faces"]) == (204, 117)
    assert entry["buckets"] == {"50-100": 60, "100-128": 33, "128-200": 20, "224-inf": 4}
    assert entry["rejected"] == {
        "missing_crop": 987,  # only Blue and Gundammakatha ship their crops in this set
        "too_small": 87,
        "conflicting_labels": 3,
        "duplicate_row": 2,
        "missing_field": 2,
        "malformed_line": 1,
    }
    rows = read_faces(out).to_table(columns=["subject", "split", "width", "height", "bucket", "crop"]).to_pylist()
    assert len(rows) == summary["faces"]
    assert all(row["bucket"] == bucket_for(min(row["width"], row["height"]), EDGES) for row in rows)
    actors: dict[str, set[str]] = {}
    for row in rows:
        actors.setdefault(row["subject"], set()).add(row["split"])
        with Image.open(io.BytesIO(row["crop"])) as crop:
            assert crop.size == (row["width"], row["height"])
    assert all(len(s) == 1 for s in actors.values())


def test_demo_command_prints_summary_and_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from faces_cli.main import main

    params = tmp_path / "params.yaml"
    params.write_text(
        "train:\n  weights: none\n  input_size: 32\n  backbone: mobilenet_v3_large\n  workers: 1\n"
        f"  model_dir: {tmp_path / 'models'}\n  metrics_file: {tmp_path / 'train.json'}\n"
        f"  plots_file: {tmp_path / 'train.csv'}\n  checkpoint_dir: {tmp_path / 'ckpt'}\n"
        f"evaluate:\n  model_dir: {tmp_path / 'models'}\n  metrics_file: {tmp_path / 'eval.json'}\n"
        f"  plots_dir: {tmp_path / 'confusion'}\n  workers: 1\n"
    )
    monkeypatch.setenv("FACES_PARAMS", str(params))
    out = tmp_path / "processed"
    rc = main(
        [
            "demo",
            *("--out", str(tmp_path / "sample"), "--out-dir", str(out), "--raw-dir", str(tmp_path / "raw")),
            *("--annotations", str(tmp_path / "annotations")),
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0
    assert "imfdb:" in printed and "tcs:" in printed and "rejected:" in printed
    assert f"error log: {out}/errors.parquet" in printed
    assert read_faces(out, source="tcs").count_rows() > 0
    assert read_faces(out, source="imfdb").count_rows() > 0
    assert "trained heads on the face trunk" in printed and f"model:     {tmp_path / 'models'}/model.pt" in printed
    assert "CV macro-F1" in printed and "gender" in printed
    assert (tmp_path / "models" / "model.json").is_file() and (tmp_path / "train.csv").is_file()
    assert "gender" in printed and f"metrics: {tmp_path / 'eval.json'}" in printed
    assert json.loads((tmp_path / "eval_details.json").read_text())["attributes"]["gender"]["status"] == "ok"
    assert set(json.loads((tmp_path / "eval.json").read_text())["gender"]) == {"acc", "f1", "floor_f1", "ece"}
    assert "annotated " in printed and (tmp_path / "annotations" / "coco.json").is_file()
    coco = json.loads((tmp_path / "annotations" / "coco.json").read_text())
    # only the heads that beat their floor in cross-validation are written (drawn faces carry
    # little attribute signal, so the sample's model may publish few)
    meta = json.loads((tmp_path / "models" / "model.json").read_text())
    published = {a for a, r in meta["heads"].items() if r["reliable"]}
    assert coco["annotations"] and all(set(a["attributes"]) <= published for a in coco["annotations"])
    assert ("published" in printed) and all(f"  {a} " in printed for a in meta["heads"])
