"""The S3 fixture keeps its promise: every client finds moto's server from the environment alone.

Storage code built on this fixture (ingest, annotate, train on s3:// paths) may construct its
filesystems with no endpoint argument, in this process or in a subprocess such as a Dask worker;
these tests are what makes that assumption safe, and the place to look when a botocore or s3fs
upgrade changes how the endpoint is picked.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.s3.conftest import PLANTED_SECRET, S3Env


def test_bucket_is_fresh_and_reachable_with_explicit_options(s3_env: S3Env) -> None:
    assert s3_env.fs.ls(s3_env.bucket) == []
    s3_env.fs.pipe(f"{s3_env.bucket}/a/b.bin", b"\x00\x01faces")
    assert s3_env.fs.cat(s3_env.url("a", "b.bin")) == b"\x00\x01faces"
    assert s3_env.secret == PLANTED_SECRET == os.environ["AWS_SECRET_ACCESS_KEY"]


def test_boto3_and_s3fs_find_the_endpoint_from_the_environment(s3_env: S3Env) -> None:
    import boto3
    import fsspec

    s3_env.fs.pipe(f"{s3_env.bucket}/k.txt", b"hello")
    client = boto3.client("s3")  # no endpoint_url: AWS_ENDPOINT_URL
    assert client.get_object(Bucket=s3_env.bucket, Key="k.txt")["Body"].read() == b"hello"
    fs = fsspec.filesystem("s3", skip_instance_cache=True)  # no endpoint_url either
    assert fs.cat(f"{s3_env.bucket}/k.txt") == b"hello"


def test_a_subprocess_inherits_the_endpoint_and_credentials(s3_env: S3Env) -> None:
    code = (
        "import s3fs, sys; fs = s3fs.S3FileSystem(); "
        "fs.pipe(sys.argv[1] + '/from-child.txt', b'child'); print(fs.cat(sys.argv[1] + '/k.txt').decode())"
    )
    s3_env.fs.pipe(f"{s3_env.bucket}/k.txt", b"parent")
    out = subprocess.run(
        [sys.executable, "-c", code, s3_env.bucket], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "parent"
    s3_env.fs.invalidate_cache()
    assert s3_env.fs.cat(f"{s3_env.bucket}/from-child.txt") == b"child"


@pytest.mark.parametrize("round_", [1, 2])
def test_each_test_gets_its_own_empty_bucket(s3_env: S3Env, round_: int) -> None:
    """Same key written in both rounds: the second round must not see the first's object."""
    assert s3_env.fs.ls(s3_env.bucket) == []
    s3_env.fs.pipe(f"{s3_env.bucket}/same-key", str(round_).encode())
