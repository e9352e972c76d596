"""Each run publishes the values it resolved from params.yaml (the UI shows None for a parameter
left to params.yaml), and never a credential: a proxy shows as ``(set)``, a URL loses its userinfo."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from flows import runner


@dataclass(frozen=True)
class _Download:
    proxy: str | None = "http://user:hunter2-secret@proxy.example:3128"
    timeout_s: float = 20.0


@dataclass(frozen=True)
class _Settings:
    out_dir: str = "data/processed"
    workers: int = 3
    download: _Download = field(default_factory=_Download)


def test_a_run_publishes_its_resolved_settings_without_credentials(prefect_harness: None) -> None:
    @flow(name="settings-probe")
    def probe() -> None:
        runner.show_settings("probe", tcs="https://alice:pw-secret@data.example/tcs.jsonl", settings=_Settings())

    probe()
    runner.show_settings("probe", tcs="outside a flow run: nothing is published")
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["probe-settings"])),
            sort=ArtifactSort.CREATED_DESC,
        )
    assert len(found) == 1
    data = found[0].data
    rows = {r["setting"]: r["value"] for r in (json.loads(data) if isinstance(data, str) else data)}
    assert rows == {
        "tcs": "https://***@data.example/tcs.jsonl",
        "settings.out_dir": "data/processed",
        "settings.workers": "3",
        "settings.download.proxy": "(set)",
        "settings.download.timeout_s": "20.0",
    }
    assert "secret" not in json.dumps(rows)
