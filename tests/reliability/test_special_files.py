"""FIFOs, link loops, links to ancestors, undecodable names, huge annotation files: each is one
rejection with a reason, the run goes on and ends, and memory stays flat.

Defects: a FIFO as an IMFDB crop or annotation ``.txt`` blocked ingest in ``open()`` for ever;
a FIFO in an annotate folder kept the run alive 317 s after SIGTERM; a self-loop symlink
crashed annotate (``RuntimeError: Symlink loop``), a non-UTF-8 name too
(``UnicodeEncodeError``), and ``in/sub/up -> ..`` was walked again and again (657 files for
15). A 2 GiB sparse annotation ``.txt`` was read whole (4.2 GB) and gave no rejection.

Ingest runs in a child process with a timeout, so a regression fails instead of hanging, and
reports its peak memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from faces_core.annotate.inputs import find_files
from faces_core.errors import Reason
from tests.conftest import REPO
from tests.reliability.test_paths import _jpeg, _row, _write

INGEST = textwrap.dedent(
    """
    import json, sys
    from faces_core.errors import read_errors
    from faces_core.ingest.pipeline import IngestSettings, run_ingest
    from faces_core.ingest.sources.imfdb import scan_imfdb
    root, out = sys.argv[1], sys.argv[2]
    summary = run_ingest(None, scan_imfdb(root), root, IngestSettings(out_dir=out, raw_dir=out + "-raw", workers=1))
    errors = [[e.item, str(e.reason), e.message] for e in read_errors(out + "/errors.parquet")]
    # VmHWM, not ru_maxrss: the latter keeps the parent's high-water mark across fork and exec
    peak_mb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
    print(json.dumps({"faces": summary["faces"], "errors": errors, "peak_mb": peak_mb}))
    """
)


PEAK_MB: dict[str, float] = {}


def _ingest(root: Path, out: Path) -> tuple[int, list[tuple[str, str, str]], float]:
    """Ingest ``root`` in a child process: faces, errors, seconds (its peak RSS in ``PEAK_MB``)."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", INGEST, str(root), str(out)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    PEAK_MB[str(root)] = result["peak_mb"]
    return result["faces"], [tuple(e) for e in result["errors"]], time.monotonic() - started


def _film(root: Path, rows: list[str], crops: dict[str, bytes]) -> Path:
    film = root / "Actor" / "Film"
    for name, data in crops.items():
        _write(film / "images" / name, data)
    _write(film / "Film.txt", "\n".join(rows) + "\n")
    return film


def test_a_fifo_as_a_crop_is_unreadable_and_the_run_ends(tmp_path: Path) -> None:
    root = tmp_path / "IMFDB_final"
    film = _film(root, [_row("Actor_1.jpg"), _row("Actor_2.jpg")], {"Actor_1.jpg": _jpeg(1)})
    os.mkfifo(film / "images" / "Actor_2.jpg")
    faces, errors, seconds = _ingest(root, tmp_path / "out")
    assert faces == 1
    fifo = [e for e in errors if "Actor_2.jpg" in e[2]]
    assert [(e[0], e[1]) for e in fifo] == [("Actor/Film/Film.txt:2", str(Reason.UNREADABLE_FILE))]
    assert "FIFO" in fifo[0][2]
    assert seconds < 60


def test_a_fifo_as_an_annotation_txt_is_unreadable_and_the_run_ends(tmp_path: Path) -> None:
    root = tmp_path / "IMFDB_final"
    film = _film(root, [_row("Actor_1.jpg")], {"Actor_1.jpg": _jpeg(1)})
    os.mkfifo(film / "Other.txt")
    faces, errors, _ = _ingest(root, tmp_path / "out")
    assert faces == 1
    assert ("Actor/Film/Other.txt", str(Reason.UNREADABLE_FILE)) in {(e[0], e[1]) for e in errors}


