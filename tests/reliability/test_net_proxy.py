"""``http_proxy`` in the environment carries image downloads only, never Prefect's API calls.

Defect: with ``http_proxy`` set, as the README suggests for hosts behind a proxy, Prefect's
client sent its calls to the local API server through the proxy and the run died before it
started. The flow runs in a real subprocess whose environment names a real loopback proxy
and no ``no_proxy``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from faces_core.ingest.sources.tcs import read_tcs
from faces_core.sample.tcs import write_tcs_sample
from faces_core.testing import LoopbackServer
from flows import keep_loopback_off_proxy
from tests.conftest import REPO

PARAMS = "download: {concurrency: 8, timeout_s: 2.0, retries: 2, backoff_s: 0.05, backoff_max_s: 0.2}\n"


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_env_proxy_carries_images_and_not_the_prefect_api(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    sample = write_tcs_sample(tmp_path / "sample", slow_delay=0.2)
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    with LoopbackServer(sample.routes) as proxy:
        env.update(
            http_proxy=proxy.proxy_url,
            HTTP_PROXY=proxy.proxy_url,
            PREFECT_API_URL=str(PREFECT_API_URL.value()),
            FACES_PARAMS=str(params),
        )
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "flows.ingest", "--tcs", str(sample.jsonl), "--imfdb-root", "", "--workers", "1"]
        # The sample's own loopback server would answer its host ahead of any proxy: off here,
        # so the user's proxy is the only way to the images.
        cmd += ["--out-dir", str(out), "--raw-dir", str(tmp_path / "raw"), "--no-sample-images"]
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
        hits = dict(proxy.hits)

    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "summary.json").is_file() and (out / "faces").is_dir()
    # Every image URL that carries a face was asked of the proxy (and the sample's redirect
    # target); no Prefect API call was.
    wanted = {r.image_ref for r in read_tcs(sample.jsonl).records}
    assert set(hits) == wanted | {url for url in sample.routes if "/moved/" in url}
    assert not any("/api/" in key for key in hits)


DEAD_PROXY = "http://127.0.0.1:9"
"""The discard port: nothing listens, every connection is refused at once (a dead proxy)."""


def _ingest_sample_under(proxy: str, tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    from prefect.settings import PREFECT_API_URL

    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    sample = write_tcs_sample(tmp_path / "sample", slow_delay=0.2)
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    env |= {
        "http_proxy": proxy,
        "https_proxy": proxy,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "FACES_PARAMS": str(params),
    }
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "flows.ingest", "--tcs", str(sample.jsonl), "--imfdb-root", "", "--workers", "1"]
    cmd += ["--out-dir", str(out), "--raw-dir", str(tmp_path / "raw"), *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False), out


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_dead_proxy_in_the_environment_keeps_every_sample_face(tmp_path: Path) -> None:
    """`http_proxy=http://127.0.0.1:9 make demo` lost all the sample's TCS faces: the sample's
    host now goes to its loopback server whatever proxy is set."""
    import pyarrow.parquet as pq

    result, out = _ingest_sample_under(DEAD_PROXY, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sources"]["tcs"]["faces"] > 0
    reasons = set(pq.read_table(out / "errors.parquet").column("reason").to_pylist())
    assert "connection_error" not in reasons and "timeout" not in reasons


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_every_download_refused_fails_the_run_and_names_the_proxy(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    result, out = _ingest_sample_under(DEAD_PROXY, tmp_path, "--no-sample-images")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "could be reached (through proxy" in result.stderr and "127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr.split("faces ingest:")[-1]
    assert not (out / "summary.json").exists()  # nothing committed


def test_proxy_passwords_are_hidden_in_messages() -> None:
    from faces_core.ingest.pipeline import redact_url

    assert redact_url("http://user:s3cret@proxy.corp:3128") == "http://user:***@proxy.corp:3128"
    assert redact_url("http://proxy.corp:3128") == "http://proxy.corp:3128"
    assert redact_url("user:pw@host:1") == "user:***@host:1"


def test_loopback_hosts_join_no_proxy_once_and_keep_existing_entries() -> None:
    env = {"no_proxy": "intranet.example, .corp"}
    keep_loopback_off_proxy(env)
    expected = "intranet.example,.corp,127.0.0.1,localhost,::1"
    assert env == {"no_proxy": expected, "NO_PROXY": expected}
    keep_loopback_off_proxy(env)
    assert env["no_proxy"] == expected  # idempotent
    empty: dict[str, str] = {}
    keep_loopback_off_proxy(empty)
    assert empty == {"no_proxy": "127.0.0.1,localhost,::1", "NO_PROXY": "127.0.0.1,localhost,::1"}
    everything = {"NO_PROXY": "*"}
    keep_loopback_off_proxy(everything)
    assert everything == {"NO_PROXY": "*"}
