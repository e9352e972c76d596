"""A DVC remote on S3, for real: `dvc push` to moto's S3 server, the local copy gone, `dvc pull` back.

Why: past one machine the data lives in object storage, and `dvc pull` on a fresh clone is how a
worker or a colleague gets it. The remote's URL and endpoint go in `.dvc/config` (committed), the
credentials only in the environment: the test plants a recognisable secret there and asserts no
file DVC or git wrote contains it, so a future change that persisted credentials would fail here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.s3.conftest import S3Env, files_containing

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("dvc_s3") is None,
    reason="needs dvc-s3 (the s3 or dev extra: pip install -c requirements.lock -e '.[dev]')",
)


class TempRepo:
    """A temporary git + DVC repository, DVC run as `python -m dvc` of this interpreter."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(args, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}{proc.stderr[-6000:]}"
            )
        return proc

    def dvc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "dvc", *args)

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "-m", message)


def _data(root: Path) -> dict[str, bytes]:
    """A small dataset: a few images' worth of bytes (binary, nested, one empty file)."""
    files = {
        "faces/a.jpg": hashlib.sha256(b"a").digest() * 300,
        "faces/b.jpg": bytes(range(256)) * 40,
        "faces/nested/c.png": hashlib.sha256(b"c").digest() * 7,
        "faces/empty.txt": b"",
        "labels.csv": b"path,gender\nfaces/a.jpg,f\nfaces/b.jpg,m\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def repo(s3_env: S3Env, tmp_path: Path) -> TempRepo:
    """`git init` + `dvc init`, its DVC global/system config and site cache inside tmp_path too."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("dvc-global", "dvc-system", "dvc-site-cache"):
        (tmp_path / name).mkdir()
    (tmp_path / "dvc-global" / "config").write_text("[core]\n    check_update = false\n")
    # s3_env's credentials, the only place they are; not its AWS_ENDPOINT_URL, so that a push which
    # works proves the remote's own `endpointurl` was used (a test below adds the variable back).
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    env |= {
        "DVC_NO_ANALYTICS": "1",
        "DVC_STUDIO_OFFLINE": "true",
        "DVC_GLOBAL_CONFIG_DIR": str(tmp_path / "dvc-global"),
        "DVC_SYSTEM_CONFIG_DIR": str(tmp_path / "dvc-system"),
        "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site-cache"),
        "GIT_AUTHOR_NAME": "faces tests",
        "GIT_AUTHOR_EMAIL": "tests@faces.invalid",
        "GIT_COMMITTER_NAME": "faces tests",
        "GIT_COMMITTER_EMAIL": "tests@faces.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    repo = TempRepo(root, env)
    repo.run("git", "init", "-q", "-b", "main")
    repo.dvc("init", "-q")
    return repo


def test_push_to_s3_then_pull_restores_data_byte_identical(repo: TempRepo, s3_env: S3Env) -> None:
    data_dir = repo.root / "data"
    written = _data(data_dir)
    repo.dvc("add", "data")
    repo.dvc("remote", "add", "-d", "s3remote", s3_env.url("dvcstore"))
    repo.dvc("remote", "modify", "s3remote", "endpointurl", s3_env.endpoint)
    repo.commit("data on an S3 remote")

    config = (repo.root / ".dvc" / "config").read_text()
    assert s3_env.url("dvcstore") in config and s3_env.endpoint in config
    assert not (repo.root / ".dvc" / "config.local").exists()

    cache = repo.root / ".dvc" / "cache"
    cached = _read_tree(cache)
    assert len(cached) == len(set(written.values())) + 1  # one object per distinct content + the .dir listing
    repo.dvc("push")
    status = json.loads(repo.dvc("status", "--cloud", "--json").stdout)
    assert status == {}, f"remote not in sync after push: {status}"

    # Every cache object reached the bucket, under the same path, with the same bytes.
    s3_env.fs.invalidate_cache()
    prefix = f"{s3_env.bucket}/dvcstore/"
    in_bucket = {key.removeprefix(prefix): s3_env.fs.cat(key) for key in s3_env.fs.find(prefix)}
    assert in_bucket == cached

    shutil.rmtree(data_dir)
    shutil.rmtree(cache)
    repo.dvc("pull")
    assert _read_tree(data_dir) == written
    assert _read_tree(cache) == cached

    leaked = files_containing(repo.root.parent, s3_env.secret)
    assert leaked == [], f"the secret was written to {leaked}"
    assert s3_env.secret not in config


def test_without_endpointurl_aws_endpoint_url_names_the_server(repo: TempRepo, s3_env: S3Env) -> None:
    """The README's other route: no endpoint in `.dvc/config`, botocore reads AWS_ENDPOINT_URL."""
    repo.env["AWS_ENDPOINT_URL"] = s3_env.endpoint
    _data(repo.root / "data")
    repo.dvc("add", "data")
    repo.dvc("remote", "add", "-d", "s3remote", s3_env.url("dvcstore"))
    assert s3_env.endpoint not in (repo.root / ".dvc" / "config").read_text()
    repo.dvc("push")
    s3_env.fs.invalidate_cache()
    prefix = f"{s3_env.bucket}/dvcstore/"
    pushed = {key.removeprefix(prefix) for key in s3_env.fs.find(prefix)}
    assert pushed == set(_read_tree(repo.root / ".dvc" / "cache"))