def test_a_2_gib_sparse_annotation_txt_is_rejected_without_reading_it(tmp_path: Path) -> None:
    root = tmp_path / "IMFDB_final"
    film = _film(root, [_row("Actor_1.jpg")], {"Actor_1.jpg": _jpeg(1)})
    with open(film / "Huge.txt", "wb") as fh:
        fh.truncate(2 * 1024**3)  # sparse: no disk used, all zeros
    faces, errors, seconds = _ingest(root, tmp_path / "out")
    assert faces == 1
    huge = [e for e in errors if e[0] == "Actor/Film/Huge.txt"]
    assert [e[1] for e in huge] == [str(Reason.TOO_LARGE)] and "2147483648 bytes" in huge[0][2]
    assert seconds < 60 and PEAK_MB[str(root)] < 1000  # it was read whole: 4.2 GB


def test_a_50_mb_line_streams_by_as_one_malformed_line(tmp_path: Path) -> None:
    root = tmp_path / "IMFDB_final"
    film = _film(root, [_row("Actor_1.jpg")], {"Actor_1.jpg": _jpeg(1)})
    with open(film / "Film.txt", "ab") as fh:
        fh.write(b"x\t" * (25 * 1024**2) + b"\n" + _row("Actor_2.jpg").encode() + b"\n")
    _write(film / "images" / "Actor_2.jpg", _jpeg(2))
    faces, errors, _ = _ingest(root, tmp_path / "out")
    assert faces == 2  # the row after the huge line is still read, with its own line number
    assert PEAK_MB[str(root)] < 1000
    assert ("Actor/Film/Film.txt:2", str(Reason.MALFORMED_LINE)) in {(e[0], e[1]) for e in errors}


def test_a_folder_named_like_an_annotation_txt_is_logged(tmp_path: Path) -> None:
    root = tmp_path / "IMFDB_final"
    film = _film(root, [_row("Actor_1.jpg")], {"Actor_1.jpg": _jpeg(1)})
    (film / "Notes.txt").mkdir()
    _, errors, _ = _ingest(root, tmp_path / "out")
    assert any(e[0] == "Actor/Film/Notes.txt" for e in errors), errors


# --- annotate's walk -------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    for name in ("a.jpg", "sub/b.jpg", "sub/deeper/c.jpg"):
        _write(root / name, _jpeg(len(name)))
    return root


def _outcomes(root: Path) -> dict[str, str]:
    return {
        os.path.relpath(job.path, root): ("ok" if job.rejection is None else str(job.rejection.reason))
        for job in find_files([root])
    }


def test_walk_plain_folder(folder: Path) -> None:
    assert _outcomes(folder) == {"a.jpg": "ok", "sub/b.jpg": "ok", "sub/deeper/c.jpg": "ok"}


def test_walk_fifo_socket_and_loops_are_unreadable_never_opened(folder: Path) -> None:
    import socket

    os.mkfifo(folder / "pipe.jpg")
    (folder / "self.jpg").symlink_to("self.jpg")  # a loop
    (folder / "gone.jpg").symlink_to("nowhere.jpg")  # dangling
    (folder / "ping.jpg").symlink_to("pong.jpg")
    (folder / "pong.jpg").symlink_to("ping.jpg")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "sock.jpg"))
        started = time.monotonic()
        outcomes = _outcomes(folder)
    assert time.monotonic() - started < 5
    for name in ("pipe.jpg", "self.jpg", "gone.jpg", "ping.jpg", "pong.jpg", "sock.jpg"):
        assert outcomes[name] == str(Reason.UNREADABLE_FILE), name
    assert outcomes["a.jpg"] == "ok"


def test_walk_link_to_an_ancestor_is_walked_once(folder: Path) -> None:
    (folder / "sub" / "up").symlink_to("..")
    (folder / "sub" / "deeper" / "top").symlink_to(folder)
    (folder / "again").symlink_to("sub")  # a second way into sub/
    jobs = find_files([folder])
    real = sorted(os.path.realpath(j.path) for j in jobs if j.rejection is None)
    assert len(real) == len(set(real)) == 3


def test_walk_links_leaving_the_folder_are_refused(folder: Path, tmp_path: Path) -> None:
    outside = _write(tmp_path / "outside" / "x.jpg", _jpeg(9))
    (folder / "x.jpg").symlink_to(outside)
    (folder / "out").symlink_to(outside.parent)
    outcomes = _outcomes(folder)
    assert outcomes["x.jpg"] == outcomes["out"] == str(Reason.SYMLINK_OUTSIDE_ROOT)


