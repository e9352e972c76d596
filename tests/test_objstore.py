"""Commit semantics on object storage (faces_core.objstore), on fsspec's in-memory filesystem:
readers see only what a manifest lists, a killed run leaves the last commit readable, recovery
removes what no manifest names, and unchanged files are not uploaded twice."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import pytest

from faces_core import objstore


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _read(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


@pytest.fixture
def location() -> str:
    return f"memory://faces-test-{uuid.uuid4().hex}/processed"


def test_publish_then_fetch_gives_the_same_files(tmp_path: Path, location: str) -> None:
    files = {"faces/source=tcs/bucket=64/part-0.parquet": b"a" * 1000, "summary.json": b"{}\n", ".lock": b"x"}
    _tree(tmp_path / "local", files)
    manifest = objstore.publish(tmp_path / "local", location, "run-1")
    assert set(manifest.files) == {"faces/source=tcs/bucket=64/part-0.parquet", "summary.json"}  # hidden: not data
    got = objstore.fetch(location, tmp_path / "copy")
    assert _read(got) == {k: v for k, v in files.items() if not k.startswith(".")}
    (got / "summary.json").unlink()
    (got / "stray.txt").write_bytes(b"not in the manifest")
    assert _read(objstore.fetch(location, tmp_path / "copy")) == _read(got) | {"summary.json": b"{}\n"}
    assert not (got / "stray.txt").exists()


def test_a_killed_run_leaves_the_last_commit_readable_and_recovery_removes_it(tmp_path: Path, location: str) -> None:
    _tree(tmp_path / "v1", {"a.txt": b"one", "b.txt": b"same"})
    objstore.publish(tmp_path / "v1", location, "run-1")
    fs, base = objstore.filesystem(location)
    fs.pipe_file(f"{base}/_runs/run-2/a.txt", b"half of a run that was killed before its manifest")
    assert _read(objstore.fetch(location, tmp_path / "copy")) == {"a.txt": b"one", "b.txt": b"same"}
    assert objstore.recover(location, keep=["run-3"]) == ["run-2"]
    assert not fs.exists(f"{base}/_runs/run-2")
    assert fs.exists(f"{base}/_runs/run-1/a.txt")


def test_a_new_commit_reuses_unchanged_objects_and_replaces_the_old_copy(tmp_path: Path, location: str) -> None:
    _tree(tmp_path / "v1", {"a.txt": b"one", "b.txt": b"same"})
    objstore.publish(tmp_path / "v1", location, "run-1")
    objstore.fetch(location, tmp_path / "copy")
    _tree(tmp_path / "v2", {"a.txt": b"two", "b.txt": b"same"})
    manifest = objstore.publish(tmp_path / "v2", location, "run-2")
    assert manifest.files["b.txt"].key == "_runs/run-1/b.txt" and manifest.files["a.txt"].key == "_runs/run-2/a.txt"
    assert _read(objstore.fetch(location, tmp_path / "copy")) == {"a.txt": b"two", "b.txt": b"same"}
    assert objstore.recover(location) == []  # run-1 still holds b.txt


def test_a_torn_object_is_refused_and_nothing_committed_says_what_to_do(tmp_path: Path, location: str) -> None:
    with pytest.raises(objstore.LocationError, match=r"nothing committed at memory://.*run the stage"):
        objstore.fetch(location, tmp_path / "copy")
    assert objstore.fetch(location, tmp_path / "new", missing_ok=True).is_dir()
    _tree(tmp_path / "v1", {"a.txt": b"one"})
    objstore.publish(tmp_path / "v1", location, "run-1")
    fs, base = objstore.filesystem(location)
    fs.pipe_file(f"{base}/_runs/run-1/a.txt", b"changed behind the manifest's back")
    with pytest.raises(objstore.LocationError, match="checksum differs"):
        objstore.fetch(location, tmp_path / "copy")
    assert not list((tmp_path / "copy").rglob("a.txt"))


def test_locations_are_told_apart_and_shown_without_credentials() -> None:
    assert not objstore.is_remote("data/processed") and not objstore.is_remote("/abs/x")
    assert not objstore.is_remote("file:///abs/x")
    assert objstore.is_remote("s3://bucket/x") and objstore.is_remote("memory://x")
    assert objstore.shown("s3://AKIA:secret@bucket/x") == "s3://bucket/x"
    assert "memory" in fsspec.available_protocols()


def test_a_plain_folder_is_copied_and_remote_paths_map_to_one_mirror(
    tmp_path: Path, location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACES_CACHE", str(tmp_path / "cache"))
    fs, base = objstore.filesystem(location)
    fs.pipe_file(f"{base}/inbox/a.jpg", b"jpeg")
    fs.pipe_file(f"{base}/inbox/sub/b.png", b"png")
    got = objstore.download_tree(f"{location}/inbox")
    assert got == objstore.mirror(f"{location}/inbox") == objstore.local(f"{location}/inbox")
    assert got.is_relative_to(tmp_path / "cache")
    assert _read(got) == {"a.jpg": b"jpeg", "sub/b.png": b"png"}
    assert objstore.local("data/x") == Path("data/x") and objstore.local("file:///abs/x") == Path("/abs/x")
