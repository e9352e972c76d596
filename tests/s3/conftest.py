"""A real S3 API for the tests: moto's standalone server on 127.0.0.1, one fresh bucket per test.

Why a server and not `moto.mock_aws`: the code under test reaches S3 from other processes (`dvc push`,
Dask workers, stage subprocesses), which an in-process patch never sees. A server on loopback is
what those processes reach over HTTP, exactly as they would reach MinIO or AWS.

How clients find the server (botocore 1.43, aiobotocore 3.10, s3fs 2026.9.0):

- botocore honours `AWS_ENDPOINT_URL` (and the S3-only `AWS_ENDPOINT_URL_S3`) from the environment,
  read when a client is created. aiobotocore builds its clients through botocore's config store, so
  `s3fs.S3FileSystem()` with no endpoint argument reaches the server too: s3fs itself reads no
  endpoint variable, it passes `endpoint_url=None` and botocore fills it from `AWS_ENDPOINT_URL`.
  `s3_env` sets `AWS_ENDPOINT_URL`, so boto3, s3fs and `fsspec.filesystem("s3")` need no arguments,
  in this process and in every subprocess that inherits the environment.
- fsspec's `FSSPEC_S3_ENDPOINT_URL` is read once, when fsspec is imported, so setting it in a running
  test changes nothing in-process; the fixture does not set it.
- Code that must not depend on the environment (a Dask worker on another machine) passes the endpoint
  explicitly: `fsspec.filesystem("s3", **s3_storage_options(endpoint))`, the same dict as
  `storage_options=` of pandas/pyarrow/`fsspec.open`. DVC takes it from `dvc remote modify NAME endpointurl`.

Credentials come from the environment only (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`); the secret
is a planted, recognisable string (`PLANTED_SECRET`) so a test can assert it was written nowhere.
The developer's own AWS setup (`AWS_PROFILE`, `~/.aws/config`, `~/.aws/credentials`) is hidden, so
a test can neither use nor leak real credentials. Proxies are cleared and `no_proxy` names loopback,
so an HTTP proxy in the developer's environment cannot take the requests elsewhere.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import s3fs

REGION = "us-east-1"
ACCESS_KEY_ID = "FACESTESTACCESSKEY01"
#: Recognisable on sight and by grep: a test fails if this string is found in any file it wrote.
PLANTED_SECRET = "faces-PLANTED-fake-secret-must-never-be-written-7f3a9c"

_MISSING = "the S3 tests need moto[server] and s3fs (the dev extra: pip install -c requirements.lock -e '.[dev]')"


def s3_storage_options(endpoint: str) -> dict[str, Any]:
    """Keyword arguments for `s3fs.S3FileSystem` / fsspec `storage_options` that name the endpoint.

    Explicit, for code that must not rely on `AWS_ENDPOINT_URL` being set where it runs; the
    credentials still come from the environment (or `key=`/`secret=`, never written to config).
    No `client_kwargs={"region_name": "us-east-1"}`: s3fs 2026.9 sends any region given there as
    the bucket's LocationConstraint on `mkdir`, and S3 (moto too) rejects "us-east-1" as one; the
    region comes from `AWS_DEFAULT_REGION` instead.
    """
    return {"endpoint_url": endpoint}


@dataclass(frozen=True)
class S3Env:
    """One test's S3: the server's endpoint, a bucket of its own, the planted secret, an s3fs filesystem."""

    endpoint: str
    bucket: str
    secret: str
    fs: s3fs.S3FileSystem

    def url(self, *parts: str) -> str:
        """`s3://<bucket>/<parts...>`, the form DVC remotes and fsspec paths take."""
        return "/".join([f"s3://{self.bucket}", *parts])

    def storage_options(self) -> dict[str, Any]:
        return s3_storage_options(self.endpoint)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's S3 server in a thread on 127.0.0.1 and a free port, for the whole session: its endpoint URL."""
    server_mod = pytest.importorskip("moto.server", reason=_MISSING)
    pytest.importorskip("s3fs", reason=_MISSING)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(
    moto_server: str, no_env_proxy: None, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Env]:
    """A fresh bucket on the moto server and the environment that makes every AWS client use it.

    The bucket name is unique per test, so tests never see each other's objects even though they
    share one server (and one moto backend) for the session.
    """
    import s3fs

    nowhere = tmp_path_factory.mktemp("no-aws-config")
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_REGION",
        "AWS_ENDPOINT_URL_S3",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
        "FSSPEC_S3",
        "FSSPEC_S3_ENDPOINT_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    env = {
        "AWS_CONFIG_FILE": str(nowhere / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(nowhere / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",  # no 1-second probe of 169.254.169.254 for credentials
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": PLANTED_SECRET,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": moto_server,
        "no_proxy": "127.0.0.1,localhost",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    bucket = f"faces-test-{uuid.uuid4().hex[:16]}"
    # skip_instance_cache: a filesystem of this test's own, not one another test cached (and closed).
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_storage_options(moto_server))
    fs.mkdir(bucket)
    yield S3Env(endpoint=moto_server, bucket=bucket, secret=PLANTED_SECRET, fs=fs)
    fs.rm(bucket, recursive=True)


def files_containing(root: Path, needle: str) -> list[str]:
    """Every file under `root` whose bytes contain `needle`, git's zlib-compressed loose objects included."""
    import zlib

    wanted = needle.encode()
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        data = path.read_bytes()
        if ".git" in path.parts and "objects" in path.parts:
            with contextlib.suppress(zlib.error):
                data += zlib.decompress(data)
        if wanted in data:
            hits.append(str(path.relative_to(root)))
    return hits