def test_walk_name_that_is_not_utf8_is_unreadable_and_storable(folder: Path) -> None:
    with open(os.fsencode(folder) + b"/caf\xe9.jpg", "wb") as fh:
        fh.write(_jpeg(3))
    jobs = [j for j in find_files([folder]) if j.rejection is not None]
    assert len(jobs) == 1 and jobs[0].rejection is not None
    assert jobs[0].rejection.reason == Reason.UNREADABLE_FILE and "not valid UTF-8" in jobs[0].rejection.message
    jobs[0].path.encode("utf-8")  # the row can be written to Parquet


@pytest.mark.slow
def test_annotate_run_over_every_bad_name_commits_and_ends(folder: Path, tmp_path: Path) -> None:
    """The whole annotate path (walk, shards, Parquet) over a folder holding every case above."""
    os.mkfifo(folder / "pipe.jpg")
    (folder / "self.jpg").symlink_to("self.jpg")
    (folder / "sub" / "up").symlink_to("..")
    with open(os.fsencode(folder) + b"/caf\xe9.jpg", "wb") as fh:
        fh.write(_jpeg(3))
    code = textwrap.dedent(
        """
        import json, sys
        from faces_core.annotate.pipeline import annotate_folders
        from faces_core.annotate.settings import AnnotateSettings, DetectSettings
        from faces_core.annotate.store import read_files
        settings = AnnotateSettings(detect=DetectSettings(max_side=320, device="cpu"), lock_wait_s=5)
        report = annotate_folders([sys.argv[1]], sys.argv[2], settings, model_dir=None)
        files = read_files(sys.argv[2]).to_pylist()
        print(json.dumps({"files": report.files, "reasons": report.reasons, "rows": len(files)}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(folder), str(tmp_path / "ann")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["files"] == result["rows"] == 6  # 3 photos + FIFO + loop + undecodable name, each once
    assert result["reasons"] == {"unreadable_file": 3}


# --- reason codes as the README states them ----------------------------------------------------


def test_a_jpeg_cut_to_200_bytes_is_corrupt_image_not_unreadable(tmp_path: Path) -> None:
    root = tmp_path / "IMFDB_final"
    _film(root, [_row("Actor_1.jpg"), _row("Actor_2.jpg")], {"Actor_1.jpg": _jpeg(1), "Actor_2.jpg": _jpeg(2)[:200]})
    faces, errors, _ = _ingest(root, tmp_path / "out")
    assert faces == 1
    assert [(e[0], e[1]) for e in errors] == [("Actor/Film/Film.txt:2", str(Reason.CORRUPT_IMAGE))]


def test_actor_and_images_folders_linked_from_outside_are_symlink_outside_root(tmp_path: Path) -> None:
    root = tmp_path / "IMFDB_final"
    _film(root, [_row("Actor_1.jpg")], {"Actor_1.jpg": _jpeg(1)})
    elsewhere = tmp_path / "elsewhere"
    _write(elsewhere / "Other" / "Film" / "images" / "Other_1.jpg", _jpeg(2))
    _write(elsewhere / "Other" / "Film" / "Film.txt", _row("Other_1.jpg") + "\n")
    _write(elsewhere / "images" / "X_1.jpg", _jpeg(3))
    (root / "Other").symlink_to(elsewhere / "Other")
    _write(root / "Actor" / "Film2" / "Film2.txt", _row("X_1.jpg", "Film2") + "\n")
    (root / "Actor" / "Film2" / "images").symlink_to(elsewhere / "images")
    faces, errors, _ = _ingest(root, tmp_path / "out")
    assert faces == 1
    reasons = {(e[0], e[1]) for e in errors}
    assert ("Other", str(Reason.SYMLINK_OUTSIDE_ROOT)) in reasons
    assert ("Actor/Film2/images", str(Reason.SYMLINK_OUTSIDE_ROOT)) in reasons
    assert not any(e[1] == str(Reason.JUNK_FILE) for e in errors)
