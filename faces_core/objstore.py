"""Locations as URLs: a local path works as it always did; ``s3://``, ``gs://``, ``memory://`` go
through fsspec, with commit semantics that hold where a rename is not atomic.

Object stores have no atomic rename of a folder, so the local recipe (stage, then rename) does
not carry over. A run that writes a location instead:

1. uploads every file under a prefix of its own, ``<location>/_runs/<run_id>/...``;
2. writes ``<location>/_manifest.json`` last, one small object listing each file's key, size and
   SHA-256 (a single PUT, which S3 makes visible whole or not at all);
3. readers go through the manifest only (:func:`fetch`), so a half-uploaded run is never read;
4. :func:`recover` removes the ``_runs/`` prefixes no manifest names (killed runs).

One writer per location at a time: object stores have no ``flock``. Runs on the same location
are serialised by whoever starts them (one Prefect deployment with a concurrency limit of 1, or
one scheduled run); two concurrent writers would each write a whole manifest, and the last
one wins, never a mix.

Credentials come from the environment, an AWS profile or the fsspec config, never from
params.yaml, and :func:`shown` strips any userinfo from a URL before it is logged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from faces_core.files import write_atomic_with

MANIFEST: Final = "_manifest.json"
CONTENT_NAME: Final = re.compile(r"(?:images/)?[0-9a-f]{2}/([0-9a-f]{64})\.[A-Za-z0-9]+")
"""A content-addressed file of the image store: ``images/<first two hex digits>/<sha256>.<ext>``."""
RUNS: Final = "_runs"
CHUNK: Final = 1 << 20
LOCAL_SCHEMES: Final = ("", "file", "local")


class LocationError(RuntimeError):
    """A location that cannot be used (no committed manifest, a file that fails its checksum)."""


def scheme(location: str | os.PathLike[str]) -> str:
    """The URL scheme of ``location`` (``""`` for a plain path)."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", os.fspath(location))
    return match.group(1).lower() if match else ""


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names object storage (or any fsspec filesystem but the local one)."""
    return scheme(location) not in LOCAL_SCHEMES


def shown(location: str | os.PathLike[str]) -> str:
    """``location`` fit for logs and error messages: a URL's ``user:password@`` is removed."""
    return re.sub(r"(?<=://)[^/@\s]*@", "", os.fspath(location))


