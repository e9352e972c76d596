"""The ``faces`` command: help lists every subcommand, ``sample`` writes both source formats,
and ``python -m flows.ingest`` is runnable on its own."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from faces_cli.main import main
from faces_core.sample.tcs import load_routes

REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("sample", "demo", "ingest", "train", "evaluate", "annotate", "predict", "serve")


@pytest.fixture(scope="module")
def helps() -> dict[str, tuple[int, str, str]]:
    """``python -m <module> --help`` for the CLI modules, started side by side (each imports
    Prefect): module -> (exit code, stdout, stderr)."""
    procs = {
        module: subprocess.Popen(
            [sys.executable, "-m", module, "--help"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for module in ("faces_cli", "flows.ingest")
    }
    results = {}
    for module, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        results[module] = (proc.returncode, stdout, stderr)
    return results


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``faces sample --out <tmp>`` run once in-process: (sample dir, what it printed)."""
    out = tmp_path_factory.mktemp("sample")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["sample", "--out", str(out)])
    assert code == 0
    return out, printed.getvalue()


def test_help_lists_the_subcommands(helps: dict[str, tuple[int, str, str]]) -> None:
    code, stdout, stderr = helps["faces_cli"]
    assert code == 0, stderr
    assert "usage: faces" in stdout
    listed = set(re.findall(r"^ {2,}([a-z]+) {2,}\S", stdout, flags=re.MULTILINE))
    assert set(SUBCOMMANDS) <= listed, stdout


def test_no_subcommand_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def test_unknown_subcommand_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train-everything"])
    assert exc.value.code == 2


def test_sample_writes_tcs_files(sample: tuple[Path, str]) -> None:
    out, _ = sample
    jsonl = out / "tcs" / "faces.jsonl"
    routes = out / "tcs" / "routes.json"
    assert jsonl.is_file()
    assert routes.is_file()
    lines = [line for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines
    urls = set()
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # the sample holds malformed lines on purpose
        if isinstance(obj, dict) and isinstance(obj.get("content"), str):
            urls.add(obj["content"].strip())
    assert urls, "no well-formed TCS line in the sample"
    assert isinstance(json.loads(routes.read_text(encoding="utf-8")), dict)
    served = load_routes(out / "tcs")
    assert served
    assert all(url.startswith("http://") for url in served)
    assert urls & set(served)


def test_sample_writes_imfdb_tree(sample: tuple[Path, str]) -> None:
    out, _ = sample
    root = out / "imfdb" / "IMFDB_final"
    assert root.is_dir()
    txts = sorted(root.rglob("*.txt"))
    assert txts
    assert any(p.stat().st_size > 0 for p in txts)
    # IMFDB layout: IMFDB_final/<actor>/<movie>/<movie>.txt beside the crops.
    assert all(len(p.relative_to(root).parts) == 3 for p in txts)
    assert any(p.suffix.lower() in (".jpg", ".jpeg") for p in root.rglob("*"))


def test_sample_says_where_it_wrote(sample: tuple[Path, str]) -> None:
    out, printed = sample
    assert str(out / "tcs" / "faces.jsonl") in printed
    assert str(out / "imfdb" / "IMFDB_final") in printed


def test_ingest_module_help(helps: dict[str, tuple[int, str, str]]) -> None:
    code, stdout, stderr = helps["flows.ingest"]
    assert code == 0, stderr
    assert "usage:" in stdout
    for flag in ("--tcs", "--imfdb-root", "--out-dir", "--proxy"):
        assert flag in stdout
