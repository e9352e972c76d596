"""``http_proxy`` in the environment carries image downloads only, never Prefect's API calls.

Defect: with ``http_proxy`` set, as the README suggests for hosts behind a proxy, Prefect's
client sent its calls to the local API server through the proxy and the run died before it
started. The flow runs in a real subprocess whose environment names a real loopback proxy
and no ``no_proxy``.
"""

from __future__ import annotations

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
        cmd += ["--out-dir", str(out), "--raw-dir", str(tmp_path / "raw")]
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
        hits = dict(proxy.hits)

    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "summary.json").is_file() and (out / "faces").is_dir()
    # Every image URL that carries a face was asked of the proxy (and the sample's redirect
    # target); no Prefect API call was.
    wanted = {r.image_ref for r in read_tcs(sample.jsonl).records}
    assert set(hits) == wanted | {url for url in sample.routes if "/moved/" in url}
    assert not any("/api/" in key for key in hits)


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