def filesystem(location: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a URL; credentials from the usual environment."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(location)
    except ImportError as exc:  # s3fs or gcsfs missing
        raise LocationError(
            f"{shown(location)}: this kind of location needs its fsspec package ({exc}); "
            "for s3:// install the s3 extra: pip install -e '.[s3]'"
        ) from exc
    return fs, str(path).rstrip("/")


@dataclass(frozen=True)
class Entry:
    """One committed file: its object key under the location, size and SHA-256."""

    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a location holds: the run that wrote it and its files by relative path."""

    run_id: str
    files: dict[str, Entry]

    def to_json(self) -> bytes:
        files = {rel: {"key": e.key, "size": e.size, "sha256": e.sha256} for rel, e in sorted(self.files.items())}
        return (json.dumps({"run_id": self.run_id, "files": files}, indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, origin: str) -> Manifest:
        try:
            raw = json.loads(data)
            files = {
                str(rel): Entry(str(e["key"]), int(e["size"]), str(e["sha256"])) for rel, e in raw["files"].items()
            }
            return cls(str(raw["run_id"]), files)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LocationError(f"{origin}: unreadable manifest ({exc}); re-run the stage that writes it") from exc


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _local_files(root: Path) -> list[str]:
    """Regular files under ``root``, relative, sorted; hidden files (temporaries, locks) left out."""
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and not path.is_symlink() and not any(part.startswith(".") for part in rel.parts):
            found.append(rel.as_posix())
    return sorted(found)


def publish(
    local_root: str | os.PathLike[str],
    location: str,
    run_id: str,
    files: Iterable[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    content_addressed: bool = False,
) -> Manifest:
    """Upload ``local_root`` (or the listed relative ``files``) as run ``run_id``, then commit it.

    Files go under ``<location>/_runs/<run_id>/``; the manifest is written last, so a run
    killed at any point leaves the previous commit readable and an orphan prefix that
    :func:`recover` removes. Objects a previous commit already holds with the same SHA-256 are
    not uploaded again: the new manifest points at them.

    ``content_addressed``: files named by their SHA-256 (the image store's ``ab/<sha256>.jpg``)
    go to that same key in the bucket, outside any run's prefix: the same name always holds the
    same bytes, so two runs or workers can never write one differently, and a re-run uploads
    only names the bucket lacks.
    """
    if not re.fullmatch(r"[A-Za-z0-9._-]+", run_id):
        raise ValueError(f"run_id must be letters, digits, '.', '_' or '-', got {run_id!r}")
    root = Path(local_root)
    fs, base = filesystem(location)
    previous = read_manifest(location)
    known = {e.sha256: e for e in previous.files.values()} if previous else {}
    names = sorted(files) if files is not None else _local_files(root)
    entries: dict[str, Entry] = {}
    for done, rel in enumerate(names, 1):
        path = root / rel
        digest = sha256_file(path)
        same = known.get(digest)
        if same is not None and fs.exists(f"{base}/{same.key}"):
            entries[rel] = same
        else:
            named = content_addressed and CONTENT_NAME.fullmatch(rel) is not None
            key = rel if named else f"{RUNS}/{run_id}/{rel}"
            size = path.stat().st_size
            if not _uploaded(fs, f"{base}/{key}", size):  # a shard of this run may have put it there
                fs.put_file(str(path), f"{base}/{key}")
            entries[rel] = Entry(key, size, digest)
        if progress is not None:
            progress(done, len(names))
    manifest = Manifest(run_id, entries)
    fs.pipe_file(f"{base}/{MANIFEST}", manifest.to_json())
    return manifest


def put_content(location: str, root: str | os.PathLike[str], names: Iterable[str]) -> int:
    """Upload content-addressed files (``images/ab/<sha256>.ext`` under ``root``) to the same keys
    of ``location``, each unless the bucket holds it already; the number uploaded.

    Nothing is committed: a later :func:`publish` with ``content_addressed`` names them in the
    manifest. A shard may read such a file before that (its key is its name), which is what lets
    a run upload each chunk's images just before that chunk's shards start.

    Raises:
        ValueError: A name is not content-addressed (it would need a run prefix and a commit).
    """
    fs, base = filesystem(location)
    uploaded = 0
    for rel in names:
        if CONTENT_NAME.fullmatch(rel) is None:
            raise ValueError(f"{rel!r} is not a content-addressed image store name")
        path = Path(root) / rel
        if not _uploaded(fs, f"{base}/{rel}", path.stat().st_size):
            fs.put_file(str(path), f"{base}/{rel}")
            uploaded += 1
    return uploaded


def _uploaded(fs: Any, key: str, size: int) -> bool:
    """Whether ``key`` holds ``size`` bytes already: only this run writes under its own prefix."""
    try:
        return int(fs.info(key).get("size", -1)) == size
    except FileNotFoundError:
        return False


def upload(location: str, run_id: str, root: Path, paths: Iterable[Path], under: str = "") -> dict[str, Entry]:
    """Put local files below ``root`` under the run's prefix, ``<location>/_runs/<run_id>/<under>/``.

    Nothing is committed: a manifest written later names them (a shard on a worker uploads its
    parts this way, and the run commits them all at once).

    Returns:
        Each file's entry, by its path relative to ``location``, in the order given.
    """
    fs, base = filesystem(location)
    entries: dict[str, Entry] = {}
    for path in paths:
        rel = "/".join(p for p in (under, path.relative_to(root).as_posix()) if p)
        key = f"{RUNS}/{run_id}/{rel}"
        fs.put_file(str(path), f"{base}/{key}")
        entries[rel] = Entry(key, path.stat().st_size, sha256_file(path))
    return entries


def read_manifest(location: str) -> Manifest | None:
    """The committed manifest of ``location``, or None when nothing was committed there."""
    fs, base = filesystem(location)
    try:
        data = fs.cat_file(f"{base}/{MANIFEST}")
    except FileNotFoundError:
        return None
    return Manifest.from_json(data, f"{shown(location)}/{MANIFEST}")


def cache_root() -> Path:
    """Where local copies of remote locations live: ``$FACES_CACHE``, else ``~/.cache/faces``."""
    return Path(os.environ.get("FACES_CACHE") or Path.home() / ".cache" / "faces")


def mirror(location: str | os.PathLike[str]) -> Path:
    """The local folder that stands for a remote ``location`` (the same on every machine).

    A stage reads a remote input from this folder after :func:`fetch`, and writes a remote
    output here before :func:`publish`; the name is a hash of the URL, so any worker finds it.
    """
    digest = hashlib.sha256(shown(location).encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", shown(location).split("://", 1)[-1]).strip("-")[-48:]
    return cache_root() / "mirror" / f"{name}-{digest}"


def local(location: str | os.PathLike[str]) -> Path:
    """``location`` as a local path: itself when local, else its :func:`mirror` (no I/O here)."""
    text = os.fspath(location)
    if not is_remote(text):
        return Path(text.removeprefix("file://")) if scheme(text) == "file" else Path(text)
    return mirror(text)


LOCAL_MANIFEST: Final = ".objstore-manifest.json"
"""The manifest a mirror was last synced to (hidden: never published back)."""


def fetch(location: str, dest: str | os.PathLike[str] | None = None, missing_ok: bool = False) -> Path:
    """Make ``dest`` (default: the location's :func:`mirror`) hold exactly its committed files.

    Files whose manifest entry has not changed since the last fetch are kept; the others are
    downloaded to a temporary name, checked against their SHA-256 and renamed into place;
    files the manifest no longer lists are removed. A killed fetch resumes where it stopped
    and never leaves a torn file under a real name.

    Args:
        location: The URL.
        dest: Local folder.
        missing_ok: Nothing committed yet is fine (an output a run will create): ``dest`` is
            left empty.

    Raises:
        LocationError: Nothing is committed there (unless ``missing_ok``), or a file fails its
            checksum.
    """
    target_root = Path(dest) if dest is not None else mirror(location)
    manifest = read_manifest(location)
    if manifest is None:
        if missing_ok:
            target_root.mkdir(parents=True, exist_ok=True)
            return target_root
        raise LocationError(
            f"nothing committed at {shown(location)} (no {MANIFEST}): run the stage that writes it "
            "there first (e.g. faces ingest --out-dir with this URL)"
        )
    had = target_root / LOCAL_MANIFEST
    before = Manifest.from_json(had.read_bytes(), str(had)).files if had.is_file() else {}
    fs, base = filesystem(location)
    for rel, entry in sorted(manifest.files.items()):
        target = target_root / rel
        if before.get(rel) == entry and target.is_file() and target.stat().st_size == entry.size:
            continue
        _get(fs, f"{base}/{entry.key}", target, entry.sha256, f"{shown(location)}/{entry.key}")
    for rel in set(_local_files(target_root)) - set(manifest.files):
        (target_root / rel).unlink()
    had.write_bytes(manifest.to_json())
    return target_root


def download_file(location: str, dest: str | os.PathLike[str] | None = None) -> Path:
    """Copy one remote object (a TCS file in a bucket) to ``dest`` (default: its :func:`mirror`)."""
    fs, path = filesystem(location)
    return _get(fs, path, Path(dest) if dest is not None else mirror(location))


def _get(fs: Any, key: str, target: Path, sha256: str | None = None, shown_as: str = "") -> Path:
    """Download ``key`` to ``target`` whole or not at all (temporary, then rename), refusing it
    when ``sha256`` is given and the bytes differ."""

    def write(tmp: Path) -> None:
        fs.get_file(key, str(tmp))
        if sha256 is not None and sha256_file(tmp) != sha256:
            raise LocationError(f"{shown_as or key}: checksum differs from the manifest")

    return write_atomic_with(target, write)


def objects(location: str) -> list[tuple[str, str, int]]:
    """(path relative to ``location``, key, size) of every object under a plain remote folder,
    sorted; hidden names and what a commit adds (``_runs/``, ``_manifest.json``) left out."""
    fs, base = filesystem(location)
    fs.invalidate_cache()  # objects put by other processes since this filesystem last listed
    found = []
    for key, info in sorted(fs.find(base, detail=True).items()):
        rel = key[len(base) :].lstrip("/")
        if rel and not any(part.startswith(".") or part in (RUNS, MANIFEST) for part in rel.split("/")):
            found.append((rel, key, int(info.get("size") or -1)))
    return found


def is_object_url(location: str | os.PathLike[str] | None) -> bool:
    """A remote location read through fsspec (http and https stay with the guarded downloader)."""
    return location is not None and is_remote(location) and scheme(location) not in ("http", "https")


def new_run_id() -> str:
    """A run id for :func:`publish`: UTC time, then random hex (sorts by time, never collides)."""
    import uuid
    from datetime import UTC, datetime

    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def download_tree(location: str, dest: str | os.PathLike[str] | None = None) -> Path:
    """Copy the objects under a plain remote folder (one no stage commits, e.g. photos a user
    uploaded) into ``dest`` (default: its :func:`mirror`); objects already there with the same
    size are not fetched again."""
    target_root = Path(dest) if dest is not None else mirror(location)
    target_root.mkdir(parents=True, exist_ok=True)
    fs, _ = filesystem(location)
    for rel, key, size in objects(location):
        target = target_root / rel
        if not (target.is_file() and target.stat().st_size == size):
            _get(fs, key, target)
    return target_root


def recover(location: str, keep: Iterable[str] = ()) -> list[str]:
    """Remove the run prefixes of ``location`` that no committed manifest points into.

    Args:
        location: The URL.
        keep: Run ids to leave alone besides the committed ones (a run in progress).

    Returns:
        The run ids removed.
    """
    fs, base = filesystem(location)
    fs.invalidate_cache()
    manifest = read_manifest(location)
    used = {e.key.split("/")[1] for e in manifest.files.values() if e.key.startswith(f"{RUNS}/")} if manifest else set()
    used |= set(keep)
    try:
        runs = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(f"{base}/{RUNS}", detail=False)]
    except FileNotFoundError:
        return []
    removed = sorted(r for r in runs if r not in used)
    for run in removed:
        fs.rm(f"{base}/{RUNS}/{run}", recursive=True)
    return removed
